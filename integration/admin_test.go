package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/gatewayz/caddy-gatewayz"
)

// Integration tests of the management API (http.handlers.gatewayz_api)
// through a real Caddy: every endpoint's happy path, its 4xx answers, scope
// and ownership checks, rotation, deletion, the audit chain and pagination.

// The harness (harness_test.go) provides TestMain (HOME and XDG dirs in a
// temporary directory), globalOptions, gatewayBase, testAdminKey and the
// fake upstream.
const (
	apiBase     = gatewayBase
	apiAdminKey = testAdminKey
)

// apiCaddyfile routes the API paths to gatewayz_api and /v1/* through the
// gateway to an upstream (the fake one of a test, or a closed port).
const apiCaddyfile = `{
	%s
	gatewayz {
		storage bolt %s {
			no_sync
		}
		secret api-test-secret-0123456789abcdef
		%s
		signup_credits 5000
		%s
	}
}

http://localhost:9080 {
	@api path /auth/* /user/* /admin/* /plans /plans/* /health
	handle @api {
		gatewayz_api {
			max_body_size 16KiB
		}
	}
	handle /v1/* {
		gatewayz
		reverse_proxy %s
	}
	handle {
		respond "not here" 404
	}
}
`

type apiOptions struct {
	noAdminKey    bool
	rotationGrace string // e.g. "1h"
	upstream      string // host:port of the /v1 upstream
}

type apiEnv struct {
	t      *testing.T
	tester *caddytest.Tester
}

// startAPI loads apiCaddyfile with a fresh database into the test Caddy.
func startAPI(t *testing.T, o apiOptions) *apiEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("caddytest integration test")
	}
	dir := t.TempDir()
	admin := "admin_key " + apiAdminKey
	if o.noAdminKey {
		admin = ""
	}
	extra := ""
	if o.rotationGrace != "" {
		extra = "rotation_grace " + o.rotationGrace
	}
	upstream := o.upstream
	if upstream == "" {
		upstream = "127.0.0.1:9"
	}
	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(apiCaddyfile, globalOptions, filepath.Join(dir, "gatewayz.db"), admin, extra, upstream), "caddyfile")
	return &apiEnv{t: t, tester: tester}
}

// raw sends a request and returns the status, headers and body.
func (e *apiEnv) raw(method, path, bearer string, body any, header ...string) (int, http.Header, []byte) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequest(method, apiBase+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.tester.Client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// call sends a request and decodes a JSON object answer.
func (e *apiEnv) call(method, path, bearer string, body any, header ...string) (int, jsonObj) {
	e.t.Helper()
	code, _, b := e.raw(method, path, bearer, body, header...)
	var out jsonObj
	if len(b) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, &out); err != nil {
			e.t.Fatalf("%s %s: bad JSON %q: %v", method, path, b, err)
		}
	}
	return code, out
}

// expect calls and checks the status; for errors also the JSON error shape
// and, when given, a substring of the detail.
func (e *apiEnv) expect(want int, method, path, bearer string, body any, detail ...string) jsonObj {
	e.t.Helper()
	code, out := e.call(method, path, bearer, body)
	if code != want {
		e.t.Fatalf("%s %s: status %d, want %d; body %v", method, path, code, want, out)
	}
	if want >= 400 {
		d, ok := out["detail"].(string)
		if !ok || d == "" {
			e.t.Fatalf("%s %s: error body %v has no string detail", method, path, out)
		}
		for _, s := range detail {
			if !strings.Contains(d, s) {
				e.t.Fatalf("%s %s: detail %q lacks %q", method, path, d, s)
			}
		}
	}
	return out
}

func (e *apiEnv) register(email string) (key string, userID int64) {
	e.t.Helper()
	out := e.expect(200, "POST", "/auth/register", "", map[string]any{"username": strings.Split(email, "@")[0], "email": email})
	return out.str("api_key"), out.int("user_id")
}

func (e *apiEnv) createKey(bearer string, body map[string]any) (key string, id int64) {
	e.t.Helper()
	out := e.expect(200, "POST", "/user/api-keys", bearer, body)
	return out.str("api_key"), out.int("key_id")
}

type jsonObj map[string]any

func (o jsonObj) str(k string) string {
	s, _ := o[k].(string)
	return s
}

func (o jsonObj) int(k string) int64 {
	f, _ := o[k].(float64)
	return int64(f)
}

func (o jsonObj) obj(k string) jsonObj {
	m, _ := o[k].(map[string]any)
	return m
}

func (o jsonObj) list(k string) []jsonObj {
	l, _ := o[k].([]any)
	out := make([]jsonObj, 0, len(l))
	for _, v := range l {
		m, _ := v.(map[string]any)
		out = append(out, m)
	}
	return out
}

