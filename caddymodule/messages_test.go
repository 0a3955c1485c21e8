package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// parseExpecting parses body for endpoint: a 400 whose message contains
// wantErr (then nil), or, with wantErr empty, the request.
func parseExpecting(t *testing.T, body, endpoint, wantErr string) *inferenceRequest {
	t.Helper()
	ir, gerr := parseInference([]byte(body), endpoint)
	if wantErr != "" {
		if gerr == nil || gerr.Status != http.StatusBadRequest || !strings.Contains(gerr.Message, wantErr) {
			t.Fatalf("got %+v, want a 400 with %q", gerr, wantErr)
		}
		return nil
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return ir
}

func TestParseMessages(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr string
		prompt  int64
		max     int64
		stream  bool
	}{
		{name: "string content", body: `{"model":"claude","max_tokens":100,"messages":[{"role":"user","content":"hello there"}]}`,
			prompt: estimateText("hello there") + msgOverheadTokens + replyPrimingTokens, max: 100},
		{name: "blocks, system, tools, stream", body: `{"model":"claude","max_tokens":5,"stream":true,"system":[{"type":"text","text":"be brief"}],
			"tools":[{"name":"t"}],"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image","source":{}}]},
			{"role":"assistant","content":[{"type":"tool_use","id":"1","name":"t","input":{}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"1","content":[{"type":"text","text":"ok"}]}]}]}`,
			max: 5, stream: true, prompt: -1},
		{name: "max_tokens missing", body: `{"model":"claude","messages":[{"role":"user","content":"x"}]}`, wantErr: "'max_tokens' is required"},
		{name: "max_tokens zero", body: `{"model":"claude","max_tokens":0,"messages":[{"role":"user","content":"x"}]}`, wantErr: "'max_tokens' must be an integer of at least 1"},
		{name: "max_tokens negative", body: `{"model":"claude","max_tokens":-1,"messages":[]}`, wantErr: "'max_tokens' must be an integer of at least 1"},
		{name: "max_tokens null", body: `{"model":"claude","max_tokens":null,"messages":[]}`, wantErr: "'max_tokens' is required"},
		{name: "no model", body: `{"max_tokens":1,"messages":[]}`, wantErr: "'model' is required"},
		{name: "no messages", body: `{"model":"c","max_tokens":1}`, wantErr: "'messages' is required"},
		{name: "messages not array", body: `{"model":"c","max_tokens":1,"messages":{}}`, wantErr: "must be an array"},
		{name: "message not object", body: `{"model":"c","max_tokens":1,"messages":["x"]}`, wantErr: "'messages[0]' must be an object"},
		{name: "content missing", body: `{"model":"c","max_tokens":1,"messages":[{"role":"user"}]}`, wantErr: "'messages[0].content' is required"},
		{name: "content number", body: `{"model":"c","max_tokens":1,"messages":[{"role":"user","content":5}]}`, wantErr: "content blocks"},
		{name: "bad system", body: `{"model":"c","max_tokens":1,"system":5,"messages":[]}`, wantErr: "'system'"},
		{name: "bad stream", body: `{"model":"c","max_tokens":1,"stream":"yes","messages":[]}`, wantErr: "'stream' must be a boolean"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ir := parseExpecting(t, tt.body, endpointMessages, tt.wantErr)
			if ir == nil {
				return
			}
			if ir.MaxTokens != tt.max || ir.Stream != tt.stream || ir.Model == "" || ir.PromptTokens <= 0 {
				t.Fatalf("parsed %+v", ir)
			}
			if tt.prompt >= 0 && ir.PromptTokens != tt.prompt {
				t.Fatalf("prompt estimate %d, want %d", ir.PromptTokens, tt.prompt)
			}
			if ir.injectIncludeUsage() {
				t.Fatal("a Messages request got stream_options")
			}
		})
	}
}

