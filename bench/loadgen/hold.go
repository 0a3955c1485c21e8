package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Holder keeps many slow responses (typically SSE streams) open at once, as
// idle chat clients do: each connection sends the request once and then reads
// whatever arrives until Close.
type Holder struct {
	conns   []net.Conn
	mu      sync.Mutex
	wg      sync.WaitGroup
	open    atomic.Int64 // connections that received response headers
	failed  atomic.Int64
	bad     atomic.Int64 // responses with a non-2xx status
	ended   atomic.Int64 // responses that ended before Close
	closing atomic.Bool
	errMu   sync.Mutex
	first   error
}

// Hold opens n connections to addr with at most parallel dials in flight,
// sends req on each, and returns once every one has received its response
// headers (or failed), or when ctx is done. The connections then keep
// reading in the background until Close.
func Hold(ctx context.Context, addr string, req []byte, n, parallel int) (*Holder, error) {
	if parallel <= 0 {
		parallel = 64
	}
	h := &Holder{conns: make([]net.Conn, 0, n)}
	sem := make(chan struct{}, parallel)
	var ready sync.WaitGroup
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return h, ctx.Err()
		}
		ready.Add(1)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			signalled := false
			signal := func() {
				if !signalled {
					signalled = true
					<-sem
					ready.Done()
				}
			}
			defer signal()
			d := net.Dialer{Timeout: 10 * time.Second}
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				h.fail(err)
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			if h.closing.Load() {
				c.Close()
				return
			}
			if _, err := c.Write(req); err != nil {
				h.fail(err)
				return
			}
			br := bufio.NewReaderSize(c, 4096)
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			head, err := readHead(br)
			_ = c.SetReadDeadline(time.Time{})
			if err != nil {
				h.fail(err)
				return
			}
			if head.status < 200 || head.status > 299 {
				h.bad.Add(1)
				h.fail(fmt.Errorf("status %d", head.status))
				return
			}
			h.open.Add(1)
			signal()
			_, err = readBody(br, head, "POST")
			if !h.closing.Load() {
				h.ended.Add(1)
				if err != nil {
					h.fail(err)
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { ready.Wait(); close(done) }()
	select {
	case <-done:
		return h, nil
	case <-ctx.Done():
		return h, ctx.Err()
	}
}

func (h *Holder) fail(err error) {
	if h.closing.Load() {
		return
	}
	h.failed.Add(1)
	h.errMu.Lock()
	if h.first == nil {
		h.first = err
	}
	h.errMu.Unlock()
}

// Open is the number of streams that received their response headers.
func (h *Holder) Open() int64 { return h.open.Load() }

// Failed is the number of connections that failed (dial, write, read or a
// non-2xx status), and the first error.
func (h *Holder) Failed() (int64, error) {
	h.errMu.Lock()
	defer h.errMu.Unlock()
	return h.failed.Load(), h.first
}

// Ended is the number of responses that finished before Close.
func (h *Holder) Ended() int64 { return h.ended.Load() }

// Close closes every connection and waits for the readers to stop.
func (h *Holder) Close() {
	h.closing.Store(true)
	h.mu.Lock()
	for _, c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}
