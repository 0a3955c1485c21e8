package caddymodule

// sseDialect is whose server-sent events a stream carries.
type sseDialect uint8

const (
	// dialectOpenAI: chat and legacy completions chunks, usage in the
	// last chunk (which the gateway may have asked for: see sse.go).
	dialectOpenAI sseDialect = iota
	// dialectAnthropic: the Messages API's message_start,
	// content_block_delta, message_delta and message_stop events.
	dialectAnthropic
	// dialectResponses: the Responses API's typed events, usage in
	// response.completed (sse_responses.go).
	dialectResponses
)

// dialectFor is the event dialect of an endpoint's streams.
func dialectFor(endpoint string) sseDialect {
	switch endpoint {
	case endpointMessages:
		return dialectAnthropic
	case endpointResponses:
		return dialectResponses
	}
	return dialectOpenAI
}

// sseEvent is what the dialect scanners read of an event's data: its
// type and the top-level members that carry usage or generated text (raw
// JSON values, nil when absent).
type sseEvent struct {
	typ                             string
	message, usage, delta, response []byte
}

// parseSSEEvent reads the top level of an event's data; false when the
// data is not a JSON object.
func parseSSEEvent(data []byte) (ev sseEvent, ok bool) {
	if !validJSON(data) {
		return ev, false
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return ev, false
	}
	for it := (objIter{b: data, i: i}); it.next(); {
		switch k, v := it.key, it.val; {
		case keyIs(k, "type"):
			ev.typ, _ = decodeString(v)
		case keyIs(k, "message"):
			ev.message = v
		case keyIs(k, "usage"):
			ev.usage = v
		case keyIs(k, "delta"):
			ev.delta = v
		case keyIs(k, "response"):
			ev.response = v
		}
	}
	return ev, true
}

// member returns the value of key in the JSON object obj (validated), or
// nil.
func member(obj []byte, key string) []byte {
	if len(obj) == 0 || obj[0] != '{' {
		return nil
	}
	var v []byte
	for it := (objIter{b: obj}); it.next(); {
		if keyIs(it.key, key) {
			v = it.val
		}
	}
	return v
}

// dialectEvent scans one data event of a non-OpenAI stream.
func (s *sseScanner) dialectEvent(data []byte) {
	ev, ok := parseSSEEvent(data)
	if !ok {
		return
	}
	switch s.dialect {
	case dialectAnthropic:
		s.anthropicEvent(&ev)
	case dialectResponses:
		s.responsesEvent(&ev)
	}
}

// anthropicUsage accumulates the usage of a Messages stream: each count
// is the last one reported (message_delta's counts are cumulative).
type anthropicUsage struct {
	input, output, cacheRead, cacheWrite int64
}

// merge takes the counts the usage object obj reports.
func (a *anthropicUsage) merge(obj []byte) bool {
	var u usageFields
	if len(obj) == 0 || obj[0] != '{' || !decodeUsageObject(obj, &u) {
		return false
	}
	for _, f := range [...]struct {
		v   []byte
		dst *int64
	}{{u.input, &a.input}, {u.output, &a.output}, {u.cacheReadExtra, &a.cacheRead}, {u.cacheWriteExtra, &a.cacheWrite}} {
		if n, ok := parseCount(f.v); ok {
			*f.dst = n
		}
	}
	return true
}

// usage is the accumulated usage in the gateway's terms.
func (a *anthropicUsage) usage() usage {
	p := a.input + a.cacheRead + a.cacheWrite
	return usage{PromptTokens: p, CompletionTokens: a.output, TotalTokens: p + a.output,
		CacheReadTokens: a.cacheRead, CacheWriteTokens: a.cacheWrite}
}

// anthropicEvent scans a Messages stream event: message_start carries the
// prompt side of the usage, message_delta the cumulative output (the
// final usage once it came), content_block_delta the generated text
// (text, thinking, tool input JSON), counted for an estimate should the
// stream end before message_delta.
func (s *sseScanner) anthropicEvent(ev *sseEvent) {
	switch ev.typ {
	case "message_start":
		if s.anthropic.merge(member(ev.message, "usage")) {
			u := s.anthropic.usage()
			u.CompletionTokens, u.TotalTokens = 0, u.PromptTokens
			s.prompt, s.havePrompt = u, true
		}
	case "message_delta":
		if s.anthropic.merge(ev.usage) {
			s.usage, s.haveUsage = s.anthropic.usage(), true
		}
	case "content_block_delta":
		for _, k := range [...]string{"text", "thinking", "partial_json"} {
			if v := member(ev.delta, k); len(v) > 0 && v[0] == '"' {
				countJSONString(v[1:len(v)-1], &s.generated)
			}
		}
	}
}
