package main

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/loadgen"
	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// load is one traffic shape: a comparison (bare or shipped), the mock's
// answer, JSON or SSE, and the connections.
type load struct {
	name   string
	setup  string // setupBare or setupShipped
	answer mock.Answer
	conns  int
	stream bool
	// keys, when set, are API keys the requests take in turn (one user
	// each), instead of the one key of the headers.
	keys []string
}

// The two comparisons: bench/Caddyfile.{plain,gateway} without access
// logs, and Caddyfile.example as shipped (shipped.go).
const (
	setupBare    = "bare"
	setupShipped = "shipped"
)

func newLoad(setup string, a mock.Answer, stream bool, conns int) load {
	kind, unit := "JSON", "conns"
	if stream {
		kind = "SSE"
	}
	if conns == 1 {
		unit = "conn"
	}
	return load{name: fmt.Sprintf("%s %s %s %d %s", setup, a, kind, conns, unit), setup: setup, answer: a, conns: conns, stream: stream}
}

// allLoads are the measured loads: the tiny answer bare (today's case,
// also direct to the mock), each realistic answer in both comparisons at
// 32 connections, and the added latency at one connection as shipped.
func allLoads() []load {
	var ls []load
	for _, stream := range []bool{false, true} {
		ls = append(ls, newLoad(setupBare, mock.AnswerTiny, stream, 32))
	}
	for _, setup := range []string{setupBare, setupShipped} {
		for _, a := range mock.Answers[1:] {
			for _, stream := range []bool{false, true} {
				ls = append(ls, newLoad(setup, a, stream, 32))
			}
		}
	}
	for _, stream := range []bool{false, true} {
		ls = append(ls, newLoad(setupShipped, mock.AnswerShort, stream, 1))
	}
	return ls
}

var loads = allLoads()

func (l load) body() string {
	switch {
	case l.answer == mock.AnswerTool && l.stream:
		return toolStreamBody
	case l.answer == mock.AnswerTool:
		return toolBody
	case l.answer != mock.AnswerTiny && l.stream:
		return chatStreamBody
	case l.answer != mock.AnswerTiny:
		return chatBody
	case l.stream:
		return streamBody
	}
	return jsonBody
}

// The tiny answer's requests are the ones the benchmark always sent; the
// realistic answers come with requests as an application sends them (a
// system prompt, a max_tokens that does not cut the long answer, the tool
// definition for the tool call).
// The tiny answer's requests are the ones the benchmark always sent; the
// realistic answers come with requests as an application sends them (a
// system prompt, a max_tokens that does not cut the long answer, the tool
// definition for the tool call).
const (
	jsonBody   = `{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}`
	streamBody = `{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64,"stream":true}`
	apiPath    = "/v1/chat/completions"

	chatMessages = `"messages":[{"role":"system","content":"You are a helpful assistant. Answer concisely and accurately."},` +
		`{"role":"user","content":"Explain how a request travels through Caddy's reverse proxy."}]`
	chatBody       = `{"model":"mock-model",` + chatMessages + `,"max_tokens":1024,"temperature":0.7}`
	chatStreamBody = `{"model":"mock-model",` + chatMessages + `,"max_tokens":1024,"temperature":0.7,"stream":true}`
	toolDefs       = `"tools":[{"type":"function","function":{"name":"get_current_weather","description":"Get the current weather in a given location",` +
		`"parameters":{"type":"object","properties":{"location":{"type":"string","description":"The city and country, e.g. Paris, France"},` +
		`"unit":{"type":"string","enum":["celsius","fahrenheit"]}},"required":["location"]}}}],"tool_choice":"auto"`
	toolMessages   = `"messages":[{"role":"user","content":"What is the weather like in Paris today?"}]`
	toolBody       = `{"model":"mock-model",` + toolMessages + `,` + toolDefs + `,"max_tokens":1024}`
	toolStreamBody = `{"model":"mock-model",` + toolMessages + `,` + toolDefs + `,"max_tokens":1024,"stream":true}`
)

// sample is one measured run of one load against one target.
type sample struct {
	requests int64
	rps      float64
	p50, p99 time.Duration
	non2xx   int64
	errors   int64
	firstErr string
}

// runner applies a load for warmup+duration and measures the window.
type runner interface {
	name() string
	run(ctx context.Context, addr string, hdr map[string]string, l load, warmup, d time.Duration) (sample, error)
}

type goRunner struct{}

func (goRunner) name() string { return "bench/loadgen (Go, raw HTTP/1.1 keep-alive)" }

