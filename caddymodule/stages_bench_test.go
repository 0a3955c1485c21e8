package caddymodule

// Benchmarks of each stage of a metered request with the answers
// bench/mock sends (OpenAI-shaped, at its realistic sizes) and the
// requests bench/cmd/bench sends, so that the per-stage figures in
// docs/benchmarks.md are those of the load benchmark's traffic.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/logging"
	"go.uber.org/zap/zapcore"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// The load benchmark's requests (bench/cmd/bench/runner.go).
const (
	stageChatMessages = `"messages":[{"role":"system","content":"You are a helpful assistant. Answer concisely and accurately."},` +
		`{"role":"user","content":"Explain how a request travels through Caddy's reverse proxy."}]`
	stageChatBody = `{"model":"mock-model",` + stageChatMessages + `,"max_tokens":1024,"temperature":0.7}`
	stageToolDefs = `"tools":[{"type":"function","function":{"name":"get_current_weather","description":"Get the current weather in a given location",` +
		`"parameters":{"type":"object","properties":{"location":{"type":"string","description":"The city and country, e.g. Paris, France"},` +
		`"unit":{"type":"string","enum":["celsius","fahrenheit"]}},"required":["location"]}}}],"tool_choice":"auto"`
	stageToolBody = `{"model":"mock-model","messages":[{"role":"user","content":"What is the weather like in Paris today?"}],` +
		stageToolDefs + `,"max_tokens":1024}`
)

// stageAnswers are the realistic answers, in the order of the load
// benchmark's cases.
var stageAnswers = []mock.Answer{mock.AnswerShort, mock.AnswerLong, mock.AnswerTool}

// stageRequest is the body the load benchmark sends for answer a.
func stageRequest(a mock.Answer, stream bool) string {
	body := stageChatBody
	if a == mock.AnswerTool {
		body = stageToolBody
	}
	if stream {
		body = strings.TrimSuffix(body, "}") + `,"stream":true}`
	}
	return body
}

// flushSplitter records what a handler writes, one piece per flush.
type flushSplitter struct {
	h      http.Header
	status int
	cur    []byte
	pieces [][]byte
}

func (f *flushSplitter) Header() http.Header         { return f.h }
func (f *flushSplitter) WriteHeader(status int)      { f.status = status }
func (f *flushSplitter) Write(p []byte) (int, error) { f.cur = append(f.cur, p...); return len(p), nil }
func (f *flushSplitter) Flush() {
	if len(f.cur) > 0 {
		f.pieces = append(f.pieces, f.cur)
		f.cur = nil
	}
}

// upstreamAnswer is what bench/mock answers to body (with the gateway's
// rewrites applied when upstream is true: include_usage on streams), as
// the pieces the upstream flushes.
func upstreamAnswer(tb testing.TB, a mock.Answer, body string, includeUsage bool) (http.Header, [][]byte) {
	tb.Helper()
	if includeUsage {
		body = strings.TrimSuffix(body, "}") + `,"stream_options":{"include_usage":true}}`
	}
	r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
	r.Header.Set(mock.HeaderAnswer, string(a))
	f := &flushSplitter{h: http.Header{}}
	mock.NewHandler(mock.Options{}).ServeHTTP(f, r)
	f.Flush()
	if f.status != http.StatusOK || len(f.pieces) == 0 {
		tb.Fatalf("mock answered %d with %d pieces", f.status, len(f.pieces))
	}
	return f.h, f.pieces
}

