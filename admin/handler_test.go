package admin

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
)

const testAdminKey = "test-admin-key-0123456789"

// newTestHandler returns a handler on a real gatewayz app provisioned on a
// fresh database in t.TempDir(). adminKey "" leaves the admin API off.
func newTestHandler(t *testing.T, adminKey string) (*Handler, *caddymodule.App) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	app := &caddymodule.App{
		DBPath:             filepath.Join(t.TempDir(), "gatewayz.db"),
		Secret:             "unit-test-secret-0123456789abcdef",
		AdminKeyValue:      adminKey,
		SignupCreditsValue: "1000",
		NoSync:             true,
	}
	if err := app.Provision(ctx); err != nil {
		t.Fatalf("provisioning app: %v", err)
	}
	t.Cleanup(func() { app.Cleanup() })
	h := &Handler{}
	h.setup(app, zap.NewNop())
	return h, app
}

// call sends a request through the handler and decodes a JSON answer.
func call(t *testing.T, h *Handler, method, path, bearer string, body any) (int, map[string]any, http.Header) {
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
