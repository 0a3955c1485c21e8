package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// testEnv is a provisioned App (real BoltStore in a temp dir) and a Gateway
// using it, driven without a server through caddyhttp.PrepareRequest.
type testEnv struct {
	app      *App
	g        *Gateway
	st       storage.Store
	upstream atomic.Int64 // requests that reached next
	seen     *http.Request
	users    int
}

// testBolt is the storage config of a bbolt file at path without fsync.
func testBolt(path string) json.RawMessage {
	raw, err := json.Marshal(map[string]any{"backend": "bolt", "path": path, "no_sync": true})
	if err != nil {
		panic(err)
	}
	return raw
}

func newTestEnv(t testing.TB, setup func(*App, *Gateway)) *testEnv {
	t.Helper()
	return newTestEnvOn(t, testBolt(filepath.Join(t.TempDir(), "gw.db")), setup)
}

// newTestEnvOn is newTestEnv on the storage config raw.
func newTestEnvOn(t testing.TB, raw json.RawMessage, setup func(*App, *Gateway)) *testEnv {
	t.Helper()
	app := &App{StorageRaw: raw, Secret: "test-secret-0123456789abcdef"}
	g := &Gateway{}
	if setup != nil {
		setup(app, g)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := app.Provision(ctx); err != nil {
		t.Fatalf("provisioning app: %v", err)
	}
	t.Cleanup(func() { _ = app.Cleanup() })
	if err := app.Start(); err != nil {
		t.Fatalf("starting app: %v", err)
	}
	g.app, g.state, g.logger = app, app.state, zap.NewNop()
	if g.MaxBodySize <= 0 {
		g.MaxBodySize = defaultMaxBodySize
	}
	if err := g.Validate(); err != nil {
		t.Fatal(err)
	}
	return &testEnv{app: app, g: g, st: app.Store()}
}

// flush makes the settlements accepted so far durable (and readable) where
// the store defers that.
func (e *testEnv) flush(t testing.TB) {
	t.Helper()
	if f, ok := e.st.(storage.Flusher); ok {
		if err := f.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// newKey registers a user whose primary key is adjusted by mod, and returns
// the plaintext key.
func (e *testEnv) newKey(t testing.TB, env string, mod func(*storage.APIKey)) (string, *storage.APIKey) {
	t.Helper()
	if env == "" {
		env = "live"
	}
	plain, err := e.app.Keyring().Generate(env)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := e.app.Keyring().Encrypt(plain)
	if err != nil {
		t.Fatal(err)
	}
	e.users++
	u := &storage.User{Username: fmt.Sprintf("u%d", e.users), Email: fmt.Sprintf("u%d@example.com", e.users), IsActive: true, SubscriptionStatus: "trial"}
	k := &storage.APIKey{
		KeyName: "primary", Hash: e.app.Keyring().Hash(plain), Encrypted: enc, Prefix: storage.KeyDisplayPrefix(plain),
		EnvironmentTag: env, Scopes: storage.FullScopes(), IsActive: true, IsPrimary: true,
	}
	if mod != nil {
		mod(k)
	}
	if err := e.st.Register(context.Background(), u, k, 1_000_000); err != nil {
		t.Fatal(err)
	}
	return plain, k
}

const chatBody = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}],"max_tokens":10}`

// do sends one request through the gateway from remoteAddr (default
// 192.0.2.10), with headers given as "Name: value".
func (e *testEnv) do(t testing.TB, method, target, body, remoteAddr string, headers ...string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	if remoteAddr == "" {
		remoteAddr = "192.0.2.10:40000"
	}
	req.RemoteAddr = remoteAddr
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Add(name, strings.TrimSpace(value))
	}
	rec := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, &caddyhttp.Server{})
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		e.upstream.Add(1)
		e.seen = r
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, err := io.WriteString(w, `{"id":"x","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`)
		return err
	})
	if err := e.g.ServeHTTP(rec, req, next); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}
	return rec
}

func bearer(k string) string { return "Authorization: Bearer " + k }

