package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

const testAdminKey = "test-admin-key-0123456789"

// newTestHandler returns a handler on a real gatewayz app provisioned on a
// fresh database in t.TempDir(). adminKey "" leaves the admin API off.
func newTestHandler(t *testing.T, adminKey string) (*Handler, *caddymodule.App) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	storageRaw, err := json.Marshal(map[string]any{"backend": "bolt", "path": filepath.Join(t.TempDir(), "gatewayz.db"), "no_sync": true})
	if err != nil {
		t.Fatal(err)
	}
	app := &caddymodule.App{
		StorageRaw:         storageRaw,
		Secret:             "unit-test-secret-0123456789abcdef",
		AdminKeyValue:      adminKey,
		SignupCreditsValue: "1000",
	}
	if err := app.Provision(ctx); err != nil {
		t.Fatalf("provisioning app: %v", err)
	}
	t.Cleanup(func() { app.Cleanup() })
	if err := app.Start(); err != nil {
		t.Fatalf("starting app: %v", err)
	}
	h := &Handler{}
	h.setup(app, zap.NewNop())
	return h, app
}

// call sends a request through the handler and decodes a JSON answer.
func call(t *testing.T, h *Handler, method, path, bearer string, body any) (int, map[string]any, http.Header) {
	t.Helper()
	return callWithHeader(t, h, method, path, bearer, body, nil)
}

// callWithHeader is call with extra request headers.
func callWithHeader(t *testing.T, h *Handler, method, path, bearer string, body any, header http.Header) (int, map[string]any, http.Header) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(js)
	}
	req := httptest.NewRequest(method, path, rd)
	for k, v := range header {
		req.Header[k] = v
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	rec := httptest.NewRecorder()
	h.serve(rec, req)
	var out map[string]any
	if ct := rec.Header().Get("Content-Type"); strings.HasPrefix(ct, "application/json") && rec.Body.Len() > 0 {
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			// bare arrays (GET /plans) are checked by their callers
			out = map[string]any{"_raw": rec.Body.String()}
		}
	}
	return rec.Code, out, rec.Header()
}

func mustStatus(t *testing.T, what string, got, want int, body map[string]any) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: status %d, want %d (body %v)", what, got, want, body)
	}
}

func registerUser(t *testing.T, h *Handler, email string) (apiKey string, userID int64) {
	t.Helper()
	code, body, _ := call(t, h, "POST", "/auth/register", "", map[string]any{"username": "u", "email": email})
	mustStatus(t, "register", code, 200, body)
	return body["api_key"].(string), int64(body["user_id"].(float64))
}

func TestRegisterCreateKeyAndCredits(t *testing.T) {
	h, _ := newTestHandler(t, testAdminKey)

	code, body, _ := call(t, h, "POST", "/auth/register", "", map[string]any{
		"username": "alice", "email": "alice@example.com", "initial_credits": 999999, "environment_tag": "test",
	})
	mustStatus(t, "register", code, 200, body)
	key := body["api_key"].(string)
	if !strings.HasPrefix(key, "gw_test_") || len(key) != len("gw_test_")+43 {
		t.Fatalf("api_key %q has the wrong shape", key)
	}
	if body["credits"].(float64) != 1000 {
		t.Fatalf("a client-sent initial_credits was honoured: %v", body["credits"])
	}
	if body["environment_tag"] != "test" || body["subscription_status"] != "trial" {
		t.Fatalf("register body %v", body)
	}

	code, body, _ = call(t, h, "POST", "/auth/register", "", map[string]any{"username": "a2", "email": "alice@example.com"})
	mustStatus(t, "duplicate email", code, 409, body)
	code, body, _ = call(t, h, "POST", "/auth/register", "", map[string]any{"username": "a3", "email": "not-an-email"})
	mustStatus(t, "bad email", code, 422, body)

	code, body, _ = call(t, h, "POST", "/user/api-keys", key, map[string]any{"key_name": "ci", "environment_tag": "staging"})
	mustStatus(t, "create key", code, 200, body)
	second := body["api_key"].(string)
	if !strings.HasPrefix(second, "gw_staging_") {
		t.Fatalf("created key %q", second)
	}
	code, body, _ = call(t, h, "GET", "/user/balance", second, nil)
	mustStatus(t, "balance with new key", code, 200, body)
	if body["credits"].(float64) != 1000 || strings.Contains(body["api_key"].(string), second[12:]) {
		t.Fatalf("balance body %v", body)
	}

	code, body, _ = call(t, h, "POST", "/admin/add_credits", testAdminKey, map[string]any{"api_key": second, "credits": 5})
	mustStatus(t, "add credits", code, 200, body)
	if body["new_balance"].(float64) != 1005 {
		t.Fatalf("add_credits body %v", body)
	}
	code, body, _ = call(t, h, "POST", "/admin/add_credits", testAdminKey, `{"api_key":"`+second+`","credits":1.5}`)
	mustStatus(t, "float credits", code, 422, body)
	code, body, _ = call(t, h, "POST", "/admin/add_credits", "wrong", map[string]any{"api_key": second, "credits": 5})
	mustStatus(t, "wrong admin key", code, 401, body)
}

