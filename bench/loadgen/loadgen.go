// Package loadgen is a small, efficient HTTP/1.1 load generator for the
// benchmark: keep-alive connections, one pre-built request written as-is,
// a minimal response parser that discards bodies (Content-Length and
// chunked, so SSE streams work), and a log-linear latency histogram per
// connection. It spends a few microseconds of CPU per request, far less than
// net/http's client, so it leaves the CPU to the server under test.
package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Config describes one load run.
type Config struct {
	// Addr is the host:port to connect to.
	Addr string
	// Request is the raw request (see BuildRequest), sent for every request.
	Request []byte
	// Requests, when set, replaces Request: each connection sends them in
	// turn, starting at its own offset (e.g. the same call with many API
	// keys, so the load spreads over many users).
	Requests [][]byte
	// Conns is the number of concurrent keep-alive connections; each sends
	// its next request when the previous response is complete.
	Conns int
	// Warmup is run before the measured Duration; its results are dropped.
	Warmup   time.Duration
	Duration time.Duration
}

// Result is what a run measured in its measured window.
type Result struct {
	Requests   int64         // responses completed in the window
	Non2xx     int64         // of which with a status outside 200-299
	Errors     int64         // transport errors in the window (connection re-opened)
	Status     map[int]int64 // responses by status code
	BodyBytes  int64         // body bytes read
	Duration   time.Duration // the measured window
	RPS        float64       // Requests / Duration
	Latency    *Histogram    // latency of each request, write to end of body
	FirstError string        // first transport error seen, if any
}

// P50 is the median latency.
func (r *Result) P50() time.Duration { return r.Latency.Quantile(0.50) }

// P99 is the 99th percentile latency.
func (r *Result) P99() time.Duration { return r.Latency.Quantile(0.99) }

// String is a one-line summary.
func (r *Result) String() string {
	return fmt.Sprintf("%d req in %s: %.0f req/s, p50 %s, p99 %s, non-2xx %d, errors %d",
		r.Requests, r.Duration, r.RPS, r.P50(), r.P99(), r.Non2xx, r.Errors)
}

type worker struct {
	hist     Histogram
	n        int64
	non2xx   int64
	errs     int64
	bytes    int64
	status   map[int]int64
	firstErr error
}

// Run applies the load and returns what it measured. It stops after
// Warmup+Duration or when ctx is done.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if len(cfg.Requests) == 0 && len(cfg.Request) > 0 {
		cfg.Requests = [][]byte{cfg.Request}
	}
	if cfg.Conns <= 0 || cfg.Duration <= 0 || len(cfg.Requests) == 0 || len(cfg.Requests[0]) == 0 {
		return nil, errors.New("loadgen: need Conns, Duration and Request")
	}
	first := cfg.Requests[0]
	method := string(first[:max(0, bytes.IndexByte(first, ' '))])
	start := time.Now()
	wStart := start.Add(cfg.Warmup)
	wEnd := wStart.Add(cfg.Duration)

	var (
		mu    sync.Mutex
		conns = make(map[*net.Conn]struct{})
		wg    sync.WaitGroup
	)
	workers := make([]*worker, cfg.Conns)
	stopped := make(chan struct{})
	for i := range workers {
		w := &worker{status: make(map[int]int64)}
		next := i % len(cfg.Requests)
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			var br *bufio.Reader
			track := func(nc net.Conn) {
				mu.Lock()
				if c != nil {
					delete(conns, &c)
				}
				c = nc
				if nc != nil {
					conns[&c] = struct{}{}
				}
				mu.Unlock()
			}
			defer func() {
				if c != nil {
					c.Close()
				}
				track(nil)
			}()
			for {
				select {
				case <-stopped:
					return
				default:
				}
				if c == nil {
					d := net.Dialer{Timeout: 5 * time.Second}
					nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
					if err != nil {
						if time.Now().After(wEnd) || ctx.Err() != nil {
							return
						}
						w.noteErr(err, time.Now(), wStart)
						time.Sleep(10 * time.Millisecond)
						continue
					}
					if tc, ok := nc.(*net.TCPConn); ok {
						_ = tc.SetNoDelay(true)
					}
					track(nc)
					if br == nil {
						br = bufio.NewReaderSize(nc, 32<<10)
					} else {
						br.Reset(nc)
					}
				}
				t0 := time.Now()
				_, err := c.Write(cfg.Requests[next])
				next = (next + 1) % len(cfg.Requests)
				var h respHead
				var n int64
				if err == nil {
					h, err = readHead(br)
				}
				if err == nil {
					n, err = readBody(br, h, method)
				}
				t1 := time.Now()
				if err != nil {
					if t1.After(wEnd) || ctx.Err() != nil {
						return
					}
					w.noteErr(err, t1, wStart)
					c.Close()
					track(nil)
					continue
				}
				if !t0.Before(wStart) && !t1.After(wEnd) {
					w.hist.Record(t1.Sub(t0))
					w.n++
					w.bytes += n
					w.status[h.status]++
					if h.status < 200 || h.status > 299 {
						w.non2xx++
					}
				}
				if t1.After(wEnd) {
					return
				}
				if h.close {
					c.Close()
					track(nil)
				}
			}
		}()
	}

	// Stop at the end of the window (or on ctx), then unblock workers that
	// wait on a slow response.
	timer := time.NewTimer(time.Until(wEnd))
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	close(stopped)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(200 * time.Millisecond):
		mu.Lock()
		for c := range conns {
			_ = (*c).SetDeadline(time.Now())
		}
		mu.Unlock()
		<-done
	}

	res := &Result{Status: make(map[int]int64), Latency: new(Histogram)}
	for _, w := range workers {
		res.Requests += w.n
		res.Non2xx += w.non2xx
		res.Errors += w.errs
		res.BodyBytes += w.bytes
		res.Latency.Merge(&w.hist)
		for k, v := range w.status {
			res.Status[k] += v
		}
		if res.FirstError == "" && w.firstErr != nil {
			res.FirstError = w.firstErr.Error()
		}
	}
	res.Duration = cfg.Duration
	if now := time.Now(); now.Before(wEnd) { // cancelled early
		res.Duration = max(now.Sub(wStart), time.Millisecond)
	}
	res.RPS = float64(res.Requests) / res.Duration.Seconds()
	return res, ctx.Err()
}

func (w *worker) noteErr(err error, at, wStart time.Time) {
	if at.Before(wStart) {
		return
	}
	w.errs++
	if w.firstErr == nil {
		w.firstErr = err
	}
}
