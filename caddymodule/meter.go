package caddymodule

import (
	"bytes"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// meterMode is how the meter handles the response body.
type meterMode uint8

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
	// lateHeaderDelay bounds how long a stream's response header waits for
	// the first event to go out with it (see meter.holdHeader).
	lateHeaderDelay = time.Second
)

// meter wraps the response writer of a metered request. It embeds
// *caddyhttp.ResponseWriterWrapper, so http.ResponseController still reaches
// Flush/Hijack/SetWriteDeadline through Unwrap, and overrides WriteHeader,
// Write, ReadFrom and FlushError:
//
//   - 2xx event streams are written through immediately (flushes
//     preserved, except that the header waits for the first event: see
//     holdHeader) while an sseScanner reads usage and counts generated
//     text; it strips the injected usage chunk when the client did not ask
//     for it;
//   - other 2xx bodies are buffered (up to maxBuffer) so the handler can
//     settle and add gateway_usage with a correct Content-Length;
//   - error statuses are buffered (bounded) so the handler can pass them on
//     in OpenAI shape.
//
// beforeHeader runs just before a header is sent straight through (streams
// and pass-through), so response headers set there reach the client.
type meter struct {
	caddyhttp.ResponseWriterWrapper

	maxBuffer int
	hook      headerHook

	status      int
	mode        meterMode
	streamStrip bool // strip the usage-only event (client did not ask for usage)
	headerSent  bool
	unflushed   bool         // strip mode: header or bytes sent since the last flush
	bodyStarted bool         // stream mode: bytes were written to the client
	buf         bytes.Buffer // buffered body (modeBuffer, modeError)
	bufPtr      *[]byte      // the pooled slice buf started from
	tail        []byte
	out         stripOut    // stream bytes to forward (strip mode)
	sse         sseScanner  // in use in modeStream
	written     int64       // body bytes sent to the client
	late        *lateHeader // a stream's header held for its first event (holdHeader)
	start       time.Time
	firstHeader time.Duration // time from start to the upstream's header
	writeErr    error
	clValue     [1]string // backing of the Content-Length value writeBuffered sets
}

// lateHeader is a stream's response header held back for its first event,
// with the timer that flushes it if no event comes in time. Its lock
// orders that flush, which runs on the timer's goroutine, with the
// handler's first write and the end of the response.
type lateHeader struct {
	mu    sync.Mutex
	done  bool // the body started, the header was flushed, or the response ended
	timer *time.Timer
	w     http.ResponseWriter
}

// headerHook is called just before the meter sends a header straight
// through.
type headerHook interface {
	beforeHeader(status int)
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
	ct := headerValue(h, "Content-Type")
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
			delete(m.Header(), "Content-Length") // the body changes length
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
			if !m.bodyStarted {
				m.startBody()
			}
			n, err := m.ResponseWriter.Write(p)
			m.written += int64(n)
			m.sse.feed(p[:n], nil)
			return n, err
		}
		m.sse.feed(p, &m.out)
		if err := m.flushOut(); err != nil {
			return 0, err
		}
		return len(p), nil
	case modeBuffer:
		if m.buf.Len()+len(p) <= m.maxBuffer {
			m.takeBuf()
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
		m.releaseBuf()
		return m.writeOverflow(p)
	case modeOverflow:
		return m.writeOverflow(p)
	case modeError:
		if room := maxErrorBody - m.buf.Len(); room > 0 {
			m.takeBuf()
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

// respBufPool recycles the buffers of buffered response bodies. A
// buffered body's gateway_usage block is built in the same buffer's spare
// capacity, so a typical JSON answer allocates neither.
var respBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 4096)
	return &b
}}

// maxPooledResponse bounds the buffers returned to respBufPool.
const maxPooledResponse = 64 << 10

// takeBuf starts the body buffer from a pooled slice, once.
func (m *meter) takeBuf() {
	if m.bufPtr != nil || m.buf.Cap() > 0 {
		return
	}
	m.bufPtr = respBufPool.Get().(*[]byte)
	m.buf = *bytes.NewBuffer((*m.bufPtr)[:0])
}

// releaseBuf forgets the body buffer and returns it to its pool: what it
// held must have been written (or dropped) already.
func (m *meter) releaseBuf() {
	if m.bufPtr != nil {
		m.buf.Reset()
		if b := m.buf.AvailableBuffer(); cap(b) <= maxPooledResponse {
			*m.bufPtr = b
			respBufPool.Put(m.bufPtr)
		}
		m.bufPtr = nil
	}
	m.buf = bytes.Buffer{}
}

// stripOut collects what one upstream Write forwards in strip mode, so
// that it goes downstream in one Write: normally a single run of the
// caller's p, written as it is; only when held bytes or a stripped line
// split it are the pieces gathered, in a pooled buffer.
type stripOut struct {
	run []byte  // the only piece so far (aliases the caller's p)
	buf *[]byte // gathered pieces, when there is more than one
}

// stripBufPool recycles the gather buffers of stripOut.
var stripBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 1024)
	return &b
}}

func (o *stripOut) forward(b []byte) {
	if len(b) == 0 {
		return
	}
	if o.buf == nil {
		if o.run == nil {
			o.run = b
			return
		}
		o.gather()
	}
	*o.buf = append(*o.buf, b...)
}

