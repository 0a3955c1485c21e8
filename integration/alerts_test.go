package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/alerts"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// webhookReceiver is a local endpoint that checks signatures, fails the
// first failures deliveries, and records the events it accepted.
type webhookReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	secret   string
	failures int
	calls    int
	events   []storage.Event
	bad      []string
}

func startReceiver(t *testing.T, secret string, failures int) *webhookReceiver {
	t.Helper()
	rc := &webhookReceiver{secret: secret, failures: failures}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *webhookReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.calls++
	if err := alerts.Verify(rc.secret, r.Header.Get(alerts.SignatureHeader), body, 5*time.Minute, time.Now()); err != nil {
		rc.bad = append(rc.bad, err.Error())
		http.Error(w, "bad signature", http.StatusBadRequest)
		return
	}
	if rc.failures > 0 {
		rc.failures--
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var ev storage.Event
	if err := json.Unmarshal(body, &ev); err != nil || ev.ID == "" || r.Header.Get("Gatewayz-Event-Id") != ev.ID {
		rc.bad = append(rc.bad, fmt.Sprintf("body %s: %v", body, err))
	}
	rc.events = append(rc.events, ev)
}

// ofType returns the accepted events of type t.
func (rc *webhookReceiver) ofType(t string) []storage.Event {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []storage.Event
	for _, ev := range rc.events {
		if ev.Type == t {
			out = append(out, ev)
		}
	}
	return out
}

func (rc *webhookReceiver) badSignatures() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.bad...)
}

// awaitDelivered waits until the admin's delivery log holds n deliveries,
// all delivered, and returns them.
func (g *gateway) awaitDelivered(t *testing.T, n int) []map[string]any {
	t.Helper()
	var ds []map[string]any
	eventually(t, fmt.Sprintf("%d deliveries delivered", n), func() bool {
		out := g.do("GET", "/admin/webhooks/deliveries", nil, adminAuth()).mustStatus(t, 200, "deliveries").json()
		ds = nil
		for _, d := range out["deliveries"].([]any) {
			if m := d.(map[string]any); m["status"] == "delivered" {
				ds = append(ds, m)
			}
		}
		return len(ds) == n && len(out["deliveries"].([]any)) == n
	})
	return ds
}

// fastAlerts are alert settings with short retries, so a test sees a
// receiver's recovery at once.
const fastAlerts = `alerts {
			retry_base 10ms
			retry_ceiling 50ms
			poll_interval 20ms
			batch_window 5ms
			%s
		}`

// An operator's endpoint that fails three times gets the balance.low of a
// settlement once more, signed, and the admin view shows the delivery; a
// top-up sends credits.added.
func TestAlertsOperatorWebhook(t *testing.T) {
	t.Setenv("GATEWAYZ_TEST_WEBHOOK_SECRET", "op-secret-0123456789")
	rc := startReceiver(t, "op-secret-0123456789", 3)
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: fmt.Sprintf(`webhook {
			url %s/hooks
			secret {env.GATEWAYZ_TEST_WEBHOOK_SECRET}
			events balance.low balance.depleted credits.added
		}
		`+fastAlerts, rc.URL, "low_balance_threshold 995")})
	key, uid := g.registerUser("ops@example.com") // 1000 credits
	// The first request takes the balance to 990, below 995: one alert;
	// the next ones stay below and fire nothing.
	for range 3 {
		g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)).mustStatus(t, 200, "chat")
	}
	eventually(t, "balance.low delivered", func() bool { return len(rc.ofType(alerts.BalanceLow)) > 0 })
	g.do("POST", "/admin/add_credits", map[string]any{"user_id": uid, "credits": 500}, adminAuth()).mustStatus(t, 200, "top up")
	eventually(t, "credits.added delivered", func() bool { return len(rc.ofType(alerts.CreditsAdded)) > 0 })

	low := rc.ofType(alerts.BalanceLow)
	var data map[string]int64
	if err := json.Unmarshal(low[0].Data, &data); err != nil || data["balance"] != 990 || data["threshold"] != 995 || low[0].UserID != uid {
		t.Fatalf("balance.low %+v (%s)", low[0], low[0].Data)
	}
	added := rc.ofType(alerts.CreditsAdded)
	var addedData map[string]any
	if err := json.Unmarshal(added[0].Data, &addedData); err != nil || addedData["amount"] != float64(500) || addedData["balance"] != float64(1470) || addedData["kind"] != "top_up" {
		t.Fatalf("credits.added %s", added[0].Data)
	}
	if bad := rc.badSignatures(); len(bad) != 0 {
		t.Fatalf("deliveries with bad signatures: %v", bad)
	}
	// Settled: nothing more comes, and the log shows 4 attempts for the
	// first alert.
	deliveries := g.awaitDelivered(t, 2)
	for _, d := range deliveries {
		if d["event_type"] == alerts.BalanceLow && (d["attempts"] != float64(4) || d["response_status"] != float64(200)) {
			t.Fatalf("balance.low delivery %v", d)
		}
		if d["target"] == nil || d["webhook_id"] != nil {
			t.Fatalf("operator delivery %v", d)
		}
	}
	if n := len(rc.ofType(alerts.BalanceLow)); n != 1 {
		t.Fatalf("balance.low accepted %d times, want once", n)
	}
	// Users do not see the operator's deliveries.
	mine := g.do("GET", "/user/webhooks/deliveries", nil, bearer(key)).mustStatus(t, 200, "user deliveries").json()
	if mine["total"] != float64(0) {
		t.Fatalf("a user sees the operator's deliveries: %v", mine)
	}
}

