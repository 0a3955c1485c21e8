package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/loadgen"
	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// target is one way to reach the mock.
type target struct {
	name  string // direct, plain or gateway
	addr  string
	proc  *proc  // the Caddy process, nil for direct
	admin string // Caddy's admin address (pprof), "" for direct
}

type harness struct {
	cfg      config
	dir      string
	caddyBin string
	root     string
	mock     *proc
	mockAddr string
	plain    *target // bare: bench/Caddyfile.plain
	gateway  *target // bare: bench/Caddyfile.gateway
	apiKey   string  // the benchmark user's key on the bare gateway
	// As shipped: Caddyfile.example and its plain counterpart (shipped.go),
	// with their own database and user.
	shipPlain, shipGateway *target
	shipKey                string
	adminKey               string
	secret                 string
}

func numCPU() int { return runtime.NumCPU() }

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// repoRoot finds the module root (the directory with go.mod) from the
// working directory up.
func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", errors.New("run from inside the repository (no go.mod found)")
		}
		d = p
	}
}

func hasGateway(caddyBin string) bool {
	out, err := exec.Command(caddyBin, "list-modules").Output()
	return err == nil && strings.Contains(string(out), "http.handlers.gatewayz\n") &&
		strings.Contains(string(out), "http.handlers.gatewayz_api")
}

func newHarness(ctx context.Context, c config, dir, caddyBin string) (*harness, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	h := &harness{cfg: c, dir: dir, caddyBin: caddyBin, root: root, adminKey: "bench-admin-" + randHex(16), secret: randHex(32)}
	ok := false
	defer func() {
		if !ok {
			h.close()
		}
	}()
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	h.mockAddr = "127.0.0.1:" + strconv.Itoa(port)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	h.mock, err = startProc("mock", filepath.Join(dir, "mock.log"), cleanEnv(nil), self, "-serve-mock", h.mockAddr)
	if err != nil {
		return nil, err
	}
	if err := waitTCP(h.mock, h.mockAddr, 10*time.Second); err != nil {
		return nil, err
	}
	if err := h.writeShippedConfigs(); err != nil {
		return nil, err
	}
	withGateway := !c.skipGW && hasGateway(caddyBin)
	if !c.skipGW && !withGateway {
		log.Printf("%s has no gatewayz modules: measuring direct and plain only", c.caddyBin)
	}
	for _, setup := range []string{setupBare, setupShipped} {
		plain, err := h.startCaddy(setup, "plain")
		if err != nil {
			return nil, err
		}
		var gw *target
		var key string
		if withGateway {
			if gw, err = h.startCaddy(setup, "gateway"); err != nil {
				return nil, err
			}
			if key, err = setupGateway("http://"+gw.addr, h.adminKey); err != nil {
				return nil, fmt.Errorf("%s gateway setup: %w\n%s", setup, err, gw.proc.tail(20))
			}
		}
		if setup == setupBare {
			h.plain, h.gateway, h.apiKey = plain, gw, key
		} else {
			h.shipPlain, h.shipGateway, h.shipKey = plain, gw, key
		}
	}
	// Every target must answer each load's request with 200, usage and
	// the answer asked for before anything is measured.
	for _, l := range loads {
		for _, t := range h.targetsFor(l) {
			b, err := probe("http://"+t.addr+apiPath, h.headersFor(l), l.body())
			if err != nil {
				return nil, fmt.Errorf("probe %s %s: %w", l.name, t.name, err)
			}
			if err := checkAnswer(l, b); err != nil {
				return nil, fmt.Errorf("probe %s %s: %w", l.name, t.name, err)
			}
		}
	}
	ok = true
	return h, nil
}

// cleanEnv is the environment for children: ours minus Go runtime tuning
// (every process runs with the runtime defaults), plus extra.
func cleanEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOMAXPROCS", "GOGC", "GOMEMLIMIT", "GODEBUG":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// checkAnswer tells whether b is a whole answer of the kind l asks for.
func checkAnswer(l load, b []byte) error {
	s := string(b)
	switch {
	case !l.stream && !strings.Contains(s, `"usage"`):
		return fmt.Errorf("no usage in %s", b)
	case l.stream && !strings.HasSuffix(s, "data: [DONE]\n\n"):
		return fmt.Errorf("stream without [DONE]: %s", b)
	case l.answer != mock.AnswerTiny && !strings.Contains(s, `"system_fingerprint"`):
		return fmt.Errorf("not the %s answer: %s", l.answer, b)
	}
	return nil
}