func TestParseResponses(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr string
		max     int64
	}{
		{name: "string input", body: `{"model":"gpt-5","input":"hello"}`},
		{name: "items and cap", body: `{"model":"gpt-5","max_output_tokens":64,"instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"hi"},{"type":"input_image","image_url":"x"}]},{"type":"function_call_output","call_id":"c","output":"42"}],"previous_response_id":"resp_1","store":true}`, max: 64},
		{name: "instructions only", body: `{"model":"gpt-5","instructions":"say hi"}`},
		{name: "no input", body: `{"model":"gpt-5"}`, wantErr: "'input' is required"},
		{name: "bad input", body: `{"model":"gpt-5","input":5}`, wantErr: "'input' must be"},
		{name: "bad item", body: `{"model":"gpt-5","input":["x"]}`, wantErr: "'input[0]'"},
		{name: "bad cap", body: `{"model":"gpt-5","input":"x","max_output_tokens":1.5}`, wantErr: "'max_output_tokens'"},
		{name: "bad instructions", body: `{"model":"gpt-5","input":"x","instructions":[]}`, wantErr: "'instructions' must be a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ir := parseExpecting(t, tt.body, endpointResponses, tt.wantErr)
			if ir == nil {
				return
			}
			if ir.MaxTokens != tt.max || ir.PromptTokens <= 0 {
				t.Fatalf("parsed %+v", ir)
			}
		})
	}
	// The default cap is added as max_output_tokens; a client's is rewritten in place.
	for body, want := range map[string]string{
		`{"model":"m","input":"x"}`:                          `{"model":"m","input":"x","max_output_tokens":4096}`,
		`{"model":"m","max_output_tokens":9999,"input":"x"}`: `{"model":"m","max_output_tokens":100,"input":"x"}`,
	} {
		ir, gerr := parseInference([]byte(body), endpointResponses)
		if gerr != nil {
			t.Fatal(gerr)
		}
		cap := int64(4096)
		if ir.MaxTokens > 0 {
			cap = 100
		}
		ir.setMaxTokens(cap, maxTokensFieldDefault)
		if got := string(ir.body()); got != want {
			t.Fatalf("body %s, want %s", got, want)
		}
	}
}

// anthropicStream is a Messages API stream with prompt caching.
const anthropicStream = "event: message_start\n" +
	`data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-x","stop_reason":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1}}}` + "\n\n" +
	"event: content_block_start\n" +
	`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}` + "\n\n" +
	"event: ping\n" + `data: {"type": "ping"}` + "\n\n" +
	"event: content_block_delta\n" +
	`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}` + "\n\n" +
	"event: content_block_delta\n" +
	`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there, friend"}}` + "\n\n" +
	"event: content_block_stop\n" + `data: {"type":"content_block_stop","index":0}` + "\n\n" +
	"event: message_delta\n" +
	`data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}` + "\n\n" +
	"event: message_stop\n" + `data: {"type":"message_stop"}` + "\n\n"

// responsesStream is a Responses API stream with cached input.
const responsesStream = "event: response.created\n" +
	`data: {"type":"response.created","response":{"id":"resp_1","object":"response","status":"in_progress","usage":null}}` + "\n\n" +
	"event: response.output_text.delta\n" +
	`data: {"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello"}` + "\n\n" +
	"event: response.output_text.delta\n" +
	`data: {"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":" there"}` + "\n\n" +
	"event: response.output_text.done\n" +
	`data: {"type":"response.output_text.done","item_id":"msg_1","output_index":0,"content_index":0,"text":"Hello there"}` + "\n\n" +
	"event: response.completed\n" +
	`data: {"type":"response.completed","response":{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"Hello there"}]}],"usage":{"input_tokens":300,"input_tokens_details":{"cached_tokens":256},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":302}}}` + "\n\n"