func (o *stripOut) forwardHeld(b []byte) {
	if len(b) == 0 {
		return
	}
	if o.buf == nil {
		o.gather()
	}
	*o.buf = append(*o.buf, b...)
}

// gather switches to the pooled buffer, starting with the run so far.
func (o *stripOut) gather() {
	o.buf = stripBufPool.Get().(*[]byte)
	*o.buf = append((*o.buf)[:0], o.run...)
	o.run = nil
}

// bytes returns what was collected.
func (o *stripOut) bytes() []byte {
	if o.buf != nil {
		return *o.buf
	}
	return o.run
}

// reset forgets what was collected (the run aliases the caller's buffer and
// must not outlive its Write) and returns the gather buffer to its pool.
func (o *stripOut) reset() {
	o.run = nil
	if o.buf != nil {
		if cap(*o.buf) <= maxPooledLine {
			*o.buf = (*o.buf)[:0]
			stripBufPool.Put(o.buf)
		}
		o.buf = nil
	}
}

// flushOut writes what the scanner forwarded in one Write.
func (m *meter) flushOut() error {
	out := m.out.bytes()
	if len(out) == 0 || m.writeErr != nil {
		m.out.reset()
		return m.writeErr
	}
	if !m.bodyStarted {
		m.startBody()
	}
	n, err := m.ResponseWriter.Write(out)
	m.out.reset()
	m.written += int64(n)
	m.writeErr = err
	m.unflushed = true
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
		if m.mode == modeStream && !m.bodyStarted && m.holdHeader() {
			return nil
		}
		if m.mode == modeStream && m.sse.strip {
			// reverse_proxy flushes after every upstream read; one that
			// was stripped whole (the injected usage event) sent nothing.
			if !m.unflushed {
				return nil
			}
			m.unflushed = false
		}
		return flush(m.ResponseWriter)
	}
	return nil
}

// holdHeader reports whether a flush of a stream whose body has not
// started is to be skipped: its header then goes out with the first event,
// in one write and one packet instead of two (reverse_proxy flushes the
// header on its own as soon as it is written). An upstream slow to send
// its first event gets the header flushed after lateHeaderDelay, so
// clients and proxies waiting for a response header are not kept waiting
// for the model.
func (m *meter) holdHeader() bool {
	if m.late == nil {
		l := &lateHeader{w: m.ResponseWriter}
		l.timer = time.AfterFunc(lateHeaderDelay, l.flush)
		m.late = l
		return true
	}
	m.late.mu.Lock()
	defer m.late.mu.Unlock()
	return !m.late.done
}

// flush flushes the held header when no event came in time. It does
// nothing once the body started or the response ended (end).
func (l *lateHeader) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.done = true
	_ = flush(l.w)
}

// end stops the wait: after it returns, the timer no longer touches the
// response.
func (l *lateHeader) end() {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
	l.timer.Stop()
}

// startBody ends the wait for the first event before it is written.
func (m *meter) startBody() {
	m.bodyStarted = true
	m.late.end()
}

// flush flushes w as http.ResponseController does, without allocating
// one for the common writers that flush themselves.
func flush(w http.ResponseWriter) error {
	switch f := w.(type) {
	case interface{ FlushError() error }:
		return f.FlushError()
	case http.Flusher:
		f.Flush()
		return nil
	}
	return http.NewResponseController(w).Flush() // unwraps, or reports unsupported
}

// finishStream forwards a last incomplete line at the end of a stream and
// returns the stream's buffers to their pools.
func (m *meter) finishStream() {
	if m.mode == modeStream {
		// A last line without its newline is scanned in both modes (its
		// usage counts); only strip mode holds it and must forward it.
		m.sse.finish(&m.out)
		if m.sse.strip {
			_ = m.flushOut()
		}
	}
	m.release()
}

// release returns the meter's pooled buffers at the end of the response
// (a line still held is dropped: finishStream forwards it first; a
// buffered body must have been written). It may be called more than once;
// a later write would just take a buffer again.
func (m *meter) release() {
	m.late.end()
	m.out.reset()
	m.sse.release()
	m.releaseBuf()
}

// writeBuffered sends a buffered response whose body is head then tail
// (which may differ from what was buffered), with a Content-Length
// matching it. The parts reach the connection's buffer, not one write
// each.
func (m *meter) writeBuffered(head, tail []byte) {
	h := m.Header()
	delete(h, "Transfer-Encoding")
	m.clValue[0] = strconv.Itoa(len(head) + len(tail))
	h["Content-Length"] = m.clValue[:] // as Set stores it, without the allocation
	m.sendHeader()
	if _, err := m.writeThrough(head); err == nil && len(tail) > 0 {
		_, _ = m.writeThrough(tail)
	}
}

// headerValue is h.Get(key) for a key already in canonical form (no
// canonicalisation on the hot path).
func headerValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// writerOnly hides every method but Write, so io.Copy cannot bypass it.
type writerOnly struct{ io.Writer }

// Interface guards
var (
	_ http.ResponseWriter = (*meter)(nil)
	_ io.ReaderFrom       = (*meter)(nil)
)