// wantError checks an OpenAI-shaped refusal.
func wantError(t testing.TB, rec *httptest.ResponseRecorder, status int, code, msgPart string) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, status, rec.Body)
	}
	var body struct {
		Error struct{ Message, Type, Code string } `json:"error"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body is not JSON: %q", rec.Body)
	}
	if body.Error.Code != code || !strings.Contains(body.Error.Message, msgPart) || body.Error.Type == "" {
		t.Fatalf("error = %+v, want code %q and a message containing %q", body.Error, code, msgPart)
	}
	if status == http.StatusUnauthorized && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("401 without WWW-Authenticate: Bearer")
	}
}

func TestGatewayKeyExtraction(t *testing.T) {
	e := newTestEnv(t, nil)
	key, _ := e.newKey(t, "", nil)

	wantError(t, e.do(t, "GET", "/v1/models", "", ""), 401, "missing_api_key", "Missing API key")
	wantError(t, e.do(t, "GET", "/v1/models", "", "", "Authorization: Basic Zm9vOmJhcg=="), 401, "missing_api_key", "")

	// Not shaped like a key: refused without an index or store lookup.
	for _, bad := range []string{"sk-123", "gw_live_short", key + "x", strings.Replace(key, "gw_live_", "gw_prod_", 1), strings.ToUpper(key[:3]) + key[3:]} {
		wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(bad)), 401, "invalid_api_key", "Invalid API key")
	}
	if keys, neg := e.g.state.index.size(); keys != 0 || neg != 0 {
		t.Fatalf("malformed keys touched the index: %d keys, %d negative", keys, neg)
	}

	// Bearer (any case of the scheme) and x-api-key both work; both headers
	// are removed before next.
	for _, h := range [][]string{{bearer(key)}, {"Authorization: bearer " + key}, {"X-Api-Key: " + key}, {bearer(key), "x-api-key: " + key}} {
		rec := e.do(t, "GET", "/v1/models", "", "", h...)
		if rec.Code != 200 {
			t.Fatalf("%v: status %d %s", h, rec.Code, rec.Body)
		}
		if e.seen.Header.Get("Authorization") != "" || e.seen.Header.Get("X-Api-Key") != "" {
			t.Fatalf("%v: the client's key reached next: %v", h, e.seen.Header)
		}
	}
	// Authorization wins over x-api-key.
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer("gw_live_"+strings.Repeat("A", 43)), "X-Api-Key: "+key), 401, "invalid_api_key", "")
}

func TestGatewayAnnotatesRequest(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "test", nil)
	rec := e.do(t, "GET", "/v1/models", "", "", bearer(key))
	if rec.Code != 200 {
		t.Fatalf("status %d %s", rec.Code, rec.Body)
	}
	ctx := e.seen.Context()
	repl := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if got, _ := repl.GetString("http.auth.user.id"); got != fmt.Sprint(k.UserID) {
		t.Errorf("http.auth.user.id = %q", got)
	}
	for name, want := range map[string]string{"gatewayz_user_id": fmt.Sprint(k.UserID), "gatewayz_key_id": fmt.Sprint(k.ID), "gatewayz_env": "test"} {
		if got := caddyhttp.GetVar(ctx, name); got != want {
			t.Errorf("var %s = %v, want %q", name, got, want)
		}
	}
	extra := ctx.Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if extra == nil {
		t.Fatal("no extra log fields")
	}
	if rec.Header().Get("X-Ratelimit-Limit-Requests") == "" || rec.Header().Get("X-Ratelimit-Remaining-Tokens") == "" {
		t.Errorf("missing x-ratelimit headers: %v", rec.Header())
	}
}

func TestGatewayRoutes(t *testing.T) {
	e := newTestEnv(t, func(_ *App, g *Gateway) { g.FreePaths = []string{"/v1/files*"} })
	key, _ := e.newKey(t, "", nil)
	wantError(t, e.do(t, "GET", "/v1/unknown", "", "", bearer(key)), 404, "unknown_url", "/v1/unknown")
	wantError(t, e.do(t, "GET", "/v1/chat/completions", "", "", bearer(key)), 405, "method_not_allowed", "")
	wantError(t, e.do(t, "POST", "/v1/models", "{}", "", bearer(key)), 405, "method_not_allowed", "")
	before := e.upstream.Load()
	for _, p := range []string{"/v1/models", "/v1/models/gpt-4o", "/v1/files/abc"} {
		if rec := e.do(t, "GET", p, "", "", bearer(key)); rec.Code != 200 {
			t.Fatalf("%s: %d %s", p, rec.Code, rec.Body)
		}
	}
	if rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)); rec.Code != 200 {
		t.Fatalf("chat: %d %s", rec.Code, rec.Body)
	}
	if got := e.upstream.Load() - before; got != 4 {
		t.Fatalf("upstream saw %d requests, want 4", got)
	}
	// A metered route with a bad body is refused before the upstream.
	wantError(t, e.do(t, "POST", "/v1/chat/completions", "not json", "", bearer(key)), 400, "invalid_request", "")
}

func TestGatewayKeyStateTakesEffectAtOnce(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	key, k := e.newKey(t, "", nil)
	ok := func() {
		t.Helper()
		if rec := e.do(t, "GET", "/v1/models", "", "", bearer(key)); rec.Code != 200 {
			t.Fatalf("status %d %s", rec.Code, rec.Body)
		}
	}
	ok()
	if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error { k.IsActive = false; return nil }); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(key)), 401, "inactive_api_key", "API key is inactive")
	if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error { k.IsActive = true; return nil }); err != nil {
		t.Fatal(err)
	}
	ok()
	past := time.Now().Add(-time.Minute)
	if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error { k.ExpirationDate = &past; return nil }); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(key)), 401, "expired_api_key", "API key has expired")
	if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error { k.ExpirationDate = nil; return nil }); err != nil {
		t.Fatal(err)
	}
	ok()

	// Rotation without grace: the old secret stops at once, the new works.
	newKey, _ := e.app.Keyring().Generate("live")
	if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error {
		k.Hash = e.app.Keyring().Hash(newKey)
		k.Prefix = storage.KeyDisplayPrefix(newKey)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(key)), 401, "invalid_api_key", "")
	if rec := e.do(t, "GET", "/v1/models", "", "", bearer(newKey)); rec.Code != 200 {
		t.Fatalf("rotated key: %d %s", rec.Code, rec.Body)
	}

	// Rotation with grace: both work until the grace ends.
	third, _ := e.app.Keyring().Generate("live")
	if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error {
		k.PrevHash, k.PrevHashExpiresAt = k.Hash, time.Now().Add(time.Hour)
		k.Hash = e.app.Keyring().Hash(third)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, kk := range []string{newKey, third} {
		if rec := e.do(t, "GET", "/v1/models", "", "", bearer(kk)); rec.Code != 200 {
			t.Fatalf("during grace: %d %s", rec.Code, rec.Body)
		}
	}
	defer func(f func() time.Time) { clockNow = f }(clockNow)
	clockNow = func() time.Time { return time.Now().Add(2 * time.Hour) }
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(newKey)), 401, "invalid_api_key", "")
	clockNow = time.Now

	// Deletion: at once.
	if err := e.st.DeleteKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(third)), 401, "invalid_api_key", "")
}

func TestGatewayNegativeCacheBounded(t *testing.T) {
	e := newTestEnv(t, func(a *App, _ *Gateway) { a.NegativeCacheSize = 8 })
	for i := range 20 {
		k := fmt.Sprintf("gw_live_%043d", i)
		wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(k)), 401, "invalid_api_key", "")
	}
	if _, neg := e.g.state.index.size(); neg != 8 {
		t.Fatalf("negative cache holds %d entries, want the bound 8", neg)
	}
	// A key created after being probed works at once (the feed clears the
	// negative cache).
	key, _ := e.newKey(t, "", nil)
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(strings.Replace(key, key[10:12], "__", 1))), 401, "invalid_api_key", "")
	if rec := e.do(t, "GET", "/v1/models", "", "", bearer(key)); rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
}

func TestGatewayAccessRules(t *testing.T) {
	e := newTestEnv(t, nil)
	max := int64(0)
	capped, _ := e.newKey(t, "", func(k *storage.APIKey) { k.MaxRequests = &max })
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(capped)), 429, "request_limit_reached", "API key request limit reached")
	two := int64(2)
	capped2, _ := e.newKey(t, "", func(k *storage.APIKey) { k.MaxRequests = &two })
	for range 2 {
		if rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(capped2)); rec.Code != 200 {
			t.Fatalf("within max_requests: %d %s", rec.Code, rec.Body)
		}
	}
	wantError(t, e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(capped2)), 429, "request_limit_reached", "")

	ipKey, _ := e.newKey(t, "", func(k *storage.APIKey) { k.IPAllowlist = []string{"198.51.100.0/24", "2001:db8::1"} })
	denied := e.do(t, "GET", "/v1/models", "", "192.0.2.10:1", bearer(ipKey))
	wantError(t, denied, 403, "ip_not_allowed", "IP address not allowed")
	if denied.Header().Get("X-Ratelimit-Limit-Requests") != "100" || denied.Header().Get("X-Ratelimit-Remaining-Requests") != "100" {
		t.Errorf("a refusal of a known key carries its current limits, uncounted: %v", denied.Header())
	}
	// A spoofed X-Forwarded-For from an untrusted peer changes nothing.
	wantError(t, e.do(t, "GET", "/v1/models", "", "192.0.2.10:1", bearer(ipKey), "X-Forwarded-For: 198.51.100.7"), 403, "ip_not_allowed", "")
	if rec := e.do(t, "GET", "/v1/models", "", "198.51.100.7:1", bearer(ipKey)); rec.Code != 200 {
		t.Fatalf("allowed v4: %d", rec.Code)
	}
	if rec := e.do(t, "GET", "/v1/models", "", "[2001:db8::1]:443", bearer(ipKey)); rec.Code != 200 {
		t.Fatalf("allowed v6: %d", rec.Code)
	}

	refKey, _ := e.newKey(t, "", func(k *storage.APIKey) { k.DomainReferrers = []string{"*.example.com"} })
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(refKey)), 403, "domain_not_allowed", "Domain not allowed")
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(refKey), "Origin: https://example.com.evil.net"), 403, "domain_not_allowed", "")
	wantError(t, e.do(t, "GET", "/v1/models", "", "", bearer(refKey), "Origin: https://evil.net", "Referer: https://app.example.com/"), 403, "domain_not_allowed", "")
	if rec := e.do(t, "GET", "/v1/models", "", "", bearer(refKey), "Referer: https://app.example.com/page"); rec.Code != 200 {
		t.Fatalf("allowed referrer: %d", rec.Code)
	}

	readOnly, _ := e.newKey(t, "", func(k *storage.APIKey) { k.Scopes = storage.Scopes{"read": {"*"}} })
	wantError(t, e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(readOnly)), 403, "insufficient_permissions", "write permission on chat")
	if rec := e.do(t, "GET", "/v1/models", "", "", bearer(readOnly)); rec.Code != 200 {
		t.Fatalf("read-only key on /v1/models: %d", rec.Code)
	}
}

func TestGatewayPlans(t *testing.T) {
	e := newTestEnv(t, func(a *App, _ *Gateway) { a.TrialModels = []string{"gpt-4o-mini", "llama-*"} })
	ctx := context.Background()
	key, k := e.newKey(t, "", nil)
	wantError(t, e.do(t, "POST", "/v1/chat/completions", strings.Replace(chatBody, "gpt-4o-mini", "gpt-4o", 1), "", bearer(key)),
		403, "model_not_allowed", `"gpt-4o" is not available on your plan (Trial)`)
	if rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)); rec.Code != 200 {
		t.Fatalf("trial model: %d %s", rec.Code, rec.Body)
	}

	plan := &storage.Plan{Name: "Pro", DailyRequestLimit: 2, MonthlyRequestLimit: 100, DailyTokenLimit: 1_000_000, MonthlyTokenLimit: 10_000_000, Models: []string{"gpt-4o*"}, IsActive: true}
	if err := e.st.CreatePlan(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.AssignPlan(ctx, k.UserID, plan.ID, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// The assignment takes effect at once; the plan's models now apply.
	wantError(t, e.do(t, "POST", "/v1/chat/completions", strings.Replace(chatBody, "gpt-4o-mini", "llama-3", 1), "", bearer(key)),
		403, "model_not_allowed", "(Pro)")
	// One request is already counted today (the trial request): one more.
	if rec := e.do(t, "POST", "/v1/chat/completions", strings.Replace(chatBody, "gpt-4o-mini", "gpt-4o", 1), "", bearer(key)); rec.Code != 200 {
		t.Fatalf("pro model: %d %s", rec.Code, rec.Body)
	}
	rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key))
	wantError(t, rec, 429, "plan_limit_exceeded", "Plan limit exceeded: Daily request limit exceeded (2) for live environment")
	if rec.Header().Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// GET /v1/models does not count toward the plan.
	if rec := e.do(t, "GET", "/v1/models", "", "", bearer(key)); rec.Code != 200 {
		t.Fatalf("models after plan limit: %d", rec.Code)
	}
	// An expired plan counts as no plan (trial limits, trial models).
	clockNow = func() time.Time { return time.Now().Add(2 * time.Hour) }
	defer func() { clockNow = time.Now }()
	wantError(t, e.do(t, "POST", "/v1/chat/completions", strings.Replace(chatBody, "gpt-4o-mini", "gpt-4o", 1), "", bearer(key)),
		403, "model_not_allowed", "(Trial)")
}

func TestGatewayTrialHalvedForTestKeys(t *testing.T) {
	e := newTestEnv(t, nil)
	key, _ := e.newKey(t, "test", nil)
	// Trial: 10,000 tokens a day, 5,000 for a test key. 4,000 max_tokens
	// fit once, not twice.
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4000}`
	if rec := e.do(t, "POST", "/v1/chat/completions", body, "", bearer(key)); rec.Code != 200 {
		t.Fatalf("first: %d %s", rec.Code, rec.Body)
	}
	if got := e.do(t, "GET", "/v1/models", "", "", bearer(key)).Header().Get("X-Ratelimit-Limit-Tokens"); got != "5000" {
		t.Errorf("token limit header = %q, want 5000", got)
	}
}