// settle records one metered request through the store's real ledger path.
func settle(t *testing.T, app *caddymodule.App, userID, keyID int64, model string, prompt, completion int64, at time.Time) {
	t.Helper()
	ctx := t.Context()
	st := app.Store()
	res, err := st.Reserve(ctx, storage.ReserveRequest{UserID: userID, KeyID: keyID, Credits: prompt + completion})
	if err != nil {
		t.Fatal(err)
	}
	rec := storage.UsageRecord{UserID: userID, KeyID: keyID, Model: model, PromptTokens: prompt, CompletionTokens: completion,
		TotalTokens: prompt + completion, Credits: prompt + completion, RequestID: fmt.Sprint(at.UnixNano()), Time: at, Status: 200}
	if _, _, err := st.Settle(ctx, res, prompt+completion, rec); err != nil {
		t.Fatal(err)
	}
}

func keyIDOf(t *testing.T, h *Handler, key string) int64 {
	t.Helper()
	id, err := h.app.Authenticate(key)
	if err != nil {
		t.Fatal(err)
	}
	return id.Key.ID
}

func TestUsageViews(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	key, uid := registerUser(t, h, "usage@example.com")
	other, otherID := registerUser(t, h, "other@example.com")
	now := time.Now().UTC()
	kid := keyIDOf(t, h, key)
	settle(t, app, uid, kid, "m1", 4, 6, now)
	settle(t, app, uid, kid, "m2", 10, 20, now)
	settle(t, app, uid, kid, "m1", 1, 1, now.AddDate(0, 0, -40)) // outside the 30 days and the month
	settle(t, app, otherID, keyIDOf(t, h, other), "m1", 100, 100, now)

	code, mon, _ := call(t, h, "GET", "/user/monitor", key, nil)
	mustStatus(t, "monitor", code, 200, mon)
	m := mon["usage_metrics"].(map[string]any)
	if m["total_requests"].(float64) != 2 || m["total_tokens"].(float64) != 40 || m["total_credits"].(float64) != 40 {
		t.Fatalf("usage_metrics %v", m)
	}
	byModel := mon["by_model"].([]any)
	if len(byModel) != 2 || byModel[0].(map[string]any)["model"] != "m1" || byModel[0].(map[string]any)["tokens"].(float64) != 10 {
		t.Fatalf("by_model %v", byModel)
	}
	if byDay := mon["by_day"].([]any); len(byDay) != 1 {
		t.Fatalf("by_day %v", byDay)
	}
	code, mon, _ = call(t, h, "GET", "/user/monitor?days=60", key, nil)
	if code != 200 || mon["usage_metrics"].(map[string]any)["total_requests"].(float64) != 3 {
		t.Fatalf("monitor days=60: %d %v", code, mon)
	}
	code, mon, _ = call(t, h, "GET", "/user/monitor?days=0", key, nil)
	mustStatus(t, "monitor days=0", code, 422, mon)

	code, pu, _ := call(t, h, "GET", "/user/plan/usage", key, nil)
	mustStatus(t, "plan usage", code, 200, pu)
	u := pu["usage"].(map[string]any)
	if u["daily_requests"].(float64) != 2 || u["daily_tokens"].(float64) != 40 || u["monthly_requests"].(float64) < 2 {
		t.Fatalf("plan usage %v", pu)
	}

	code, am, _ := call(t, h, "GET", "/admin/monitor", testAdminKey, nil)
	mustStatus(t, "admin monitor", code, 200, am)
	data := am["data"].(map[string]any)
	sm := data["system_usage_metrics"].(map[string]any)
	if data["total_users"].(float64) != 2 || data["active_users_today"].(float64) != 2 || sm["total_tokens"].(float64) != 242 || sm["tokens_today"].(float64) != 240 || sm["most_used_model"] != "m1" {
		t.Fatalf("admin monitor %v", data)
	}
	top := data["top_users_by_usage"].([]any)
	if len(top) != 2 || top[0].(map[string]any)["user_id"].(float64) != float64(otherID) {
		t.Fatalf("top users %v", top)
	}
	if strings.Contains(fmt.Sprint(am), key) || strings.Contains(fmt.Sprint(am), other) {
		t.Fatal("admin monitor shows a full key")
	}
}