func TestAPIRegister(t *testing.T) {
	e := startAPI(t, apiOptions{})

	out := e.expect(200, "POST", "/auth/register", "", map[string]any{
		"username": "alice", "email": "alice@example.com", "initial_credits": 1000000,
	})
	key := out.str("api_key")
	if !strings.HasPrefix(key, "gw_live_") || len(key) != len("gw_live_")+43 {
		t.Fatalf("api_key %q", key)
	}
	if out.int("credits") != 5000 {
		t.Fatalf("client-sent initial_credits was honoured: credits %d", out.int("credits"))
	}
	if out.str("environment_tag") != "live" || out.str("subscription_status") != "trial" || out.str("auth_method") != "email" {
		t.Fatalf("register body %v", out)
	}
	if sc := out.obj("scope_permissions"); fmt.Sprint(sc["write"]) != "[*]" {
		t.Fatalf("scope_permissions %v are not the stored full scope", sc)
	}
	// The default trial does not end (trial days unset): no date shown.
	if v, ok := out["trial_expires_at"]; !ok || v != nil || out.str("plan_name") != "Trial" {
		t.Fatalf("trial_expires_at %v, plan_name %q: want null and Trial", v, out.str("plan_name"))
	}
	bal := e.expect(200, "GET", "/user/balance", key, nil)
	if bal.int("credits") != 5000 || bal.int("user_id") != out.int("user_id") {
		t.Fatalf("balance %v", bal)
	}

	// The environment and key name are honoured and reported truthfully.
	out = e.expect(200, "POST", "/auth/register", "", map[string]any{
		"username": "bob", "email": "bob@example.com", "environment_tag": "development", "key_name": "Main",
	})
	if !strings.HasPrefix(out.str("api_key"), "gw_dev_") || out.str("environment_tag") != "development" {
		t.Fatalf("development register %v", out)
	}
	keys := e.expect(200, "GET", "/user/api-keys", out.str("api_key"), nil)
	if k := keys.list("keys")[0]; k.str("key_name") != "Main" || k["is_primary"] != true {
		t.Fatalf("primary key %v", k)
	}

	// An admin bearer may set the grant.
	out = e.expect(200, "POST", "/auth/register", apiAdminKey, map[string]any{
		"username": "carol", "email": "carol@example.com", "initial_credits": 42,
	})
	if out.int("credits") != 42 {
		t.Fatalf("admin initial_credits ignored: %v", out)
	}
	e.expect(400, "POST", "/auth/register", apiAdminKey, map[string]any{
		"username": "dan", "email": "dan@example.com", "initial_credits": -1,
	}, "non-negative")

	e.expect(409, "POST", "/auth/register", "", map[string]any{"username": "a2", "email": "alice@example.com"}, "already exists")
	e.expect(422, "POST", "/auth/register", "", map[string]any{"username": "x", "email": "not-an-email"}, "email")
	e.expect(422, "POST", "/auth/register", "", map[string]any{"username": "x", "email": "x@example.com", "auth_method": "fax"})
	e.expect(400, "POST", "/auth/register", "", map[string]any{"username": "x", "email": "x@example.com", "environment_tag": "prod"}, "Invalid environment tag")
	e.expect(422, "POST", "/auth/register", "", map[string]any{"username": 5, "email": "x@example.com"}, "username")
	e.expect(422, "POST", "/auth/register", "", map[string]any{"email": "x@example.com"}, "username")
	e.expect(422, "POST", "/auth/register", "", `{"username": "x", "email": `, "Malformed JSON")
	e.expect(422, "POST", "/auth/register", "", ``)
	e.expect(413, "POST", "/auth/register", "", map[string]any{"username": strings.Repeat("x", 20000), "email": "y@example.com"})
	// None of the refused requests left a user behind.
	e.expect(200, "POST", "/auth/register", "", map[string]any{"username": "x", "email": "x@example.com"})
	e.expect(200, "POST", "/auth/register", "", map[string]any{"username": "y", "email": "y@example.com"})
}

func TestAPIAuthentication(t *testing.T) {
	e := startAPI(t, apiOptions{})
	code, hdr, body := e.raw("GET", "/user/balance", "", nil)
	if code != 401 || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") || !strings.Contains(string(body), `"detail"`) {
		t.Fatalf("no credentials: %d %q %s", code, hdr.Get("WWW-Authenticate"), body)
	}
	e.expect(401, "GET", "/user/balance", "gw_live_"+strings.Repeat("A", 43), nil, "Invalid API key")
	e.expect(401, "GET", "/user/balance", "nonsense", nil, "Invalid API key")
	code, _, _ = e.raw("GET", "/user/balance", "", nil, "Authorization", "Basic dXNlcjpwYXNz")
	if code != 401 {
		t.Fatalf("basic auth: %d", code)
	}

	key, _ := e.register("auth@example.com")
	e.expect(401, "GET", "/admin/balance", "", nil, "Invalid admin API key")
	e.expect(401, "GET", "/admin/balance", "wrong-admin-key", nil, "Invalid admin API key")
	e.expect(401, "GET", "/admin/balance", key, nil, "Invalid admin API key")
	e.expect(200, "GET", "/admin/balance", apiAdminKey, nil)

	e.expect(200, "GET", "/health", "", nil)
	if out := e.expect(200, "GET", "/health", "", nil); out.str("status") != "healthy" || out.str("database") != "connected" {
		t.Fatalf("health %v", out)
	}
	e.expect(404, "GET", "/user/nothing-here", key, nil)
	code, hdr, _ = e.raw("PATCH", "/user/balance", key, nil)
	if code != 405 || hdr.Get("Allow") == "" {
		t.Fatalf("PATCH /user/balance: %d Allow=%q", code, hdr.Get("Allow"))
	}
}

func TestAPIAdminDisabled(t *testing.T) {
	e := startAPI(t, apiOptions{noAdminKey: true})
	e.expect(503, "GET", "/admin/balance", "anything", nil, "GATEWAYZ_ADMIN_KEY")
	e.expect(503, "POST", "/admin/add_credits", "", map[string]any{"user_id": 1, "credits": 5}, "GATEWAYZ_ADMIN_KEY")
	// Registration still works, and an initial_credits is ignored.
	out := e.expect(200, "POST", "/auth/register", "", map[string]any{"username": "z", "email": "z@example.com", "initial_credits": 9})
	if out.int("credits") != 5000 {
		t.Fatalf("credits %d", out.int("credits"))
	}
}