// writeShippedConfigs derives the as-shipped Caddyfiles from
// Caddyfile.example into the work directory.
func (h *harness) writeShippedConfigs() error {
	example, err := os.ReadFile(filepath.Join(h.root, "Caddyfile.example"))
	if err != nil {
		return err
	}
	gw, plain, err := shippedConfigs(string(example))
	if err != nil {
		return err
	}
	if err := os.WriteFile(h.configPath(setupShipped, "gateway"), []byte(gw), 0o644); err != nil {
		return err
	}
	return os.WriteFile(h.configPath(setupShipped, "plain"), []byte(plain), 0o644)
}

func (h *harness) configPath(setup, kind string) string {
	if setup == setupBare {
		return filepath.Join(h.root, "bench", "Caddyfile."+kind)
	}
	return filepath.Join(h.dir, "Caddyfile."+setup+"-"+kind)
}

// dbPath is the bbolt file of a setup's gateway.
func (h *harness) dbPath(setup string) string { return filepath.Join(h.dir, setup+".db") }

// startCaddy starts the plain or gateway Caddy of a setup.
func (h *harness) startCaddy(setup, kind string) (*target, error) {
	return h.startCaddyWith(setup+"-"+kind, kind, h.configPath(setup, kind), []string{"GATEWAYZ_DB=" + h.dbPath(setup)})
}

