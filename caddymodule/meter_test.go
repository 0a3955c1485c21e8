package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// eventWriter records the order of header writes, body writes and flushes.
type eventWriter struct {
	h      http.Header
	events []string
	body   bytes.Buffer
}

func (e *eventWriter) Header() http.Header { return e.h }
func (e *eventWriter) WriteHeader(s int)   { e.events = append(e.events, fmt.Sprintf("header %d", s)) }
func (e *eventWriter) Write(p []byte) (int, error) {
	e.events = append(e.events, "write "+string(p))
	return e.body.Write(p)
}
func (e *eventWriter) Flush() { e.events = append(e.events, "flush") }

func TestMeterStreamFlushesAndOrder(t *testing.T) {
	ew := &eventWriter{h: http.Header{}}
	var hooked []string
	m := newMeter(ew, true, 0, func(status int) {
		hooked = append(hooked, fmt.Sprint(status))
		ew.h.Set("X-Gatewayz-Credits-Remaining", "42")
	})
	m.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	m.Header().Set("Content-Length", "999")
	m.WriteHeader(200)
	rc := http.NewResponseController(m)
	for _, chunk := range []string{
		"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,",
		"\"completion_tokens\":1,\"total_tokens\":2}}\n\n",
		"data: [DONE]\n\n",
	} {
		if _, err := io.WriteString(m, chunk); err != nil {
			t.Fatal(err)
		}
		if err := rc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	m.finishStream()
	want := []string{
		"header 200",
		"write data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n", "flush",
		// partial usage line held, then the usage event stripped:
		// nothing written, so no flush either
		"write data: [DONE]\n\n", "flush",
	}
	if strings.Join(ew.events, "|") != strings.Join(want, "|") {
		t.Fatalf("events:\n got %q\nwant %q", ew.events, want)
	}
	if len(hooked) != 1 || ew.h.Get("X-Gatewayz-Credits-Remaining") != "42" || ew.h.Get("Content-Length") != "" {
		t.Fatalf("header hook %v, headers %v", hooked, ew.h)
	}
	if !m.sse.haveUsage || m.sse.usage.TotalTokens != 2 {
		t.Fatalf("usage %+v", m.sse.usage)
	}
}

func TestMeterStreamRecorderFlushed(t *testing.T) {
	rec := httptest.NewRecorder()
	m := newMeter(rec, false, 0, nil)
	m.Header().Set("Content-Type", "text/event-stream")
	m.WriteHeader(200)
	_, _ = m.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"))
	if err := http.NewResponseController(m).Flush(); err != nil {
		t.Fatal(err)
	}
	if !rec.Flushed {
		t.Fatal("flush did not reach the recorder")
	}
	if rec.Body.String() != "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n" {
		t.Fatalf("body %q", rec.Body.String())
	}
}

func TestMeterBuffersJSON(t *testing.T) {
	rec := httptest.NewRecorder()
	m := newMeter(rec, true, 0, nil)
	m.Header().Set("Content-Type", "application/json")
	m.Header().Set("Content-Length", "10")
	m.WriteHeader(200)
	// io.Copy must go through Write (ReadFrom), and a flush while
	// buffering must not send the header.
	if _, err := io.Copy(m, strings.NewReader(`{"usage":{"prompt_tokens":1,"completion_tokens":2}}`)); err != nil {
		t.Fatal(err)
	}
	_ = http.NewResponseController(m).Flush()
	if rec.Flushed || rec.Body.Len() != 0 {
		t.Fatal("buffered response leaked before settlement")
	}
	gu := gatewayUsage{TokensCharged: 3}
	body, ok := addGatewayUsage(m.buf.Bytes(), gu)
	if !ok {
		t.Fatal("not a JSON object")
	}
	// Sent as the settlement sends it: the buffered body's kept part, then
	// the gateway_usage block built in the buffer's spare capacity.
	buffered := m.buf.Bytes()
	keep, ok := gatewayUsageCut(buffered, len(buffered))
	if !ok {
		t.Fatal("no place for the gateway_usage block")
	}
	m.writeBuffered(buffered[:keep], appendGatewayUsageTail(m.buf.AvailableBuffer(), buffered, keep, gu))
	if rec.Code != 200 || rec.Body.String() != string(body) || rec.Header().Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Fatalf("got %d %q CL=%s", rec.Code, rec.Body.String(), rec.Header().Get("Content-Length"))
	}
}

func TestMeterOverflow(t *testing.T) {
	rec := httptest.NewRecorder()
	m := newMeter(rec, true, 64, nil)
	m.Header().Set("Content-Type", "application/json")
	m.WriteHeader(200)
	body := `{"data":"` + strings.Repeat("x", 200) + `","usage":{"prompt_tokens":5,"total_tokens":5}}`
	for i := 0; i < len(body); i += 30 {
		_, _ = m.Write([]byte(body[i:min(i+30, len(body))]))
	}
	if m.mode != modeOverflow || rec.Body.String() != body {
		t.Fatalf("mode %d, body %q", m.mode, rec.Body.String())
	}
	if u, ok := usageFromTail(m.tail); !ok || u.TotalTokens != 5 {
		t.Fatalf("tail usage %+v %v", u, ok)
	}
}