// A user registers a webhook (private targets allowed by the operator),
// gets its secret once, and receives a signed ping and their own alerts.
func TestAlertsUserWebhook(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: fmt.Sprintf(fastAlerts, "allow_http\n\t\t\tallow_private_targets")})
	key, uid := g.registerUser("hooks@example.com")
	other, _ := g.registerUser("other@example.com")

	rc := startReceiver(t, "", 0)
	created := g.do("POST", "/user/webhooks", map[string]any{"url": rc.URL + "/in", "events": []string{"balance.low", "balance.depleted"}},
		bearer(key)).mustStatus(t, 200, "create webhook").json()
	secret, _ := created["secret"].(string)
	if !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("created %v", created)
	}
	rc.mu.Lock()
	rc.secret = secret
	rc.mu.Unlock()
	id := int64(created["id"].(float64))
	list := g.do("GET", "/user/webhooks", nil, bearer(key)).mustStatus(t, 200, "list").json()
	if strings.Contains(fmt.Sprint(list), secret) || list["total"] != float64(1) {
		t.Fatalf("list %v (the secret must not show again)", list)
	}
	if l := g.do("GET", "/user/webhooks", nil, bearer(other)).mustStatus(t, 200, "other list").json(); l["total"] != float64(0) {
		t.Fatalf("another user sees %v", l)
	}
	g.do("POST", fmt.Sprintf("/user/webhooks/%d/test", id), nil, bearer(other)).mustStatus(t, 404, "other user's test")
	g.do("POST", fmt.Sprintf("/user/webhooks/%d/test", id), nil, bearer(key)).mustStatus(t, 200, "test")
	eventually(t, "ping delivered", func() bool { return len(rc.ofType(alerts.Ping)) == 1 })

	// The user's own threshold: 995 (the operator's default is off).
	g.do("PUT", "/user/profile", map[string]any{"low_balance_threshold": 995}, bearer(key)).mustStatus(t, 200, "threshold")
	prof := g.do("GET", "/user/profile", nil, bearer(key)).mustStatus(t, 200, "profile").json()
	if prof["low_balance_threshold"] != float64(995) {
		t.Fatalf("profile %v", prof)
	}
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)).mustStatus(t, 200, "chat")
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(other)).mustStatus(t, 200, "other chat")
	eventually(t, "balance.low delivered", func() bool { return len(rc.ofType(alerts.BalanceLow)) == 1 })
	if ev := rc.ofType(alerts.BalanceLow)[0]; ev.UserID != uid {
		t.Fatalf("balance.low of user %d reached user %d's webhook", ev.UserID, uid)
	}
	eventually(t, "deliveries view", func() bool {
		out := g.do("GET", "/user/webhooks/deliveries", nil, bearer(key)).mustStatus(t, 200, "deliveries").json()
		ds, _ := out["deliveries"].([]any)
		if len(ds) != 2 {
			return false
		}
		for _, d := range ds {
			m := d.(map[string]any)
			if m["status"] != "delivered" || m["webhook_id"] != float64(id) || m["target"] != nil {
				return false
			}
		}
		return true
	})
	if bad := rc.badSignatures(); len(bad) != 0 {
		t.Fatalf("bad signatures: %v", bad)
	}
	g.do("DELETE", fmt.Sprintf("/user/webhooks/%d", id), nil, bearer(other)).mustStatus(t, 404, "other user's delete")
	g.do("DELETE", fmt.Sprintf("/user/webhooks/%d", id), nil, bearer(key)).mustStatus(t, 200, "delete")
	g.do("POST", fmt.Sprintf("/user/webhooks/%d/test", id), nil, bearer(key)).mustStatus(t, 404, "test after delete")
}

