package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
		rep.add("JSON 32 conns", "plain", measured{sample: sample{rps: r.plain}})
		rep.add("JSON 32 conns", "gateway", measured{sample: sample{rps: r.gw}})
	}
	rep.add("JSON 1 conn", "plain", measured{sample: sample{rps: 1, p50: 300 * time.Microsecond}})
	rep.add("JSON 1 conn", "gateway", measured{sample: sample{rps: 1, p50: 450 * time.Microsecond}})
	cs := rep.checks()
	if cs[0].measured != "0.90" || cs[0].pass != "yes" {
		t.Fatalf("json ratio %+v", cs[0])
	}
	if cs[1].pass != "n/a" {
		t.Fatalf("sse ratio without data %+v", cs[1])
	}
	if cs[2].measured != "+150 µs" || cs[2].pass != "NO" {
		t.Fatalf("added latency %+v", cs[2])
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
	p := profiled{load: "JSON 32 conns", target: "gateway", requests: 1000, total: total, cum: cum}
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
}