func TestMeterErrorBuffered(t *testing.T) {
	rec := httptest.NewRecorder()
	m := newMeter(rec, true, 0, nil)
	m.WriteHeader(500)
	_, _ = m.Write(bytes.Repeat([]byte("e"), maxErrorBody+10))
	if rec.Body.Len() != 0 || m.buf.Len() != maxErrorBody || m.status != 500 {
		t.Fatalf("error body: sent %d, buffered %d", rec.Body.Len(), m.buf.Len())
	}
}

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream": true, " Text/Event-Stream ": true, "text/event-stream; charset=utf-8": true,
		"text/event-stream;": true, "text/event-stream; a": false, "application/json": false, "": false, "text/event-streams": false,
	} {
		if got := isEventStream(http.Header{"Content-Type": {ct}}); got != want {
			t.Errorf("isEventStream(%q) = %v, want %v", ct, got, want)
		}
	}
}

// A stream's header goes out with its first event: flushes before it are
// held back (reverse_proxy flushes right after the header), and in strip
// mode a flush with nothing sent since the last is dropped.
func TestMeterStreamHeaderGoesWithFirstEvent(t *testing.T) {
	for _, strip := range []bool{true, false} {
		ew := &eventWriter{h: http.Header{}}
		m := newMeter(ew, strip, 0, nil)
		m.Header().Set("Content-Type", "text/event-stream")
		m.WriteHeader(200)
		rc := http.NewResponseController(m)
		for range 2 {
			if err := rc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if m.late == nil || m.late.timer == nil {
			t.Fatalf("strip %v: no timer for the held header", strip)
		}
		if _, err := io.WriteString(m, "data: x\n\n"); err != nil {
			t.Fatal(err)
		}
		_ = rc.Flush()
		m.late.flush() // a timer that fired after the first event does nothing
		m.finishStream()
		want := []string{"header 200", "write data: x\n\n", "flush"}
		if strings.Join(ew.events, "|") != strings.Join(want, "|") {
			t.Fatalf("strip %v: events:\n got %q\nwant %q", strip, ew.events, want)
		}
	}
}

// flushSignal reports its flushes on a channel (they may come from a timer).
type flushSignal struct {
	http.ResponseWriter
	flushes chan struct{}
}

func (f *flushSignal) Flush() { f.flushes <- struct{}{} }

// An upstream that sends its header but no event gets the header flushed
// after lateHeaderDelay, once; the first event then flushes as usual.
func TestMeterStreamLateHeader(t *testing.T) {
	fs := &flushSignal{ResponseWriter: httptest.NewRecorder(), flushes: make(chan struct{}, 4)}
	m := newMeter(fs, true, 0, nil)
	m.Header().Set("Content-Type", "text/event-stream")
	m.WriteHeader(200)
	if err := m.FlushError(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fs.flushes:
	case <-time.After(lateHeaderDelay + 5*time.Second):
		t.Fatal("the held header was never flushed")
	}
	if err := m.FlushError(); err != nil { // header already out: flushes now
		t.Fatal(err)
	}
	<-fs.flushes
	if _, err := io.WriteString(m, "data: x\n\n"); err != nil {
		t.Fatal(err)
	}
	if err := m.FlushError(); err != nil {
		t.Fatal(err)
	}
	<-fs.flushes
	m.finishStream()
	if len(fs.flushes) != 0 {
		t.Fatalf("%d flushes more than asked for", len(fs.flushes))
	}
}

// The end of a response whose header is held (no event came) stops the
// timer, so nothing touches the response after the handler returned.
func TestMeterStreamEndStopsLateHeader(t *testing.T) {
	ew := &eventWriter{h: http.Header{}}
	m := newMeter(ew, true, 0, nil)
	m.Header().Set("Content-Type", "text/event-stream")
	m.WriteHeader(200)
	_ = m.FlushError()
	l := m.late
	m.finishStream()
	if l.timer.Stop() {
		t.Fatal("timer still running after the response ended")
	}
	l.flush() // as if it had fired at the end
	if strings.Join(ew.events, "|") != "header 200" {
		t.Fatalf("events after the end: %q", ew.events)
	}
}

// errFlusher flushes with an error result; plainWriter cannot flush;
// unwrapper only reaches a flusher through Unwrap.
type errFlusher struct {
	http.ResponseWriter
	flushes int
}

func (e *errFlusher) FlushError() error { e.flushes++; return nil }

type plainWriter struct{ http.ResponseWriter }

type unwrapper struct{ w http.ResponseWriter }

func (u unwrapper) Header() http.Header         { return u.w.Header() }
func (u unwrapper) Write(p []byte) (int, error) { return u.w.Write(p) }
func (u unwrapper) WriteHeader(s int)           { u.w.WriteHeader(s) }
func (u unwrapper) Unwrap() http.ResponseWriter { return u.w }

// The meter flushes the writer it wraps as http.ResponseController would:
// FlushError first, then Flush, then through Unwrap; a writer that cannot
// flush gives http.ErrNotSupported.
func TestMeterFlushReachesWriter(t *testing.T) {
	stream := func(w http.ResponseWriter) error {
		m := newMeter(w, false, 0, nil)
		m.Header().Set("Content-Type", "text/event-stream")
		m.WriteHeader(200)
		_, _ = m.Write([]byte("data: x\n\n"))
		return http.NewResponseController(m).Flush()
	}
	ef := &errFlusher{ResponseWriter: httptest.NewRecorder()}
	if err := stream(ef); err != nil || ef.flushes != 1 {
		t.Fatalf("FlushError writer: %v, %d flushes", err, ef.flushes)
	}
	ew := &eventWriter{h: http.Header{}}
	if err := stream(unwrapper{ew}); err != nil || ew.events[len(ew.events)-1] != "flush" {
		t.Fatalf("unwrapped Flusher: %v, %q", err, ew.events)
	}
	if err := stream(plainWriter{httptest.NewRecorder()}); !errors.Is(err, http.ErrNotSupported) {
		t.Fatalf("writer without flush: %v", err)
	}
}

// A strip-mode stream whose events arrive split across writes forwards
// each completed line in one downstream write, and its pooled buffers are
// returned at the end.
func TestMeterStripSplitEvents(t *testing.T) {
	ew := &eventWriter{h: http.Header{}}
	m := newMeter(ew, true, 0, nil)
	m.Header().Set("Content-Type", "text/event-stream")
	m.WriteHeader(200)
	for _, c := range []string{"data: {\"a\"", ":1}\n\ndata: {\"b\"", ":2}\n\ndata: [DO", "NE]"} {
		if _, err := io.WriteString(m, c); err != nil {
			t.Fatal(err)
		}
	}
	m.finishStream()
	want := []string{"header 200", "write data: {\"a\":1}\n\n", "write data: {\"b\":2}\n\n", "write data: [DONE]"}
	if strings.Join(ew.events, "|") != strings.Join(want, "|") {
		t.Fatalf("events:\n got %q\nwant %q", ew.events, want)
	}
	if m.sse.line != nil || m.sse.lineBuf != nil || m.out.buf != nil || m.out.run != nil {
		t.Fatal("buffers kept after the stream finished")
	}
	m.release() // again: harmless
}

// A stream whose last line has no newline is scanned at the end in both
// modes: its usage counts whether or not the client asked for usage.
func TestMeterFinalLineWithoutNewline(t *testing.T) {
	const usageLine = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}"
	for _, strip := range []bool{false, true} {
		ew := &eventWriter{h: http.Header{}}
		m := newMeter(ew, strip, 0, nil)
		m.Header().Set("Content-Type", "text/event-stream")
		m.WriteHeader(200)
		if _, err := io.WriteString(m, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"+usageLine); err != nil {
			t.Fatal(err)
		}
		m.finishStream()
		if !m.sse.haveUsage || m.sse.usage != (usage{PromptTokens: 2, CompletionTokens: 3, TotalTokens: 5}) {
			t.Errorf("strip=%v: usage %+v (%v), want 2+3", strip, m.sse.usage, m.sse.haveUsage)
		}
		if got := ew.body.String(); strip == strings.Contains(got, "usage") {
			t.Errorf("strip=%v: client got %q", strip, got)
		}
	}
}

// Buffered answers reuse pooled buffers: one answer's bytes never show up
// in the next, whatever their sizes.
func TestBufferedAnswersReusePooledBuffers(t *testing.T) {
	for i, n := range []int{3000, 10, 70 << 10, 500, 4096, 1} {
		rec := httptest.NewRecorder()
		m := newMeter(rec, false, 0, nil)
		want := `{"id":"` + strings.Repeat(string(rune('a'+i)), n) + `"}`
		_, _ = m.Write([]byte(want))
		body, ok := appendGatewayUsage(m.buf.AvailableBuffer(), m.buf.Bytes(), gatewayUsage{TokensCharged: int64(n)})
		if !ok {
			t.Fatalf("answer %d not an object", i)
		}
		m.writeBuffered(body, nil)
		m.release()
		wantOut := want[:len(want)-1] + `,"gateway_usage":{"tokens_charged":` + strconv.Itoa(n) + `,"credits_charged":0,"user_balance_after":0,"user_api_key":""}}`
		if rec.Body.String() != wantOut || m.bufPtr != nil || m.buf.Cap() != 0 {
			t.Fatalf("answer %d (%d bytes): got %d bytes, buffer kept: %v", i, n, rec.Body.Len(), m.bufPtr != nil)
		}
	}
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
