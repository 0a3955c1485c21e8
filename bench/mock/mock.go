// Package mock is a fast OpenAI-compatible upstream for benchmarks and tests.
//
// It answers POST /v1/chat/completions and /v1/completions (JSON, or an SSE
// stream when the request has "stream": true), POST /v1/embeddings and GET
// /v1/models. Response bodies are built once per model and reused, so the mock
// costs little CPU next to the proxy under test. Chat completions answer the
// tiny answer by default, or one shaped and sized as OpenAI sends it (Answer,
// answer.go).
//
// Faults can be injected for every request through Options, or per request
// through X-Mock-* headers (see the Header* constants) unless
// Options.IgnoreHeaders is set.
package mock

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Per-request override headers. Each one, when present and valid, replaces
// the matching Options field for that request only.
const (
	HeaderStatus     = "X-Mock-Status"      // int: answer with this status and an OpenAI error body
	HeaderDelay      = "X-Mock-Delay"       // Go duration: wait before the response headers
	HeaderChunks     = "X-Mock-Chunks"      // int: content chunks in a stream
	HeaderChunkDelay = "X-Mock-Chunk-Delay" // Go duration: pause between stream chunks
	HeaderCutAfter   = "X-Mock-Cut-After"   // int: abort the stream after this many content chunks
	HeaderTruncate   = "X-Mock-Truncate"    // "1": send half of a JSON body, then abort
	HeaderNoUsage    = "X-Mock-No-Usage"    // "1": omit usage from JSON and streams
	HeaderCompletion = "X-Mock-Completion"  // int: completion_tokens of a JSON answer
	HeaderAnswer     = "X-Mock-Answer"      // tiny, short, long or tool: the answer's shape and size (see Answer)
)

// Options configure the mock. The zero value is usable: see the defaults on
// each field.
type Options struct {
	// Model is reported when the request names no model. Default "mock-model".
	Model string
	// PromptTokens is usage.prompt_tokens of every answer. Default 12.
	PromptTokens int
	// CompletionTokens is usage.completion_tokens of a JSON answer (capped
	// by the request's max_tokens). Default 20.
	CompletionTokens int
	// StreamChunks is the number of content chunks in a stream; each counts
	// as one completion token. Default 16.
	StreamChunks int
	// ChunkDelay is the pause between stream chunks. Default 0.
	ChunkDelay time.Duration
	// ChunkText is the content of each stream chunk. Default "hello ".
	ChunkText string
	// Answer is the shape and size of chat completion answers. Default
	// AnswerTiny, the only one that CompletionTokens, StreamChunks,
	// ChunkText and max_tokens shape; the others are fixed answers as
	// OpenAI sends them.
	Answer Answer

	// Status, when non-zero, answers every inference request with this
	// status code and an OpenAI-shaped error body.
	Status int
	// Delay is waited before the response headers are written.
	Delay time.Duration
	// TruncateBody announces the full Content-Length of a JSON answer,
	// sends half of it and aborts the connection.
	TruncateBody bool
	// CutStreamAfter, when positive, aborts the connection after this many
	// content chunks, without the final chunk, usage or [DONE].
	CutStreamAfter int
	// OmitUsage leaves usage out of JSON answers and streams.
	OmitUsage bool
	// IgnoreHeaders disables the X-Mock-* per-request overrides.
	IgnoreHeaders bool

	// OnRequest, when set, is called with every request and its body
	// before it is answered (tests use it to inspect what a proxy sent).
	// It must not keep body after returning.
	OnRequest func(r *http.Request, body []byte)
}

// Stats are counters of what the mock served.
type Stats struct {
	Requests      int64 // every request
	Streams       int64 // streams started
	StreamsDone   int64 // streams that sent [DONE]
	ActiveStreams int64 // streams in progress now
}

// Handler is the mock upstream. It is safe for concurrent use.
type Handler struct {
	opts   Options
	models sync.Map // model name -> *bodies
	nModel atomic.Int64
	def    *bodies

	requests, streams, streamsDone, active atomic.Int64
}

// NewHandler returns a mock upstream with the given options.
func NewHandler(opts Options) *Handler {
	if opts.Model == "" {
		opts.Model = "mock-model"
	}
	if opts.PromptTokens == 0 {
		opts.PromptTokens = 12
	}
	if opts.CompletionTokens == 0 {
		opts.CompletionTokens = 20
	}
	if opts.StreamChunks == 0 {
		opts.StreamChunks = 16
	}
	if opts.ChunkText == "" {
		opts.ChunkText = "hello "
	}
	if opts.Answer == "" {
		opts.Answer = AnswerTiny
	}
	h := &Handler{opts: opts}
	h.def = h.build(opts.Model)
	h.models.Store(opts.Model, h.def)
	return h
}

