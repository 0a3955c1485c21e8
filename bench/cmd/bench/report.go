package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

type report struct {
	cfg       config
	machine   machine
	samples   map[string]map[string][]measured // load -> target -> rounds
	streams   []streamResult
	micro     []microResult
	microErr  error
	profiles  []profiled
	meter     *meterCheck
	disk      *diskResult
	retention *retentionResult
	sustained []sustainedResult
	cluster   *clusterResult
	postgres  *pgResult
	elapsed   time.Duration
}

func (r *report) add(load, target string, m measured) {
	if r.samples == nil {
		r.samples = map[string]map[string][]measured{}
	}
	if r.samples[load] == nil {
		r.samples[load] = map[string][]measured{}
	}
	r.samples[load][target] = append(r.samples[load][target], m)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func col(ms []measured, f func(measured) float64) float64 {
	xs := make([]float64, len(ms))
	for i, m := range ms {
		xs[i] = f(m)
	}
	return median(xs)
}

// pairwise is the median over rounds of f(a[i], b[i]).
func pairwise(a, b []measured, f func(a, b measured) float64) float64 {
	n := min(len(a), len(b))
	xs := make([]float64, n)
	for i := 0; i < n; i++ {
		xs[i] = f(a[i], b[i])
	}
	return median(xs)
}

var targetOrder = []string{"direct", "plain", "gateway"}

// check is one target of issue #6.
type check struct {
	what, measured, target string
	pass                   string // "yes", "NO" or "n/a"
}

func passFail(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func (r *report) checks() []check {
	var cs []check
	ratio := func(load string) float64 {
		s := r.samples[load]
		if s == nil || s["gateway"] == nil || s["plain"] == nil {
			return math.NaN()
		}
		return pairwise(s["gateway"], s["plain"], func(g, p measured) float64 { return g.rps / p.rps })
	}
	added := func(load, a, b string) float64 {
		s := r.samples[load]
		if s == nil || s[a] == nil || s[b] == nil {
			return math.NaN()
		}
		return pairwise(s[a], s[b], func(x, y measured) float64 { return float64(x.p50-y.p50) / 1e3 })
	}
	for _, l := range loads {
		if l.conns == 1 {
			v := added(l.name, "gateway", "plain")
			cs = append(cs, check{l.name + ": p50 added by the gateway over plain", fmtUs(v), "≤ 100 µs", nanPass(v, v <= 100)})
			continue
		}
		lo := 0.85
		if l.stream {
			lo = 0.90
		}
		v := ratio(l.name)
		cs = append(cs, check{l.name + ": gateway/plain req/s", fmtRatio(v), fmt.Sprintf("≥ %.2f", lo), nanPass(v, v >= lo)})
	}
	if d := r.disk; d != nil {
		_, alloc := d.perRequest()
		cs = append(cs, check{fmt.Sprintf("database growth per metered request (allocated, %d requests)", d.requests),
			fmt.Sprintf("%.0f B", alloc), "≤ 150 B", passFail(alloc <= 150)})
	} else {
		cs = append(cs, check{"database growth per metered request", "not measured", "≤ 150 B", "n/a"})
	}
	if rt := r.retention; rt != nil {
		v := rt.perKeptRequest()
		cs = append(cs, check{fmt.Sprintf("bytes in use per usage record kept (%d days of records)", rt.detailDays),
			fmt.Sprintf("%.0f B", v), fmt.Sprintf("≤ %d B", retentionMaxFill), passFail(v <= retentionMaxFill)})
		_, file := rt.steadyGrowth()
		cs = append(cs, check{"database file growth once the retention is full", fmt.Sprintf("%d B", file), "0 B", passFail(file <= 0)})
	}
	if v, ok := r.sustainedRatio(); ok {
		cs = append(cs, check{fmt.Sprintf("peak RSS at %d connections: gateway/plain", r.sustained[0].conns), fmtRatio(v), "≤ 1.50", passFail(v <= 1.5)})
	} else {
		cs = append(cs, check{"peak RSS under sustained load: gateway/plain", "not measured", "≤ 1.50", "n/a"})
	}
	if len(r.streams) == 2 && r.streams[0].rss > 0 {
		v := float64(r.streams[1].rss) / float64(r.streams[0].rss)
		cs = append(cs, check{fmt.Sprintf("RSS with %d open streams: gateway/plain", r.streams[0].streams), fmtRatio(v), "≤ 1.30",
			passFail(v <= 1.3 && r.streams[0].failed == 0 && r.streams[1].failed == 0)})
	} else {
		cs = append(cs, check{"RSS with open streams: gateway/plain", "not measured", "≤ 1.30", "n/a"})
	}
	adm := r.findMicro(`(?i)admi`)
	if adm != nil {
		cs = append(cs, check{"admission (" + adm.pkg + "." + adm.name + ")",
			fmt.Sprintf("%.2f µs/op, %.0f allocs/op", adm.nsPerOp/1e3, adm.allocs), "≤ 2 µs/op, ≤ 5 allocs/op",
			passFail(adm.nsPerOp <= 2000 && adm.allocs <= 5)})
	} else {
		cs = append(cs, check{"admission microbenchmark", "not run or not found", "≤ 2 µs/op, ≤ 5 allocs/op", "n/a"})
	}
	st := r.findMicro(`(?i)durable`)
	if st == nil {
		st = r.findMicro(`(?i)settle`)
	}
	if st != nil {
		v := settlementsPerSec(st)
		cs = append(cs, check{"durable settlements (" + st.pkg + "." + st.name + ")", fmt.Sprintf("%.0f/s", v), "≥ 20,000/s", passFail(v >= 20000)})
	} else {
		cs = append(cs, check{"durable settlements microbenchmark", "not run or not found", "≥ 20,000/s", "n/a"})
	}
	return append(cs, r.postgresChecks()...)
}

// sustainedRatio is the gateway's peak RSS over plain's under the
// sustained load.
func (r *report) sustainedRatio() (float64, bool) {
	var plain, gw int64
	for _, s := range r.sustained {
		switch s.target {
		case "plain":
			plain = s.peak.total()
		case "gateway":
			gw = s.peak.total()
		}
	}
	if plain == 0 || gw == 0 {
		return 0, false
	}
	return float64(gw) / float64(plain), true
}

// settlementsPerSec prefers a custom "…/s" metric, else 1/ns_per_op.
func settlementsPerSec(m *microResult) float64 {
	for _, e := range m.extra {
		v, unit, _ := strings.Cut(e, " ")
		if strings.HasSuffix(unit, "/s") && !strings.HasPrefix(unit, "MB") {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	if m.nsPerOp == 0 {
		return 0
	}
	return 1e9 / m.nsPerOp
}

func (r *report) findMicro(pattern string) *microResult {
	re := regexp.MustCompile(pattern)
	for i := range r.micro {
		if re.MatchString(r.micro[i].name) {
			return &r.micro[i]
		}
	}
	return nil
}

func nanPass(v float64, ok bool) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return passFail(ok)
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", v)
}

func fmtUs(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%+.0f µs", v)
}

// markdown renders the results as Markdown tables.
func (r *report) markdown() string {
	var b strings.Builder
	m := r.machine
	fmt.Fprintf(&b, "Run: %s, %d rounds × %s (+%s warm-up) per case, load generator %s, %s total.\n\n",
		m.date, r.cfg.rounds, r.cfg.duration, r.cfg.warmup, m.loadgen, r.elapsed)
	fmt.Fprintf(&b, "Machine: %d cores, %s; Linux %s; %s; Caddy %s; load average %s at start, %s at end.\n\n",
		m.nproc, m.cpu, m.kernel, m.goVersion, m.caddyVersion, m.loadStart, m.loadEnd)

	b.WriteString("### Targets (issues #6 and #20)\n\n| check | measured | target | met |\n|---|---|---|---|\n")
	for _, c := range r.checks() {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", c.what, c.measured, c.target, c.pass)
	}

	if mc := r.meter; mc != nil {
		if mc.err != "" {
			fmt.Fprintf(&b, "\nMetering check failed: %s\n", mc.err)
		} else {
			fmt.Fprintf(&b, "\nMetering check: %d JSON requests through the gateway cost %.1f credits each and %d SSE requests %.1f each "+
				"(the mock reports 12+20 and 12+16 tokens; 1 credit per token); %d credits still reserved afterwards.\n",
				mc.n, mc.jsonCharge, mc.n, mc.sseCharge, mc.reservedAfter)
		}
	}

	b.WriteString("\n### Throughput and latency\n\nMedians over the rounds. *vs plain* is the median of the per-round req/s ratios to plain reverse_proxy. " +
		"*Caddy CPU* is utime+stime of the Caddy process per request; *mock CPU* the same for the mock upstream. " +
		"*Peak RSS* is the Caddy process's VmHWM during the case.\n\n")
	b.WriteString("| load | target | req/s | p50 | p99 | vs plain | Caddy CPU/req | mock CPU/req | peak RSS | non-2xx / errors |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, l := range loads {
		s := r.samples[l.name]
		if s == nil {
			continue
		}
		for _, t := range targetOrder {
			ms := s[t]
			if ms == nil {
				continue
			}
			vs := "n/a"
			if p := s["plain"]; p != nil {
				vs = fmtRatio(pairwise(ms, p, func(a, b measured) float64 { return a.rps / b.rps }))
			}
			cpu, rss := "–", "–"
			if t != "direct" {
				cpu = fmt.Sprintf("%.0f µs", col(ms, func(m measured) float64 { return m.cpuPerReq }))
				var peak int64
				for _, x := range ms {
					peak = max(peak, x.peakRSS)
				}
				rss = mib(peak)
			}
			var bad, errs int64
			for _, x := range ms {
				bad += x.non2xx
				errs += x.errors
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s | %s | %.0f µs | %s | %d / %d |\n", l.name, t,
				col(ms, func(m measured) float64 { return m.rps }),
				fmtDur(time.Duration(col(ms, func(m measured) float64 { return float64(m.p50) }))),
				fmtDur(time.Duration(col(ms, func(m measured) float64 { return float64(m.p99) }))),
				vs, cpu, col(ms, func(m measured) float64 { return m.mockPerReq }), rss, bad, errs)
		}
	}

	b.WriteString("\n### Added latency at one connection (p50, median of per-round differences)\n\n| load | plain − direct | gateway − plain |\n|---|---:|---:|\n")
	for _, l := range loads {
		if l.conns != 1 {
			continue
		}
		s := r.samples[l.name]
		if s == nil {
			continue
		}
		d := func(a, c string) string {
			if s[a] == nil || s[c] == nil {
				return "n/a"
			}
			return fmtUs(pairwise(s[a], s[c], func(x, y measured) float64 { return float64(x.p50-y.p50) / 1e3 }))
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", l.name, d("plain", "direct"), d("gateway", "plain"))
	}

	if d := r.disk; d != nil {
		size, alloc := d.perRequest()
		b.WriteString("\n### Bytes on disk per metered request (as shipped, short answer, JSON, 32 connections)\n\n")
		b.WriteString("| requests | database files before | after | per request (apparent) | allocated before | after | per request (allocated) |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|\n")
		fmt.Fprintf(&b, "| %d | %s | %s | %.0f B | %s | %s | %.0f B |\n", d.requests, mib(d.before.size), mib(d.after.size), size,
			mib(d.before.alloc), mib(d.after.alloc), alloc)
	}
	if r.retention != nil {
		b.WriteString(r.retention.section())
	}
	if len(r.sustained) > 0 {
		fmt.Fprintf(&b, "\n### Memory under sustained load (as shipped, short answer, JSON, %d connections for %s each)\n\n", r.sustained[0].conns, r.sustained[0].duration)
		b.WriteString("RSS split from /proc/<pid>/status at the sample (every 100 ms) with the highest total: anonymous (Go heap, stacks, runtime) and file-backed (binary, mapped bbolt file).\n\n")
		b.WriteString("| target | req/s | peak RSS | anonymous | file-backed | shared | VmHWM | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, s := range r.sustained {
			fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %s | %s | %s | %d |\n", s.target, s.rps, mib(s.peak.total()), mib(s.peak.anon), mib(s.peak.file),
				mib(s.peak.shmem), mib(s.peakHWM), s.errors)
		}
		if v, ok := r.sustainedRatio(); ok {
			fmt.Fprintf(&b, "\nGateway/plain peak RSS: %.2f.\n", v)
		}
	}

	if r.cluster != nil {
		b.WriteString(r.cluster.markdown())
	}
	if r.postgres != nil {
		b.WriteString(r.postgres.markdown())
	}

	if len(r.streams) > 0 {
		b.WriteString("\n### Slow streams held open (one SSE chunk per second each, fresh Caddy process per target)\n\n")
		b.WriteString("| target | streams | open | failed | RSS idle | RSS with streams | peak RSS | RSS per stream | goroutines idle | goroutines with streams |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, s := range r.streams {
			per := "n/a"
			if s.open > 0 {
				per = fmt.Sprintf("%.1f KiB", float64(s.rss-s.idleRSS)/1024/float64(s.open))
			}
			fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %s | %s | %s | %d | %d |\n", s.target, s.streams, s.open, s.failed,
				mib(s.idleRSS), mib(s.rss), mib(s.peakRSS), per, s.idleGoroutines, s.gorout)
		}
		b.WriteString("\nPer open stream (with streams − idle, divided by the open streams): Go heap in use (runtime HeapInuse) and goroutine stacks (StackInuse).\n\n")
		b.WriteString("| target | heap per stream | stacks per stream |\n|---|---:|---:|\n")
		for _, s := range r.streams {
			if s.open == 0 || s.heap == 0 {
				continue
			}
			kib := func(v int64) string { return fmt.Sprintf("%.1f KiB", float64(v)/1024/float64(s.open)) }
			fmt.Fprintf(&b, "| %s | %s | %s |\n", s.target, kib(s.heap-s.idleHeap), kib(s.stack-s.idleStack))
		}
		if len(r.streams) == 2 && r.streams[0].rss > 0 {
			fmt.Fprintf(&b, "\nGateway/plain RSS with streams open: %.2f; goroutines: %.2f.\n",
				float64(r.streams[1].rss)/float64(r.streams[0].rss), float64(r.streams[1].gorout)/float64(max(1, r.streams[0].gorout)))
		}
	}

	if len(r.micro) > 0 || r.microErr != nil {
		b.WriteString("\n### Microbenchmarks (go test -bench -benchmem, ./caddymodule, ./storage and ./storage/postgres)\n\n")
		if r.microErr != nil {
			fmt.Fprintf(&b, "Some did not run cleanly:\n\n```\n%s\n```\n\n", r.microErr)
		}
		if len(r.micro) > 0 {
			b.WriteString("| package | benchmark | ns/op | B/op | allocs/op | other |\n|---|---|---:|---:|---:|---|\n")
			for _, m := range r.micro {
				mem, al := "", ""
				if m.hasMem {
					mem, al = fmt.Sprintf("%.0f", m.bPerOp), fmt.Sprintf("%.0f", m.allocs)
				}
				fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s |\n", m.pkg, m.name, m.nsPerOp, mem, al, strings.Join(m.extra, ", "))
			}
		}
	}

	if len(r.profiles) > 0 {
		b.WriteString("\n### Where the CPU goes (profiles of extra runs)\n")
		b.WriteString(breakdownMarkdown(r.profiles))
		b.WriteString("\nGateway process, flat top 30:\n")
		for _, p := range r.profiles {
			if p.target == "gateway" {
				fmt.Fprintf(&b, "\n%s:\n\n```\n%s```\n", p.load, trimPprofHeader(p.top))
			}
		}
	}
	return b.String()
}

// trimPprofHeader drops the file and build lines of pprof -top output.
func trimPprofHeader(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "File:") || strings.HasPrefix(line, "Build ID:") || strings.HasPrefix(line, "Type:") ||
			strings.HasPrefix(line, "Time:") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

func (r *report) text() string { return r.markdown() }

const (
	beginMarker = "<!-- BEGIN GENERATED by `make bench` (go run ./bench/cmd/bench); edits inside are overwritten -->"
	endMarker   = "<!-- END GENERATED -->"
)

// writeDocs replaces the generated part of the report file, keeping the
// hand-written analysis around it.
func (r *report) writeDocs(path string) error {
	gen := beginMarker + "\n\n" + r.markdown() + "\n" + endMarker + "\n"
	old, err := os.ReadFile(path)
	var doc string
	switch {
	case err == nil && strings.Contains(string(old), beginMarker) && strings.Contains(string(old), endMarker):
		s := string(old)
		i := strings.Index(s, beginMarker)
		j := strings.Index(s, endMarker) + len(endMarker)
		if j < len(s) && s[j] == '\n' {
			j++
		}
		doc = s[:i] + gen + s[j:]
	case err == nil:
		doc = string(old) + "\n" + gen
	default:
		doc = "# Benchmarks\n\nGenerated by `make bench`; see bench/ for the harness.\n\n## Latest results\n\n" + gen
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(doc), 0o644)
}