func TestDialectScanners(t *testing.T) {
	tests := []struct {
		name       string
		dialect    sseDialect
		stream     string
		cut        string // the stream ends before this
		want       usage
		haveUsage  bool
		havePrompt bool
		generated  int64
	}{
		{name: "anthropic", dialect: dialectAnthropic, stream: anthropicStream, haveUsage: true, havePrompt: true,
			want:      usage{PromptTokens: 2112, CompletionTokens: 15, TotalTokens: 2127, CacheReadTokens: 2000, CacheWriteTokens: 100},
			generated: estimateText("Hello there, friend")},
		{name: "anthropic cut before message_delta", dialect: dialectAnthropic, stream: anthropicStream, cut: "event: message_delta", havePrompt: true,
			generated: estimateText("Hello there, friend")},
		{name: "responses", dialect: dialectResponses, stream: responsesStream, haveUsage: true,
			want:      usage{PromptTokens: 300, CompletionTokens: 2, TotalTokens: 302, CacheReadTokens: 256},
			generated: estimateText("Hello there")},
		{name: "responses cut", dialect: dialectResponses, stream: responsesStream, cut: "event: response.completed",
			generated: estimateText("Hello there")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := tt.stream
			if tt.cut != "" {
				stream = stream[:strings.Index(stream, tt.cut)]
			}
			// Fed in small pieces: events split across writes.
			for _, step := range []int{1, 7, len(stream)} {
				s := sseScanner{dialect: tt.dialect}
				for i := 0; i < len(stream); i += step {
					s.feed([]byte(stream[i:min(i+step, len(stream))]), nil)
				}
				s.finish(nil)
				if s.haveUsage != tt.haveUsage || (tt.haveUsage && s.usage != tt.want) {
					t.Fatalf("step %d: usage %+v %v, want %+v %v", step, s.usage, s.haveUsage, tt.want, tt.haveUsage)
				}
				if s.havePrompt != tt.havePrompt || (tt.havePrompt && (s.prompt.PromptTokens != 2112 || s.prompt.CacheReadTokens != 2000)) {
					t.Fatalf("step %d: prompt %+v %v", step, s.prompt, s.havePrompt)
				}
				if got := s.generated.tokens(); got != tt.generated {
					t.Fatalf("step %d: generated %d, want %d", step, got, tt.generated)
				}
				s.release()
			}
		})
	}
}

// anthropicUpstream is a mock Messages API: JSON or a stream as asked,
// with prompt caching in the usage; it records the request it got.
// abortAfter > 0 panics like reverse_proxy on a client disconnect after
// that many content events.
func anthropicUpstream(seen **http.Request, got *[]byte, abortAfter int) caddyhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		b, _ := io.ReadAll(r.Body)
		if seen != nil {
			*seen = r
		}
		if got != nil {
			*got = b
		}
		if !strings.Contains(string(b), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			_, err := io.WriteString(w, `{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":15}}`)
			return err
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		for i, ev := range strings.SplitAfter(anthropicStream, "\n\n") {
			if abortAfter > 0 && i == abortAfter {
				panic(http.ErrAbortHandler)
			}
			_, _ = io.WriteString(w, ev)
			_ = rc.Flush()
		}
		return nil
	}
}

// claudePrices: prompt 3 credits per 1K... in credits per 1K tokens:
// prompt 3000, completion 15000, cache read 300, cache write 3750.
func claudePrices(a *App, _ *Gateway) {
	a.Prices = []ModelPrice{{Model: "claude-*", PromptPer1K: 3000, CompletionPer1K: 15000, CacheReadPer1K: new(int64(300)), CacheWritePer1K: new(int64(3750))}}
}

// claudeCost is the cost of the mock's usage at claudePrices: 12×3 +
// 2000×0.3 + 100×3.75 + 15×15 = 36 + 600 + 375 + 225.
const claudeCost = 1236

const messagesBody = `{"model":"claude-x","max_tokens":100,"messages":[{"role":"user","content":"hello"}]}`

