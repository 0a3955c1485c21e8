package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// testNodes are n gateway nodes (each its own App and state) on one fresh
// PostgreSQL database, provisioned alike by setup.
func testNodes(t *testing.T, n int, setup func(*App, *Gateway)) []*testEnv {
	t.Helper()
	dsn := pgtest.DatabaseURL(t)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	nodes := make([]*testEnv, n)
	for i := range nodes {
		// A DSN of its own per node (the same database), so that each
		// App opens its own store rather than sharing one state.
		raw, err := json.Marshal(map[string]any{"backend": "postgres",
			"dsn": fmt.Sprintf("%s%sapplication_name=node%d", dsn, sep, i), "node": fmt.Sprintf("node%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = newTestEnvOn(t, raw, setup)
	}
	return nodes
}

// On PostgreSQL the limits are counted in the database: requests spread
// over the nodes see one count, in the headers and the refusals.
func TestGatewayRateLimitsAcrossNodes(t *testing.T) {
	nodes := testNodes(t, 3, func(a *App, g *Gateway) {
		a.DefaultLimits = storage.RateLimits{RequestsPerMinute: 5}
	})
	key, _ := nodes[0].newKey(t, "", nil)
	for i := range 5 {
		rec := nodes[i%3].do(t, "GET", "/v1/models", "", "", bearer(key))
		if rec.Code != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, rec.Code, rec.Body)
		}
		if got, want := rec.Header().Get("X-Ratelimit-Remaining-Requests"), fmt.Sprint(4-i); got != want {
			t.Errorf("remaining after %d = %q, want %q", i+1, got, want)
		}
	}
	for _, n := range nodes {
		rec := n.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key))
		wantError(t, rec, http.StatusTooManyRequests, "rate_limit_exceeded", "Minute request limit exceeded (5) for this user")
		if rec.Header().Get("Retry-After") == "" || rec.Header().Get("X-Ratelimit-Remaining-Requests") != "0" {
			t.Errorf("429 headers: %v", rec.Header())
		}
	}

	// A key's token limit: the estimate (prompt + max_tokens) is counted
	// on one node, and the next request is refused on another; the
	// settlement replaces the estimate by the tokens used.
	key2, _ := nodes[0].newKey(t, "", func(k *storage.APIKey) { k.RateLimits = storage.RateLimits{TokensPerMinute: 30} })
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":20}`
	if rec := nodes[1].do(t, "POST", "/v1/chat/completions", body, "", bearer(key2)); rec.Code != http.StatusOK {
		t.Fatalf("first: %d %s", rec.Code, rec.Body)
	} else if got := rec.Header().Get("X-Ratelimit-Remaining-Tokens"); got == "" || got == "30" {
		t.Errorf("remaining tokens after the first: %q", got)
	}
	long := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":25}`
	wantError(t, nodes[2].do(t, "POST", "/v1/chat/completions", long, "", bearer(key2)),
		http.StatusTooManyRequests, "rate_limit_exceeded", "Minute token limit exceeded (30) for this API key")
}

// The plan's daily requests count the requests charged on every node.
func TestGatewayPlanAcrossNodes(t *testing.T) {
	nodes := testNodes(t, 2, func(a *App, g *Gateway) {
		three := int64(3)
		a.Trial = &Trial{RequestsPerDay: &three}
	})
	key, _ := nodes[0].newKey(t, "", nil)
	for i := range 3 {
		if rec := nodes[i%2].do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)); rec.Code != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	for _, n := range nodes {
		wantError(t, n.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)),
			http.StatusTooManyRequests, "plan_limit_exceeded", "Daily request limit exceeded (3)")
	}
	// Free routes do not count toward the plan.
	if rec := nodes[1].do(t, "GET", "/v1/models", "", "", bearer(key)); rec.Code != http.StatusOK {
		t.Fatalf("free route: %d %s", rec.Code, rec.Body)
	}
}
