package main

import (
	"bufio"
	"fmt"
	"regexp"
	"strings"
	"time"
)

var pprofTotal = regexp.MustCompile(`Total samples = ([0-9.]+\w+)`)

// parsePprofCum reads `go tool pprof -top -cum` text: the total CPU
// sampled and each function's cumulative seconds.
func parsePprofCum(text string) (float64, map[string]float64) {
	var total float64
	cum := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := pprofTotal.FindStringSubmatch(line); m != nil {
			total = parseSeconds(m[1])
			continue
		}
		f := strings.Fields(line)
		// flat flat% sum% cum cum% name...
		if len(f) < 6 || !strings.HasSuffix(f[1], "%") || !strings.HasSuffix(f[4], "%") {
			continue
		}
		name := strings.Join(f[5:], " ")
		name = strings.TrimSuffix(name, " (inline)")
		cum[name] += parseSeconds(f[3])
	}
	return total, cum
}

func parseSeconds(s string) float64 {
	if s == "0" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0
	}
	return d.Seconds()
}

// cumOf sums the cumulative seconds of the functions whose names end with
// one of the suffixes.
func cumOf(cum map[string]float64, suffixes ...string) float64 {
	var s float64
	for name, v := range cum {
		for _, suf := range suffixes {
			if strings.HasSuffix(name, suf) {
				s += v
				break
			}
		}
	}
	return s
}

// part is one row of the per-request CPU breakdown.
type part struct {
	label string
	value func(cum map[string]float64, total float64) float64
}

var (
	sfxServe     = "net/http.(*conn).serve"
	sfxProxy     = "reverseproxy.(*Handler).ServeHTTP"
	sfxGateway   = "caddymodule.(*Gateway).ServeHTTP"
	sfxTransport = []string{"net/http.(*persistConn).readLoop", "net/http.(*persistConn).writeLoop"}
	sfxCommitter = "storage.(*committer).run"
	sfxGC        = "runtime.gcBgMarkWorker"
)

var breakdown = []part{
	{"whole Caddy process", func(c map[string]float64, t float64) float64 { return t }},
	{"HTTP serving (net/http conn.serve)", func(c map[string]float64, t float64) float64 { return cumOf(c, sfxServe) }},
	{"· reverse_proxy handler", func(c map[string]float64, t float64) float64 { return cumOf(c, sfxProxy) }},
	{"· · gateway metering writer (inside reverse_proxy)", func(c map[string]float64, t float64) float64 {
		return cumOf(c, "caddymodule.(*meter).Write", "caddymodule.(*meter).FlushError", "caddymodule.(*meter).WriteHeader", "caddymodule.(*meter).ReadFrom")
	}},
	{"· gateway handler, outside reverse_proxy", func(c map[string]float64, t float64) float64 {
		g := cumOf(c, sfxGateway)
		if g == 0 {
			return 0
		}
		return g - cumOf(c, sfxProxy)
	}},
	{"· · request body read, parse, rewrite", func(c map[string]float64, t float64) float64 {
		return cumOf(c, "caddymodule.readInferenceInto") // readInference wraps it: counting both would count twice
	}},
	{"· · auth, access, plan, rate limits, reservation", func(c map[string]float64, t float64) float64 {
		return cumOf(c, "caddymodule.(*Gateway).authenticate", "caddymodule.(*Gateway).newAdmission", "caddymodule.(*Gateway).checkAccess",
			"caddymodule.(*Gateway).admit", "caddymodule.(*Gateway).reserve")
	}},
	{"· · settlement on the request path", func(c map[string]float64, t float64) float64 { return cumOf(c, "caddymodule.(*settlement).complete") }},
	{"upstream transport loops", func(c map[string]float64, t float64) float64 { return cumOf(c, sfxTransport...) }},
	{"store group commits (background)", func(c map[string]float64, t float64) float64 { return cumOf(c, sfxCommitter) }},
	{"GC background marking", func(c map[string]float64, t float64) float64 { return cumOf(c, sfxGC) }},
	{"everything else (scheduler, netpoll, timers)", func(c map[string]float64, t float64) float64 {
		return t - cumOf(c, sfxServe) - cumOf(c, sfxTransport...) - cumOf(c, sfxCommitter) - cumOf(c, sfxGC)
	}},
}

// breakdownMarkdown renders, per load, the CPU µs per request of each part
// for plain and gateway.
func breakdownMarkdown(ps []profiled) string {
	var b strings.Builder
	for _, l := range loads {
		var plain, gw *profiled
		for i := range ps {
			if ps[i].load != l.name {
				continue
			}
			switch ps[i].target {
			case "plain":
				plain = &ps[i]
			case "gateway":
				gw = &ps[i]
			}
		}
		if plain == nil && gw == nil {
			continue
		}
		fmt.Fprintf(&b, "\n%s (CPU µs per request, from the profiles):\n\n| part | plain | gateway | gateway − plain |\n|---|---:|---:|---:|\n", l.name)
		per := func(p *profiled, pt part) (float64, bool) {
			if p == nil || p.requests == 0 {
				return 0, false
			}
			return pt.value(p.cum, p.total) * 1e6 / float64(p.requests), true
		}
		for _, pt := range breakdown {
			pv, pok := per(plain, pt)
			gv, gok := per(gw, pt)
			cell := func(v float64, ok bool) string {
				if !ok {
					return "n/a"
				}
				return fmt.Sprintf("%.0f", v)
			}
			diff := "n/a"
			if pok && gok {
				diff = fmt.Sprintf("%+.0f", gv-pv)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", pt.label, cell(pv, pok), cell(gv, gok), diff)
		}
	}
	return b.String()
}