// replayUpstream is a next handler that answers with the recorded pieces,
// flushing after each one as reverse_proxy does for a stream.
func replayUpstream(hdr http.Header, pieces [][]byte, stream bool) caddyhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		var drain [512]byte
		for {
			if _, err := r.Body.Read(drain[:]); err != nil {
				break
			}
		}
		h := w.Header()
		for k, v := range hdr {
			h[k] = v
		}
		w.WriteHeader(http.StatusOK)
		for _, p := range pieces {
			if _, err := w.Write(p); err != nil {
				return err
			}
			if stream {
				if err := flush(w); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

// cpuMeter measures the process's CPU time (user + system, every
// goroutine: the store's background group commit included) over a
// benchmark, reported per op as cpu-ns/op. A sequential benchmark waits
// for the store between ops, so its ns/op is wall time, not work.
type cpuMeter struct{ start time.Duration }

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuMeter { return cpuMeter{start: processCPU()} }

func (c cpuMeter) report(b *testing.B) {
	b.ReportMetric(float64(processCPU()-c.start)/float64(b.N), "cpu-ns/op")
}

// sinkWriter is a response writer that keeps only the status and the end
// of the body (a recorder's growing buffer would dominate a stream's
// figures).
type sinkWriter struct {
	h      http.Header
	status int
	tail   []byte
}

func (w *sinkWriter) reset() {
	clear(w.h)
	w.status, w.tail = 0, w.tail[:0]
}
func (w *sinkWriter) Header() http.Header { return w.h }
func (w *sinkWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}
func (w *sinkWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.tail = append(w.tail, p[max(0, len(p)-512):]...)
	if len(w.tail) > 1024 {
		w.tail = append(w.tail[:0], w.tail[len(w.tail)-512:]...)
	}
	return len(p), nil
}
func (w *sinkWriter) Flush() {}

// wantTail is what the end of a metered answer shows: a JSON answer's
// gateway_usage block, a stream's end.
func wantTail(stream bool) string {
	if stream {
		return "data: [DONE]\n\n"
	}
	return `"gateway_usage":{"tokens_charged":`
}

// shippedServer is a Caddy server that writes an access log, as
// Caddyfile.example's site does: the gateway then adds its log fields.
var shippedServer = &caddyhttp.Server{Logs: &caddyhttp.ServerLogConfig{}}

// BenchmarkMeteredShipped is the whole metered ServeHTTP (auth, access,
// plan, limits, body parse and rewrite, reservation, the meter, the
// settlement and its store encoding; the group commit runs in the
// background) for each realistic answer, JSON and SSE, on a server with an
// access log, followed by the encoding of the gateway's access-log fields
// as Caddy's filter encoder writes them.
func BenchmarkMeteredShipped(b *testing.B) {
	enc := shippedLogEncoder(b)
	for _, a := range stageAnswers {
		for _, stream := range []bool{false, true} {
			name := string(a) + "/json"
			if stream {
				name = string(a) + "/sse"
			}
			b.Run(name, func(b *testing.B) {
				body := stageRequest(a, stream)
				hdr, pieces := upstreamAnswer(b, a, body, stream)
				next := replayUpstream(hdr, pieces, stream)
				e, key := benchEnv(b)
				auth := "Bearer " + key
				rec := &sinkWriter{h: http.Header{}}
				b.ReportAllocs()
				cpu := startCPU()
				for b.Loop() {
					req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
					req.RemoteAddr = "192.0.2.10:40000"
					req.Header.Set("Authorization", auth)
					req.Header.Set("Content-Type", "application/json")
					rec.reset()
					req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, shippedServer)
					if err := e.g.ServeHTTP(rec, req, next); err != nil {
						b.Fatal(err)
					}
					if rec.status != 200 || !bytes.Contains(rec.tail, []byte(wantTail(stream))) {
						b.Fatalf("status %d: %s", rec.status, rec.tail)
					}
					extra := req.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
					buf, err := enc.EncodeEntry(zapcore.Entry{Message: "handled request"}, extraFields(extra))
					if err != nil {
						b.Fatal(err)
					}
					buf.Free()
				}
				b.StopTimer()
				e.flush(b)
				cpu.report(b)
			})
		}
	}
}

// extraFields returns the fields the gateway added to the access log, as
// Caddy's logRequest passes them to the entry (ExtraLogFields keeps them
// unexported).
func extraFields(extra *caddyhttp.ExtraLogFields) []zapcore.Field {
	f := reflect.ValueOf(extra).Elem().FieldByName("fields")
	return *(*[]zapcore.Field)(unsafe.Pointer(f.UnsafeAddr()))
}

// shippedLogEncoder is the access log's encoder in Caddyfile.example: the
// filter encoder wrapping JSON, deleting request>headers>X-Api-Key.
func shippedLogEncoder(tb testing.TB) zapcore.Encoder {
	tb.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(cancel)
	fe := &logging.FilterEncoder{
		WrappedRaw: json.RawMessage(`{"format":"json"}`),
		FieldsRaw:  map[string]json.RawMessage{"request>headers>X-Api-Key": json.RawMessage(`{"filter":"delete"}`)},
	}
	if err := fe.Provision(ctx); err != nil {
		tb.Fatal(err)
	}
	return fe
}

// BenchmarkStageParse is the request stage: reading the body of a known
// length and parsing it (model, stream, caps, the spans to rewrite) with
// the prompt estimate, for the load benchmark's chat and tool requests.
func BenchmarkStageParse(b *testing.B) {
	for _, a := range []mock.Answer{mock.AnswerShort, mock.AnswerTool} {
		name := "chat"
		if a == mock.AnswerTool {
			name = "tool"
		}
		b.Run(name, func(b *testing.B) {
			body := stageRequest(a, false)
			rd := strings.NewReader(body)
			r := httptest.NewRequest("POST", "/v1/chat/completions", rd)
			w := &sinkWriter{h: http.Header{}}
			var ir inferenceRequest
			b.ReportAllocs()
			cpu := startCPU()
			for b.Loop() {
				rd.Reset(body)
				r.Body, r.ContentLength = http.NoBody, int64(len(body))
				r.Body = readCloser{rd}
				ir = inferenceRequest{}
				if _, gerr := readInferenceInto(&ir, w, r, endpointChat, defaultMaxBodySize); gerr != nil {
					b.Fatal(gerr)
				}
			}
			cpu.report(b)
			if ir.PromptTokens == 0 || ir.Model != "mock-model" {
				b.Fatalf("parsed %+v", ir)
			}
		})
	}
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

// BenchmarkStageScan is the response scan of a stream, per stream: every
// piece the upstream flushes (with the usage event the gateway asked for)
// through the strip-mode scanner, which counts the generated text, reads
// the usage and drops the usage event.
func BenchmarkStageScan(b *testing.B) {
	for _, a := range stageAnswers {
		b.Run(string(a), func(b *testing.B) {
			_, pieces := upstreamAnswer(b, a, stageRequest(a, true), true)
			var out stripOut
			var n int64
			for _, p := range pieces {
				n += int64(len(p))
			}
			b.SetBytes(n)
			b.ReportAllocs()
			cpu := startCPU()
			var s sseScanner
			for b.Loop() {
				s = sseScanner{strip: true}
				for _, p := range pieces {
					s.feed(p, &out)
					out.reset()
				}
				s.finish(&out)
				out.reset()
				s.release()
			}
			cpu.report(b)
			if !s.haveUsage || s.usage.CompletionTokens == 0 {
				b.Fatalf("no usage: %+v", s.usage)
			}
		})
	}
}

// BenchmarkStageRewrite is the response rewrite of a JSON answer: finding
// its usage and adding the gateway_usage block.
func BenchmarkStageRewrite(b *testing.B) {
	for _, a := range stageAnswers {
		b.Run(string(a), func(b *testing.B) {
			_, pieces := upstreamAnswer(b, a, stageRequest(a, false), false)
			body := bytes.Join(pieces, nil)
			dst := make([]byte, 0, 2*len(body)+256)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			cpu := startCPU()
			for b.Loop() {
				u, ok, end := answerUsage(body)
				if !ok {
					b.Fatal("no usage")
				}
				out, ok := appendGatewayUsageEnd(dst, body, end, gatewayUsage{
					TokensCharged: u.PromptTokens + u.CompletionTokens, CreditsCharged: 19,
					UserBalanceAfter: 999999168960, UserAPIKey: "gw_live_CJp7...IVesc",
				})
				if !ok || len(out) <= len(body) {
					b.Fatal("not rewritten")
				}
			}
			cpu.report(b)
		})
	}
}

// BenchmarkStageLogFields is the gateway's part of an access-log entry as
// Caddyfile.example writes it (filter encoder wrapping JSON): the caller's
// ids and the metering fields of a charged request, added to the request's
// ExtraLogFields and encoded.
func BenchmarkStageLogFields(b *testing.B) {
	enc := shippedLogEncoder(b)
	e := &keyEntry{userID: "1", keyID: "1", env: "live"}
	mr := new(meteredRequest) // the request's one allocation
	mr.adm = admission{entry: e, alloc: mr}
	s := &mr.s
	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		rc := requestCtx{extra: new(caddyhttp.ExtraLogFields)}
		rc.annotate(e)
		rc.logCaller(&mr.adm)
		s.log = meteringLog{reqID: "f11078df-0a43-47bf-9b35-10759028666b", state: logCharged, prompt: 12, completed: 7, credits: 19}
		buf, err := enc.EncodeEntry(zapcore.Entry{Message: "handled request"}, extraFields(rc.extra))
		if err != nil {
			b.Fatal(err)
		}
		if !bytes.Contains(buf.Bytes(), []byte(`"gatewayz_env":"live","gatewayz_request_id":"f11078df`)) {
			b.Fatalf("entry %s", buf.Bytes())
		}
		buf.Free()
	}
	cpu.report(b)
}

// BenchmarkStageLogHeaders is the access log's resp_headers field as
// Caddyfile.example's filter encoder writes it: plain Caddy's response
// headers, and the same with the eight the gateway adds (X-Request-Id,
// X-Gatewayz-Credits-Remaining and the six x-ratelimit-*).
func BenchmarkStageLogHeaders(b *testing.B) {
	enc := shippedLogEncoder(b)
	plain := http.Header{
		"Via": {"1.1 Caddy"}, "Content-Length": {"953"}, "Content-Type": {"application/json"},
		"Date": {"Sat, 05 Dec 2026 07:32:27 GMT"},
	}
	gateway := plain.Clone()
	for k, v := range map[string]string{
		hdrRequestID: "f11078df-0a43-47bf-9b35-10759028666b", hdrCreditsRemaining: "999999168960",
		hdrLimitRequests: "1000000000", hdrRemainingRequests: "999956232", hdrResetRequests: "27m33s",
		hdrLimitTokens: "100000000000", hdrRemainingTokens: "99999141785", hdrResetTokens: "27m33s",
	} {
		gateway[k] = []string{v}
	}
	for _, c := range []struct {
		name string
		h    http.Header
	}{{"plain", plain}, {"gateway", gateway}} {
		b.Run(c.name, func(b *testing.B) {
			fields := []zapcore.Field{zapcore.Field{Key: "resp_headers", Type: zapcore.ObjectMarshalerType,
				Interface: caddyhttp.LoggableHTTPHeader{Header: c.h}}}
			b.ReportAllocs()
			cpu := startCPU()
			for b.Loop() {
				buf, err := enc.EncodeEntry(zapcore.Entry{Message: "handled request"}, fields)
				if err != nil {
					b.Fatal(err)
				}
				buf.Free()
			}
			cpu.report(b)
		})
	}
}