func TestAPIKeyCreateAndList(t *testing.T) {
	e := startAPI(t, apiOptions{})
	primary, _ := e.register("keys@example.com")
	other, _ := e.register("other@example.com")

	exp := time.Now().Add(10 * time.Minute).UTC().Format(time.RFC3339)
	out := e.expect(200, "POST", "/user/api-keys", primary, map[string]any{
		"key_name": "ci", "environment_tag": "test", "max_requests": 50, "expiration_date": exp,
		"ip_allowlist": []string{"10.0.0.0/8", "2001:db8::1"}, "domain_referrers": []string{"*.example.com"},
		"scope_permissions": map[string]any{"read": []string{"api_keys"}, "write": "chat"},
	})
	ci := out.str("api_key")
	if !strings.HasPrefix(ci, "gw_test_") || out.str("key_name") != "ci" || out.int("key_id") == 0 {
		t.Fatalf("create %v", out)
	}
	if sf := out.obj("security_features"); sf.int("max_requests") != 50 || len(sf["ip_allowlist"].([]any)) != 2 {
		t.Fatalf("security_features %v", sf)
	}
	// The new key authenticates at once; its ip_allowlist (10.0.0.0/8,
	// 2001:db8::1) applies to the user routes too, so from 127.0.0.1 it is
	// refused as a recognised, restricted key rather than an unknown one.
	e.expect(403, "GET", "/user/balance", ci, nil, "IP address not allowed for this API key")

	staging, _ := e.createKey(primary, map[string]any{"key_name": "stage", "environment_tag": "staging", "expiration_days": 30})
	if !strings.HasPrefix(staging, "gw_staging_") {
		t.Fatalf("staging key %q", staging)
	}

	e.expect(409, "POST", "/user/api-keys", primary, map[string]any{"key_name": "ci"}, "already exists")
	e.expect(400, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "action": "delete"}, "Invalid action")
	e.expect(400, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "expiration_days": 0}, "Expiration days must be positive")
	e.expect(400, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "max_requests": 0}, "Max requests must be positive")
	e.expect(400, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "environment_tag": "prod"}, "Invalid environment tag")
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "ip_allowlist": []string{"not-an-ip"}}, "ip_allowlist")
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "domain_referrers": []string{"https://x.com/a"}}, "domain_referrers")
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "expiration_date": "2020-01-01T00:00:00Z"}, "past")
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "expiration_date": "soon"})
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "max_requests": "10"})
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "max_requests": 1.5})
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"key_name": "k", "scope_permissions": map[string]any{"root": []string{"*"}}})
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"key_name": ""})
	e.expect(422, "POST", "/user/api-keys", primary, map[string]any{"name": "typo"})

	list := e.expect(200, "GET", "/user/api-keys", primary, nil)
	keys := list.list("keys")
	if list.int("total_keys") != 3 || len(keys) != 3 {
		t.Fatalf("total_keys %d, want 3 (primary, ci, stage): %v", list.int("total_keys"), list)
	}
	if keys[0].str("key_name") != "stage" || keys[2].str("key_name") != "Primary Key" {
		t.Fatalf("keys not newest first: %s, %s, %s", keys[0].str("key_name"), keys[1].str("key_name"), keys[2].str("key_name"))
	}
	raw := fmt.Sprint(list)
	for _, full := range []string{primary, ci, staging} {
		if strings.Contains(raw, full) || strings.Contains(raw, full[len(full)-20:]) {
			t.Fatal("a listing shows a full key")
		}
	}
	for _, k := range keys {
		if m := k.str("api_key"); !strings.HasSuffix(m, "…") || len(m) > 20 {
			t.Fatalf("listed api_key %q is not masked", m)
		}
		if k.obj("security_status") == nil {
			t.Fatalf("key %v lacks security_status", k)
		}
	}
	if ck := keys[1]; ck.int("max_requests") != 50 || ck.int("requests_remaining") != 50 || ck["days_remaining"] == nil {
		t.Fatalf("ci key view %v", ck)
	}

	usage := e.expect(200, "GET", "/user/api-keys/usage", primary, nil)
	if usage.int("total_keys") != 3 || strings.Contains(fmt.Sprint(usage), primary) {
		t.Fatalf("usage %v", usage)
	}
	// Another user sees only their own key.
	if n := e.expect(200, "GET", "/user/api-keys", other, nil).int("total_keys"); n != 1 {
		t.Fatalf("other user sees %d keys", n)
	}
}

