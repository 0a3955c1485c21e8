package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

const wrkOut = `Running 5s test @ http://127.0.0.1:8081/v1/chat/completions
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.22ms    1.01ms  20.00ms   90.00%
    Req/Sec     7.61k   300.00    8.00k    70.00%
  Latency Distribution
     50%    4.10ms
     75%    4.50ms
     90%    5.00ms
     99%  812.00us
  37876 requests in 5.00s, 20.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:   7575.20
Transfer/sec:      4.00MB
`

func TestParseWrk(t *testing.T) {
	s, err := parseWrk(wrkOut)
	if err != nil {
		t.Fatal(err)
	}
	if s.requests != 37876 || s.rps != 7575.20 || s.p50 != 4100*time.Microsecond || s.p99 != 812*time.Microsecond ||
		s.non2xx != 5 || s.errors != 3 {
		t.Fatalf("%+v", s)
	}
	if _, err := parseWrk("wrk: connection refused"); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestParseBench(t *testing.T) {
	out := `goos: linux
pkg: github.com/gatewayz/caddy-gatewayz/storage
BenchmarkSettleDurable-2   	   50000	     21000 ns/op	   47619 settlements/s	     512 B/op	       9 allocs/op
BenchmarkReserve   	 1000000	      1500 ns/op
PASS
pkg: github.com/gatewayz/caddy-gatewayz/caddymodule
BenchmarkAdmission-2   	 1000000	      1200 ns/op	     200 B/op	       3 allocs/op
ok`
	res := parseBench(out)
	if len(res) != 3 {
		t.Fatalf("%d results: %+v", len(res), res)
	}
	if r := res[0]; r.pkg != "storage" || r.name != "BenchmarkSettleDurable" || r.nsPerOp != 21000 || r.allocs != 9 ||
		len(r.extra) != 1 || settlementsPerSec(&r) != 47619 {
		t.Fatalf("%+v", r)
	}
	if r := res[1]; r.hasMem || settlementsPerSec(&r) != 1e9/1500 {
		t.Fatalf("%+v", r)
	}
	rep := &report{micro: res}
	cs := rep.checks()
	var adm, settle check
	for _, c := range cs {
		if strings.HasPrefix(c.what, "admission") {
			adm = c
		}
		if strings.HasPrefix(c.what, "durable") {
			settle = c
		}
	}
	if adm.pass != "yes" || !strings.Contains(adm.what, "caddymodule.BenchmarkAdmission") || settle.pass != "yes" {
		t.Fatalf("checks %+v", cs)
	}
}

func TestChecksAndMedian(t *testing.T) {
	if median([]float64{3, 1, 2}) != 2 || median([]float64{4, 1, 2, 3}) != 2.5 {
		t.Fatal("median")
	}
	rep := &report{}
	for _, r := range []struct{ plain, gw float64 }{{1000, 900}, {1000, 800}, {1000, 950}} {
		rep.add("shipped long JSON 32 conns", "plain", measured{sample: sample{rps: r.plain}})
		rep.add("shipped long JSON 32 conns", "gateway", measured{sample: sample{rps: r.gw}})
	}
	rep.add("shipped short JSON 1 conn", "plain", measured{sample: sample{rps: 1, p50: 300 * time.Microsecond}})
	rep.add("shipped short JSON 1 conn", "gateway", measured{sample: sample{rps: 1, p50: 450 * time.Microsecond}})
	rep.disk = &diskResult{requests: 1000, before: fileUse{size: 1 << 20, alloc: 1000}, after: fileUse{size: 17 << 20, alloc: 121000}}
	rep.sustained = []sustainedResult{{target: "plain", conns: 1024, peak: rssSplit{anon: 100, file: 20}}, {target: "gateway", conns: 1024, peak: rssSplit{anon: 150, file: 60}}}
	byName := map[string]check{}
	for _, c := range rep.checks() {
		byName[c.what] = c
	}
	tests := []struct{ what, measured, pass string }{
		{"shipped long JSON 32 conns: gateway/plain req/s", "0.90", "yes"},
		{"shipped long SSE 32 conns: gateway/plain req/s", "n/a", "n/a"},
		{"shipped short JSON 1 conn: p50 added by the gateway over plain", "+150 µs", "NO"},
		{"database growth per metered request (allocated, 1000 requests)", "120 B", "yes"},
		{"peak RSS at 1024 connections: gateway/plain", "1.75", "NO"},
	}
	for _, tc := range tests {
		c, ok := byName[tc.what]
		if !ok || c.measured != tc.measured || c.pass != tc.pass {
			t.Errorf("%s: %+v (found %v)", tc.what, c, ok)
		}
	}
	// Every realistic answer has both targets in both comparisons.
	for _, setup := range []string{setupBare, setupShipped} {
		for _, a := range []string{"short", "long", "tool"} {
			for _, kind := range []string{"JSON", "SSE"} {
				if _, ok := byName[setup+" "+a+" "+kind+" 32 conns: gateway/plain req/s"]; !ok {
					t.Errorf("no check for %s %s %s", setup, a, kind)
				}
			}
		}
	}
	md := rep.markdown()
	for _, want := range []string{"| 1000 | 1.0 MiB | 17.0 MiB | 16777 B |", "Gateway/plain peak RSS: 1.75."} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestWriteDocsKeepsAnalysis(t *testing.T) {
	path := filepath.Join(t.TempDir(), "docs", "benchmarks.md")
	rep := &report{cfg: config{rounds: 1, duration: time.Second}}
	if err := rep.writeDocs(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	doc := strings.Replace(string(b), beginMarker, "Hand-written analysis.\n\n"+beginMarker, 1) + "\nMore analysis.\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	rep.cfg.rounds = 7
	if err := rep.writeDocs(path); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	s := string(b)
	if !strings.Contains(s, "Hand-written analysis.") || !strings.Contains(s, "More analysis.") ||
		!strings.Contains(s, "7 rounds") || strings.Contains(s, "1 rounds") || strings.Count(s, beginMarker) != 1 {
		t.Fatalf("doc:\n%s", s)
	}
}

func TestProcReaders(t *testing.T) {
	pid := os.Getpid()
	if _, err := cpuTime(pid); err != nil {
		t.Fatal(err)
	}
	rss, hwm, err := memStatus(pid)
	if err != nil || rss <= 0 || hwm < rss {
		t.Fatalf("rss %d hwm %d err %v", rss, hwm, err)
	}
}

func TestParsePprofCum(t *testing.T) {
	text := `File: caddy
Duration: 5s, Total samples = 3.10s (61.98%)
      flat  flat%   sum%        cum   cum%
     0.03s  0.97%  0.97%      1.94s 62.58%  net/http.(*conn).serve
         0     0%  1.29%      1.19s 38.39%  github.com/gatewayz/caddy-gatewayz/caddymodule.(*Gateway).ServeHTTP
         0     0% 20.00%      0.52s 16.77%  github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy.(*Handler).ServeHTTP
     0.01s  0.3% 20.30%       90ms  2.90%  runtime.gcBgMarkWorker
`
	total, cum := parsePprofCum(text)
	if total != 3.10 || cum["net/http.(*conn).serve"] != 1.94 || cum["runtime.gcBgMarkWorker"] != 0.09 {
		t.Fatalf("total %v cum %v", total, cum)
	}
	p := profiled{load: "shipped short JSON 32 conns", target: "gateway", requests: 1000, total: total, cum: cum}
	md := breakdownMarkdown([]profiled{p})
	// (1.19 - 0.52) s over 1000 requests = 670 µs per request.
	if !strings.Contains(md, "| · gateway handler, outside reverse_proxy | n/a | 670 | n/a |") {
		t.Fatalf("breakdown:\n%s", md)
	}
}

func TestParseGoMem(t *testing.T) {
	in := "heap profile: 1: 2 [3: 4] @ heap/1048576\n\n# runtime.MemStats\n# Alloc = 100\n# HeapInuse = 8192000\n# Stack = 655360 / 655360\n# MSpan = 1\n"
	heap, stack, err := parseGoMem(strings.NewReader(in))
	if err != nil || heap != 8192000 || stack != 655360 {
		t.Fatalf("parseGoMem = %d, %d, %v", heap, stack, err)
	}
	if _, _, err := parseGoMem(strings.NewReader("goroutine profile: total 3\n")); err == nil {
		t.Fatal("no error without MemStats lines")
	}
}

func TestRoundOrderBalancesThePair(t *testing.T) {
	ts := []*target{{name: "direct"}, {name: "plain"}, {name: "gateway"}}
	afterDirect := map[string]int{}
	for r := range 6 {
		order := roundOrder(ts, r)
		if len(order) != 3 || order[0].name != "direct" {
			t.Fatalf("round %d: %v", r, order)
		}
		afterDirect[order[1].name]++
	}
	if afterDirect["plain"] != 3 || afterDirect["gateway"] != 3 {
		t.Fatalf("after direct over 6 rounds: %v", afterDirect)
	}
	if ts[1].name != "plain" {
		t.Fatal("roundOrder changed its argument")
	}
	if got := roundOrder(ts[:2], 1); got[1].name != "plain" {
		t.Fatalf("without a gateway: %v", got)
	}
	pair := ts[1:]
	if got := roundOrder(pair, 1); got[0].name != "gateway" || got[1].name != "plain" {
		t.Fatalf("the pair in an odd round: %v", got)
	}
	if got := roundOrder(pair, 2); got[0].name != "plain" {
		t.Fatalf("the pair in an even round: %v", got)
	}
}

func TestParseRSSSplit(t *testing.T) {
	in := "Name:\tcaddy\nVmHWM:\t  90000 kB\nVmRSS:\t  81920 kB\nRssAnon:\t   61440 kB\nRssFile:\t   20000 kB\nRssShmem:\t     480 kB\n"
	r, err := parseRSSSplit(strings.NewReader(in))
	if err != nil || r.anon != 61440<<10 || r.file != 20000<<10 || r.shmem != 480<<10 || r.total() != 81920<<10 {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := parseRSSSplit(strings.NewReader("VmRSS:\t1 kB\n")); err == nil {
		t.Fatal("no error without the split")
	}
	if _, err := readRSSSplit(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	var p peakSplit
	for _, s := range []rssSplit{{anon: 5, file: 5}, {anon: 3, file: 20}, {anon: 9, file: 1}} {
		p.add(s)
	}
	if p.at != (rssSplit{anon: 3, file: 20}) {
		t.Fatalf("peak %+v", p.at)
	}
}

func TestDiskPerRequest(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "shipped.db")
	if _, err := dbFiles(db); err == nil {
		t.Fatal("no error without files")
	}
	for name, size := range map[string]int{"shipped.db": 8192, "shipped.db.wal": 4096, "other.db": 1 << 20} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	u, err := dbFiles(db)
	if err != nil || u.size != 12288 || u.alloc < 12288 {
		t.Fatalf("%+v %v", u, err)
	}
	d := diskResult{requests: 100, before: fileUse{1000, 2000}, after: fileUse{6000, 52000}}
	if size, alloc := d.perRequest(); size != 50 || alloc != 500 {
		t.Fatalf("per request %v %v", size, alloc)
	}
	if size, alloc := (diskResult{}).perRequest(); size != 0 || alloc != 0 {
		t.Fatal("no requests")
	}
}

func TestLoadsAndHeaders(t *testing.T) {
	names := map[string]bool{}
	for _, l := range loads {
		if names[l.name] {
			t.Fatalf("two loads named %q", l.name)
		}
		names[l.name] = true
		if l.stream != strings.Contains(l.body(), `"stream":true`) {
			t.Errorf("%s: body %s", l.name, l.body())
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(l.body()), &v); err != nil {
			t.Errorf("%s: %v", l.name, err)
		}
	}
	for _, want := range []string{"bare tiny JSON 32 conns", "bare tool SSE 32 conns", "shipped long JSON 32 conns", "shipped short SSE 1 conn"} {
		if !names[want] {
			t.Errorf("no load %q in %v", want, names)
		}
	}
	h := &harness{apiKey: "bare-key", shipKey: "ship-key", mockAddr: "m", plain: &target{name: "plain"}, gateway: &target{name: "gateway"},
		shipPlain: &target{name: "plain", addr: "sp"}, shipGateway: &target{name: "gateway", addr: "sg"}}
	tiny := newLoad(setupBare, mock.AnswerTiny, false, 32)
	if hd := h.headersFor(tiny); hd["Authorization"] != "Bearer bare-key" || hd[mock.HeaderAnswer] != "" {
		t.Fatalf("tiny headers %v", hd)
	}
	long := newLoad(setupShipped, mock.AnswerLong, true, 32)
	if hd := h.headersFor(long); hd["Authorization"] != "Bearer ship-key" || hd[mock.HeaderAnswer] != "long" {
		t.Fatalf("shipped long headers %v", hd)
	}
	if ts := h.targetsFor(tiny); len(ts) != 3 || ts[0].name != "direct" || ts[0].addr != "m" {
		t.Fatalf("tiny targets %v", ts)
	}
	if ts := h.targetsFor(long); len(ts) != 2 || ts[0].addr != "sp" || ts[1].addr != "sg" {
		t.Fatalf("shipped targets %v", ts)
	}
	if !matchesAny("shipped short SSE 32 conns", "x, shipped short SSE 32") || matchesAny("bare tiny JSON 32 conns", "shipped,") {
		t.Fatal("matchesAny")
	}
}

func TestCheckAnswer(t *testing.T) {
	tests := []struct {
		l    load
		body string
		ok   bool
	}{
		{newLoad(setupBare, mock.AnswerTiny, false, 1), `{"usage":{}}`, true},
		{newLoad(setupBare, mock.AnswerTiny, false, 1), `{}`, false},
		{newLoad(setupBare, mock.AnswerTiny, true, 1), "data: {}\n\ndata: [DONE]\n\n", true},
		{newLoad(setupBare, mock.AnswerTiny, true, 1), "data: {}\n\n", false},
		{newLoad(setupShipped, mock.AnswerShort, false, 1), `{"usage":{}}`, false},
		{newLoad(setupShipped, mock.AnswerShort, false, 1), `{"usage":{},"system_fingerprint":"fp"}`, true},
	}
	for i, tc := range tests {
		if err := checkAnswer(tc.l, []byte(tc.body)); (err == nil) != tc.ok {
			t.Errorf("%d %s: %v", i, tc.l.name, err)
		}
	}
}

// A short run with a short retention: the records kept take at most the
// target per request, the file stops growing, and the report says so.
func TestRetentionRun(t *testing.T) {
	res, err := runRetention(t.Context(), t.TempDir(), retentionPlan{days: 5, perDay: 3000, detailDays: 2, users: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.days) != 5 || res.baseline <= 0 {
		t.Fatalf("run: %+v", res)
	}
	if v := res.perKeptRequest(); v <= 0 || v > retentionMaxFill {
		t.Errorf("%.0f B per record kept", v)
	}
	if _, file := res.steadyGrowth(); file != 0 {
		t.Errorf("file grew by %d B once the retention was full", file)
	}
	rep := &report{retention: res}
	byName := map[string]check{}
	for _, c := range rep.checks() {
		byName[c.what] = c
	}
	if c := byName["database file growth once the retention is full"]; c.pass != "yes" {
		t.Errorf("growth check %+v", c)
	}
	if c := byName["bytes in use per usage record kept (2 days of records)"]; c.pass != "yes" {
		t.Errorf("bytes check %+v", c)
	}
	if md := res.section(); !strings.Contains(md, "| 5 |") || !strings.Contains(md, "B in use per usage record kept") {
		t.Errorf("section:\n%s", md)
	}
}

// The PostgreSQL run's checks: gateway ÷ plain per load (medians) against
// 0.75, and the durable settlements of the PostgreSQL microbenchmark (not
// bbolt's) against 10,000/s.
func TestPostgresChecks(t *testing.T) {
	p := &pgResult{loads: pgLoads([]string{"k1", "k2"}), samples: map[string]map[string][]pgSample{}}
	for i, l := range p.loads {
		p.samples[l.name] = map[string][]pgSample{}
		for _, rps := range []float64{1000, 1100, 900} {
			p.samples[l.name]["plain"] = append(p.samples[l.name]["plain"], pgSample{sample: sample{rps: rps}})
			p.samples[l.name]["gateway"] = append(p.samples[l.name]["gateway"], pgSample{sample: sample{rps: rps * float64(5+i) / 10}})
		}
	}
	rep := &report{postgres: p, micro: parseBench("pkg: github.com/gatewayz/caddy-gatewayz/storage\n" +
		"BenchmarkSettleDurable-2   	 100	 40000 ns/op	 25000 settlements/s\n" +
		"pkg: github.com/gatewayz/caddy-gatewayz/storage/postgres\n" +
		"BenchmarkReserveSettleDurable/users=1000/async=false-2   	 100	 500000 ns/op	 2000 settlements/s\n" +
		"BenchmarkReserveSettleDurable/settle-only/users=1000-2   	 100	 200000 ns/op	 5000 settlements/s\n")}
	got := map[string]check{}
	for _, c := range rep.postgresChecks() {
		got[c.what] = c
	}
	want := map[string][2]string{
		"PostgreSQL, bare tiny JSON 32 conns, 1 user: gateway/plain req/s":                                  {"0.50", "NO"},
		"PostgreSQL, bare tiny JSON 32 conns, 2 users: gateway/plain req/s":                                 {"0.60", "NO"},
		"PostgreSQL, bare tiny SSE 32 conns, 1 user: gateway/plain req/s":                                   {"0.70", "NO"},
		"PostgreSQL, bare tiny SSE 32 conns, 2 users: gateway/plain req/s":                                  {"0.80", "yes"},
		"durable settlements on PostgreSQL (postgres.BenchmarkReserveSettleDurable/settle-only/users=1000)": {"5000/s", "NO"},
	}
	if len(got) != len(want) {
		t.Fatalf("checks %+v", got)
	}
	for what, w := range want {
		if c := got[what]; c.measured != w[0] || c.pass != w[1] {
			t.Errorf("%s: %+v, want %v", what, c, w)
		}
	}
	if !strings.Contains(p.markdown(), "| bare tiny SSE 32 conns, 2 users | 1000 | 800 | 0.80 |") {
		t.Errorf("table:\n%s", p.markdown())
	}
}
