// Command bench is the load benchmark of caddy-gatewayz (make bench).
//
// It starts the mock upstream (bench/mock) and two pairs of Caddys from
// bin/caddy: bare (bench/Caddyfile.plain and bench/Caddyfile.gateway, no
// access log) and as shipped (Caddyfile.example itself against the same
// site with plain reverse_proxy, both with its access log; shipped.go),
// registers a benchmark user on each gateway through the management API,
// and then measures, interleaved over several rounds, plain reverse_proxy
// against the gateway with the mock's answers (tiny, as the benchmark
// always had, also direct to the mock; short, long and a tool call as
// OpenAI sends them) as JSON and SSE at 32 connections, and at one
// connection as shipped. It measures the bytes the gateway's database files
// grow per metered request and the RSS split (anonymous vs file-backed) of
// both Caddys under a sustained high-concurrency load. It records requests/s, p50/p99,
// CPU time per request of the Caddy process (utime+stime from /proc), peak
// RSS (VmHWM, reset per case), holds thousands of slow streams open through
// each Caddy to compare RSS and goroutines, optionally runs the Go
// microbenchmarks of caddymodule and storage, prints a table and writes it
// to docs/benchmarks.md.
//
//	go run ./bench/cmd/bench           # full run, a few minutes
//	go run ./bench/cmd/bench -quick    # smoke run, about a minute
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

type config struct {
	quick      bool
	rounds     int
	duration   time.Duration
	warmup     time.Duration
	streams    int
	caddyBin   string
	loadgen    string
	docs       string
	micro      bool
	microBench string
	profile    bool
	keep       bool
	skipGW     bool
	noLoads    bool
	only       string
	profLoads  string
	hold       bool
	cluster    bool
	postgres   bool

	diskDuration    time.Duration
	sustainConns    int
	sustainDuration time.Duration
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("bench: ")
	mockListen := flag.String("serve-mock", "", "internal: serve the mock upstream on this address")
	var c config
	flag.BoolVar(&c.quick, "quick", false, "smoke run: 1 round of 1s per case, 500 streams, no microbenchmarks, docs not written")
	flag.IntVar(&c.rounds, "rounds", 4, "interleaved A/B rounds, plain and gateway alternating which runs first (use an even number; many short rounds pair better than few long ones on a noisy machine)")
	flag.DurationVar(&c.duration, "duration", 2*time.Second, "measured time per case and round (whole seconds with wrk)")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured warm-up before each case")
	flag.IntVar(&c.streams, "streams", 5000, "concurrent slow streams to hold (0: skip)")
	flag.StringVar(&c.caddyBin, "caddy", "bin/caddy", "Caddy binary with the gatewayz modules (make build)")
	flag.StringVar(&c.loadgen, "loadgen", "auto", "load generator: auto (wrk if installed), wrk or go")
	flag.StringVar(&c.docs, "docs", "docs/benchmarks.md", "markdown report to write (empty: none)")
	flag.BoolVar(&c.micro, "micro", true, "also run go test -bench in ./caddymodule and ./storage")
	flag.StringVar(&c.microBench, "micro-bench", ".", "-bench pattern for the microbenchmarks")
	flag.BoolVar(&c.profile, "profile", true, "take a CPU profile of the gateway under JSON load (extra, unmeasured run)")
	flag.BoolVar(&c.keep, "keep", false, "keep the temporary directory (logs, Caddyfiles, profiles)")
	flag.BoolVar(&c.skipGW, "no-gateway", false, "measure only direct and plain")
	flag.StringVar(&c.profLoads, "profile-loads", "shipped short JSON 32 conns,shipped short SSE 32 conns", "profile the loads whose name contains one of these (comma-separated)")
	flag.StringVar(&c.only, "only", "", "run only the loads whose name contains this (e.g. shipped, \"long SSE\", \"32 conns\")")
	flag.BoolVar(&c.noLoads, "no-loads", false, "skip the throughput and latency cases, the bytes on disk and the sustained load (streams and microbenchmarks only)")
	flag.DurationVar(&c.diskDuration, "disk-duration", 10*time.Second, "metered requests (as shipped, short JSON, 32 connections) for the bytes on disk per request (0: skip)")
	flag.IntVar(&c.sustainConns, "sustain-conns", 1024, "connections of the sustained load for the RSS split")
	flag.DurationVar(&c.sustainDuration, "sustain-duration", 20*time.Second, "length of the sustained load through each Caddy (0: skip)")
	flag.BoolVar(&c.cluster, "cluster", postgresInstalled(), "also measure the gateway on PostgreSQL: one node vs three nodes sharing the database, and the revocation latency (starts a private PostgreSQL server; adds a minute or so; on by default where PostgreSQL is installed)")
	flag.BoolVar(&c.postgres, "postgres", false, "also measure one gateway node on a private PostgreSQL server (fsync on) against plain Caddy, JSON and SSE, one hot user and 1,000 users (adds about two minutes with the default rounds)")
	flag.BoolVar(&c.hold, "hold", false, "set up the mock and both Caddys, print their addresses, PIDs and the API key, and wait for Ctrl-C (for profiling by hand)")
	flag.Parse()

	if *mockListen != "" {
		serveMock(*mockListen)
		return
	}
	if c.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["rounds"] {
			c.rounds = 1
		}
		if !set["duration"] {
			c.duration = time.Second
		}
		if !set["warmup"] {
			c.warmup = 300 * time.Millisecond
		}
		if !set["streams"] {
			c.streams = 500
		}
		if !set["micro"] {
			c.micro = false
		}
		if !set["profile"] {
			c.profile = false
		}
		if !set["docs"] {
			c.docs = ""
		}
		if !set["disk-duration"] {
			c.diskDuration = 3 * time.Second
		}
		if !set["sustain-conns"] {
			c.sustainConns = 256
		}
		if !set["sustain-duration"] {
			c.sustainDuration = 3 * time.Second
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		log.Fatal(err)
	}
}