func TestAPIKeyUpdateRotateDelete(t *testing.T) {
	e := startAPI(t, apiOptions{})
	primary, _ := e.register("rot@example.com")
	other, _ := e.register("rot-other@example.com")
	b, bID := e.createKey(primary, map[string]any{"key_name": "b", "max_requests": 10})
	_, otherID := e.createKey(other, map[string]any{"key_name": "theirs"})
	path := fmt.Sprintf("/user/api-keys/%d", bID)

	// PUT changes {key_id}, not the calling key.
	out := e.expect(200, "PUT", path, primary, map[string]any{"key_name": "b2", "max_requests": 20, "ip_allowlist": []string{"127.0.0.1"}})
	if uk := out.obj("updated_key"); uk.str("key_name") != "b2" || uk.int("max_requests") != 20 || uk.int("id") != bID {
		t.Fatalf("updated_key %v", uk)
	}
	keys := e.expect(200, "GET", "/user/api-keys", primary, nil).list("keys")
	for _, k := range keys {
		if k["is_primary"] == true && k.str("key_name") != "Primary Key" {
			t.Fatal("the update changed the calling key")
		}
	}
	e.expect(400, "PUT", path, primary, map[string]any{}, "No valid fields to update")
	e.expect(400, "PUT", path, primary, map[string]any{"action": "explode"}, "Invalid action")
	e.expect(404, "PUT", fmt.Sprintf("/user/api-keys/%d", otherID), primary, map[string]any{"is_active": false}, "API key not found")
	e.expect(404, "PUT", "/user/api-keys/999999", primary, map[string]any{"is_active": false}, "API key not found")
	e.expect(422, "PUT", "/user/api-keys/abc", primary, map[string]any{"is_active": false})
	e.expect(422, "PUT", path, primary, map[string]any{"is_active": "no"})
	e.expect(409, "PUT", path, primary, map[string]any{"key_name": "Primary Key"}, "already exists")

	// Deactivate b: b is refused at once, the caller is not.
	e.expect(200, "PUT", path, primary, map[string]any{"is_active": false})
	e.expect(401, "GET", "/user/balance", b, nil, "inactive")
	e.expect(200, "GET", "/user/balance", primary, nil)
	e.expect(200, "PUT", path, primary, map[string]any{"is_active": true})
	e.expect(200, "GET", "/user/balance", b, nil)

	// Rotate: new secret works at once, old one stops, id/name/limits kept.
	out = e.expect(200, "PUT", path, primary, map[string]any{"action": "rotate"})
	b2 := out.str("api_key")
	if b2 == b || !strings.HasPrefix(b2, "gw_live_") || out.int("key_id") != bID || out["old_key_valid_until"] != nil {
		t.Fatalf("rotate %v", out)
	}
	if uk := out.obj("updated_key"); uk.str("key_name") != "b2" || uk.int("max_requests") != 20 || strings.Contains(fmt.Sprint(uk), b2) {
		t.Fatalf("rotated key view %v", uk)
	}
	e.expect(200, "GET", "/user/balance", b2, nil)
	e.expect(401, "GET", "/user/balance", b, nil, "Invalid API key")
	logs := e.expect(200, "GET", fmt.Sprintf("/user/api-keys/audit-logs?key_id=%d", bID), primary, nil).list("logs")
	actions := []string{}
	for _, l := range logs {
		actions = append(actions, l.str("action"))
	}
	if got := strings.Join(actions, ","); got != "rotate,update,update,update,create" {
		t.Fatalf("history of key %d: %s", bID, got)
	}

	// bulk_rotate: every active key of the caller, the caller's own too.
	out = e.expect(200, "PUT", path, primary, map[string]any{"action": "bulk_rotate"})
	if out.int("rotated_count") != 2 || len(out.list("new_keys")) != 2 {
		t.Fatalf("bulk_rotate %v", out)
	}
	newKeys := map[int64]string{}
	for _, nk := range out.list("new_keys") {
		newKeys[nk.int("key_id")] = nk.str("new_api_key")
	}
	e.expect(401, "GET", "/user/balance", primary, nil)
	e.expect(401, "GET", "/user/balance", b2, nil)
	b3 := newKeys[bID]
	var primary2 string
	for id, k := range newKeys {
		if id != bID {
			primary2 = k
		}
		e.expect(200, "GET", "/user/balance", k, nil)
	}
	e.expect(400, "PUT", path, primary2, map[string]any{"action": "bulk_rotate", "environment_tag": "prod"}, "Invalid environment tag")
	out = e.expect(200, "PUT", path, primary2, map[string]any{"action": "bulk_rotate", "environment_tag": "test"})
	if out.int("rotated_count") != 0 {
		t.Fatalf("bulk_rotate of test keys rotated %d", out.int("rotated_count"))
	}

	// Delete: confirmation first, then the key stops at once.
	e.expect(422, "DELETE", path, primary2, nil)
	e.expect(400, "DELETE", path, primary2, map[string]any{}, "DELETE_KEY")
	e.expect(400, "DELETE", path, primary2, map[string]any{"confirmation": "yes"}, "DELETE_KEY")
	e.expect(404, "DELETE", fmt.Sprintf("/user/api-keys/%d", otherID), primary2, map[string]any{"confirmation": "DELETE_KEY"})
	out = e.expect(200, "DELETE", path, primary2, map[string]any{"confirmation": "DELETE_KEY"})
	if out.int("deleted_key_id") != bID {
		t.Fatalf("delete %v", out)
	}
	e.expect(401, "GET", "/user/balance", b3, nil)
	e.expect(404, "DELETE", path, primary2, map[string]any{"confirmation": "DELETE_KEY"})
	e.expect(200, "GET", "/user/balance", other, nil) // someone else's key untouched

	// The primary key can be deleted too, and stops at once.
	var primaryID int64
	for _, k := range e.expect(200, "GET", "/user/api-keys", primary2, nil).list("keys") {
		primaryID = k.int("id")
	}
	e.expect(200, "DELETE", fmt.Sprintf("/user/api-keys/%d", primaryID), primary2, map[string]any{"confirmation": "DELETE_KEY"})
	e.expect(401, "GET", "/user/balance", primary2, nil)
}

func TestAPIRotationGrace(t *testing.T) {
	e := startAPI(t, apiOptions{rotationGrace: "1h"})
	primary, _ := e.register("grace@example.com")
	k, id := e.createKey(primary, map[string]any{"key_name": "g"})
	out := e.expect(200, "PUT", fmt.Sprintf("/user/api-keys/%d", id), primary, map[string]any{"action": "rotate"})
	until, err := time.Parse(time.RFC3339Nano, out.str("old_key_valid_until"))
	if err != nil || until.Sub(time.Now()) < 59*time.Minute {
		t.Fatalf("old_key_valid_until %v", out["old_key_valid_until"])
	}
	e.expect(200, "GET", "/user/balance", out.str("api_key"), nil)
	e.expect(200, "GET", "/user/balance", k, nil) // still in its grace period
}

func TestAPIScopes(t *testing.T) {
	e := startAPI(t, apiOptions{})
	primary, _ := e.register("scopes@example.com")
	readOnly, _ := e.createKey(primary, map[string]any{"key_name": "ro", "scope_permissions": map[string]any{"read": []string{"api_keys"}}})
	writeOnly, writeID := e.createKey(primary, map[string]any{"key_name": "wo", "scope_permissions": map[string]any{"write": []string{"api_keys"}}})
	_, victimID := e.createKey(primary, map[string]any{"key_name": "victim"})

	e.expect(403, "POST", "/user/api-keys", readOnly, map[string]any{"key_name": "x"}, "Insufficient permissions")
	e.expect(403, "PUT", fmt.Sprintf("/user/api-keys/%d", victimID), readOnly, map[string]any{"is_active": false}, "Insufficient permissions")
	e.expect(403, "DELETE", fmt.Sprintf("/user/api-keys/%d", victimID), readOnly, map[string]any{"confirmation": "DELETE_KEY"}, "Insufficient permissions")
	e.expect(200, "GET", "/user/api-keys", readOnly, nil)
	e.expect(200, "GET", "/user/api-keys/audit-logs", readOnly, nil)

	e.expect(403, "GET", "/user/api-keys", writeOnly, nil, "Insufficient permissions")
	e.expect(403, "GET", "/user/api-keys/audit-logs", writeOnly, nil, "Insufficient permissions")

	// No escalation: a narrow key cannot create, widen or rotate wider keys.
	e.expect(403, "POST", "/user/api-keys", writeOnly, map[string]any{"key_name": "x", "scope_permissions": map[string]any{"admin": []string{"*"}}}, "more scope")
	e.expect(403, "PUT", fmt.Sprintf("/user/api-keys/%d", writeID), writeOnly, map[string]any{"scope_permissions": map[string]any{"read": []string{"*"}}}, "more scope")
	e.expect(403, "PUT", fmt.Sprintf("/user/api-keys/%d", victimID), writeOnly, map[string]any{"action": "rotate"}, "more scope")
	e.expect(403, "DELETE", fmt.Sprintf("/user/api-keys/%d", victimID), writeOnly, map[string]any{"confirmation": "DELETE_KEY"}, "more scope")
	// A key created by a narrow key without scope_permissions inherits the
	// narrow scope, not the full one.
	child, _ := e.createKey(writeOnly, map[string]any{"key_name": "child"})
	e.expect(403, "GET", "/user/api-keys", child, nil)
	out := e.expect(200, "PUT", fmt.Sprintf("/user/api-keys/%d", victimID), writeOnly, map[string]any{"action": "bulk_rotate"})
	if out.int("rotated_count") != 2 || len(out.list("skipped_key_ids")) != 3 {
		t.Fatalf("bulk_rotate by a narrow key: %v", out)
	}
	e.expect(200, "GET", "/user/balance", primary, nil) // wider keys untouched
	e.expect(403, "DELETE", "/user/account", readOnly, map[string]any{"confirmation": "DELETE_ACCOUNT"}, "full scope")
}