// A webhook to 127.0.0.1 (or any private target) is refused unless the
// operator allows private targets; http needs allow_http.
func TestAlertsPrivateTargetsRefused(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("ssrf@example.com")
	for _, u := range []string{"https://127.0.0.1/x", "https://127.0.0.1:9080/x", "https://localhost/x", "https://[::1]/x",
		"https://169.254.169.254/latest/meta-data", "https://10.0.0.1/", "https://100.64.0.1/", "http://hooks.example.com/",
		"https://[::ffff:127.0.0.1]/"} {
		r := g.do("POST", "/user/webhooks", map[string]any{"url": u}, bearer(key))
		if r.Status != 422 || !strings.Contains(string(r.Body), "detail") {
			t.Errorf("webhook to %s: status %d, body %s; want 422", u, r.Status, r.Body)
		}
	}
	// Allowed with the option (the delivery itself is covered by
	// TestAlertsUserWebhook).
	g.reload(gatewayConfig{Upstream: up.hostPort(), DBPath: g.DBPath, AppOptions: "alerts {\n\t\t\tallow_private_targets\n\t\t}"})
	g.do("POST", "/user/webhooks", map[string]any{"url": "https://127.0.0.1/x"}, bearer(key)).mustStatus(t, 200, "allowed")
	g.do("POST", "/user/webhooks", map[string]any{"url": "http://127.0.0.1/x"}, bearer(key)).mustStatus(t, 422, "http still refused")
}