func TestEntitlementsOfLapsedPlanWriteNothing(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	key, uid := registerUser(t, h, "lapsed@example.com")
	st := app.Store()
	p := &storage.Plan{Name: "Pro", DailyRequestLimit: 5000, Features: []string{"gpt4"}, IsActive: true}
	if err := st.CreatePlan(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-48 * time.Hour)
	if _, err := st.AssignPlan(t.Context(), uid, p.ID, past.Add(-30*24*time.Hour), past); err != nil {
		t.Fatal(err)
	}
	code, ent, _ := call(t, h, "GET", "/user/plan/entitlements?feature=gpt4", key, nil)
	mustStatus(t, "entitlements", code, 200, ent)
	if ent["plan_name"] != "Expired" || ent["plan_expired"] != true || ent["has_plan"] != false ||
		ent["daily_request_limit"].(float64) != 100 || ent["can_access_feature"] != false {
		t.Fatalf("lapsed entitlements %v", ent)
	}
	code, body, _ := call(t, h, "GET", "/user/plan", key, nil)
	mustStatus(t, "lapsed /user/plan", code, 404, body)
	// The read changed nothing.
	up, err := st.ActiveUserPlan(t.Context(), uid)
	if err != nil || !up.IsActive {
		t.Fatalf("subscription row after a read: %+v, %v", up, err)
	}
	if u, err := st.GetUser(t.Context(), uid); err != nil || u.SubscriptionStatus != "trial" {
		t.Fatalf("user after a read: %+v, %v", u, err)
	}
}

func TestRotationGraceUnit(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	app.RotationGracePeriod = caddy.Duration(time.Hour)
	key, _ := registerUser(t, h, "grace@example.com")
	kid := keyIDOf(t, h, key)
	code, out, _ := call(t, h, "PUT", fmt.Sprintf("/user/api-keys/%d", kid), key, map[string]any{"action": "rotate"})
	mustStatus(t, "rotate", code, 200, out)
	newKey := out["api_key"].(string)
	for _, k := range []string{key, newKey} {
		if code, body, _ := call(t, h, "GET", "/user/balance", k, nil); code != 200 {
			t.Fatalf("key %s… during grace: %d %v", k[:12], code, body)
		}
	}
	// Rotating again ends the first secret's grace: only one previous
	// secret is kept.
	code, out, _ = call(t, h, "PUT", fmt.Sprintf("/user/api-keys/%d", kid), newKey, map[string]any{"action": "rotate"})
	mustStatus(t, "second rotate", code, 200, out)
	if code, _, _ := call(t, h, "GET", "/user/balance", key, nil); code != 401 {
		t.Fatalf("first secret after two rotations: %d", code)
	}
}