func TestAPIAdminCredits(t *testing.T) {
	e := startAPI(t, apiOptions{})
	key, uid := e.register("credits@example.com")

	out := e.expect(200, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"api_key": key, "credits": 5})
	if out.int("new_balance") != 5005 || out.int("user_id") != uid || out.str("status") != "success" || !strings.Contains(out.str("message"), "Added 5 credits") {
		t.Fatalf("add_credits %v", out)
	}
	out = e.expect(200, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid, "credits": 10})
	if out.int("new_balance") != 5015 {
		t.Fatalf("add_credits by user_id %v", out)
	}
	e.expect(422, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid, "credits": 1.5})
	e.expect(422, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid, "credits": "5"})
	e.expect(422, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid})
	e.expect(400, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid, "credits": 0}, "Credits must be positive")
	e.expect(400, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid, "credits": -5}, "Credits must be positive")
	e.expect(404, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": 999999, "credits": 5}, "User not found")
	e.expect(404, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"api_key": "gw_live_" + strings.Repeat("x", 43), "credits": 5}, "User not found")
	e.expect(422, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"credits": 5})
	e.expect(422, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"api_key": key, "user_id": uid, "credits": 5})

	// Idempotency-Key: the replay answers the same and changes nothing.
	body := map[string]any{"user_id": uid, "credits": 100}
	code1, r1 := e.call("POST", "/admin/add_credits", apiAdminKey, body, "Idempotency-Key", "topup-1")
	code2, hdr2, raw2 := e.raw("POST", "/admin/add_credits", apiAdminKey, body, "Idempotency-Key", "topup-1")
	var r2 jsonObj
	json.Unmarshal(raw2, &r2)
	if code1 != 200 || code2 != 200 || r1.int("new_balance") != 5115 || r2.int("new_balance") != 5115 || hdr2.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("idempotent add_credits: %d %v / %d %v", code1, r1, code2, r2)
	}
	code3, r3 := e.call("POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid, "credits": 7}, "Idempotency-Key", "topup-1")
	if code3 != 409 {
		t.Fatalf("same Idempotency-Key, different amount: %d %v", code3, r3)
	}
	if bal := e.expect(200, "GET", "/user/balance", key, nil); bal.int("credits") != 5115 {
		t.Fatalf("balance after replay %d, want 5115", bal.int("credits"))
	}
	// Exactly one audit entry for the idempotent top-up.
	logs := e.expect(200, "GET", fmt.Sprintf("/admin/audit-logs?action=admin.add_credits&user_id=%d", uid), apiAdminKey, nil)
	if logs.int("total_logs") != 3 {
		t.Fatalf("add_credits audit entries: %d, want 3", logs.int("total_logs"))
	}
	if strings.Contains(fmt.Sprint(logs), key) {
		t.Fatal("an audit entry holds a full key")
	}
}

func TestAPIAdminBalancePaginationAndUsers(t *testing.T) {
	e := startAPI(t, apiOptions{})
	var keys []string
	var ids []int64
	for i := range 3 {
		k, id := e.register(fmt.Sprintf("page%d@example.com", i))
		keys, ids = append(keys, k), append(ids, id)
	}
	p1 := e.expect(200, "GET", "/admin/balance?limit=2", apiAdminKey, nil)
	p2 := e.expect(200, "GET", "/admin/balance?limit=2&offset=2", apiAdminKey, nil)
	if p1.int("total_users") != 3 || len(p1.list("users")) != 2 || len(p2.list("users")) != 1 {
		t.Fatalf("pages %v / %v", p1, p2)
	}
	if p2.list("users")[0].int("user_id") != ids[2] || p1.list("users")[0].int("credits") != 5000 {
		t.Fatalf("page contents %v / %v", p1, p2)
	}
	all := fmt.Sprint(p1) + fmt.Sprint(p2)
	for _, k := range keys {
		if strings.Contains(all, k) {
			t.Fatal("/admin/balance shows a full key")
		}
	}
	for _, u := range append(p1.list("users"), p2.list("users")...) {
		if !strings.HasSuffix(u.str("api_key"), "…") {
			t.Fatalf("api_key %q not masked", u.str("api_key"))
		}
	}
	e.expect(422, "GET", "/admin/balance?limit=abc", apiAdminKey, nil)
	e.expect(422, "GET", "/admin/balance?offset=-1", apiAdminKey, nil)

	u := e.expect(200, "GET", fmt.Sprintf("/admin/users/%d", ids[0]), apiAdminKey, nil)
	if u.obj("user").str("email") != "page0@example.com" || u.int("credits") != 5000 || u.int("total_keys") != 1 || strings.Contains(fmt.Sprint(u), keys[0]) {
		t.Fatalf("admin user view %v", u)
	}
	e.expect(404, "GET", "/admin/users/999999", apiAdminKey, nil, "User not found")
	e.expect(422, "GET", "/admin/users/abc", apiAdminKey, nil)
}

