package mock

import (
	"net/http"
)

// The agent APIs: the Anthropic Messages API and the OpenAI Responses API,
// with the same options as chat (prompt and completion tokens, chunks,
// faults) plus the prompt cache counts. Their bodies are built per request:
// they serve tests, not the benchmarks' hot path.

// dialect is which agent API a request speaks.
type dialect uint8

const (
	anthropicDialect dialect = iota
	responsesDialect
)

func (h *Handler) serveAgent(w http.ResponseWriter, r *http.Request, d dialect) {
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
		if d == anthropicDialect {
			writeBody(w, o.status, ctJSON, mustJSON(map[string]any{"type": "error",
				"error": map[string]any{"type": "api_error", "message": "mock error"}}))
			return
		}
		writeError(w, o.status, "mock error")
		return
	}
	model := req.Model
	if model == "" {
		model = h.opts.Model
	}
	limit := req.MaxTokens
	if d == responsesDialect {
		limit = req.MaxOutput
	}
	if req.Stream {
		h.serveAgentStream(w, r, d, model, o)
		return
	}
	completion := o.completion
	if limit > 0 && limit < completion {
		completion = limit
	}
	var body map[string]any
	if d == anthropicDialect {
		body = map[string]any{"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
			"content":     []any{map[string]any{"type": "text", "text": "This is a mock answer."}},
			"stop_reason": "end_turn", "stop_sequence": nil}
	} else {
		body = map[string]any{"id": "resp_mock", "object": "response", "created_at": created, "status": "completed", "model": model,
			"output": []any{map[string]any{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
				"content": []any{map[string]any{"type": "output_text", "text": "This is a mock answer.", "annotations": []any{}}}}}}
	}
	if !o.noUsage {
		body["usage"] = h.agentUsage(d, completion)
	}
	writeBody(w, http.StatusOK, ctJSON, mustJSON(body))
}

// agentUsage is the usage object of an answer with completion output
// tokens, in the dialect's shape.
func (h *Handler) agentUsage(d dialect, completion int) map[string]any {
	p := h.opts.PromptTokens
	if d == anthropicDialect {
		return map[string]any{"input_tokens": p - h.opts.CachedTokens - h.opts.CacheWriteTokens,
			"cache_read_input_tokens": h.opts.CachedTokens, "cache_creation_input_tokens": h.opts.CacheWriteTokens,
			"output_tokens": completion}
	}
	return map[string]any{"input_tokens": p, "input_tokens_details": map[string]any{"cached_tokens": h.opts.CachedTokens},
		"output_tokens": completion, "output_tokens_details": map[string]any{"reasoning_tokens": 0}, "total_tokens": p + completion}
}

// namedEvent is an SSE event with an event: line, as both agent APIs send.
func namedEvent(typ string, v map[string]any) []byte {
	v["type"] = typ
	return append([]byte("event: "+typ+"\n"), sseEvent(v)...)
}

func (h *Handler) serveAgentStream(w http.ResponseWriter, r *http.Request, d dialect, model string, o reqOpts) {
	h.streams.Add(1)
	h.active.Add(1)
	defer h.active.Add(-1)
	f, _ := w.(http.Flusher)
	hd := w.Header()
	hd["Content-Type"] = ctSSE
	hd["Cache-Control"] = noCache
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		if _, err := w.Write(b); err != nil {
			return false
		}
		if f != nil {
			f.Flush()
		}
		return true
	}
	var head, tail [][]byte
	var chunk []byte
	if d == anthropicDialect {
		start := h.agentUsage(d, 1)
		if o.noUsage {
			start = map[string]any{}
		}
		head = [][]byte{
			namedEvent("message_start", map[string]any{"message": map[string]any{"id": "msg_mock", "type": "message", "role": "assistant",
				"model": model, "content": []any{}, "stop_reason": nil, "stop_sequence": nil, "usage": start}}),
			namedEvent("content_block_start", map[string]any{"index": 0, "content_block": map[string]any{"type": "text", "text": ""}}),
		}
		chunk = namedEvent("content_block_delta", map[string]any{"index": 0, "delta": map[string]any{"type": "text_delta", "text": h.opts.ChunkText}})
		delta := map[string]any{"delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil}}
		if !o.noUsage {
			delta["usage"] = map[string]any{"output_tokens": o.chunks}
		}
		tail = [][]byte{
			namedEvent("content_block_stop", map[string]any{"index": 0}),
			namedEvent("message_delta", delta),
			namedEvent("message_stop", map[string]any{}),
		}
	} else {
		resp := func(status string, usage any) map[string]any {
			return map[string]any{"id": "resp_mock", "object": "response", "created_at": created, "status": status, "model": model,
				"output": []any{}, "usage": usage}
		}
		head = [][]byte{namedEvent("response.created", map[string]any{"sequence_number": 0, "response": resp("in_progress", nil)})}
		chunk = namedEvent("response.output_text.delta", map[string]any{"sequence_number": 1, "item_id": "msg_mock",
			"output_index": 0, "content_index": 0, "delta": h.opts.ChunkText, "logprobs": []any{}})
		var usage any
		if !o.noUsage {
			usage = h.agentUsage(d, o.chunks)
		}
		tail = [][]byte{namedEvent("response.completed", map[string]any{"sequence_number": 2, "response": resp("completed", usage)})}
	}
	for _, b := range head {
		if !write(b) {
			return
		}
	}
	for i := 0; i < o.chunks; i++ {
		if i > 0 && !sleep(r, o.chunkDelay) {
			return
		}
		if !write(chunk) {
			return
		}
		if o.cutAfter > 0 && i+1 >= o.cutAfter {
			panic(http.ErrAbortHandler)
		}
	}
	for _, b := range tail {
		if !write(b) {
			return
		}
	}
	h.streamsDone.Add(1)
}
