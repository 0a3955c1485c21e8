package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// rssSplit is a process's resident memory by kind, from /proc/<pid>/status:
// anonymous (the Go heap, stacks and runtime), file-backed (the binary and
// mapped files such as the bbolt database) and shared memory.
type rssSplit struct{ anon, file, shmem int64 }

func (r rssSplit) total() int64 { return r.anon + r.file + r.shmem }

// parseRSSSplit reads RssAnon, RssFile and RssShmem (kB) from a status file.
func parseRSSSplit(rd io.Reader) (rssSplit, error) {
	var r rssSplit
	seen := 0
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "RssAnon":
			dst = &r.anon
		case "RssFile":
			dst = &r.file
		case "RssShmem":
			dst = &r.shmem
		default:
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return r, fmt.Errorf("%s: %v", k, err)
		}
		*dst = kb << 10
		seen++
	}
	if err := sc.Err(); err != nil {
		return r, err
	}
	if seen != 3 {
		return r, fmt.Errorf("no RssAnon, RssFile and RssShmem lines")
	}
	return r, nil
}

func readRSSSplit(pid int) (rssSplit, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return rssSplit{}, err
	}
	defer f.Close()
	return parseRSSSplit(f)
}

// peakSplit keeps, over samples, the split at the highest total.
type peakSplit struct{ at rssSplit }

func (p *peakSplit) add(r rssSplit) {
	if r.total() > p.at.total() {
		p.at = r
	}
}

// sustainedResult is one Caddy under the sustained high-concurrency load.
type sustainedResult struct {
	target   string
	conns    int
	rps      float64
	errors   int64
	peak     rssSplit // the sample with the highest total RSS
	peakHWM  int64    // VmHWM, the kernel's own peak
	duration time.Duration
}

// sustained runs the as-shipped short JSON load at cfg.sustainConns
// connections for cfg.sustainDuration through plain and then the gateway,
// sampling the RSS split every 100 ms.
func (h *harness) sustained(ctx context.Context, rn runner) ([]sustainedResult, error) {
	if h.cfg.sustainDuration <= 0 || h.cfg.sustainConns <= 0 {
		return nil, nil
	}
	l := newLoad(setupShipped, mock.AnswerShort, false, h.cfg.sustainConns)
	var out []sustainedResult
	for _, t := range []*target{h.shipPlain, h.shipGateway} {
		if t == nil {
			continue
		}
		pid := t.proc.pid()
		resetPeakRSS(pid)
		var peak peakSplit
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					if r, err := readRSSSplit(pid); err == nil {
						peak.add(r)
					}
				}
			}
		}()
		s, err := rn.run(ctx, t.addr, h.headersFor(l), l, 0, h.cfg.sustainDuration)
		close(stop)
		<-sampled
		t.proc.trimLog()
		if err != nil {
			return out, fmt.Errorf("sustained %s: %w", t.name, err)
		}
		res := sustainedResult{target: t.name, conns: l.conns, rps: s.rps, errors: s.errors + s.non2xx, peak: peak.at, duration: h.cfg.sustainDuration}
		_, res.peakHWM, _ = memStatus(pid)
		out = append(out, res)
	}
	return out, nil
}
