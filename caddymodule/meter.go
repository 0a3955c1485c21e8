package caddymodule

import (
	"bytes"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// meterMode is how the meter handles the response body.
type meterMode int

const (
	modeNone     meterMode = iota // no header yet
	modeStream                    // 2xx text/event-stream: scanned as it passes
	modeBuffer                    // 2xx other: buffered (bounded) to settle and add gateway_usage
	modeOverflow                  // modeBuffer beyond its bound: passed through, tail kept
	modeError                     // status >= 400: buffered (bounded) and rewritten in OpenAI shape
	modePass                      // anything else (1xx-3xx without body semantics): passed through
)

// Meter bounds.
const (
	// defaultMaxResponseBuffer bounds a buffered non-streaming response.
	defaultMaxResponseBuffer = 16 << 20
	// maxErrorBody bounds a buffered upstream error body.
	maxErrorBody = 64 << 10
	// overflowTail is how much of an overflowing response is kept to find
	// its usage object.
	overflowTail = 64 << 10
)

// meter wraps the response writer of a metered request. It embeds
// *caddyhttp.ResponseWriterWrapper, so http.ResponseController still reaches
// Flush/Hijack/SetWriteDeadline through Unwrap, and overrides WriteHeader,
// Write, ReadFrom and FlushError:
//
//   - 2xx event streams are written through immediately (flushes
//     preserved) while an sseScanner reads usage and counts generated text;
//     it strips the injected usage chunk when the client did not ask for it;
//   - other 2xx bodies are buffered (up to maxBuffer) so the handler can
//     settle and add gateway_usage with a correct Content-Length;
//   - error statuses are buffered (bounded) so the handler can pass them on
//     in OpenAI shape.
//
// beforeHeader runs just before a header is sent straight through (streams
// and pass-through), so response headers set there reach the client.
type meter struct {
	caddyhttp.ResponseWriterWrapper

	streamStrip bool // strip the usage-only event (client did not ask for usage)
	maxBuffer   int
	hook        headerHook

	status      int
	mode        meterMode
	buf         bytes.Buffer
	tail        []byte
	out         []byte     // stream bytes to forward (strip mode)
	sse         sseScanner // in use in modeStream
	written     int64      // body bytes sent to the client
	headerSent  bool
	unflushed   bool // strip mode: header or bytes sent since the last flush
	start       time.Time
	firstHeader time.Duration // time from start to the upstream's header
	writeErr    error
}

// headerHook is called just before the meter sends a header straight
// through.
type headerHook interface {
	beforeHeader(status int)
}

// headerFunc adapts a function to headerHook.
type headerFunc func(status int)

func (f headerFunc) beforeHeader(status int) { f(status) }

func newMeter(w http.ResponseWriter, strip bool, maxBuffer int, beforeHeader func(int)) *meter {
	m := new(meter)
	var hook headerHook
	if beforeHeader != nil {
		hook = headerFunc(beforeHeader)
	}
	m.init(w, strip, maxBuffer, hook)
	return m
}

// init prepares a zero meter (embedded in a settlement, so that a request
// allocates one object for both).
func (m *meter) init(w http.ResponseWriter, strip bool, maxBuffer int, hook headerHook) {
	if maxBuffer <= 0 {
		maxBuffer = defaultMaxResponseBuffer
	}
	m.ResponseWriterWrapper.ResponseWriter = w
	m.streamStrip = strip
	m.maxBuffer = maxBuffer
	m.hook = hook
	m.start = time.Now()
}

// isEventStream reports whether the Content-Type is text/event-stream.
func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	if !strings.ContainsRune(ct, ';') { // no parameters: no parsing needed
		return strings.EqualFold(strings.TrimSpace(ct), "text/event-stream")
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "text/event-stream"
}

// WriteHeader records the status and chooses how to handle the body.
func (m *meter) WriteHeader(status int) {
	if m.mode != modeNone {
		return // superfluous
	}
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		m.ResponseWriter.WriteHeader(status) // informational: pass on
		return
	}
	m.status = status
	m.firstHeader = time.Since(m.start)
	switch {
	case status >= 400:
		m.mode = modeError
	case status >= 200 && status < 300 && isEventStream(m.Header()):
		m.mode = modeStream
		m.sse.strip = m.streamStrip
		if m.streamStrip {
			m.Header().Del("Content-Length") // the body changes length
		}
		m.sendHeader()
	case status >= 200 && status < 300 && status != http.StatusNoContent:
		m.mode = modeBuffer
	default:
		m.mode = modePass
		m.sendHeader()
	}
}