func TestGatewayRateLimits(t *testing.T) {
	e := newTestEnv(t, func(a *App, g *Gateway) {
		a.DefaultLimits = storage.RateLimits{RequestsPerMinute: 100, TokensPerMinute: 1000}
		g.Limits = storage.RateLimits{RequestsPerMinute: 3}
	})
	ctx := context.Background()
	key, k := e.newKey(t, "", nil)
	for i := range 3 {
		rec := e.do(t, "GET", "/v1/models", "", "", bearer(key))
		if rec.Code != 200 {
			t.Fatalf("request %d: %d", i, rec.Code)
		}
		if got, want := rec.Header().Get("X-Ratelimit-Remaining-Requests"), fmt.Sprint(2-i); got != want {
			t.Errorf("remaining after %d = %q, want %q", i+1, got, want)
		}
	}
	rec := e.do(t, "GET", "/v1/models", "", "", bearer(key))
	wantError(t, rec, 429, "rate_limit_exceeded", "Minute request limit exceeded (3)")
	if rec.Header().Get("Retry-After") == "" || rec.Header().Get("X-Ratelimit-Remaining-Requests") != "0" {
		t.Errorf("429 headers: %v", rec.Header())
	}
	// An admin limit for the user wins over the site's.
	if err := e.st.SetUserLimits(ctx, k.UserID, storage.RateLimits{RequestsPerMinute: 10}); err != nil {
		t.Fatal(err)
	}
	if rec := e.do(t, "GET", "/v1/models", "", "", bearer(key)); rec.Code != 200 {
		t.Fatalf("after admin limit: %d %s", rec.Code, rec.Body)
	}
	// The key's own limit applies to the key (token limit: estimate counted).
	key2, _ := e.newKey(t, "", func(k *storage.APIKey) { k.RateLimits = storage.RateLimits{TokensPerMinute: 30} })
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":20}`
	if rec := e.do(t, "POST", "/v1/chat/completions", body, "", bearer(key2)); rec.Code != 200 {
		t.Fatalf("first: %d %s", rec.Code, rec.Body)
	}
	wantError(t, e.do(t, "POST", "/v1/chat/completions", body, "", bearer(key2)), 429, "rate_limit_exceeded", "Minute token limit exceeded (30) for this API key")
}