// Stats returns the counters so far.
func (h *Handler) Stats() Stats {
	return Stats{
		Requests:      h.requests.Load(),
		Streams:       h.streams.Load(),
		StreamsDone:   h.streamsDone.Load(),
		ActiveStreams: h.active.Load(),
	}
}

// maxCachedModels bounds the per-model body cache.
const maxCachedModels = 256

// bodies are the precomputed responses for one model name.
type bodies struct {
	json, jsonNoUsage []byte // chat completion with opts.CompletionTokens
	firstChunk        []byte // SSE event with role and content
	chunk             []byte // SSE event with content
	finalChunk        []byte // SSE event with finish_reason
	usageChunks       map[int][]byte
	embeddings        []byte
	models            []byte
	shaped            map[Answer]*shaped // every answer but AnswerTiny
	mu                sync.Mutex
}

const created = 1735689600 // fixed, so bodies can be precomputed

func (h *Handler) build(model string) *bodies {
	b := &bodies{usageChunks: make(map[int][]byte), shaped: make(map[Answer]*shaped)}
	for _, a := range Answers[1:] {
		b.shaped[a] = buildShaped(a, model, h.opts.PromptTokens)
	}
	b.json = h.chatJSON(model, h.opts.CompletionTokens, true)
	b.jsonNoUsage = h.chatJSON(model, h.opts.CompletionTokens, false)
	b.firstChunk = sseEvent(map[string]any{
		"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model,
		"choices": []any{map[string]any{"index": 0, "delta": map[string]any{"role": "assistant", "content": h.opts.ChunkText}, "finish_reason": nil}},
	})
	b.chunk = sseEvent(map[string]any{
		"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model,
		"choices": []any{map[string]any{"index": 0, "delta": map[string]any{"content": h.opts.ChunkText}, "finish_reason": nil}},
	})
	b.finalChunk = sseEvent(map[string]any{
		"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model,
		"choices": []any{map[string]any{"index": 0, "delta": map[string]any{}, "finish_reason": "stop"}},
	})
	b.usageChunks[h.opts.StreamChunks] = h.usageChunk(model, h.opts.StreamChunks)
	emb := make([]float64, 8)
	for i := range emb {
		emb[i] = float64(i+1) / 10
	}
	b.embeddings = mustJSON(map[string]any{
		"object": "list", "model": model,
		"data":  []any{map[string]any{"object": "embedding", "index": 0, "embedding": emb}},
		"usage": map[string]any{"prompt_tokens": h.opts.PromptTokens, "total_tokens": h.opts.PromptTokens},
	})
	b.models = mustJSON(map[string]any{
		"object": "list",
		"data":   []any{map[string]any{"id": model, "object": "model", "created": created, "owned_by": "mock"}},
	})
	return b
}

func (h *Handler) chatJSON(model string, completion int, usage bool) []byte {
	m := map[string]any{
		"id": "chatcmpl-mock", "object": "chat.completion", "created": created, "model": model,
		"choices": []any{map[string]any{
			"index":         0,
			"message":       map[string]any{"role": "assistant", "content": "This is a mock answer."},
			"finish_reason": "stop",
		}},
	}
	if usage {
		m["usage"] = map[string]any{
			"prompt_tokens": h.opts.PromptTokens, "completion_tokens": completion,
			"total_tokens": h.opts.PromptTokens + completion,
		}
	}
	return mustJSON(m)
}

func (h *Handler) usageChunk(model string, completion int) []byte {
	return sseEvent(map[string]any{
		"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model,
		"choices": []any{},
		"usage": map[string]any{
			"prompt_tokens": h.opts.PromptTokens, "completion_tokens": completion,
			"total_tokens": h.opts.PromptTokens + completion,
		},
	})
}

func (b *bodies) usageFor(h *Handler, model string, completion int) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	u, ok := b.usageChunks[completion]
	if !ok {
		u = h.usageChunk(model, completion)
		if len(b.usageChunks) < 64 {
			b.usageChunks[completion] = u
		}
	}
	return u
}

func (h *Handler) bodiesFor(model string) *bodies {
	if model == "" {
		return h.def
	}
	if b, ok := h.models.Load(model); ok {
		return b.(*bodies)
	}
	b := h.build(model)
	if h.nModel.Add(1) <= maxCachedModels {
		h.models.Store(model, b)
	}
	return b
}