func TestAPIAdminLimitsAndPlans(t *testing.T) {
	e := startAPI(t, apiOptions{})
	key, uid := e.register("plans@example.com")

	out := e.expect(200, "POST", "/admin/limit", apiAdminKey, map[string]any{"api_key": key, "rate_limits": map[string]any{"requests_per_minute": 2}})
	if rl := out.obj("rate_limits"); rl.int("requests_per_minute") != 2 || rl.int("requests_per_hour") != 1000 || rl.int("tokens_per_day") != 1000000 {
		t.Fatalf("limit %v", out)
	}
	if strings.Contains(out.str("message"), key) {
		t.Fatal("limit message shows the full key")
	}
	e.expect(404, "POST", "/admin/limit", apiAdminKey, map[string]any{"api_key": "gw_live_" + strings.Repeat("z", 43), "rate_limits": map[string]any{}})
	e.expect(422, "POST", "/admin/limit", apiAdminKey, map[string]any{"user_id": uid, "rate_limits": map[string]any{"requests_per_minute": -1}})
	e.expect(422, "POST", "/admin/limit", apiAdminKey, map[string]any{"user_id": uid, "rate_limits": map[string]any{"requests_per_minute": "fast"}})
	if u := e.expect(200, "GET", fmt.Sprintf("/admin/users/%d", uid), apiAdminKey, nil); u.obj("rate_limits").int("requests_per_minute") != 2 {
		t.Fatalf("stored limits %v", u["rate_limits"])
	}

	// No plan yet.
	e.expect(404, "GET", "/user/plan", key, nil, "No active plan found")
	ent := e.expect(200, "GET", "/user/plan/entitlements?feature=gpt4", key, nil)
	if ent.str("plan_name") != "Trial" || ent.int("daily_request_limit") != 100 || ent.int("monthly_token_limit") != 100000 || ent["can_access_feature"] != false {
		t.Fatalf("trial entitlements %v", ent)
	}
	if ent := e.expect(200, "GET", "/user/plan/entitlements?feature=basic_models", key, nil); ent["can_access_feature"] != true {
		t.Fatalf("basic_models %v", ent)
	}

	plan := map[string]any{
		"name": "Pro", "description": "For teams", "daily_request_limit": 1000, "monthly_request_limit": 20000,
		"daily_token_limit": 100000, "monthly_token_limit": 2000000, "price_per_month": 19.5, "features": []string{"gpt4", "priority"},
	}
	out = e.expect(200, "POST", "/admin/plans", apiAdminKey, plan)
	planID := out.obj("plan").int("id")
	e.expect(200, "POST", "/admin/plans", apiAdminKey, map[string]any{"name": "Basic", "price_per_month": 5})
	e.expect(409, "POST", "/admin/plans", apiAdminKey, map[string]any{"name": "pro"}, "already exists")
	e.expect(422, "POST", "/admin/plans", apiAdminKey, map[string]any{"name": "X", "daily_request_limit": "many"})
	e.expect(422, "POST", "/admin/plans", apiAdminKey, map[string]any{"name": "X", "daily_request_limit": -1})
	e.expect(422, "POST", "/admin/plans", apiAdminKey, map[string]any{"description": "no name"})

	code, _, raw := e.raw("GET", "/plans", "", nil)
	var plans []jsonObj
	if code != 200 || json.Unmarshal(raw, &plans) != nil || len(plans) != 2 || plans[0].str("name") != "Basic" || plans[1].str("name") != "Pro" {
		t.Fatalf("GET /plans: %d %s", code, raw)
	}
	if p := e.expect(200, "GET", fmt.Sprintf("/plans/%d", planID), "", nil); p.str("name") != "Pro" || len(p["features"].([]any)) != 2 {
		t.Fatalf("GET /plans/{id}: %v", p)
	}
	e.expect(404, "GET", "/plans/999999", "", nil, "Plan not found")
	e.expect(422, "GET", "/plans/abc", "", nil)

	e.expect(422, "POST", "/admin/assign-plan", apiAdminKey, map[string]any{"user_id": uid, "plan_id": planID, "duration_months": 0})
	e.expect(422, "POST", "/admin/assign-plan", apiAdminKey, map[string]any{"user_id": uid, "plan_id": planID, "duration_months": 1.5})
	e.expect(404, "POST", "/admin/assign-plan", apiAdminKey, map[string]any{"user_id": 999999, "plan_id": planID}, "User not found")
	e.expect(404, "POST", "/admin/assign-plan", apiAdminKey, map[string]any{"user_id": uid, "plan_id": 999999}, "Plan not found")
	out = e.expect(200, "POST", "/admin/assign-plan", apiAdminKey, map[string]any{"user_id": uid, "plan_id": planID, "duration_months": 2})
	end, err := time.Parse(time.RFC3339Nano, out.str("end_date"))
	if err != nil || end.Sub(time.Now()) < 59*24*time.Hour || end.Sub(time.Now()) > 61*24*time.Hour {
		t.Fatalf("assign-plan %v", out)
	}
	up := e.expect(200, "GET", "/user/plan", key, nil)
	if up.str("plan_name") != "Pro" || up.int("plan_id") != planID || up.int("daily_request_limit") != 1000 {
		t.Fatalf("/user/plan %v", up)
	}
	ent = e.expect(200, "GET", "/user/plan/entitlements?feature=gpt4", key, nil)
	if ent.str("plan_name") != "Pro" || ent["has_plan"] != true || ent["can_access_feature"] != true || ent["plan_expired"] != false {
		t.Fatalf("plan entitlements %v", ent)
	}
	pu := e.expect(200, "GET", "/user/plan/usage", key, nil)
	if pu.str("plan_name") != "Pro" || pu.obj("limits").int("daily_request_limit") != 1000 || pu.obj("remaining").int("daily_requests") != 1000 || pu.obj("at_limit")["daily_requests"] != false {
		t.Fatalf("/user/plan/usage %v", pu)
	}
	if prof := e.expect(200, "GET", "/user/profile", key, nil); prof.str("subscription_status") != "active" {
		t.Fatalf("subscription_status after assign-plan: %v", prof["subscription_status"])
	}

	e.expect(200, "PUT", fmt.Sprintf("/admin/plans/%d", planID), apiAdminKey, map[string]any{"daily_request_limit": 500})
	if p := e.expect(200, "GET", fmt.Sprintf("/plans/%d", planID), "", nil); p.int("daily_request_limit") != 500 {
		t.Fatalf("updated plan %v", p)
	}
	e.expect(400, "PUT", fmt.Sprintf("/admin/plans/%d", planID), apiAdminKey, map[string]any{}, "No valid fields")
	e.expect(404, "PUT", "/admin/plans/999999", apiAdminKey, map[string]any{"name": "Nope"})
	e.expect(200, "DELETE", fmt.Sprintf("/admin/plans/%d", planID), apiAdminKey, nil)
	e.expect(404, "GET", fmt.Sprintf("/plans/%d", planID), "", nil)
	if all := e.expect(200, "GET", "/admin/plans", apiAdminKey, nil); all.int("total_plans") != 2 {
		t.Fatalf("admin plans %v", all)
	}
	e.expect(400, "POST", "/admin/assign-plan", apiAdminKey, map[string]any{"user_id": uid, "plan_id": planID}, "not active")
}