// Every new field refuses bad input with a 422 (or 409 at the cap), never
// a 5xx, and stores nothing.
func TestAlertsBadInput(t *testing.T) {
	g := startGateway(t, gatewayConfig{})
	key, _ := g.registerUser("bad@example.com")
	for _, body := range []string{
		`{}`, `{"url":123}`, `{"url":null}`, `{"url":""}`, `{"url":"not a url"}`, `{"url":"https://"}`,
		`{"url":"https://hooks.example.com/","events":"balance.low"}`,
		`{"url":"https://hooks.example.com/","events":["nope"]}`,
		`{"url":"https://hooks.example.com/","events":["ping"]}`,
		`{"url":"https://hooks.example.com/","events":["balance.low","balance.low"]}`,
		`{"url":"https://hooks.example.com/","events":[1]}`,
		`{"url":"https://hooks.example.com/","description":7}`,
		`{"url":"https://hooks.example.com/","description":"` + strings.Repeat("x", 201) + `"}`,
		`{"url":"https://hooks.example.com/","description":"a\u0000b"}`,
		`{"url":"https://hooks.example.com/","secret":"mine"}`,
		`{"url":"https://u:p@hooks.example.com/"}`,
		`{"url":"ftp://hooks.example.com/"}`,
		`{"url":"https://hooks.example.com/` + strings.Repeat("a", 2100) + `"}`,
		`[]`, `"x"`, `{"url":"https://hooks.example.com/"} x`,
	} {
		if r := g.do("POST", "/user/webhooks", body, bearer(key)); r.Status != 422 {
			t.Errorf("POST /user/webhooks %.80s: status %d, body %s", body, r.Status, r.Body)
		}
	}
	for _, body := range []string{
		`{"low_balance_threshold":-1}`, `{"low_balance_threshold":1.5}`, `{"low_balance_threshold":"10"}`,
		`{"low_balance_threshold":true}`, `{"low_balance_threshold":{}}`, `{"low_balance_threshold":1e30}`,
		`{"low_balance_threshold":99999999999999999999}`,
	} {
		if r := g.do("PUT", "/user/profile", body, bearer(key)); r.Status != 422 {
			t.Errorf("PUT /user/profile %s: status %d, body %s", body, r.Status, r.Body)
		}
	}
	g.do("PUT", "/user/profile", `{"low_balance_threshold":null}`, bearer(key)).mustStatus(t, 200, "null threshold")
	for _, p := range []string{"/user/webhooks/abc", "/user/webhooks/0", "/user/webhooks/-1", "/user/webhooks/99999999999999999999"} {
		if r := g.do("DELETE", p, nil, bearer(key)); r.Status != 422 {
			t.Errorf("DELETE %s: status %d", p, r.Status)
		}
		if r := g.do("POST", p+"/test", nil, bearer(key)); r.Status != 422 {
			t.Errorf("POST %s/test: status %d", p, r.Status)
		}
	}
	for _, q := range []string{"limit=x", "limit=0", "limit=-5", "limit=1.5"} {
		if r := g.do("GET", "/user/webhooks/deliveries?"+q, nil, bearer(key)); r.Status != 422 {
			t.Errorf("GET /user/webhooks/deliveries?%s: status %d", q, r.Status)
		}
		if r := g.do("GET", "/admin/webhooks/deliveries?"+q, nil, adminAuth()); r.Status != 422 {
			t.Errorf("GET /admin/webhooks/deliveries?%s: status %d", q, r.Status)
		}
	}
	if l := g.do("GET", "/user/webhooks", nil, bearer(key)).mustStatus(t, 200, "list").json(); l["total"] != float64(0) {
		t.Fatalf("bad input stored webhooks: %v", l)
	}
	// The cap: five, then 409.
	for i := range alerts.MaxWebhooksPerUser {
		g.do("POST", "/user/webhooks", map[string]any{"url": fmt.Sprintf("https://hooks.example.com/%d", i)}, bearer(key)).mustStatus(t, 200, "create")
	}
	r := g.do("POST", "/user/webhooks", map[string]any{"url": "https://hooks.example.com/6"}, bearer(key)).mustStatus(t, 409, "sixth")
	if !strings.Contains(string(r.Body), "webhook_limit") {
		t.Fatalf("sixth webhook: %s", r.Body)
	}
}

// A burst of refused requests on one key raises one security.alert.
func TestAlertsSecurityBurst(t *testing.T) {
	t.Setenv("GATEWAYZ_TEST_WEBHOOK_SECRET", "sec-secret-0123456789")
	rc := startReceiver(t, "sec-secret-0123456789", 0)
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: fmt.Sprintf(`webhook {
			url %s
			secret {env.GATEWAYZ_TEST_WEBHOOK_SECRET}
			events security.alert
		}
		`+fastAlerts, rc.URL, "security_burst 3\n\t\t\tsecurity_window 1h")})
	owner, _ := g.registerUser("burst@example.com")
	locked, keyID := g.createKey(owner, map[string]any{"key_name": "office", "ip_allowlist": []string{"10.0.0.0/8"}})
	for range 8 {
		g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(locked)).mustStatus(t, 403, "refused by IP")
	}
	eventually(t, "security.alert delivered", func() bool { return len(rc.ofType(alerts.SecurityAlert)) > 0 })
	ev := rc.ofType(alerts.SecurityAlert)[0]
	var data map[string]any
	if err := json.Unmarshal(ev.Data, &data); err != nil || data["key_id"] != float64(keyID) || data["reason"] != "ip_denied" {
		t.Fatalf("security.alert %s", ev.Data)
	}
	if strings.Contains(string(ev.Data), locked) {
		t.Fatal("the alert carries the key")
	}
	// The rest of the burst raised nothing more: wait until the log has
	// settled on one delivery.
	g.awaitDelivered(t, 1)
	if n := len(rc.ofType(alerts.SecurityAlert)); n != 1 {
		t.Fatalf("%d security alerts for one burst", n)
	}
}