// startCaddyWith starts a Caddy named name (its log file) on config, with
// the benchmark's environment plus extra (which wins).
func (h *harness) startCaddyWith(name, kind, config string, extra []string) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	home := filepath.Join(h.dir, "home")
	env := cleanEnv([]string{
		"HOME=" + home,
		"XDG_DATA_HOME=" + filepath.Join(home, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, "config"),
		"BENCH_PORT=" + strconv.Itoa(port),
		"BENCH_ADMIN_PORT=" + strconv.Itoa(adminPort),
		"BENCH_UPSTREAM=" + h.mockAddr,
		"GATEWAYZ_LISTEN=:" + strconv.Itoa(port),
		"GATEWAYZ_UPSTREAM=http://" + h.mockAddr,
		"GATEWAYZ_DATABASE_URL=",
		"GATEWAYZ_API_KEY=upstream-" + randHex(8),
		"GATEWAYZ_ADMIN_KEY=" + h.adminKey,
		"GATEWAYZ_SECRET=" + h.secret,
		"GATEWAYZ_SIGNUP_CREDITS=1000",
	})
	p, err := startProc(name, filepath.Join(h.dir, "caddy-"+name+".log"), append(env, extra...),
		h.caddyBin, "run", "--config", config, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	t := &target{name: kind, addr: "127.0.0.1:" + strconv.Itoa(port), proc: p, admin: "localhost:" + strconv.Itoa(adminPort)}
	if err := waitTCP(p, t.addr, 30*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	if err := waitTCP(p, t.admin, 10*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return t, nil
}

// printHold prints what a by-hand measurement needs (-hold).
func (h *harness) printHold() {
	fmt.Printf("mock     %s pid %d\n", h.mockAddr, h.mock.pid())
	for _, setup := range []string{setupBare, setupShipped} {
		l := newLoad(setup, mock.AnswerShort, false, 1)
		for _, t := range h.targetsFor(l)[len(h.targetsFor(l))-2:] {
			fmt.Printf("%-7s %-8s %s pid %d admin %s\n", setup, t.name, t.addr, t.proc.pid(), t.admin)
		}
		fmt.Printf("%-7s headers  %v\n", setup, h.headersFor(l))
	}
	fmt.Printf("path     %s\nbody     %s\nstream   %s\nanswers  %s: tiny, short, long or tool\n", apiPath, chatBody, chatStreamBody, mock.HeaderAnswer)
	fmt.Println("Ctrl-C to stop")
}

// headersFor are the request headers of a load: the setup's benchmark key
// and, for a realistic answer, the header that asks the mock for it.
func (h *harness) headersFor(l load) map[string]string {
	key := h.apiKey
	if l.setup == setupShipped {
		key = h.shipKey
	}
	if key == "" {
		key = "gw_live_benchmark-key-unused-by-plain-and-direct"
	}
	hdr := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + key}
	if l.answer != mock.AnswerTiny {
		hdr[mock.HeaderAnswer] = string(l.answer)
	}
	return hdr
}

// targetsFor are the targets a load runs against: plain and gateway of
// its setup, and direct to the mock for the tiny answer.
func (h *harness) targetsFor(l load) []*target {
	var ts []*target
	plain, gw := h.plain, h.gateway
	if l.setup == setupShipped {
		plain, gw = h.shipPlain, h.shipGateway
	} else if l.answer == mock.AnswerTiny {
		ts = append(ts, &target{name: "direct", addr: h.mockAddr})
	}
	ts = append(ts, plain)
	if gw != nil {
		ts = append(ts, gw)
	}
	return ts
}

func (h *harness) stopCaddies() {
	for _, t := range []*target{h.plain, h.gateway, h.shipPlain, h.shipGateway} {
		if t != nil {
			t.proc.stop()
		}
	}
}

func (h *harness) close() {
	h.stopCaddies()
	if h.mock != nil {
		h.mock.stop()
	}
}

// measure runs every load against every target, interleaved: in each round
// and load the targets run back to back (roundOrder).
func (h *harness) measure(ctx context.Context, rn runner, rep *report) error {
	for r := 0; r < h.cfg.rounds; r++ {
		for _, l := range loads {
			if h.cfg.only != "" && !strings.Contains(l.name, h.cfg.only) {
				continue
			}
			for _, t := range roundOrder(h.targetsFor(l), r) {
				s, err := h.runOne(ctx, rn, t, l)
				if err != nil {
					return fmt.Errorf("%s %s: %w", l.name, t.name, err)
				}
				log.Printf("round %d/%d %-27s %-7s %8.0f req/s  p50 %-9s p99 %-9s cpu %5.0f µs/req  non-2xx %d errors %d",
					r+1, h.cfg.rounds, l.name, t.name, s.rps, fmtDur(s.p50), fmtDur(s.p99), s.cpuPerReq, s.non2xx, s.errors)
				if s.non2xx > 0 || s.errors > 0 {
					log.Printf("  warning: %s", s.firstErr)
				}
				rep.add(l.name, t.name, s)
			}
		}
	}
	return nil
}

// roundOrder is the order of the targets in round r: direct first, then
// plain and the gateway back to back, plain first in even rounds and the
// gateway first in odd ones. The pair compared runs under the same
// conditions, and each of the two follows the direct case (whose 5x
// request rate leaves the mock and the machine in a different state) in
// half of the rounds: with an even number of rounds neither is favoured.
func roundOrder(ts []*target, r int) []*target {
	out := slices.Clone(ts)
	if n := len(out); r%2 == 1 && n >= 2 && out[n-2].name == "plain" && out[n-1].name == "gateway" {
		out[n-2], out[n-1] = out[n-1], out[n-2]
	}
	return out
}

// measured is one sample plus the process figures around it.
type measured struct {
	sample
	cpuPerReq  float64 // µs of Caddy CPU per request (NaN for direct)
	mockPerReq float64 // µs of mock CPU per request
	peakRSS    int64   // VmHWM of Caddy during the case
}

func (h *harness) runOne(ctx context.Context, rn runner, t *target, l load) (measured, error) {
	var m measured
	if t.proc != nil {
		resetPeakRSS(t.proc.pid())
	}
	type cpus struct{ proxy, mock time.Duration }
	read := func() cpus {
		var c cpus
		if t.proc != nil {
			c.proxy, _ = cpuTime(t.proc.pid())
		}
		c.mock, _ = cpuTime(h.mock.pid())
		return c
	}
	c0 := make(chan cpus, 1)
	timer := time.AfterFunc(h.cfg.warmup, func() { c0 <- read() })
	s, err := rn.run(ctx, t.addr, h.headersFor(l), l, h.cfg.warmup, h.cfg.duration)
	c1 := read()
	if t.proc != nil {
		t.proc.trimLog()
	}
	if err != nil {
		timer.Stop()
		return m, err
	}
	start := <-c0
	m.sample = s
	if s.requests > 0 {
		m.cpuPerReq = float64(c1.proxy-start.proxy) / float64(time.Microsecond) / float64(s.requests)
		m.mockPerReq = float64(c1.mock-start.mock) / float64(time.Microsecond) / float64(s.requests)
	}
	if t.proc != nil {
		_, m.peakRSS, _ = memStatus(t.proc.pid())
	}
	return m, nil
}

// profiled is a CPU profile of one Caddy under one load.
type profiled struct {
	load, target string
	requests     int64
	seconds      float64            // profiled time
	cum          map[string]float64 // function -> cumulative CPU seconds
	total        float64            // CPU seconds sampled
	top          string             // pprof -top (flat) text
}

// profileTargets takes CPU profiles of plain and gateway under the loads
// selected by -profile-loads (JSON and SSE at 32 connections by default;
// extra runs, not part of the table), so the
// report can say per request where the gateway's extra CPU goes.
func (h *harness) profileTargets(ctx context.Context, rn runner) ([]profiled, error) {
	secs := max(5, int(h.cfg.duration/time.Second))
	var out []profiled
	for _, l := range loads {
		if !matchesAny(l.name, h.cfg.profLoads) {
			continue
		}
		for _, t := range h.targetsFor(l) {
			if t.proc == nil {
				continue
			}
			file := filepath.Join(h.dir, t.name+"-"+strings.ReplaceAll(strings.ToLower(l.name), " ", "-")+".pprof")
			hdr := h.headersFor(l)
			// The load starts first and outlasts the profile by a second.
			type res struct {
				s   sample
				err error
			}
			done := make(chan res, 1)
			go func() {
				s, err := rn.run(ctx, t.addr, hdr, l, 0, time.Duration(secs+2)*time.Second)
				done <- res{s, err}
			}()
			time.Sleep(time.Second)
			// Where requests wait (off-CPU): a goroutine dump mid-run.
			dump := time.AfterFunc(time.Duration(secs)*time.Second/2, func() {
				_ = fetch(ctx, "http://"+t.admin+"/debug/pprof/goroutine?debug=1", strings.TrimSuffix(file, ".pprof")+"-goroutines.txt")
			})
			perr := fetch(ctx, "http://"+t.admin+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), file)
			dump.Stop()
			r := <-done
			t.proc.trimLog()
			if r.err != nil {
				return out, r.err
			}
			if perr != nil {
				return out, perr
			}
			top, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=30", h.caddyBin, file).CombinedOutput()
			if err != nil {
				return out, fmt.Errorf("pprof: %v: %s", err, top)
			}
			cum, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=100000", h.caddyBin, file).CombinedOutput()
			if err != nil {
				return out, fmt.Errorf("pprof: %v: %s", err, cum)
			}
			_ = os.WriteFile(file+".top.txt", top, 0o644)
			_ = os.WriteFile(file+".cum.txt", cum, 0o644)
			p := profiled{load: l.name, target: t.name, seconds: float64(secs), top: string(top)}
			p.total, p.cum = parsePprofCum(string(cum))
			// Requests during the profile: the run's rate over the profiled seconds.
			p.requests = int64(r.s.rps * float64(secs))
			out = append(out, p)
			log.Printf("profile of %s under %s: %s", t.name, l.name, file)
		}
	}
	return out, nil
}