func TestAPIProfileAndAccount(t *testing.T) {
	e := startAPI(t, apiOptions{})
	key, uid := e.register("me@example.com")
	e.register("taken@example.com")
	second, _ := e.createKey(key, map[string]any{"key_name": "second"})

	p := e.expect(200, "GET", "/user/profile", key, nil)
	if p.str("email") != "me@example.com" || p.int("user_id") != uid || p.int("credits") != 5000 || p.str("api_key") == key {
		t.Fatalf("profile %v", p)
	}
	out := e.expect(200, "PUT", "/user/profile", key, map[string]any{"name": "Me", "email": "new@example.com", "preferences": map[string]any{"theme": "dark"}})
	if out.str("name") != "Me" || out.str("email") != "new@example.com" || out.obj("preferences")["theme"] != "dark" {
		t.Fatalf("profile update %v", out)
	}
	e.expect(409, "PUT", "/user/profile", key, map[string]any{"email": "taken@example.com"}, "already exists")
	e.expect(422, "PUT", "/user/profile", key, map[string]any{"email": "bad"})
	e.expect(422, "PUT", "/user/profile", key, map[string]any{"preferences": []int{1}})
	e.expect(400, "PUT", "/user/profile", key, map[string]any{}, "No valid fields")

	e.expect(422, "DELETE", "/user/account", key, nil)
	e.expect(400, "DELETE", "/user/account", key, map[string]any{"confirmation": "DELETE_KEY"}, "DELETE_ACCOUNT")
	e.expect(200, "DELETE", "/user/account", key, map[string]any{"confirmation": "DELETE_ACCOUNT"})
	e.expect(401, "GET", "/user/balance", key, nil)
	e.expect(401, "GET", "/user/balance", second, nil)
	e.expect(404, "GET", fmt.Sprintf("/admin/users/%d", uid), apiAdminKey, nil)
	// The email is free again.
	e.register("new@example.com")
}

func TestAPIAuditLogsAndChain(t *testing.T) {
	e := startAPI(t, apiOptions{})
	key, uid := e.register("audit@example.com")
	otherKey, _ := e.register("audit-other@example.com")
	issued := []string{key, otherKey}
	k2, id2 := e.createKey(key, map[string]any{"key_name": "k2"})
	issued = append(issued, k2)
	e.expect(200, "PUT", fmt.Sprintf("/user/api-keys/%d", id2), key, map[string]any{"max_requests": 7})
	out := e.expect(200, "PUT", fmt.Sprintf("/user/api-keys/%d", id2), key, map[string]any{"action": "rotate"})
	issued = append(issued, out.str("api_key"))
	e.expect(200, "DELETE", fmt.Sprintf("/user/api-keys/%d", id2), key, map[string]any{"confirmation": "DELETE_KEY"})
	e.expect(200, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid, "credits": 3})

	logs := e.expect(200, "GET", "/user/api-keys/audit-logs", key, nil)
	var actions []string
	for _, l := range logs.list("logs") {
		actions = append(actions, l.str("action"))
		if l.int("user_id") != uid {
			t.Fatalf("user audit log shows another user's entry %v", l)
		}
	}
	if got := strings.Join(actions, ","); got != "admin.add_credits,delete,rotate,update,create,create,user.register" {
		t.Fatalf("audit actions %s", got)
	}
	upd := e.expect(200, "GET", "/user/api-keys/audit-logs?action=update", key, nil).list("logs")
	if len(upd) != 1 || upd[0].obj("details").obj("new_values").int("max_requests") != 7 || upd[0].obj("details").obj("old_values")["max_requests"] != nil {
		t.Fatalf("update entry %v", upd)
	}
	if n := e.expect(200, "GET", fmt.Sprintf("/user/api-keys/audit-logs?key_id=%d", id2), key, nil).int("total_logs"); n != 4 {
		t.Fatalf("entries for key %d: %d, want 4", id2, n)
	}
	if n := e.expect(200, "GET", "/user/api-keys/audit-logs?limit=2", key, nil).int("total_logs"); n != 2 {
		t.Fatalf("limit=2 gave %d", n)
	}
	if n := e.expect(200, "GET", "/user/api-keys/audit-logs?start_date=2999-01-01T00:00:00Z", key, nil).int("total_logs"); n != 0 {
		t.Fatalf("future start_date gave %d", n)
	}
	e.expect(422, "GET", "/user/api-keys/audit-logs?start_date=yesterday", key, nil, "start_date")
	e.expect(422, "GET", "/user/api-keys/audit-logs?limit=abc", key, nil)
	e.expect(422, "GET", "/user/api-keys/audit-logs?key_id=abc", key, nil)

	all := e.expect(200, "GET", "/admin/audit-logs?limit=1000", apiAdminKey, nil)
	p1 := e.expect(200, "GET", "/admin/audit-logs?limit=3", apiAdminKey, nil).list("logs")
	p2 := e.expect(200, "GET", "/admin/audit-logs?limit=3&offset=3", apiAdminKey, nil).list("logs")
	if len(p1) != 3 || len(p2) != 3 || p1[2].int("id") <= p2[0].int("id") {
		t.Fatalf("audit pages %v / %v", p1, p2)
	}
	v := e.expect(200, "GET", "/admin/audit-logs/verify", apiAdminKey, nil)
	if v["valid"] != true || v.int("entries") != all.int("total_logs") || v.int("entries") < 9 {
		t.Fatalf("verify %v (listed %d)", v, all.int("total_logs"))
	}
	code, hdr, raw := e.raw("GET", "/admin/audit-logs/export", apiAdminKey, nil)
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "application/x-ndjson") {
		t.Fatalf("export: %d %q", code, hdr.Get("Content-Type"))
	}
	lines := 0
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	var prev int64
	for sc.Scan() {
		var entry jsonObj
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil || entry.str("hash") == "" || entry.int("id") <= prev {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		prev = entry.int("id")
		lines++
	}
	if int64(lines) != v.int("entries") {
		t.Fatalf("export has %d lines, verify counted %d", lines, v.int("entries"))
	}
	for _, k := range issued {
		if bytes.Contains(raw, []byte(k)) || bytes.Contains(raw, []byte(k[len(k)-30:])) {
			t.Fatal("the audit log holds a plaintext key")
		}
	}
	e.expect(401, "GET", "/admin/audit-logs/verify", key, nil)
}