// A key expiring within a day raises key.expiring once, however many
// scans see it.
func TestAlertsKeyExpiring(t *testing.T) {
	t.Setenv("GATEWAYZ_TEST_WEBHOOK_SECRET", "exp-secret-0123456789")
	rc := startReceiver(t, "exp-secret-0123456789", 0)
	g := startGateway(t, gatewayConfig{AppOptions: fmt.Sprintf(`webhook {
			url %s
			secret {env.GATEWAYZ_TEST_WEBHOOK_SECRET}
			events key.expiring
		}
		`+fastAlerts, rc.URL, "expiry_scan_interval 20ms")})
	owner, uid := g.registerUser("expiring@example.com")
	exp := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	_, soonID := g.createKey(owner, map[string]any{"key_name": "soon", "expiration_date": exp.Format(time.RFC3339)})
	g.createKey(owner, map[string]any{"key_name": "later", "expiration_days": 30})
	eventually(t, "key.expiring delivered", func() bool { return len(rc.ofType(alerts.KeyExpiring)) > 0 })
	// Many more scans run meanwhile; still one event.
	time.Sleep(300 * time.Millisecond)
	got := rc.ofType(alerts.KeyExpiring)
	if len(got) != 1 {
		t.Fatalf("%d key.expiring events, want 1", len(got))
	}
	var data map[string]any
	if err := json.Unmarshal(got[0].Data, &data); err != nil || data["key_id"] != float64(soonID) || data["key_name"] != "soon" ||
		data["expiration_date"] != exp.Format(time.RFC3339) || got[0].UserID != uid {
		t.Fatalf("key.expiring %+v %s", got[0], got[0].Data)
	}
}

// A key's spend crossing 80 % and then all of its spend_limit raises
// key.budget_warning and key.budget_reached, once each.
func TestAlertsKeyBudget(t *testing.T) {
	t.Setenv("GATEWAYZ_TEST_WEBHOOK_SECRET", "budget-secret-0123456789")
	rc := startReceiver(t, "budget-secret-0123456789", 0)
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: fmt.Sprintf(`webhook {
			url %s
			secret {env.GATEWAYZ_TEST_WEBHOOK_SECRET}
			events key.budget_warning key.budget_reached
		}
		`+fastAlerts, rc.URL, "")})
	owner, uid := g.registerUser("keybudget@example.com")
	key, keyID := g.createKey(owner, map[string]any{"key_name": "capped", "spend_limit": 100, "spend_limit_reset": "daily"})
	body := map[string]any{"model": "gpt-4o-mini", "max_tokens": 1, "messages": []map[string]any{{"role": "user", "content": "hi"}}}
	// Each request costs 10 (the fake upstream's usage): 80 after the
	// eighth, 100 after the tenth, then refused.
	for i := 0; ; i++ {
		r := g.do("POST", "/v1/chat/completions", body, bearer(key))
		if r.Status == 402 {
			break
		}
		r.mustStatus(t, 200, "a request within the budget")
		if i > 20 {
			t.Fatal("the budget never refused")
		}
	}
	eventually(t, "budget alerts delivered", func() bool {
		return len(rc.ofType(alerts.KeyBudgetWarning)) > 0 && len(rc.ofType(alerts.KeyBudgetReached)) > 0
	})
	g.awaitDelivered(t, 2)
	warn, reached := rc.ofType(alerts.KeyBudgetWarning), rc.ofType(alerts.KeyBudgetReached)
	if len(warn) != 1 || len(reached) != 1 {
		t.Fatalf("%d warnings, %d reached; want one each", len(warn), len(reached))
	}
	var data map[string]any
	if err := json.Unmarshal(reached[0].Data, &data); err != nil || data["key_id"] != float64(keyID) || data["spend_limit"] != float64(100) ||
		data["spend_used"].(float64) < 100 || data["resets_at"] == nil || reached[0].UserID != uid {
		t.Fatalf("key.budget_reached %s", reached[0].Data)
	}
	if err := json.Unmarshal(warn[0].Data, &data); err != nil || data["spend_used"].(float64) < 80 || data["spend_used"].(float64) >= 100 {
		t.Fatalf("key.budget_warning %s", warn[0].Data)
	}
}