// sendHeader writes the recorded status downstream.
func (m *meter) sendHeader() {
	if m.headerSent {
		return
	}
	m.headerSent = true
	m.unflushed = true
	if m.hook != nil {
		m.hook.beforeHeader(m.status)
	}
	m.ResponseWriter.WriteHeader(m.status)
}

// Write handles a chunk of the body according to the mode.
func (m *meter) Write(p []byte) (int, error) {
	if m.mode == modeNone {
		m.WriteHeader(http.StatusOK)
	}
	switch m.mode {
	case modeStream:
		if !m.sse.strip {
			n, err := m.ResponseWriter.Write(p)
			m.written += int64(n)
			m.sse.feed(p[:n], nil)
			return n, err
		}
		m.sse.feed(p, m.emit)
		if err := m.flushOut(); err != nil {
			return 0, err
		}
		return len(p), nil
	case modeBuffer:
		if m.buf.Len()+len(p) <= m.maxBuffer {
			return m.buf.Write(p)
		}
		// Too large to buffer: send what we have and pass the rest
		// through, keeping a tail to find the usage object in.
		m.mode = modeOverflow
		m.sendHeader()
		held := m.buf.Bytes()
		m.keepTail(held)
		if _, err := m.writeThrough(held); err != nil {
			return 0, err
		}
		m.buf = bytes.Buffer{}
		return m.writeOverflow(p)
	case modeOverflow:
		return m.writeOverflow(p)
	case modeError:
		if room := maxErrorBody - m.buf.Len(); room > 0 {
			m.buf.Write(p[:min(room, len(p))])
		}
		return len(p), nil
	default:
		return m.writeThrough(p)
	}
}

func (m *meter) writeOverflow(p []byte) (int, error) {
	n, err := m.writeThrough(p)
	m.keepTail(p[:n])
	return n, err
}

func (m *meter) writeThrough(p []byte) (int, error) {
	n, err := m.ResponseWriter.Write(p)
	m.written += int64(n)
	return n, err
}

// emit collects stream bytes to forward in strip mode; flushOut writes
// them in one Write per upstream write.
func (m *meter) emit(b []byte) { m.out = append(m.out, b...) }

func (m *meter) flushOut() error {
	if len(m.out) == 0 || m.writeErr != nil {
		m.out = m.out[:0]
		return m.writeErr
	}
	n, err := m.ResponseWriter.Write(m.out)
	m.written += int64(n)
	m.writeErr = err
	m.unflushed = true
	if cap(m.out) > 64<<10 {
		m.out = nil
	} else {
		m.out = m.out[:0]
	}
	return err
}

// keepTail appends p to the rolling tail of an overflowing body.
func (m *meter) keepTail(p []byte) {
	if len(p) >= overflowTail {
		m.tail = append(m.tail[:0], p[len(p)-overflowTail:]...)
		return
	}
	if drop := len(m.tail) + len(p) - overflowTail; drop > 0 {
		m.tail = append(m.tail[:0], m.tail[drop:]...)
	}
	m.tail = append(m.tail, p...)
}

// ReadFrom makes io.Copy go through Write.
func (m *meter) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{m}, r)
}

// FlushError flushes what has been sent through; while the body is being
// buffered it does nothing, so a flush cannot send the header early.
func (m *meter) FlushError() error {
	switch m.mode {
	case modeStream, modeOverflow, modePass:
		if m.mode == modeStream && m.sse.strip {
			// reverse_proxy flushes after every upstream read; one that
			// was stripped whole (the injected usage event) sent nothing.
			if !m.unflushed {
				return nil
			}
			m.unflushed = false
		}
		return http.NewResponseController(m.ResponseWriter).Flush()
	}
	return nil
}

// finishStream forwards a last incomplete line at the end of a stream.
func (m *meter) finishStream() {
	if m.mode == modeStream && m.sse.strip {
		m.sse.finish(m.emit)
		_ = m.flushOut()
	}
}

// writeBuffered sends a buffered response with body (which may differ from
// what was buffered) and a Content-Length matching it.
func (m *meter) writeBuffered(body []byte) {
	h := m.Header()
	h.Del("Transfer-Encoding")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	m.sendHeader()
	_, _ = m.writeThrough(body)
}

// writerOnly hides every method but Write, so io.Copy cannot bypass it.
type writerOnly struct{ io.Writer }

// Interface guards
var (
	_ http.ResponseWriter = (*meter)(nil)
	_ io.ReaderFrom       = (*meter)(nil)
)