func fetch(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// streamResult is what holding many slow streams through one Caddy cost.
type streamResult struct {
	target                 string
	streams, open, failed  int64
	firstErr               string
	idleRSS, rss, peakRSS  int64
	idleGoroutines, gorout int
	openTime               time.Duration
	// Go heap and goroutine stacks in use, idle and with the streams open
	idleHeap, idleStack, heap, stack int64
}

// maxStreamRSS is the RSS at which the slow-stream case gives up.
const maxStreamRSS = 6 << 30

// slowStreams restarts each Caddy fresh, holds cfg.streams slow SSE streams
// through it (the mock sends one chunk per second), and reads RSS and
// goroutines while they are open.
func (h *harness) slowStreams(ctx context.Context, rep *report) error {
	h.stopCaddies()
	kinds := []string{"plain"}
	if h.gateway != nil {
		kinds = append(kinds, "gateway")
	}
	tiny := newLoad(setupBare, mock.AnswerTiny, true, 1)
	hdr := h.headersFor(tiny)
	hdr["X-Mock-Chunks"] = "100000"
	hdr["X-Mock-Chunk-Delay"] = "1s"
	for _, kind := range kinds {
		t, err := h.startCaddy(setupBare, kind)
		if err != nil {
			return err
		}
		if kind == "plain" {
			h.plain = t
		} else {
			h.gateway = t
		}
		res := streamResult{target: kind, streams: int64(h.cfg.streams)}
		// One request first, as from a user who was already active: the
		// gateway loads per-user state on first use, and 5,000 streams
		// opening at once on a cold process measure that instead.
		if _, err := probe("http://"+t.addr+apiPath, h.headersFor(tiny), jsonBody); err != nil {
			t.proc.stop()
			return fmt.Errorf("warm-up request through %s: %w", kind, err)
		}
		time.Sleep(time.Second)
		res.idleRSS, _, _ = memStatus(t.proc.pid())
		res.idleGoroutines, _ = goroutines(t.admin)
		res.idleHeap, res.idleStack, _ = goMem(t.admin)
		resetPeakRSS(t.proc.pid())
		hctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		// The machine is shared: a Caddy that balloons is stopped rather
		// than allowed to push everything else into swap or the OOM killer.
		watchdog := make(chan struct{})
		var killed atomic.Bool
		go func() {
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-watchdog:
					return
				case <-tick.C:
					if rss, _, err := memStatus(t.proc.pid()); err == nil && rss > maxStreamRSS {
						killed.Store(true)
						_ = syscall.Kill(t.proc.pid(), syscall.SIGKILL)
						cancel()
						return
					}
				}
			}
		}()
		began := time.Now()
		hold, err := loadgen.Hold(hctx, t.addr, loadgen.BuildRequest("POST", t.addr, apiPath, hdr, []byte(streamBody)), h.cfg.streams, 64)
		res.openTime = time.Since(began)
		if err != nil {
			close(watchdog)
			cancel()
			if hold != nil {
				hold.Close()
			}
			if killed.Load() {
				return fmt.Errorf("%s exceeded %s RSS with %d of %d streams open and was killed", kind, mib(maxStreamRSS), hold.Open(), h.cfg.streams)
			}
			return err
		}
		time.Sleep(2 * time.Second) // a couple of chunks through every stream
		res.open = hold.Open()
		var ferr error
		res.failed, ferr = hold.Failed()
		if ferr != nil {
			res.firstErr = ferr.Error()
		}
		res.rss, res.peakRSS, _ = memStatus(t.proc.pid())
		res.gorout, err = goroutines(t.admin)
		if err != nil {
			log.Printf("goroutines of %s: %v", kind, err)
		}
		if res.heap, res.stack, err = goMem(t.admin); err != nil {
			log.Printf("Go memory of %s: %v", kind, err)
		}
		if h.cfg.keep {
			// Where the memory and the CPU go while the streams are open.
			base := filepath.Join(h.dir, kind+"-streams")
			_ = fetch(ctx, "http://"+t.admin+"/debug/pprof/heap", base+"-heap.pprof")
			_ = fetch(ctx, "http://"+t.admin+"/debug/pprof/goroutine?debug=1", base+"-goroutines.txt")
			_ = fetch(ctx, "http://"+t.admin+"/debug/pprof/profile?seconds=3", base+"-cpu.pprof")
		}
		close(watchdog)
		hold.Close()
		cancel()
		log.Printf("%d slow streams through %s: open %d failed %d, RSS %s (idle %s, peak %s), goroutines %d (idle %d), opened in %s",
			res.streams, kind, res.open, res.failed, mib(res.rss), mib(res.idleRSS), mib(res.peakRSS), res.gorout, res.idleGoroutines, res.openTime.Round(time.Millisecond))
		if res.firstErr != "" {
			log.Printf("  first stream error: %s", res.firstErr)
		}
		rep.streams = append(rep.streams, res)
		t.proc.stop()
	}
	return nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	}
}

// serve runs an HTTP server for the mock until killed.
func serve(addr string, hd http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: hd, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	return srv.Serve(ln)
}

// matchesAny tells whether name contains one of the comma-separated
// patterns.
func matchesAny(name, patterns string) bool {
	for _, p := range strings.Split(patterns, ",") {
		if p = strings.TrimSpace(p); p != "" && strings.Contains(name, p) {
			return true
		}
	}
	return false
}