func sseEvent(v any) []byte {
	return append(append([]byte("data: "), mustJSON(v)...), '\n', '\n')
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var (
	ctJSON     = []string{"application/json"}
	ctSSE      = []string{"text/event-stream"}
	noCache    = []string{"no-cache"}
	doneEvent  = []byte("data: [DONE]\n\n")
	bufPool    = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	maxReqBody = int64(4 << 20)
)

// request holds the fields of an inference request the mock looks at.
type request struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	MaxTokens     int    `json:"max_tokens"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// reqOpts are the options in force for one request.
type reqOpts struct {
	status, chunks, cutAfter, completion int
	delay, chunkDelay                    time.Duration
	truncate, noUsage                    bool
	answer                               Answer
}

func (h *Handler) optsFor(r *http.Request) reqOpts {
	o := reqOpts{
		status: h.opts.Status, chunks: h.opts.StreamChunks, cutAfter: h.opts.CutStreamAfter,
		completion: h.opts.CompletionTokens, delay: h.opts.Delay, chunkDelay: h.opts.ChunkDelay,
		truncate: h.opts.TruncateBody, noUsage: h.opts.OmitUsage, answer: h.opts.Answer,
	}
	if h.opts.IgnoreHeaders {
		return o
	}
	hd := r.Header
	if len(hd) == 0 {
		return o
	}
	intHdr := func(name string, dst *int) {
		if v := hd[name]; len(v) > 0 {
			if n, err := strconv.Atoi(v[0]); err == nil && n >= 0 {
				*dst = n
			}
		}
	}
	durHdr := func(name string, dst *time.Duration) {
		if v := hd[name]; len(v) > 0 {
			if d, err := time.ParseDuration(v[0]); err == nil && d >= 0 {
				*dst = d
			}
		}
	}
	intHdr(HeaderStatus, &o.status)
	if o.status != 0 && (o.status < 200 || o.status > 599) {
		o.status = http.StatusInternalServerError
	}
	intHdr(HeaderChunks, &o.chunks)
	intHdr(HeaderCutAfter, &o.cutAfter)
	intHdr(HeaderCompletion, &o.completion)
	durHdr(HeaderDelay, &o.delay)
	durHdr(HeaderChunkDelay, &o.chunkDelay)
	if v := hd[HeaderTruncate]; len(v) > 0 {
		o.truncate = v[0] == "1" || v[0] == "true"
	}
	if v := hd[HeaderNoUsage]; len(v) > 0 {
		o.noUsage = v[0] == "1" || v[0] == "true"
	}
	if v := hd[HeaderAnswer]; len(v) > 0 {
		if a, err := ParseAnswer(v[0]); err == nil {
			o.answer = a
		}
	}
	return o
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.requests.Add(1)
	switch r.URL.Path {
	case "/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions":
		h.serveCompletion(w, r)
	case "/v1/embeddings", "/embeddings":
		h.serveEmbeddings(w, r)
	case "/v1/models", "/models":
		if h.opts.OnRequest != nil {
			h.opts.OnRequest(r, nil)
		}
		writeBody(w, http.StatusOK, ctJSON, h.def.models)
	default:
		writeError(w, http.StatusNotFound, "no such route: "+r.URL.Path)
	}
}

func (h *Handler) readRequest(w http.ResponseWriter, r *http.Request) (*bytes.Buffer, request, bool) {
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	var req request
	if _, err := buf.ReadFrom(io.LimitReader(r.Body, maxReqBody)); err != nil {
		bufPool.Put(buf)
		writeError(w, http.StatusBadRequest, "cannot read body")
		return nil, req, false
	}
	if h.opts.OnRequest != nil {
		h.opts.OnRequest(r, buf.Bytes())
	}
	if buf.Len() > 0 {
		if err := json.Unmarshal(buf.Bytes(), &req); err != nil {
			bufPool.Put(buf)
			writeError(w, http.StatusBadRequest, "invalid JSON body")
			return nil, req, false
		}
	}
	return buf, req, true
}

func (h *Handler) serveEmbeddings(w http.ResponseWriter, r *http.Request) {
	buf, req, ok := h.readRequest(w, r)
	if !ok {
		return
	}
	bufPool.Put(buf)
	o := h.optsFor(r)
	if !sleep(r, o.delay) {
		return
	}
	if o.status != 0 {
		writeError(w, o.status, "mock error")
		return
	}
	writeBody(w, http.StatusOK, ctJSON, h.bodiesFor(req.Model).embeddings)
}

func (h *Handler) serveCompletion(w http.ResponseWriter, r *http.Request) {
	buf, req, ok := h.readRequest(w, r)
	if !ok {
		return
	}
	bufPool.Put(buf)
	o := h.optsFor(r)
	if !sleep(r, o.delay) {
		return
	}
	if o.status != 0 {
		writeError(w, o.status, "mock error")
		return
	}
	model := req.Model
	if model == "" {
		model = h.opts.Model
	}
	b := h.bodiesFor(req.Model)
	includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage && !o.noUsage
	if s := b.shaped[o.answer]; s != nil {
		if req.Stream {
			evs := s.events
			if includeUsage {
				evs = s.eventsWithUsage
			}
			h.serveStream(w, r, o, len(evs), s.completion+1, func(i int) []byte { return evs[i] })
			return
		}
		body := s.json
		if o.noUsage {
			body = s.jsonNoUsage
		}
		writeJSONAnswer(w, body, o.truncate)
		return
	}
	if req.Stream {
		n := o.chunks + 1 // content chunks, then the final chunk
		if includeUsage {
			n++
		}
		h.serveStream(w, r, o, n, o.chunks, func(i int) []byte {
			switch {
			case i == 0 && o.chunks > 0:
				return b.firstChunk
			case i < o.chunks:
				return b.chunk
			case i == o.chunks:
				return b.finalChunk
			}
			return b.usageFor(h, model, o.chunks)
		})
		return
	}
	completion := o.completion
	if req.MaxTokens > 0 && req.MaxTokens < completion {
		completion = req.MaxTokens
	}
	var body []byte
	switch {
	case o.noUsage:
		body = b.jsonNoUsage
		if completion != h.opts.CompletionTokens {
			body = h.chatJSON(model, completion, false)
		}
	case completion == h.opts.CompletionTokens:
		body = b.json
	default:
		body = h.chatJSON(model, completion, true)
	}
	writeJSONAnswer(w, body, o.truncate)
}

// writeJSONAnswer sends a JSON answer, or (truncate) half of it and aborts
// the connection.
func writeJSONAnswer(w http.ResponseWriter, body []byte, truncate bool) {
	if truncate {
		w.Header()["Content-Type"] = ctJSON
		w.Header()["Content-Length"] = []string{strconv.Itoa(len(body))}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body[:len(body)/2])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	writeBody(w, http.StatusOK, ctJSON, body)
}

// serveStream sends n SSE events, event(i) for i < n, then [DONE]. The
// first content events are content chunks: o.cutAfter aborts within them.
func (h *Handler) serveStream(w http.ResponseWriter, r *http.Request, o reqOpts, n, content int, event func(i int) []byte) {
	h.streams.Add(1)
	h.active.Add(1)
	defer h.active.Add(-1)
	f, _ := w.(http.Flusher)
	hd := w.Header()
	hd["Content-Type"] = ctSSE
	hd["Cache-Control"] = noCache
	w.WriteHeader(http.StatusOK)
	var timer *time.Timer
	if o.chunkDelay > 0 {
		timer = time.NewTimer(o.chunkDelay)
		timer.Stop()
		defer timer.Stop()
	}
	done := r.Context().Done()
	for i := 0; i < n; i++ {
		if i > 0 && i < content && timer != nil {
			timer.Reset(o.chunkDelay)
			select {
			case <-timer.C:
			case <-done:
				return
			}
		}
		if _, err := w.Write(event(i)); err != nil {
			return
		}
		if i < content && f != nil {
			f.Flush()
		}
		if o.cutAfter > 0 && i < content && i+1 >= o.cutAfter {
			panic(http.ErrAbortHandler)
		}
	}
	if _, err := w.Write(doneEvent); err != nil {
		return
	}
	if f != nil {
		f.Flush()
	}
	h.streamsDone.Add(1)
}

func sleep(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func writeBody(w http.ResponseWriter, status int, ct []string, body []byte) {
	hd := w.Header()
	hd["Content-Type"] = ct
	hd["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	typ := "mock_error"
	switch {
	case status == http.StatusTooManyRequests:
		typ = "rate_limit_error"
	case status >= 500:
		typ = "server_error"
	case status >= 400:
		typ = "invalid_request_error"
	}
	body := mustJSON(map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": status}})
	writeBody(w, status, ctJSON, body)
}

// String describes the options, for logs.
func (o Options) String() string {
	return fmt.Sprintf("model=%s chunks=%d chunk_delay=%s status=%d delay=%s", o.Model, o.StreamChunks, o.ChunkDelay, o.Status, o.Delay)
}