func TestMeteredMessages(t *testing.T) {
	e := newTestEnv(t, claudePrices)
	key, k := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 100_000)

	var seen *http.Request
	rec, p := meterDo(t, e, "/v1/messages", messagesBody, anthropicUpstream(&seen, nil, 0),
		"x-api-key: "+key, "anthropic-version: 2023-06-01", "anthropic-beta: prompt-caching-2024-07-31")
	if p != nil || rec.Code != 200 {
		t.Fatalf("status %d %v: %s", rec.Code, p, rec.Body)
	}
	if seen.Header.Get("X-Api-Key") != "" || seen.Header.Get("Authorization") != "" {
		t.Fatal("the caller's key reached the upstream")
	}
	if seen.Header.Get("Anthropic-Version") != "2023-06-01" || seen.Header.Get("Anthropic-Beta") != "prompt-caching-2024-07-31" {
		t.Fatalf("anthropic headers not passed: %v", seen.Header)
	}
	var out struct {
		Usage        map[string]int64 `json:"usage"`
		GatewayUsage gatewayUsage     `json:"gateway_usage"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.Usage["cache_read_input_tokens"] != 2000 || out.GatewayUsage.CreditsCharged != claudeCost ||
		out.GatewayUsage.CachedTokens != 2000 || out.GatewayUsage.CacheWriteTokens != 100 {
		t.Fatalf("body %s", rec.Body)
	}
	if b := balanceOf(t, e, k.UserID); b.Credits != 100_000-claudeCost || b.Reserved != 0 {
		t.Fatalf("balance %+v", b)
	}

	// A stream, billed from message_start and message_delta.
	rec, p = meterDo(t, e, "/v1/messages", strings.Replace(messagesBody, `"max_tokens"`, `"stream":true,"max_tokens"`, 1),
		anthropicUpstream(nil, nil, 0), "Authorization: Bearer "+key)
	if p != nil || rec.Code != 200 || rec.Body.String() != anthropicStream {
		t.Fatalf("stream %d %v: %q", rec.Code, p, rec.Body)
	}
	if b := balanceOf(t, e, k.UserID); b.Credits != 100_000-2*claudeCost || b.Reserved != 0 {
		t.Fatalf("balance after stream %+v", b)
	}

	// An abandoned stream: the prompt side as message_start reported it,
	// the output estimated from what was streamed.
	_, p = meterDo(t, e, "/v1/messages", strings.Replace(messagesBody, `"max_tokens"`, `"stream":true,"max_tokens"`, 1),
		anthropicUpstream(nil, nil, 4), "x-api-key: "+key)
	if p != http.ErrAbortHandler {
		t.Fatalf("panic %v", p)
	}
	abandoned := e.app.Pricing().usageCost("claude-x", usage{PromptTokens: 2112, CacheReadTokens: 2000, CacheWriteTokens: 100,
		CompletionTokens: estimateText("Hello")})
	if b := balanceOf(t, e, k.UserID); b.Credits != 100_000-2*claudeCost-abandoned || b.Reserved != 0 {
		t.Fatalf("balance after abandoned stream %+v (abandoned cost %d)", b, abandoned)
	}
	recs := usageOf(t, e, k.UserID)
	if len(recs) != 3 || !recs[0].Estimated || recs[0].CachedTokens != 2000 || recs[1].Estimated ||
		recs[1].CachedTokens != 2000 || recs[1].CacheWriteTokens != 100 || recs[1].Endpoint != endpointMessages {
		t.Fatalf("usage %+v", recs)
	}
	if h := rec.Header(); h.Get(hdrAnthropicRemainingRequests) != h.Get(hdrRemainingRequests) ||
		h.Get(hdrAnthropicLimitTokens) != h.Get(hdrLimitTokens) || (h.Get(hdrResetRequests) != "") != (h.Get(hdrAnthropicResetRequests) != "") {
		t.Fatalf("anthropic rate-limit headers do not repeat ours: %v", h)
	}
}

// anthropicErrorOf decodes an Anthropic error body.
func anthropicErrorOf(t testing.TB, body string) (typ, msg string) {
	t.Helper()
	var v struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil || v.Type != "error" || v.Error.Type == "" || v.Error.Message == "" {
		t.Fatalf("not an Anthropic error: %s", body)
	}
	return v.Error.Type, v.Error.Message
}

func TestMessagesErrors(t *testing.T) {
	e := newTestEnv(t, func(a *App, g *Gateway) {
		claudePrices(a, g)
		g.Limits.RequestsPerMinute = 100
	})
	key, k := e.newKey(t, "", nil)
	poor, pk := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 100_000)
	setBalance(t, e, pk.UserID, 10)
	upstreamErr := func(status int, body string) caddyhttp.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, err := io.WriteString(w, body)
			return err
		}
	}
	ok := anthropicUpstream(nil, nil, 0)
	tests := []struct {
		name     string
		target   string
		body     string
		next     caddyhttp.HandlerFunc
		headers  []string
		status   int
		typ      string
		contains string
	}{
		{"no key", "/v1/messages", messagesBody, ok, nil, 401, "authentication_error", "Missing API key"},
		{"bad key", "/v1/messages", messagesBody, ok, []string{"x-api-key: gw_live_nope"}, 401, "authentication_error", "Invalid API key"},
		{"no max_tokens", "/v1/messages", `{"model":"claude-x","messages":[]}`, ok, []string{"x-api-key: " + key}, 400, "invalid_request_error", "max_tokens"},
		{"not json", "/v1/messages", `{`, ok, []string{"x-api-key: " + key}, 400, "invalid_request_error", "JSON"},
		{"no credits", "/v1/messages", messagesBody, ok, []string{"x-api-key: " + poor}, 402, "billing_error", "Insufficient credits"},
		{"count_tokens not listed", "/v1/messages/count_tokens", messagesBody, ok, []string{"x-api-key: " + key}, 404, "not_found_error", "Unknown request URL"},
		{"upstream overloaded", "/v1/messages", messagesBody,
			upstreamErr(529, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`), []string{"x-api-key: " + key}, 529, "overloaded_error", "Overloaded"},
		{"upstream error not in shape", "/v1/messages", messagesBody,
			upstreamErr(500, `internal trace`), []string{"x-api-key: " + key}, 500, "api_error", "upstream error"},
		{"upstream rejects the gateway", "/v1/messages", messagesBody,
			upstreamErr(401, `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`), []string{"x-api-key: " + key}, 502, "api_error", "credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := balanceOf(t, e, k.UserID)
			rec, p := meterDo(t, e, tt.target, tt.body, tt.next, tt.headers...)
			if p != nil || rec.Code != tt.status {
				t.Fatalf("status %d %v, want %d: %s", rec.Code, p, tt.status, rec.Body)
			}
			typ, msg := anthropicErrorOf(t, rec.Body.String())
			if typ != tt.typ || !strings.Contains(msg, tt.contains) {
				t.Fatalf("error %s %q, want %s containing %q", typ, msg, tt.typ, tt.contains)
			}
			if strings.Contains(rec.Body.String(), key) {
				t.Fatal("key in the error")
			}
			if tt.status >= 402 && tt.headers != nil && tt.status != 404 {
				if rec.Header().Get(hdrAnthropicLimitRequests) != "100" || rec.Header().Get(hdrAnthropicResetRequests) == "" {
					t.Fatalf("anthropic rate-limit headers: %v", rec.Header())
				}
			}
			if after := balanceOf(t, e, k.UserID); after != before {
				t.Fatalf("balance moved on a refusal: %+v -> %+v", before, after)
			}
		})
	}
	// Listed as a free path, count_tokens passes through for a valid key, unmetered.
	e.g.FreePaths = []string{"/v1/messages/count_tokens"}
	before := balanceOf(t, e, k.UserID)
	rec, _ := meterDo(t, e, "/v1/messages/count_tokens", messagesBody, func(w http.ResponseWriter, r *http.Request) error {
		_, err := io.WriteString(w, `{"input_tokens":9}`)
		return err
	}, "x-api-key: "+key)
	if rec.Code != 200 || rec.Body.String() != `{"input_tokens":9}` || balanceOf(t, e, k.UserID) != before {
		t.Fatalf("count_tokens %d %s", rec.Code, rec.Body)
	}
	if rec, _ := meterDo(t, e, "/v1/messages/count_tokens", messagesBody, ok, "x-api-key: gw_live_nope"); rec.Code != 401 {
		t.Fatalf("count_tokens with a bad key: %d", rec.Code)
	}
}