func TestAuthenticateAPI(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	id, err := e.app.Authenticate(key)
	if err != nil || id.Key.ID != k.ID || id.User.ID != k.UserID {
		t.Fatalf("Authenticate = %+v, %v", id, err)
	}
	if _, err := e.app.Authenticate("nope"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("malformed: %v", err)
	}
	if _, err := e.app.Authenticate("gw_live_" + strings.Repeat("z", 43)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := e.st.UpdateKey(context.Background(), k.ID, func(k *storage.APIKey) error { k.IsActive = false; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.app.Authenticate(key); !errors.Is(err, ErrInactiveKey) {
		t.Fatalf("inactive: %v", err)
	}
}

func TestGatewaySecurityAudit(t *testing.T) {
	dir := t.TempDir()
	e := newTestEnv(t, func(a *App, _ *Gateway) {
		a.StorageRaw = testBolt(filepath.Join(dir, "gw.db"))
		a.SecurityAuditPerMinute = 2
	})
	ipKey, k := e.newKey(t, "", func(k *storage.APIKey) { k.IPAllowlist = []string{"10.0.0.1"} })
	for range 5 {
		e.do(t, "GET", "/v1/models", "", "", bearer(ipKey))
	}
	unknown := "gw_live_" + strings.Repeat("Q", 43)
	for range 3 {
		e.do(t, "GET", "/v1/models", "", "203.0.113.9:1", bearer(unknown))
	}
	// Releasing the app's store writes the queued events; reopen the file.
	if err := e.app.Cleanup(); err != nil {
		t.Fatal(err)
	}
	st, err := storage.Open(filepath.Join(dir, "gw.db"), storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	entries, err := st.ListAudit(context.Background(), storage.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, en := range entries {
		counts[en.Action]++
		raw, _ := json.Marshal(en)
		if strings.Contains(string(raw), ipKey[8:]) || strings.Contains(string(raw), unknown[8:]) {
			t.Fatalf("audit entry contains a key: %s", raw)
		}
		if en.Action == auditIPDenied && (en.KeyID != k.ID || en.IP != "192.0.2.10") {
			t.Errorf("ip_denied entry: %+v", en)
		}
		if en.Action == auditUnknownKey && (en.IP != "203.0.113.9" || en.Details["key_prefix"] != "gw_live_QQQQ…") {
			t.Errorf("unknown_key entry: %+v", en)
		}
	}
	if counts[auditIPDenied] != 2 || counts[auditUnknownKey] != 2 {
		t.Fatalf("audit counts = %v, want 2 of each (rate-limited)", counts)
	}
}

// BenchmarkAdmission measures the whole admission path of a known key on a
// free route (no body): credential extraction, index lookup (HMAC of the
// key), access checks (IP allowlist, referrer), plan policy, rate limits
// and the x-ratelimit-* headers, up to the proxy step. Setting the
// placeholders and log fields (Caddy's own cost) is BenchmarkAnnotate.
func BenchmarkAdmission(b *testing.B) {
	e := newTestEnv(b, func(a *App, _ *Gateway) {
		a.DefaultLimits = storage.RateLimits{RequestsPerMinute: 1 << 40, TokensPerMinute: 1 << 40}
	})
	key, _ := e.newKey(b, "", func(k *storage.APIKey) {
		k.IPAllowlist = []string{"10.0.0.0/8", "192.0.2.0/24"}
		k.DomainReferrers = []string{"*.example.com"}
	})
	auth := []string{"Bearer " + key}
	g := e.g
	now := time.Now()
	req := httptest.NewRequest("GET", "/v1/models", nil)
	req.RemoteAddr = "192.0.2.10:40000"
	req.Header.Set("Referer", "https://app.example.com/")
	rec := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, &caddyhttp.Server{})
	h := rec.Header()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req.Header["Authorization"] = auth // credentials removes it
		rt, gerr := g.route(req)
		if gerr != nil {
			b.Fatal(gerr)
		}
		ip := clientIP(req)
		en, gerr := g.authenticate(req, credentials(req), ip, now)
		if gerr != nil {
			b.Fatal(gerr)
		}
		if gerr := g.checkAccess(req, en, ip, rt, now); gerr != nil {
			b.Fatal(gerr)
		}
		adm, gerr := g.newAdmission(req, en, rt, ip, now)
		if gerr != nil {
			b.Fatal(gerr)
		}
		if gerr := g.admit(req, adm, now, h); gerr != nil {
			b.Fatal(gerr)
		}
	}
}

// BenchmarkAnnotate measures setting the user placeholder, the vars and the
// extra access-log fields (allocations are inside Caddy: the replacer's map
// and ExtraLogFields.Add).
func BenchmarkAnnotate(b *testing.B) {
	e := newTestEnv(b, nil)
	key, _ := e.newKey(b, "", nil)
	en, err := e.g.state.index.lookup(context.Background(), e.app.Keyring().Hash(key), time.Now())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		req := httptest.NewRequest("GET", "/v1/models", nil)
		req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), httptest.NewRecorder(), &caddyhttp.Server{})
		b.StartTimer()
		annotate(req, en)
	}
}

// annotate exposes who is calling, never the key: the {http.auth.user.id}
// placeholder (the access log's user_id), the vars gatewayz_user_id,
// gatewayz_key_id and gatewayz_env ({http.vars.*}, `vars` matcher), and the
// same as extra access-log fields.
func annotate(r *http.Request, e *keyEntry) {
	rc := newRequestCtx(r)
	rc.annotate(e)
	rc.logCaller(nil)
}