func (goRunner) run(ctx context.Context, addr string, hdr map[string]string, l load, warmup, d time.Duration) (sample, error) {
	cfg := loadgen.Config{
		Addr: addr, Request: loadgen.BuildRequest("POST", addr, apiPath, hdr, []byte(l.body())),
		Conns: l.conns, Warmup: warmup, Duration: d,
	}
	for _, k := range l.keys {
		h := maps.Clone(hdr)
		h["Authorization"] = "Bearer " + k
		cfg.Requests = append(cfg.Requests, loadgen.BuildRequest("POST", addr, apiPath, h, []byte(l.body())))
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return sample{}, err
	}
	return sample{
		requests: res.Requests, rps: res.RPS, p50: res.P50(), p99: res.P99(),
		non2xx: res.Non2xx, errors: res.Errors, firstErr: res.FirstError,
	}, nil
}

// wrkRunner drives wrk (one thread, like the Go generator) with a Lua
// script that sets the method, headers and body.
type wrkRunner struct {
	bin string
	dir string
}

func (w wrkRunner) name() string { return "wrk (" + w.bin + ", 1 thread)" }

func (w wrkRunner) script(hdr map[string]string, body string, keys []string) (string, error) {
	var b strings.Builder
	b.WriteString("wrk.method = \"POST\"\n")
	fmt.Fprintf(&b, "wrk.body = [==[%s]==]\n", body)
	for k, v := range hdr {
		fmt.Fprintf(&b, "wrk.headers[%q] = %q\n", k, v)
	}
	if len(keys) > 0 {
		// The requests take the keys in turn.
		b.WriteString("local keys = {")
		for _, k := range keys {
			fmt.Fprintf(&b, "%q,", "Bearer "+k)
		}
		b.WriteString("}\nlocal i = 0\nrequest = function()\n\ti = i % #keys + 1\n" +
			"\twrk.headers[\"Authorization\"] = keys[i]\n\treturn wrk.format()\nend\n")
	}
	f, err := os.CreateTemp(w.dir, "wrk-*.lua")
	if err != nil {
		return "", err
	}
	defer f.Close()
	_, err = f.WriteString(b.String())
	return f.Name(), err
}

func (w wrkRunner) run(ctx context.Context, addr string, hdr map[string]string, l load, warmup, d time.Duration) (sample, error) {
	script, err := w.script(hdr, l.body(), l.keys)
	if err != nil {
		return sample{}, err
	}
	defer os.Remove(script)
	url := "http://" + addr + apiPath
	args := func(d time.Duration) []string {
		return []string{"-t1", "-c" + strconv.Itoa(l.conns), "-d" + strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second))) + "s",
			"--latency", "--timeout", "10s", "-s", script, url}
	}
	if warmup > 0 {
		if out, err := exec.CommandContext(ctx, w.bin, args(warmup)...).CombinedOutput(); err != nil {
			return sample{}, fmt.Errorf("wrk warmup: %v: %s", err, out)
		}
	}
	out, err := exec.CommandContext(ctx, w.bin, args(d)...).CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	return parseWrk(string(out))
}

var (
	wrkTotal  = regexp.MustCompile(`(\d+) requests in ([0-9.]+\w+)`)
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkPct    = regexp.MustCompile(`^\s+(50|99)%\s+([0-9.]+\w+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func parseWrk(out string) (sample, error) {
	var s sample
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := wrkTotal.FindStringSubmatch(line); m != nil {
			s.requests, _ = strconv.ParseInt(m[1], 10, 64)
		}
		if m := wrkRPS.FindStringSubmatch(line); m != nil {
			s.rps, _ = strconv.ParseFloat(m[1], 64)
		}
		if m := wrkPct.FindStringSubmatch(line); m != nil {
			d, err := time.ParseDuration(m[2])
			if err != nil {
				return s, fmt.Errorf("wrk latency %q: %v", m[2], err)
			}
			if m[1] == "50" {
				s.p50 = d
			} else {
				s.p99 = d
			}
		}
		if m := wrkNon2xx.FindStringSubmatch(line); m != nil {
			s.non2xx, _ = strconv.ParseInt(m[1], 10, 64)
		}
		if m := wrkSock.FindStringSubmatch(line); m != nil {
			for _, v := range m[1:] {
				n, _ := strconv.ParseInt(v, 10, 64)
				s.errors += n
			}
			s.firstErr = strings.TrimSpace(line)
		}
	}
	if s.requests == 0 || s.rps == 0 || s.p50 == 0 {
		return s, fmt.Errorf("cannot parse wrk output:\n%s", out)
	}
	return s, nil
}

// pickRunner chooses wrk when asked or (auto) when installed.
func pickRunner(kind, dir string) (runner, error) {
	switch kind {
	case "go":
		return goRunner{}, nil
	case "wrk", "auto":
		bin, err := exec.LookPath("wrk")
		if err != nil {
			if kind == "wrk" {
				return nil, fmt.Errorf("wrk not found (apt-get install -y wrk)")
			}
			return goRunner{}, nil
		}
		abs, _ := filepath.Abs(bin)
		return wrkRunner{bin: abs, dir: dir}, nil
	}
	return nil, fmt.Errorf("unknown -loadgen %q (auto, go or wrk)", kind)
}