// eventually polls check until it holds (settlements and gateway audit
// entries are written asynchronously); it fails after many tries.
func eventually(t *testing.T, what string, check func() bool) {
	t.Helper()
	for range 200 {
		if check() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s never happened", what)
}

func TestAPIUsageMonitor(t *testing.T) {
	up := startFakeOpenAI(t)
	e := startAPI(t, apiOptions{upstream: up.hostPort()})
	key, uid := e.register("usage@example.com")

	chat := map[string]any{"model": "test-model", "max_tokens": 16, "messages": []map[string]any{{"role": "user", "content": "hello"}}}
	for range 2 {
		code, _, body := e.raw("POST", "/v1/chat/completions", key, chat)
		if code != 200 {
			t.Fatalf("chat completion: %d %s", code, body)
		}
	}
	var mon jsonObj
	eventually(t, "usage records", func() bool {
		mon = e.expect(200, "GET", "/user/monitor", key, nil)
		return mon.obj("usage_metrics").int("total_requests") == 2
	})
	m := mon.obj("usage_metrics")
	if m.int("total_tokens") != 20 || m.int("total_credits") != 20 || m.int("requests_today") != 2 {
		t.Fatalf("user monitor %v", mon)
	}
	if bm := mon.list("by_model"); len(bm) != 1 || bm[0].str("model") != "test-model" || bm[0].int("tokens") != 20 {
		t.Fatalf("by_model %v", mon["by_model"])
	}
	if bd := mon.list("by_day"); len(bd) != 1 || bd[0].str("date") != time.Now().UTC().Format("2006-01-02") || bd[0].int("requests") != 2 {
		t.Fatalf("by_day %v", mon["by_day"])
	}
	pu := e.expect(200, "GET", "/user/plan/usage", key, nil)
	if u := pu.obj("usage"); pu.str("plan_name") != "Trial" || u.int("daily_requests") != 2 || u.int("daily_tokens") != 20 || u.int("monthly_tokens") != 20 || pu.obj("remaining").int("daily_requests") != 98 {
		t.Fatalf("plan usage %v", pu)
	}
	if bal := e.expect(200, "GET", "/user/balance", key, nil); bal.int("credits") != 4980 {
		t.Fatalf("balance %d, want 4980", bal.int("credits"))
	}
	am := e.expect(200, "GET", "/admin/monitor", apiAdminKey, nil).obj("data")
	if sm := am.obj("system_usage_metrics"); am.int("total_users") != 1 || am.int("active_users_today") != 1 || sm.int("total_tokens") != 20 || sm.str("most_used_model") != "test-model" {
		t.Fatalf("admin monitor %v", am)
	}
	if top := am.list("top_users_by_usage"); len(top) != 1 || top[0].int("user_id") != uid || strings.Contains(fmt.Sprint(am), key) {
		t.Fatalf("top users %v", top)
	}
	if ra := am.list("recent_activity"); len(ra) != 2 || !strings.HasSuffix(ra[0].str("api_key"), "…") {
		t.Fatalf("recent activity %v", ra)
	}

}

func TestAPISecurityDashboard(t *testing.T) {
	e := startAPI(t, apiOptions{})
	key, uid := e.register("security@example.com")
	_, expiring := e.createKey(key, map[string]any{"key_name": "soon", "expiration_days": 2})
	e.createKey(key, map[string]any{"key_name": "later", "expiration_days": 30})
	chat := map[string]any{"model": "test-model", "messages": []map[string]any{{"role": "user", "content": "hello"}}}

	// A refused key shows up on the security dashboard.
	unknown := "gw_live_" + strings.Repeat("Q", 43)
	if code, _, _ := e.raw("POST", "/v1/chat/completions", unknown, chat); code != 401 {
		t.Fatalf("unknown key on /v1: %d", code)
	}
	var sec jsonObj
	eventually(t, "security audit entry", func() bool {
		sec = e.expect(200, "GET", "/admin/security", apiAdminKey, nil)
		return sec.int("total_last_day") >= 1
	})
	if sec.obj("refusals_last_hour").int("security.unknown_key") < 1 || len(sec.list("top_refused_ips")) == 0 {
		t.Fatalf("security dashboard %v", sec)
	}
	if strings.Contains(fmt.Sprint(sec), unknown) {
		t.Fatal("the dashboard shows a full key")
	}
	soon := sec.list("keys_expiring_soon")
	if len(soon) != 1 || soon[0].int("key_id") != expiring {
		t.Fatalf("keys_expiring_soon %v", soon)
	}
	e.expect(200, "POST", "/admin/add_credits", apiAdminKey, map[string]any{"user_id": uid, "credits": 1})
	sec = e.expect(200, "GET", "/admin/security", apiAdminKey, nil)
	if ra := sec.list("recent_admin_actions"); len(ra) != 1 || ra[0].str("action") != "admin.add_credits" {
		t.Fatalf("recent admin actions %v", ra)
	}
	e.expect(422, "GET", "/admin/security?expiring_within_days=x", apiAdminKey, nil)
}
