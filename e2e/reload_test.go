package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// streamResult is what one client saw of a streamed completion.
type streamResult struct {
	status int
	chunks int  // content events
	done   bool // saw data: [DONE]
	err    error
}

// stream sends one streamed chat completion and reads it to the end.
func stream(base, key string) streamResult {
	body := `{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"Say hello"}]}`
	req, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return streamResult{err: err}
	}
	defer resp.Body.Close()
	res := streamResult{status: resp.StatusCode}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "data: [DONE]":
			res.done = true
		case strings.HasPrefix(line, "data: ") && strings.Contains(line, `"content"`):
			res.chunks++
		}
	}
	res.err = sc.Err()
	return res
}

// startStreams starts n streams and returns a function waiting for their
// results. It returns once every stream has its response headers, so the
// streams are in flight.
func startStreams(t *testing.T, base, key string, n int) func() []streamResult {
	t.Helper()
	results := make([]streamResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = stream(base, key)
		}()
	}
	return func() []streamResult {
		wg.Wait()
		return results
	}
}

// checkStreams fails unless every stream was a complete 200.
func checkStreams(t *testing.T, what string, results []streamResult) {
	t.Helper()
	for i, r := range results {
		if r.err != nil || r.status != http.StatusOK || !r.done || r.chunks != mockChunks {
			t.Errorf("%s: stream %d: status %d, %d chunks, [DONE] %v, err %v", what, i, r.status, r.chunks, r.done, r.err)
		}
	}
}

// keyRequestsUsed reads requests_used of the caller's key from GET
// /user/api-keys.
func keyRequestsUsed(t *testing.T, api *API, key string, keyID int64) int64 {
	t.Helper()
	resp := mustOK(t, "list keys")(api.Do("GET", "/user/api-keys", key, nil))
	var out struct {
		Keys []struct {
			ID           int64 `json:"id"`
			RequestsUsed int64 `json:"requests_used"`
		} `json:"keys"`
	}
	if err := jsonUnmarshal(resp.Body, &out); err != nil {
		t.Fatal(err)
	}
	for _, k := range out.Keys {
		if k.ID == keyID {
			return k.RequestsUsed
		}
	}
	t.Fatalf("key %d not in the listing: %s", keyID, resp.Body)
	return 0
}

// waitInFlight waits until the upstream has n active streams, so that the
// reload or stop that follows happens while they are in flight.
func waitInFlight(t *testing.T, h *mock.Handler, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for h.Stats().ActiveStreams < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d streams reached the upstream", h.Stats().ActiveStreams, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReloadUnderLoad runs `caddy reload` while streams are in flight:
// every stream completes and is settled exactly once, nothing answers 5xx,
// the database is not reopened (no lock timeout), and the rate limiter
// keeps its counts across the reload.
func TestReloadUnderLoad(t *testing.T) {
	up, h := newUpstream(t, func() mock.Options {
		o := mockOptions()
		o.ChunkDelay = 40 * time.Millisecond
		return o
	}())
	g := startGateway(t, up.URL, nil)
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("reload", "reload@example.com", 100_000)
	if err != nil {
		t.Fatal(err)
	}
	// A second user limited to 3 requests an hour (an hour, not a minute,
	// so that a window boundary almost never falls inside the test; and a
	// rate-limit window, which lives only in memory, unlike the plan's
	// counters that are reloaded from usage records) uses them all before
	// the reload; the reloaded config must still refuse the fourth.
	lim, err := api.Register("limited", "limited@example.com", 100_000)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "set limits")(api.Do("POST", "/admin/limit", testAdminKey,
		map[string]any{"user_id": lim.ID, "rate_limits": map[string]any{"requests_per_hour": 3}}))
	for i := range 3 {
		mustOK(t, fmt.Sprintf("limited request %d", i))(api.Chat(lim.APIKey, false, 0))
	}

	const n = 6
	wait := startStreams(t, g.URL, u.APIKey, n)
	waitInFlight(t, h, n)
	if err := g.Reload("", true); err != nil {
		t.Fatal(err)
	}
	// A reload with a changed config too (a new Caddyfile text).
	variant := writeCaddyfile(t, func(s string) string {
		return strings.Replace(s, "\thandle /v1/* {", "\t# reloaded\n\thandle /v1/* {", 1)
	})
	if err := g.Reload(variant, false); err != nil {
		t.Fatal(err)
	}
	checkStreams(t, "streams across reloads", wait())

	// The old server closes its idle keep-alive connections after the
	// reload returns, so a request on one of them may be reset before it
	// is read (Go retries only idempotent requests): use new connections.
	api = NewAPI(g.URL, testAdminKey)
	api.Client.Transport = &http.Transport{}
	resp, err := api.Chat(lim.APIKey, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusTooManyRequests {
		t.Errorf("4th request of a 3/hour user after reload: %d %s (limiter state lost?)", resp.Status, resp.Body)
	}
	// New streams are served by the new config.
	checkStreams(t, "stream after reload", []streamResult{stream(g.URL, u.APIKey)})

	wantCredits(t, api, u.ID, 100_000-(n+1)*streamCost)
	if used := keyRequestsUsed(t, api, u.APIKey, u.KeyID); used != n+1 {
		t.Errorf("requests_used %d, want %d (each stream settled exactly once)", used, n+1)
	}
	wantCredits(t, api, lim.ID, 100_000-3*jsonCost)
	checkLogClean(t, g)
}

// TestGracefulStopUnderLoad stops the gateway (SIGTERM, and `caddy stop`)
// while streams are in flight: every stream completes, the process exits
// cleanly, and after a restart on the same database each stream was
// charged exactly once and the ledger is exact.
func TestGracefulStopUnderLoad(t *testing.T) {
	for _, how := range []string{"SIGTERM", "caddy stop"} {
		t.Run(how, func(t *testing.T) {
			up, h := newUpstream(t, func() mock.Options {
				o := mockOptions()
				o.ChunkDelay = 40 * time.Millisecond
				return o
			}())
			g := startGateway(t, up.URL, nil)
			api := NewAPI(g.URL, testAdminKey)
			u, err := api.Register("stop", "stop@example.com", 100_000)
			if err != nil {
				t.Fatal(err)
			}
			const n = 6
			wait := startStreams(t, g.URL, u.APIKey, n)
			waitInFlight(t, h, n)
			if how == "SIGTERM" {
				err = g.Stop(60 * time.Second)
			} else {
				err = g.CaddyStop(60 * time.Second)
			}
			if err != nil {
				t.Fatalf("%s: %v", how, err)
			}
			checkStreams(t, "streams across "+how, wait())
			checkLogClean(t, g)

			g2 := restart(t, g)
			api2 := NewAPI(g2.URL, testAdminKey)
			wantCredits(t, api2, u.ID, 100_000-n*streamCost)
			if used := keyRequestsUsed(t, api2, u.APIKey, u.KeyID); used != n {
				t.Errorf("requests_used %d, want %d (each stream settled exactly once)", used, n)
			}
			if err := g2.Stop(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			st, err := storage.Open(g.cfg.DB, storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.VerifyLedger(context.Background()); err != nil {
				t.Errorf("VerifyLedger: %v", err)
			}
		})
	}
}
