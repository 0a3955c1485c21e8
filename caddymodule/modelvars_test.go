package caddymodule

import (
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestModelProvider(t *testing.T) {
	for model, want := range map[string]string{
		"anthropic/claude-3-5-sonnet":  "anthropic",
		"meta-llama/llama-3.1-8b/fast": "meta-llama",
		"gpt-4o-mini":                  "",
		"/odd":                         "",
		"":                             "",
	} {
		if got := modelProvider(model); got != want {
			t.Errorf("modelProvider(%q) = %q, want %q", model, got, want)
		}
	}
}

// TestGatewaySetsModelVars: what a later matcher sees once the gateway has
// read the body.
func TestGatewaySetsModelVars(t *testing.T) {
	e := newTestEnv(t, nil)
	key, _ := e.newKey(t, "", nil)
	body := `{"model":"anthropic/claude-3-haiku","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`
	if rec := e.do(t, "POST", "/v1/chat/completions", body, "", bearer(key)); rec.Code != 200 {
		t.Fatalf("chat: %d %s", rec.Code, rec.Body)
	}
	ctx := e.seen.Context()
	if m, p := caddyhttp.GetVar(ctx, varModel), caddyhttp.GetVar(ctx, varProvider); m != "anthropic/claude-3-haiku" || p != "anthropic" {
		t.Fatalf("vars: model %v, provider %v", m, p)
	}
}