// serveMock runs the mock upstream (the orchestrator re-executes itself
// with -serve-mock, so no second build is needed).
func serveMock(addr string) {
	h := mock.NewHandler(mock.Options{StreamChunks: 16})
	if err := serve(addr, h); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, c config) error {
	start := time.Now()
	caddyBin, err := filepath.Abs(c.caddyBin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(caddyBin); err != nil {
		return fmt.Errorf("%s not found: run `make build` first", c.caddyBin)
	}
	nofile, err := raiseNoFile()
	if err != nil {
		log.Printf("cannot raise the open-file limit: %v", err)
	}
	if c.streams > 0 && nofile < uint64(3*c.streams+1000) {
		n := max(0, (int(nofile)-1000)/3)
		log.Printf("open-file limit %d is too low for %d streams; holding %d", nofile, c.streams, n)
		c.streams = n
	}
	dir, err := os.MkdirTemp("", "gatewayz-bench-")
	if err != nil {
		return err
	}
	if c.keep {
		log.Printf("work dir %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	rn, err := pickRunner(c.loadgen, dir)
	if err != nil {
		return err
	}
	m := machineInfo(caddyBin)
	m.loadgen = rn.name()
	log.Printf("%s; %d cores; %s; load average %s", m.cpu, m.nproc, m.goVersion, m.loadStart)

	h, err := newHarness(ctx, c, dir, caddyBin)
	if err != nil {
		return err
	}
	defer h.close()

	if c.hold {
		h.printHold()
		<-ctx.Done()
		return nil
	}
	rep := &report{cfg: c, machine: m}
	if h.gateway != nil {
		mc := checkMetering("http://"+h.gateway.addr, h.headersFor(newLoad(setupBare, mock.AnswerTiny, false, 32)), 20)
		rep.meter = &mc
		log.Printf("metering check: %+v", mc)
	}
	if !c.noLoads {
		if err := h.measure(ctx, rn, rep); err != nil {
			return err
		}
	}
	if !c.noLoads {
		if rep.disk, err = h.diskPerRequest(ctx, rn); err != nil {
			return fmt.Errorf("bytes on disk: %w", err)
		}
		if d := rep.disk; d != nil {
			size, alloc := d.perRequest()
			log.Printf("database files after %d metered requests: %+.0f B/request apparent, %+.0f B/request allocated", d.requests, size, alloc)
		}
		if c.diskDuration > 0 {
			if rep.retention, err = retentionRun(ctx, defaultRetentionPlan); err != nil {
				return fmt.Errorf("long run with a short retention: %w", err)
			}
			inUse, file := rep.retention.steadyGrowth()
			log.Printf("long run with a short retention: %.0f B in use per record kept; steady-state growth %d B in use, %d B file",
				rep.retention.perKeptRequest(), inUse, file)
		}
		if rep.sustained, err = h.sustained(ctx, rn); err != nil {
			return err
		}
		for _, s := range rep.sustained {
			log.Printf("sustained %d conns through %s: %.0f req/s, peak RSS %s (anon %s, file %s)", s.conns, s.target, s.rps,
				mib(s.peak.total()), mib(s.peak.anon), mib(s.peak.file))
		}
	}
	if c.profile {
		ps, err := h.profileTargets(ctx, rn)
		if err != nil {
			log.Printf("profile: %v", err)
		}
		rep.profiles = ps
	}
	// Before the slow streams, which restart each Caddy and stop it: the
	// PostgreSQL comparison needs the running plain Caddy.
	if c.postgres && h.gateway != nil {
		if rep.postgres, err = h.postgres(ctx, rn); err != nil {
			return fmt.Errorf("PostgreSQL: %w", err)
		}
	}
	if c.streams > 0 {
		if err := h.slowStreams(ctx, rep); err != nil {
			return fmt.Errorf("slow streams: %w", err)
		}
	}
	if c.cluster {
		if rep.cluster, err = h.cluster(ctx, rn); err != nil {
			return fmt.Errorf("several nodes: %w", err)
		}
	}
	h.close()
	if c.micro {
		rep.micro, rep.microErr = runMicro(ctx, c.microBench)
	}
	rep.machine.loadEnd = loadAvg()
	rep.elapsed = time.Since(start).Round(time.Second)
	out := rep.text()
	fmt.Println(out)
	if c.docs != "" {
		if err := rep.writeDocs(c.docs); err != nil {
			return err
		}
		log.Printf("wrote %s", c.docs)
	}
	return nil
}

type machine struct {
	nproc              int
	cpu                string
	goVersion          string
	caddyVersion       string
	kernel             string
	date               string
	loadStart, loadEnd string
	loadgen            string
}

func machineInfo(caddyBin string) machine {
	m := machine{nproc: numCPU(), date: time.Now().UTC().Format("2006-01-02 15:04 MST"), loadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		m.goVersion = strings.TrimSpace(strings.TrimPrefix(string(out), "go version "))
	}
	if out, err := exec.Command(caddyBin, "version").Output(); err == nil {
		m.caddyVersion = strings.Fields(string(out) + " ?")[0]
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
