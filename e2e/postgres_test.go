package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/postgres"
)

// startOnPostgres starts the gateway with Caddyfile.example moved to the
// PostgreSQL database at dsn by one environment variable.
func startOnPostgres(t *testing.T, upstream, dsn string) *Gateway {
	t.Helper()
	return startGateway(t, upstream, func(c *Config) {
		c.Env = append(c.Env, "GATEWAYZ_DATABASE_URL="+dsn)
	})
}

// verifyDatabase checks the database's own invariants: every balance equals
// its ledger, running sums hold, reserved equals the open holds.
func verifyDatabase(t *testing.T, dsn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := postgres.Open(ctx, dsn, postgres.Options{Node: "e2e-verifier"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s.VerifyAudit(ctx); err != nil {
		t.Fatalf("audit chain (%d entries verified): %v", n, err)
	}
}

// TestPostgresEndToEnd serves the API from bin/caddy on PostgreSQL:
// register, keys, completions (JSON and stream, with the OpenAI SDK) and
// balances.
func TestPostgresEndToEnd(t *testing.T) {
	dsn := pgtest.DatabaseURL(t)
	up, _ := newUpstream(t, mockOptions())
	g := startOnPostgres(t, up.URL, dsn)
	api := NewAPI(g.URL, testAdminKey)
	ctx := t.Context()

	u, err := api.Register("pg", "pg@example.com", 1000)
	if err != nil {
		t.Fatal(err)
	}
	key2, _, err := api.CreateKey(u.APIKey, map[string]any{"key_name": "second"})
	if err != nil {
		t.Fatal(err)
	}
	balance := int64(1000)
	cc, err := sdkClient(g, key2).Chat.Completions.New(ctx, chatParams(0))
	if err != nil || cc.Usage.TotalTokens != jsonCost {
		t.Fatalf("chat completion: %+v, %v", cc, err)
	}
	balance -= jsonCost
	wantCredits(t, api, u.ID, balance)
	p := chatParams(0)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	if content, usage := readStream(t, sdkClient(g, u.APIKey), p); content != strings.Repeat("hello ", mockChunks) || usage != streamCost {
		t.Fatalf("stream: %q, usage %d", content, usage)
	}
	balance -= streamCost
	wantCredits(t, api, u.ID, balance)
	bal := mustOK(t, "balance")(api.Do("GET", "/user/balance", u.APIKey, nil)).JSON()
	if bal["credits"] != float64(balance) {
		t.Fatalf("/user/balance = %v, want %d credits", bal, balance)
	}
	// The same top-up twice is applied once.
	for range 2 {
		if _, err := api.AddCredits(u.ID, 500, "pg-topup-1"); err != nil {
			t.Fatal(err)
		}
	}
	balance += 500
	wantCredits(t, api, u.ID, balance)
	usage := mustOK(t, "key usage")(api.Do("GET", "/user/api-keys/usage", u.APIKey, nil))
	if !strings.Contains(string(usage.Body), `"requests_used":1`) {
		t.Fatalf("key usage counts no request: %s", usage.Body)
	}
	mustOK(t, "audit verification")(api.Do("GET", "/admin/audit-logs/verify", testAdminKey, nil))
	// No hot backup over the API: the answer says to use pg_dump.
	if resp, err := api.Do("GET", "/admin/backup", testAdminKey, nil); err != nil || resp.Status != http.StatusNotImplemented ||
		!strings.Contains(resp.JSON()["detail"].(string), "pg_dump") {
		t.Fatalf("backup on PostgreSQL: %v %v", resp, err)
	}
	if err := g.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	verifyDatabase(t, dsn)
}

// TestPostgresStartRefusals: without an explicit secret, or with a server
// that is not there, the gateway refuses to start with a clear message.
func TestPostgresStartRefusals(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	for _, tc := range []struct {
		name, dsn, secret, want string
	}{
		{"no secret", "postgres://u@127.0.0.1:1/db", "", "postgres storage needs an explicit secret"},
		{"no server", "postgres://u:pw-not-logged@127.0.0.1:1/db?sslmode=disable", testSecret, "connecting to PostgreSQL at 127.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(Config{
				Binary: binary, Caddyfile: caddyfile, Dir: t.TempDir(), Upstream: up.URL,
				AdminKey: testAdminKey, Secret: tc.secret, StartTimeout: 20 * time.Second,
				Env: []string{"GATEWAYZ_DATABASE_URL=" + tc.dsn},
			})
			if err == nil {
				t.Fatal("the gateway started")
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "pw-not-logged") {
				t.Fatalf("start error does not say %q (or shows the password):\n%v", tc.want, err)
			}
		})
	}
}

