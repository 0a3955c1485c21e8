package caddymodule

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

func TestParseInference(t *testing.T) {
	const msgs = `"messages":[{"role":"user","content":"hi"}]`
	tests := []struct {
		name     string
		endpoint string
		body     string
		errCode  int // 0: valid
		check    func(t *testing.T, ir *inferenceRequest)
	}{
		{"minimal chat", endpointChat, `{"model":"m","messages":[{"role":"user","content":"abcdefgh"}]}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				// 2 (text) + 4 (message) + 3 (priming)
				if ir.Model != "m" || ir.PromptTokens != 9 || ir.Stream || ir.MaxTokens != 0 || ir.choices != 1 {
					t.Errorf("got %+v", ir)
				}
			}},
		{"multimodal", endpointChat, `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"data:..."}}]}]}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				if want := int64(1 + imagePartTokens + msgOverheadTokens + replyPrimingTokens); ir.PromptTokens != want {
					t.Errorf("prompt tokens %d, want %d", ir.PromptTokens, want)
				}
			}},
		{"null content with tool calls", endpointChat, `{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[]}]}`, 0, nil},
		{"stream and usage", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"n":2}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				if !ir.Stream || !ir.ClientIncludeUsage || ir.MaxTokens != 50 || ir.choices != 2 {
					t.Errorf("got %+v", ir)
				}
			}},
		{"both caps: larger wins", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"max_completion_tokens":70}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				if ir.MaxTokens != 70 || ir.capKeys != capMaxTokens|capMaxCompletionTokens {
					t.Errorf("got %+v", ir)
				}
			}},
		{"null cap is absent", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":null}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				if ir.MaxTokens != 0 || ir.capKeys != 0 {
					t.Errorf("got %+v", ir)
				}
			}},
		{"missing model", endpointChat, `{"messages":[{"role":"user","content":"hi"}]}`, 400, nil},
		{"model not string", endpointChat, `{"model":5,"messages":[{"role":"user","content":"hi"}]}`, 400, nil},
		{"empty model", endpointChat, `{"model":"","messages":[{"role":"user","content":"hi"}]}`, 400, nil},
		{"missing messages", endpointChat, `{"model":"m"}`, 400, nil},
		{"messages not list", endpointChat, `{"model":"m","messages":"hi"}`, 400, nil},
		{"message not object", endpointChat, `{"model":"m","messages":["hi"]}`, 400, nil},
		{"content number", endpointChat, `{"model":"m","messages":[{"role":"user","content":5}]}`, 400, nil},
		{"text part without text", endpointChat, `{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}`, 400, nil},
		{"negative max_tokens", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}`, 400, nil},
		{"fractional max_tokens", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1.5}`, 400, nil},
		{"string max_tokens", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":"5"}`, 400, nil},
		{"huge max_tokens", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":99999999999}`, 400, nil},
		{"n zero", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"n":0}`, 400, nil},
		{"stream not bool", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":"yes"}`, 400, nil},
		{"stream_options not object", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":true}`, 400, nil},
		// Billing fields are validated before anything is reserved.
		{"max_tokens zero", endpointChat, `{"model":"m",` + msgs + `,"max_tokens":0}`, 400, nil},
		{"max_completion_tokens zero", endpointChat, `{"model":"m",` + msgs + `,"max_completion_tokens":0}`, 400, nil},
		{"max_completion_tokens negative", endpointChat, `{"model":"m",` + msgs + `,"max_completion_tokens":-3}`, 400, nil},
		{"max_completion_tokens string", endpointChat, `{"model":"m",` + msgs + `,"max_completion_tokens":"9"}`, 400, nil},
		{"max_tokens one", endpointChat, `{"model":"m",` + msgs + `,"max_tokens":1}`, 0, nil},
		{"n too large", endpointChat, `{"model":"m",` + msgs + `,"n":129}`, 400, nil},
		{"n largest", endpointChat, `{"model":"m",` + msgs + `,"n":128}`, 0, nil},
		{"n string", endpointChat, `{"model":"m",` + msgs + `,"n":"2"}`, 400, nil},
		{"best_of zero", endpointCompletions, `{"model":"m","prompt":"x","best_of":0}`, 400, nil},
		{"best_of too large", endpointCompletions, `{"model":"m","prompt":"x","best_of":129}`, 400, nil},
		{"stream number", endpointChat, `{"model":"m",` + msgs + `,"stream":1}`, 400, nil},
		{"stream null is absent", endpointChat, `{"model":"m",` + msgs + `,"stream":null}`, 0, nil},
		{"stream_options array", endpointChat, `{"model":"m",` + msgs + `,"stream_options":[]}`, 400, nil},
		{"stream_options string", endpointChat, `{"model":"m",` + msgs + `,"stream_options":"x"}`, 400, nil},
		{"messages empty", endpointChat, `{"model":"m","messages":[]}`, 400, nil},
		{"messages null element", endpointChat, `{"model":"m","messages":[null]}`, 400, nil},
		{"message empty object", endpointChat, `{"model":"m","messages":[{}]}`, 400, nil},
		{"message without content", endpointChat, `{"model":"m","messages":[{"role":"user"}]}`, 400, nil},
		{"message null content", endpointChat, `{"model":"m","messages":[{"role":"user","content":null}]}`, 400, nil},
		{"message without role", endpointChat, `{"model":"m","messages":[{"content":"hi"}]}`, 400, nil},
		{"message role number", endpointChat, `{"model":"m","messages":[{"role":5,"content":"hi"}]}`, 400, nil},
		{"message role null", endpointChat, `{"model":"m","messages":[{"role":null,"content":"hi"}]}`, 400, nil},
		{"second message bad", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"user"}]}`, 400, nil},
		{"assistant without content or tool calls", endpointChat, `{"model":"m","messages":[{"role":"assistant","content":null}]}`, 400, nil},
		{"assistant null tool calls", endpointChat, `{"model":"m","messages":[{"role":"assistant","tool_calls":null}]}`, 400, nil},
		{"user tool calls do not replace content", endpointChat, `{"model":"m","messages":[{"role":"user","tool_calls":[{}]}]}`, 400, nil},
		{"assistant tool calls without content", endpointChat, `{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c1"}]}]}`, 0, nil},
		{"assistant function call without content", endpointChat, `{"model":"m","messages":[{"role":"assistant","function_call":{"name":"f"}}]}`, 0, nil},
		{"not json", endpointChat, `model=m`, 400, nil},
		{"array body", endpointChat, `[]`, 400, nil},
		{"null body", endpointChat, `null`, 400, nil},
		{"trailing garbage", endpointChat, `{"model":"m","messages":[{"role":"user","content":"hi"}]} x`, 400, nil},
		{"completions string", endpointCompletions, `{"model":"m","prompt":"abcd","best_of":3,"n":2}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				if ir.PromptTokens != 1 || ir.choices != 3 {
					t.Errorf("got %+v", ir)
				}
			}},
		{"completions token arrays", endpointCompletions, `{"model":"m","prompt":[[1,2,3],[4]]}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				if ir.PromptTokens != 4 {
					t.Errorf("prompt tokens %d", ir.PromptTokens)
				}
			}},
		{"completions bad prompt", endpointCompletions, `{"model":"m","prompt":{}}`, 400, nil},
		{"embeddings", endpointEmbeddings, `{"model":"e","input":["abcd","efgh"],"max_tokens":-5}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				// max_tokens means nothing for embeddings and is passed through
				if ir.PromptTokens != 2 || ir.MaxTokens != 0 {
					t.Errorf("got %+v", ir)
				}
			}},
		{"embeddings tokens", endpointEmbeddings, `{"model":"e","input":[1,2,3]}`, 0,
			func(t *testing.T, ir *inferenceRequest) {
				if ir.PromptTokens != 3 {
					t.Errorf("prompt tokens %d", ir.PromptTokens)
				}
			}},
		{"embeddings missing input", endpointEmbeddings, `{"model":"e"}`, 400, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ir, gerr := parseInference([]byte(tt.body), tt.endpoint)
			if tt.errCode != 0 {
				if gerr == nil || gerr.Status != tt.errCode || gerr.Type != "invalid_request_error" {
					t.Fatalf("want %d invalid_request_error, got %+v", tt.errCode, gerr)
				}
				return
			}
			if gerr != nil {
				t.Fatalf("unexpected error %+v", gerr)
			}
			if tt.check != nil {
				tt.check(t, ir)
			}
		})
	}
}

func TestReadInferenceBodyLimit(t *testing.T) {
	body := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 200) + `"}]}`
	r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
	_, gerr := readInference(httptest.NewRecorder(), r, endpointChat, 100)
	if gerr == nil || gerr.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("want 413, got %+v", gerr)
	}

	r = httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
	ir, gerr := readInference(httptest.NewRecorder(), r, endpointChat, int64(len(body)))
	if gerr != nil {
		t.Fatalf("exact-size body refused: %+v", gerr)
	}
	if ir.Model != "m" {
		t.Fatalf("model %q", ir.Model)
	}
	// the body is readable again, unchanged
	got, _ := io.ReadAll(r.Body)
	if string(got) != body || r.ContentLength != int64(len(body)) {
		t.Fatalf("body not restored: %q (%d)", got, r.ContentLength)
	}

	// restored even when invalid
	r = httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"oops`))
	if _, gerr := readInference(httptest.NewRecorder(), r, endpointChat, 100); gerr == nil || gerr.Status != 400 {
		t.Fatalf("want 400, got %+v", gerr)
	}
	if got, _ := io.ReadAll(r.Body); string(got) != `{"oops` {
		t.Fatalf("invalid body not restored: %q", got)
	}

	r = httptest.NewRequest("POST", "/v1/chat/completions", nil)
	if _, gerr := readInference(httptest.NewRecorder(), r, endpointChat, 100); gerr == nil || gerr.Status != 400 {
		t.Fatalf("empty body: want 400, got %+v", gerr)
	}
}

