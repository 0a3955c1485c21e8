package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/loadgen"
	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// soakSample is the gateway's state at one point of a soak.
type soakSample struct {
	at         time.Duration
	rss        int64
	goroutines int
	reserved   int64
	ok, bad    int64 // normal requests: 2xx, other
	faults     int64 // fault requests sent
}

// soak runs mixed traffic through the gateway for d: JSON and SSE load,
// plus a trickle of faults (upstream 500s, cut streams, truncated bodies,
// clients that hang up mid-stream). Every interval it samples RSS,
// goroutines and reserved credits. At the end nothing may stay reserved,
// the goroutines must come back to their baseline, and the normal traffic
// must have seen no errors.
func (h *harness) soak(ctx context.Context, d time.Duration) error {
	if h.gateway == nil {
		return fmt.Errorf("soak needs a bin/caddy with the gatewayz modules")
	}
	t := h.gateway
	base := "http://" + t.addr
	key := strings.TrimPrefix(h.headers()["Authorization"], "Bearer ")
	interval := min(10*time.Second, max(d/6, time.Second))
	g0, _ := goroutines(t.admin)
	rss0, _, _ := memStatus(t.proc.pid())
	log.Printf("soak: %s of mixed traffic through the gateway (baseline RSS %s, %d goroutines)", d, mib(rss0), g0)

	var ok, bad, faults atomic.Int64
	var firstBad atomic.Value
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for _, l := range []load{{name: "JSON", conns: 6}, {name: "SSE", conns: 6, stream: true}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				res, err := loadgen.Run(ctx, loadgen.Config{
					Addr: t.addr, Request: loadgen.BuildRequest("POST", t.addr, apiPath, h.headers(), []byte(l.body())),
					Conns: l.conns, Duration: interval,
				})
				if res == nil {
					if err != nil && ctx.Err() == nil {
						firstBad.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				ok.Add(res.Requests - res.Non2xx)
				bad.Add(res.Non2xx + res.Errors)
				if res.Non2xx+res.Errors > 0 {
					firstBad.CompareAndSwap(nil, fmt.Sprintf("%s: statuses %v, first error %q", l.name, res.Status, res.FirstError))
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		faultLoop(ctx, base, h.headers(), &faults)
	}()

	var samples []soakSample
	start := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	sample := func() {
		s := soakSample{at: time.Since(start).Round(time.Second), ok: ok.Load(), bad: bad.Load(), faults: faults.Load()}
		s.rss, _, _ = memStatus(t.proc.pid())
		s.goroutines, _ = goroutines(t.admin)
		_, s.reserved, _ = balance(base, key)
		samples = append(samples, s)
		log.Printf("soak %6s: RSS %s, %d goroutines, %d credits reserved, %d ok, %d failed, %d faults injected",
			s.at, mib(s.rss), s.goroutines, s.reserved, s.ok, s.bad, s.faults)
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			sample()
		}
	}
	wg.Wait()
	// Let in-flight settlements finish and idle connections close.
	time.Sleep(3 * time.Second)
	sample()
	last := samples[len(samples)-1]

	var problems []string
	if last.reserved != 0 {
		problems = append(problems, fmt.Sprintf("%d credits still reserved after the traffic stopped", last.reserved))
	}
	if last.goroutines > g0+100 {
		problems = append(problems, fmt.Sprintf("%d goroutines after the traffic stopped (baseline %d)", last.goroutines, g0))
	}
	if last.bad > 0 {
		v, _ := firstBad.Load().(string)
		problems = append(problems, fmt.Sprintf("%d normal requests failed: %s", last.bad, v))
	}
	if last.ok == 0 {
		problems = append(problems, "no request succeeded")
	}
	fmt.Printf("\n| time | RSS | goroutines | reserved | ok | failed | faults |\n|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range samples {
		fmt.Printf("| %s | %s | %d | %d | %d | %d | %d |\n", s.at, mib(s.rss), s.goroutines, s.reserved, s.ok, s.bad, s.faults)
	}
	if len(problems) > 0 {
		return fmt.Errorf("soak failed:\n  %s", strings.Join(problems, "\n  "))
	}
	fmt.Printf("\nsoak passed: %d requests, %d faults, nothing left reserved, goroutines back to %d (baseline %d)\n",
		last.ok, last.faults, last.goroutines, g0)
	return nil
}

// faultLoop sends one faulty request after another until ctx is done.
func faultLoop(ctx context.Context, base string, hdr map[string]string, n *atomic.Int64) {
	client := &http.Client{Timeout: 30 * time.Second}
	faults := []struct {
		body string
		hdr  map[string]string
		hang bool // read a little, then hang up
	}{
		{jsonBody, map[string]string{mock.HeaderStatus: "500"}, false},
		{jsonBody, map[string]string{mock.HeaderStatus: "429"}, false},
		{jsonBody, map[string]string{mock.HeaderTruncate: "1"}, false},
		{streamBody, map[string]string{mock.HeaderCutAfter: "3"}, false},
		{streamBody, map[string]string{mock.HeaderChunkDelay: "20ms"}, true},
		{jsonBody, map[string]string{mock.HeaderNoUsage: "1"}, false},
		{streamBody, map[string]string{mock.HeaderNoUsage: "1"}, false},
	}
	for i := 0; ctx.Err() == nil; i++ {
		f := faults[i%len(faults)]
		req, _ := http.NewRequestWithContext(ctx, "POST", base+apiPath, strings.NewReader(f.body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		for k, v := range f.hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		n.Add(1)
		if err != nil {
			continue
		}
		if f.hang {
			_, _ = bufio.NewReader(resp.Body).ReadString('\n')
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
		}
		resp.Body.Close()
	}
}
