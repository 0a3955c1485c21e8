package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/alerts"
	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// alertReceiver answers 503 while down, and records the signed events it
// accepts once up.
type alertReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	down   bool
	calls  int
	events map[string]storage.Event // by id
	dups   int
	bad    []string
}

const e2eWebhookSecret = "e2e-webhook-secret-1f2e3d4c"

func startAlertReceiver(t *testing.T) *alertReceiver {
	rc := &alertReceiver{down: true, events: map[string]storage.Event{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.calls++
		if err := alerts.Verify(e2eWebhookSecret, r.Header.Get(alerts.SignatureHeader), body, 5*time.Minute, time.Now()); err != nil {
			rc.bad = append(rc.bad, err.Error())
		}
		if rc.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		var ev storage.Event
		if err := json.Unmarshal(body, &ev); err != nil {
			rc.bad = append(rc.bad, err.Error())
		}
		if _, seen := rc.events[ev.ID]; seen {
			rc.dups++ // at least once: allowed, and counted
		}
		rc.events[ev.ID] = ev
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *alertReceiver) setDown(down bool) {
	rc.mu.Lock()
	rc.down = down
	rc.mu.Unlock()
}

func (rc *alertReceiver) received() map[string]storage.Event {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := map[string]storage.Event{}
	for k, v := range rc.events {
		out[k] = v
	}
	return out
}

// alertsCaddyfile is Caddyfile.example with an operator webhook and short
// retries.
func alertsCaddyfile(t *testing.T) string {
	return writeCaddyfile(t, func(s string) string {
		return strings.Replace(s, "\t\tsignup_credits {env.GATEWAYZ_SIGNUP_CREDITS}\n", `		signup_credits {env.GATEWAYZ_SIGNUP_CREDITS}
		webhook {
			url {env.GATEWAYZ_TEST_WEBHOOK_URL}
			secret {env.GATEWAYZ_WEBHOOK_SECRET}
		}
		alerts {
			low_balance_threshold 995
			retry_base 100ms
			retry_ceiling 200ms
			poll_interval 50ms
		}
`, 1)
	})
}

// deliveries reads GET /admin/webhooks/deliveries.
func deliveries(t *testing.T, api *API) []map[string]any {
	t.Helper()
	resp := mustOK(t, "deliveries")(api.Do("GET", "/admin/webhooks/deliveries?limit=500", api.AdminKey, nil))
	var out struct {
		Deliveries []map[string]any `json:"deliveries"`
	}
	if err := json.Unmarshal(resp.Body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Deliveries
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testAlertsSurviveKill: events in the outbox whose receiver is down when
// the gateway is SIGKILLed are delivered after the restart, each at least
// once, signed.
func testAlertsSurviveKill(t *testing.T, edit func(*Config)) {
	rc := startAlertReceiver(t)
	up, _ := newUpstream(t, mockOptions())
	cf := alertsCaddyfile(t)
	g := startGateway(t, up.URL, func(c *Config) {
		c.Caddyfile = cf
		c.Env = append(c.Env, "GATEWAYZ_TEST_WEBHOOK_URL="+rc.URL+"/hook", "GATEWAYZ_WEBHOOK_SECRET="+e2eWebhookSecret)
		if edit != nil {
			edit(c)
		}
	})
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("alerts", "alerts@example.com", 1000)
	if err != nil {
		t.Fatal(err)
	}
	// A settlement takes the balance below 995 (balance.low, batched from
	// the request path), and three top-ups (credits.added, written before
	// the admin call returns).
	mustOK(t, "chat")(api.Chat(u.APIKey, false, 16))
	for i := range 3 {
		if _, err := api.AddCredits(u.ID, int64(10+i), ""); err != nil {
			t.Fatal(err)
		}
	}
	// Every event is in the outbox and has failed at least once.
	waitFor(t, "four failing deliveries", func() bool {
		ds := deliveries(t, api)
		if len(ds) != 4 {
			return false
		}
		for _, d := range ds {
			if d["status"] != "pending" || d["attempts"].(float64) < 1 {
				return false
			}
		}
		return true
	})
	g.Kill()
	<-g.Done()
	rc.setDown(false)
	g2 := restart(t, g)
	api = NewAPI(g2.URL, testAdminKey)
	waitFor(t, "the events delivered after the restart", func() bool { return len(rc.received()) == 4 })
	types := map[string]int{}
	for _, ev := range rc.received() {
		if ev.UserID != u.ID {
			t.Fatalf("event of user %d", ev.UserID)
		}
		types[ev.Type]++
	}
	if types[alerts.BalanceLow] != 1 || types[alerts.CreditsAdded] != 3 {
		t.Fatalf("received %v", types)
	}
	waitFor(t, "deliveries recorded", func() bool {
		for _, d := range deliveries(t, api) {
			if d["status"] != "delivered" {
				return false
			}
		}
		return true
	})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.bad) != 0 {
		t.Fatalf("bad deliveries: %v", rc.bad)
	}
	t.Logf("%d calls for 4 events (%d duplicates after the kill)", rc.calls, rc.dups)
}

func TestAlertsSurviveKill(t *testing.T) { testAlertsSurviveKill(t, nil) }

func TestAlertsSurviveKillPostgres(t *testing.T) {
	dsn := pgtest.DatabaseURL(t)
	testAlertsSurviveKill(t, func(c *Config) { c.Env = append(c.Env, "GATEWAYZ_DATABASE_URL="+dsn) })
}

// TestAlertsTwoNodes runs two gateways on one PostgreSQL database with one
// operator endpoint: every node's worker claims deliveries, and each event
// is sent once, by one of them.
func TestAlertsTwoNodes(t *testing.T) {
	dsn := pgtest.DatabaseURL(t)
	rc := startAlertReceiver(t)
	rc.setDown(false)
	up, _ := newUpstream(t, mockOptions())
	cf := alertsCaddyfile(t)
	start := func() *Gateway {
		return startGateway(t, up.URL, func(c *Config) {
			c.Caddyfile = cf
			c.Env = append(c.Env, "GATEWAYZ_DATABASE_URL="+dsn,
				"GATEWAYZ_TEST_WEBHOOK_URL="+rc.URL+"/hook", "GATEWAYZ_WEBHOOK_SECRET="+e2eWebhookSecret)
		})
	}
	a, b := start(), start()
	apiA, apiB := NewAPI(a.URL, testAdminKey), NewAPI(b.URL, testAdminKey)
	u, err := apiA.Register("twonodes", "twonodes@example.com", 1000)
	if err != nil {
		t.Fatal(err)
	}
	const topUps = 40
	var wg sync.WaitGroup
	for i := range topUps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			api := apiA
			if i%2 == 1 {
				api = apiB
			}
			if _, err := api.AddCredits(u.ID, int64(i+1), ""); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "every top-up's event delivered", func() bool { return len(rc.received()) == topUps })
	waitFor(t, "deliveries recorded", func() bool {
		ds := deliveries(t, apiB)
		for _, d := range ds {
			if d["status"] != "delivered" {
				return false
			}
		}
		return len(ds) == topUps
	})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.dups != 0 || rc.calls != topUps || len(rc.bad) != 0 {
		t.Fatalf("%d calls for %d events, %d duplicates, bad %v", rc.calls, topUps, rc.dups, rc.bad)
	}
}