func TestSecuritySummary(t *testing.T) {
	now := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	e := func(action string, ago time.Duration, prefix, ip string) storage.AuditEntry {
		return storage.AuditEntry{Action: action, Time: now.Add(-ago), Details: map[string]any{"key_prefix": prefix, "ip": ip}}
	}
	s := securitySummary([]storage.AuditEntry{
		e("security.unknown_key", time.Minute, "gw_live_AAAA", "198.51.100.1"),
		e("security.unknown_key", 2*time.Minute, "gw_live_AAAA", "198.51.100.1"),
		e("security.ip_denied", 3*time.Hour, "gw_live_BBBB", "198.51.100.2"),
		e("security.key_expired", 25*time.Hour, "gw_live_CCCC", "198.51.100.3"), // older than a day
	}, now)
	hour := s["refusals_last_hour"].(map[string]int)
	day := s["refusals_last_day"].(map[string]int)
	if hour["security.unknown_key"] != 2 || hour["security.ip_denied"] != 0 || day["security.ip_denied"] != 1 || day["security.key_expired"] != 0 {
		t.Fatalf("hour %v day %v", hour, day)
	}
	if s["total_last_day"] != 3 || s["total_last_hour"] != 2 {
		t.Fatalf("totals %v %v", s["total_last_day"], s["total_last_hour"])
	}
	keys := s["top_refused_keys"].([]map[string]any)
	if len(keys) != 2 || keys[0]["key_prefix"] != "gw_live_AAAA" || keys[0]["refusals"] != 2 {
		t.Fatalf("top keys %v", keys)
	}
	ips := s["top_refused_ips"].([]map[string]any)
	if len(ips) != 2 || ips[0]["ip"] != "198.51.100.1" {
		t.Fatalf("top ips %v", ips)
	}
}

func TestUserAuthRefusals(t *testing.T) {
	h, app := newTestHandler(t, "")
	key, _ := registerUser(t, h, "refusals@example.com")
	kid := keyIDOf(t, h, key)

	code, body, hdr := call(t, h, "GET", "/user/balance", "", nil)
	if code != 401 || body["detail"] != "Not authenticated" || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("no credentials: %d %v %v", code, body, hdr)
	}
	past := time.Now().Add(-time.Minute)
	if _, err := app.Store().UpdateKey(t.Context(), kid, func(k *storage.APIKey) error {
		k.ExpirationDate = &past
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	code, body, _ = call(t, h, "GET", "/user/balance", key, nil)
	if code != 401 || body["detail"] != "API key has expired" {
		t.Fatalf("expired key: %d %v", code, body)
	}
	if _, err := app.Store().UpdateKey(t.Context(), kid, func(k *storage.APIKey) error {
		k.ExpirationDate = nil
		k.IsActive = false
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	code, body, _ = call(t, h, "GET", "/user/balance", key, nil)
	if code != 401 || body["detail"] != "API key is inactive" {
		t.Fatalf("inactive key: %d %v", code, body)
	}
	// With no admin key configured the admin API is off.
	code, body, _ = call(t, h, "GET", "/admin/balance", "", nil)
	if code != 503 || !strings.Contains(body["detail"].(string), "GATEWAYZ_ADMIN_KEY") {
		t.Fatalf("admin without a key: %d %v", code, body)
	}
}

func TestUnmatchedRoutesAnswerJSON(t *testing.T) {
	h, _ := newTestHandler(t, testAdminKey)
	code, body, _ := call(t, h, "GET", "/user/nope", "", nil)
	if code != 404 || body["detail"] != "Not Found" {
		t.Fatalf("unknown path: %d %v", code, body)
	}
	code, body, hdr := call(t, h, "DELETE", "/plans", "", nil)
	if code != 405 || body["detail"] != "Method Not Allowed" || !strings.Contains(hdr.Get("Allow"), "GET") {
		t.Fatalf("wrong method: %d %v %v", code, body, hdr)
	}
	// Every route of the table is registered exactly once (buildMux panics
	// on a duplicate pattern).
	seen := map[string]bool{}
	for _, rt := range h.routes() {
		k := rt.Method + " " + rt.Pattern
		if seen[k] || rt.Handle == nil {
			t.Fatalf("route %s duplicated or without a handler", k)
		}
		seen[k] = true
	}
}