func TestInferenceRewrite(t *testing.T) {
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"other":1},` +
		`"temperature":0.7,"tools":[{"type":"function","function":{"name":"f"}}],"x_vendor":{"deep":[1,2.50,"s"]},"seed":12345678901234567}`
	r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
	r.TransferEncoding = []string{"chunked"}
	r.ContentLength = -1
	ir, gerr := readInference(httptest.NewRecorder(), r, endpointChat, 1<<20)
	if gerr != nil {
		t.Fatal(gerr)
	}
	if !ir.injectIncludeUsage() {
		t.Fatal("include_usage not injected")
	}
	ir.setMaxTokens(77, "")
	ir.apply(r)

	got, _ := io.ReadAll(r.Body)
	if r.ContentLength != int64(len(got)) || r.Header.Get("Content-Length") != itoa(len(got)) || r.TransferEncoding != nil {
		t.Fatalf("body description inconsistent: CL=%d header=%q TE=%v len=%d", r.ContentLength, r.Header.Get("Content-Length"), r.TransferEncoding, len(got))
	}
	rc, _ := r.GetBody()
	again, _ := io.ReadAll(rc)
	if !bytes.Equal(again, got) {
		t.Fatal("GetBody returns different bytes")
	}

	var orig, out map[string]json.RawMessage
	_ = json.Unmarshal([]byte(body), &orig)
	if err := json.Unmarshal(got, &out); err != nil {
		t.Fatal(err)
	}
	for k, v := range orig {
		if k == "stream_options" {
			continue
		}
		var a, b bytes.Buffer
		_ = json.Compact(&a, v)
		_ = json.Compact(&b, out[k])
		if a.String() != b.String() {
			t.Errorf("field %s changed: %s -> %s", k, v, out[k])
		}
	}
	if string(out["max_tokens"]) != "77" {
		t.Errorf("max_tokens = %s", out["max_tokens"])
	}
	var so map[string]json.RawMessage
	_ = json.Unmarshal(out["stream_options"], &so)
	if string(so["include_usage"]) != "true" || string(so["other"]) != "1" {
		t.Errorf("stream_options = %s", out["stream_options"])
	}

	// a client that asked for usage is left alone; its own cap field is rewritten
	ir2, _ := parseInference([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":900}`), endpointChat)
	if ir2.injectIncludeUsage() {
		t.Fatal("injected although the client asked for usage")
	}
	ir2.setMaxTokens(10, "max_tokens")
	var out2 map[string]json.RawMessage
	_ = json.Unmarshal(ir2.body(), &out2)
	if string(out2["max_completion_tokens"]) != "10" || out2["max_tokens"] != nil {
		t.Fatalf("rewrite of client's cap field: %s", ir2.body())
	}
	// untouched requests go upstream byte for byte
	ir3, _ := parseInference([]byte(body), endpointChat)
	if string(ir3.body()) != body {
		t.Fatal("unmodified body changed")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// readInference reads and validates the body of an inference request,
// bounded by maxBody bytes, and leaves r.Body readable again with the same
// bytes. Malformed JSON and validation failures give a 400 in OpenAI's
// invalid_request_error shape; a body over maxBody gives 413.
func readInference(w http.ResponseWriter, r *http.Request, endpoint string, maxBody int64) (*inferenceRequest, *gatewayError) {
	return readInferenceInto(new(inferenceRequest), w, r, endpoint, maxBody)
}

// parseInference validates body for endpoint; it is the pure core of
// readInference. The body is validated as JSON once; then one walk over
// its top-level members picks the fields metering needs, and only those
// values are decoded.
func parseInference(body []byte, endpoint string) (*inferenceRequest, *gatewayError) {
	return parseInferenceInto(new(inferenceRequest), body, endpoint)
}