// TestPostgresOutage stops the database under the gateway: requests get
// 503 in their route's error shape (never a 500), and once the database is
// back the gateway serves again by itself, with nothing charged twice.
func TestPostgresOutage(t *testing.T) {
	srv, err := pgtest.Start()
	if err != nil {
		pgtest.Unavailable(t, err)
	}
	defer srv.Close()
	dsn := srv.URL("postgres")
	up, _ := newUpstream(t, mockOptions())
	g := startOnPostgres(t, up.URL, dsn)
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("outage", "outage@example.com", 1000)
	if err != nil {
		t.Fatal(err)
	}
	c := sdkClient(g, u.APIKey)
	balance := int64(1000)
	if _, err := c.Chat.Completions.New(t.Context(), chatParams(0)); err != nil {
		t.Fatal(err)
	}
	balance -= jsonCost
	wantCredits(t, api, u.ID, balance)

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// The key is cached, so the refusal comes from the credit check.
	_, err = c.Chat.Completions.New(t.Context(), chatParams(0))
	if e := apiError(t, "completion with the database down", err, http.StatusServiceUnavailable); e.Code != "service_unavailable" {
		t.Fatalf("code %q: %s", e.Code, e.RawJSON())
	}
	resp, err := api.Do("GET", "/user/balance", u.APIKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusServiceUnavailable || resp.JSON()["detail"] == nil {
		t.Fatalf("API with the database down: %d %s", resp.Status, resp.Body)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// Back by itself: the pool reconnects on the next request.
	var cc *openai.ChatCompletion
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if cc, err = c.Chat.Completions.New(t.Context(), chatParams(0)); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || cc.Usage.TotalTokens != jsonCost {
		t.Fatalf("completion after the database came back: %v", err)
	}
	balance -= jsonCost
	wantCredits(t, api, u.ID, balance)
	if err := g.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	verifyDatabase(t, dsn)
}

// TestPostgresTwoNodes runs two gateways on one database: a key made on
// one works on the other, its deletion reaches the other through the
// change feed, a top-up sent to both is applied once, and requests spread
// over both never take a balance below zero.
func TestPostgresTwoNodes(t *testing.T) {
	dsn := pgtest.DatabaseURL(t)
	up, _ := newUpstream(t, mockOptions())
	a, b := startOnPostgres(t, up.URL, dsn), startOnPostgres(t, up.URL, dsn)
	apiA, apiB := NewAPI(a.URL, testAdminKey), NewAPI(b.URL, testAdminKey)
	ctx := t.Context()

	u, err := apiA.Register("two", "two@example.com", 10*jsonCost)
	if err != nil {
		t.Fatal(err)
	}
	extra, extraID, err := apiA.CreateKey(u.APIKey, map[string]any{"key_name": "extra"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sdkClient(b, extra).Chat.Completions.New(ctx, chatParams(0)); err != nil {
		t.Fatalf("a key made on node A, used on node B: %v", err)
	}
	mustOK(t, "delete key on A")(apiA.Do("DELETE", fmt.Sprintf("/user/api-keys/%d", extraID), u.APIKey,
		map[string]any{"confirmation": "DELETE_KEY"}))
	// Node B cached the key; the change feed drops it there.
	var lastErr error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, lastErr = sdkClient(b, extra).Models.List(ctx); lastErr != nil {
			break
		}
	}
	apiError(t, "deleted key on the other node", lastErr, http.StatusUnauthorized)

	for _, api := range []*API{apiA, apiB} {
		if _, err := api.AddCredits(u.ID, 1, "both-nodes"); err != nil {
			t.Fatal(err)
		}
	}
	// 9 requests' worth plus the 1 credit are left; 30 requests over both
	// nodes at once.
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := range 30 {
		g := a
		if i%2 == 1 {
			g = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := sdkClient(g, u.APIKey).Chat.Completions.New(ctx, chatParams(jsonCost-mockPrompt)); err == nil {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() > 9 {
		t.Fatalf("%d requests of %d credits each were served from %d credits", ok.Load(), jsonCost, 9*jsonCost+1)
	}
	wantCredits(t, apiB, u.ID, 9*jsonCost+1-ok.Load()*jsonCost)
	for _, g := range []*Gateway{a, b} {
		if err := g.Stop(30 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	verifyDatabase(t, dsn)
}
