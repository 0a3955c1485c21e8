package mock

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAgentAPIs(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{PromptTokens: 12, CompletionTokens: 20, StreamChunks: 3, CachedTokens: 8, CacheWriteTokens: 2}))
	defer srv.Close()
	tests := []struct {
		name, path, body string
		want             []string // substrings of the answer
	}{
		{"messages JSON", "/v1/messages", `{"model":"c","max_tokens":5,"messages":[]}`,
			[]string{`"type":"message"`, `"input_tokens":2`, `"cache_read_input_tokens":8`, `"cache_creation_input_tokens":2`, `"output_tokens":5`}},
		{"messages stream", "/v1/messages", `{"model":"c","max_tokens":5,"stream":true,"messages":[]}`,
			[]string{"event: message_start\n", `"cache_read_input_tokens":8`, "event: content_block_delta\n", `"text":"hello "`,
				`"usage":{"output_tokens":3}`, "event: message_stop\n"}},
		{"responses JSON", "/v1/responses", `{"model":"r","input":"x","max_output_tokens":7}`,
			[]string{`"object":"response"`, `"input_tokens":12`, `"cached_tokens":8`, `"output_tokens":7`, `"total_tokens":19`}},
		{"responses stream", "/v1/responses", `{"model":"r","input":"x","stream":true}`,
			[]string{"event: response.created\n", `"delta":"hello "`, "event: response.completed\n", `"output_tokens":3`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := post(t, srv, tt.path, tt.body, nil)
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(b), w) {
					t.Fatalf("answer lacks %q: %s", w, b)
				}
			}
		})
	}
	// Injected errors: Anthropic's shape on /v1/messages.
	resp := post(t, srv, "/v1/messages", `{"model":"c","max_tokens":5,"messages":[]}`, map[string]string{HeaderStatus: "529"})
	var e struct {
		Type  string `json:"type"`
		Error struct{ Type, Message string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != 529 || e.Type != "error" || e.Error.Message == "" {
		t.Fatalf("error %d %+v %v", resp.StatusCode, e, err)
	}
}