// responsesUpstream is a mock Responses API: JSON or a stream as asked.
func responsesUpstream(got *[]byte) caddyhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		b, _ := io.ReadAll(r.Body)
		if got != nil {
			*got = b
		}
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Type", "application/json")
			_, err := fmt.Fprintf(w, `{"id":%q,"object":"response","status":"completed"}`, strings.TrimPrefix(r.URL.Path, "/v1/responses/"))
			return err
		}
		if !strings.Contains(string(b), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			_, err := io.WriteString(w, `{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hello there"}]}],"usage":{"input_tokens":300,"input_tokens_details":{"cached_tokens":256},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":302}}`)
			return err
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		_, err := io.WriteString(w, responsesStream)
		return err
	}
}

func TestMeteredResponses(t *testing.T) {
	cached := int64(100)
	prices := func(a *App, g *Gateway) {
		a.Prices = []ModelPrice{{Model: "gpt-5*", PromptPer1K: 1000, CompletionPer1K: 8000, CacheReadPer1K: &cached}}
		g.Responses = true
	}
	// 44 plain + 256 cached at 0.1 + 2 at 8: 44 + 25.6 + 16 = 85.6 -> 86.
	const cost = 86
	e := newTestEnv(t, prices)
	key, k := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 100_000)

	var sent []byte
	rec, _ := meterDo(t, e, "/v1/responses", `{"model":"gpt-5","input":"hello","previous_response_id":"resp_0"}`, responsesUpstream(&sent), bearer(key))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"cached_tokens":256`) {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if !strings.Contains(string(sent), `"max_output_tokens":4096`) || !strings.Contains(string(sent), `"previous_response_id":"resp_0"`) {
		t.Fatalf("upstream body %s", sent)
	}
	if b := balanceOf(t, e, k.UserID); b.Credits != 100_000-cost || b.Reserved != 0 {
		t.Fatalf("balance %+v", b)
	}
	rec, _ = meterDo(t, e, "/v1/responses", `{"model":"gpt-5","input":"hello","stream":true,"max_output_tokens":50}`, responsesUpstream(&sent), bearer(key))
	if rec.Code != 200 || rec.Body.String() != responsesStream || strings.Contains(string(sent), "stream_options") {
		t.Fatalf("stream %d %q (sent %s)", rec.Code, rec.Body, sent)
	}
	if b := balanceOf(t, e, k.UserID); b.Credits != 100_000-2*cost || b.Reserved != 0 {
		t.Fatalf("balance after stream %+v", b)
	}
	// Retrieval is free for a valid key and refused without one.
	rec = e.do(t, "GET", "/v1/responses/resp_1", "", "", bearer(key))
	if rec.Code != 200 || balanceOf(t, e, k.UserID).Credits != 100_000-2*cost {
		t.Fatalf("retrieval %d %s", rec.Code, rec.Body)
	}
	if rec := e.do(t, "GET", "/v1/responses/resp_1", "", ""); rec.Code != 401 {
		t.Fatalf("retrieval without a key: %d", rec.Code)
	}
	recs := usageOf(t, e, k.UserID)
	if len(recs) != 2 || recs[0].CachedTokens != 256 || recs[0].Endpoint != endpointResponses || recs[0].Credits != cost {
		t.Fatalf("usage %+v", recs)
	}

	// Off: both routes are unknown.
	off := newTestEnv(t, nil)
	okey, _ := off.newKey(t, "", nil)
	for _, r := range []struct{ method, path string }{{"POST", "/v1/responses"}, {"GET", "/v1/responses/resp_1"}} {
		if rec := off.do(t, r.method, r.path, `{"model":"m","input":"x"}`, "", bearer(okey)); rec.Code != 404 || off.upstream.Load() != 0 {
			t.Fatalf("%s %s with responses off: %d", r.method, r.path, rec.Code)
		}
	}
}

// FuzzDialectScanners checks the Anthropic and Responses stream scanners:
// results that do not depend on where the stream is split, counts never
// negative, a cache count never above the prompt.
func FuzzDialectScanners(f *testing.F) {
	f.Add([]byte(anthropicStream), uint16(100), false)
	f.Add([]byte(responsesStream), uint16(33), true)
	f.Add([]byte("data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":\"3\",\"cache_read_input_tokens\":-1}}\r\n\r\n"), uint16(5), false)
	f.Add([]byte("data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1,\"input_tokens_details\":{\"cached_tokens\":9}}}}\n"), uint16(9), true)
	f.Fuzz(func(t *testing.T, stream []byte, cut uint16, responses bool) {
		dialect := dialectAnthropic
		if responses {
			dialect = dialectResponses
		}
		run := func(parts ...[]byte) sseScanner {
			s := sseScanner{dialect: dialect}
			for _, p := range parts {
				s.feed(p, nil)
			}
			s.finish(nil)
			s.release()
			return s
		}
		i := int(cut) % (len(stream) + 1)
		whole, split := run(stream), run(stream[:i:i], stream[i:])
		if whole.usage != split.usage || whole.haveUsage != split.haveUsage || whole.prompt != split.prompt ||
			whole.havePrompt != split.havePrompt || whole.generated != split.generated || whole.events != split.events {
			t.Fatalf("results depend on the split at %d: %+v vs %+v", i, whole, split)
		}
		for _, u := range []usage{whole.usage, whole.prompt} {
			if u.PromptTokens < 0 || u.CompletionTokens < 0 || u.CacheReadTokens < 0 || u.CacheWriteTokens < 0 ||
				u.CacheReadTokens+u.CacheWriteTokens > u.PromptTokens || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
				t.Fatalf("inconsistent usage %+v", u)
			}
		}
		if whole.generated.ascii < 0 || whole.generated.other < 0 {
			t.Fatal("negative count")
		}
	})
}

// BenchmarkMeteredMessagesStream is BenchmarkMeteredStream for the
// Anthropic Messages API: bench/mock's stream (16 deltas), rendered once
// and replayed event by event with a flush after each, as the chat one.
func BenchmarkMeteredMessagesStream(b *testing.B) {
	body := `{"model":"mock-model","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}`
	rendered := httptest.NewRecorder()
	mock.NewHandler(mock.Options{PromptTokens: 12, StreamChunks: 16, CachedTokens: 8}).
		ServeHTTP(rendered, httptest.NewRequest("POST", "/v1/messages", strings.NewReader(body)))
	var events [][]byte
	for _, ev := range bytes.SplitAfter(rendered.Body.Bytes(), []byte("\n\n")) {
		if len(ev) > 0 {
			events = append(events, ev)
		}
	}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		for _, ev := range events {
			if _, err := w.Write(ev); err != nil {
				return err
			}
			if err := rc.Flush(); err != nil {
				return err
			}
		}
		return nil
	})
	end := events[len(events)-1]
	benchMeteredAt(b, "/v1/messages", body, next, func(rec *httptest.ResponseRecorder) {
		if !bytes.HasSuffix(rec.Body.Bytes(), end) {
			b.Fatalf("stream %s", rec.Body)
		}
	})
}
