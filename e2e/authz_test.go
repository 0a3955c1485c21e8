package e2e

import (
	be "encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// expectStatus sends a request and fails the test unless it answers want;
// it returns the response.
func expectStatus(t *testing.T, api *API, want int, method, path, bearer string, body any) *Response {
	t.Helper()
	resp, err := api.Do(method, path, bearer, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if resp.Status != want {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, path, resp.Status, want, resp.Body)
	}
	return resp
}

// adminUser is the admin view of a user (GET /admin/users/{id}): profile,
// balance, keys, plan and limits.
func adminUser(t *testing.T, api *API, userID int64) string {
	t.Helper()
	return string(expectStatus(t, api, 200, "GET", fmt.Sprintf("/admin/users/%d", userID), api.AdminKey, nil).Body)
}

// The reproduction of the narrow-key takeover, step by step, against
// bin/caddy with Caddyfile.example: a key whose scope is only
// {"write":["api_keys"]} can neither give itself {} nor chat nor rotate the
// primary key, and the owner's key keeps working. An empty scope set on a
// key created for it grants nothing.
func TestNarrowKeyCannotWiden(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	g := startGateway(t, up.URL, nil)
	api := NewAPI(g.URL, testAdminKey)

	reg := expectStatus(t, api, 200, "POST", "/auth/register", "", map[string]any{"username": "e1", "email": "e1@example.com"}).JSON()
	owner, primaryID := reg["api_key"].(string), int64(reg["key_id"].(float64))
	uid := int64(reg["user_id"].(float64))
	j := expectStatus(t, api, 200, "POST", "/user/api-keys", owner,
		map[string]any{"key_name": "kw", "scope_permissions": map[string]any{"write": []string{"api_keys"}}}).JSON()
	kw, kwID := j["api_key"].(string), int64(j["key_id"].(float64))
	before := adminUser(t, api, uid)

	expectStatus(t, api, 403, "PUT", fmt.Sprintf("/user/api-keys/%d", kwID), kw, map[string]any{"scope_permissions": map[string]any{}})
	chat := map[string]any{"model": "m", "messages": []map[string]any{{"role": "user", "content": "hi"}}}
	expectStatus(t, api, 403, "POST", "/v1/chat/completions", kw, chat)
	expectStatus(t, api, 403, "PUT", fmt.Sprintf("/user/api-keys/%d", primaryID), kw, map[string]any{"action": "rotate"})
	expectStatus(t, api, 403, "POST", "/user/api-keys", kw, map[string]any{"key_name": "wide", "scope_permissions": map[string]any{"admin": []string{"*"}}})
	expectStatus(t, api, 403, "POST", "/user/api-keys", kw, map[string]any{"key_name": "glob", "scope_permissions": map[string]any{"WRITE": []string{"c*"}}})
	if after := adminUser(t, api, uid); after != before {
		t.Fatalf("the refusals changed the account:\nbefore %s\nafter  %s", before, after)
	}

	// {} is the narrowest scope: a key created with it (or inheriting from
	// kw) can do nothing kw could not, and nothing at all with {}.
	empty, _, err := api.CreateKey(kw, map[string]any{"key_name": "empty", "scope_permissions": map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, api, 403, "POST", "/v1/chat/completions", empty, chat)
	expectStatus(t, api, 403, "POST", "/user/api-keys", empty, map[string]any{"key_name": "x"})
	expectStatus(t, api, 403, "GET", "/user/balance", empty, nil)
	child, _, err := api.CreateKey(kw, map[string]any{"key_name": "child"})
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, api, 403, "POST", "/v1/chat/completions", child, chat)
	expectStatus(t, api, 403, "GET", "/user/api-keys", child, nil)

	// The owner's key was never rotated away.
	expectStatus(t, api, 200, "POST", "/v1/chat/completions", owner, chat)
	expectStatus(t, api, 200, "GET", "/user/api-keys", owner, nil)
}

// The medium and low findings, black-box: a read-only key cannot change
// the profile; POST /admin/limit needs rate_limits; errors name JSON
// fields; invalid UTF-8 and invisible characters are refused; emails are
// unique whatever their case.
func TestAuthorizationFindings(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	g := startGateway(t, up.URL, nil)
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("owner", "victim@example.com", -1)
	if err != nil {
		t.Fatal(err)
	}
	readOnly, _, err := api.CreateKey(u.APIKey, map[string]any{"key_name": "ro", "scope_permissions": map[string]any{"read": []string{"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	before := adminUser(t, api, u.ID)

	// Profile writes need write on profile.
	expectStatus(t, api, 200, "GET", "/user/profile", readOnly, nil)
	expectStatus(t, api, 403, "PUT", "/user/profile", readOnly, map[string]any{"email": "thief@example.com", "username": "thief"})
	writer, _, err := api.CreateKey(u.APIKey, map[string]any{"key_name": "pw", "scope_permissions": map[string]any{"write": []string{"profile_update"}}})
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, api, 403, "GET", "/user/profile", writer, nil)
	before = adminUser(t, api, u.ID)

	// POST /admin/limit without rate_limits: 422, the limits unchanged.
	expectStatus(t, api, 422, "POST", "/admin/limit", api.AdminKey, map[string]any{"user_id": u.ID})
	// Errors name the JSON field, not the Go type it is decoded into.
	for _, c := range []struct{ path, body string }{
		{"/admin/add_credits", `{"user_id": "7", "credits": 1}`},
		{"/admin/add_credits", `{"user_id": 1e40, "credits": 1}`},
		{"/admin/limit", `{"user_id": 99999999999999999999, "rate_limits": {}}`},
	} {
		r := expectStatus(t, api, 422, "POST", c.path, api.AdminKey, c.body)
		if d := r.JSON()["detail"]; d != `Field "user_id" must be an integer` {
			t.Errorf("%s %s: detail %q", c.path, c.body, d)
		}
	}
	// Invalid UTF-8 is refused, never stored as U+FFFD.
	expectStatus(t, api, 422, "POST", "/auth/register", "", "{\"username\": \"bad\xff\", \"email\": \"utf8@example.com\"}")
	expectStatus(t, api, 422, "POST", "/user/api-keys", u.APIKey, "{\"key_name\": \"bad\xc3\"}")
	expectStatus(t, api, 422, "PUT", "/user/profile", u.APIKey, "{\"name\": \"bad\xff\"}")
	expectStatus(t, api, 422, "PUT", "/user/profile", u.APIKey, `{"name": "lone \udc00 surrogate"}`)
	expectStatus(t, api, 422, "POST", "/admin/plans", api.AdminKey, "{\"name\": \"plan\xfe\"}")
	if after := adminUser(t, api, u.ID); after != before {
		t.Fatalf("refused requests changed the account:\nbefore %s\nafter  %s", before, after)
	}
	plans := expectStatus(t, api, 200, "GET", "/admin/plans", api.AdminKey, nil)
	if strings.Contains(string(plans.Body), "\ufffd") {
		t.Fatalf("a plan name holds U+FFFD: %s", plans.Body)
	}

	// Look-alike emails are refused; another case of a taken one is a 409.
	for _, email := range []string{"victim\u200b@example.com", "victim\u202e@example.com", "victim\u00ad@example.com"} {
		r := expectStatus(t, api, 422, "POST", "/auth/register", "", map[string]any{"username": "x", "email": email})
		if strings.Contains(string(r.Body), "victim") {
			t.Errorf("the refusal echoes the address: %s", r.Body)
		}
	}
	expectStatus(t, api, 409, "POST", "/auth/register", "", map[string]any{"username": "x", "email": "Victim@Example.COM"})
	other := expectStatus(t, api, 200, "POST", "/auth/register", "", map[string]any{"username": "y", "email": "other@example.com"}).JSON()
	expectStatus(t, api, 409, "PUT", "/user/profile", other["api_key"].(string), map[string]any{"email": "VICTIM@example.com"})
	expectStatus(t, api, 422, "PUT", "/user/profile", other["api_key"].(string), map[string]any{"email": "vic\u200btim@example.com"})
}

// A database written before empty scopes stopped meaning "everything":
// its empty-scoped keys get the full scope when the new binary opens it,
// so they keep working as before.
func TestEmptyScopeUpgrade(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	g := startGateway(t, up.URL, nil)
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("old", "old@example.com", -1)
	if err != nil {
		t.Fatal(err)
	}
	legacy, legacyID, err := api.CreateKey(u.APIKey, map[string]any{"key_name": "legacy", "scope_permissions": map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	narrow, narrowID, err := api.CreateKey(u.APIKey, map[string]any{"key_name": "narrow", "scope_permissions": map[string]any{"read": []string{"usage"}}})
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, api, 403, "GET", "/user/api-keys", legacy, nil)
	if err := g.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}

	// Make the file what an older build left: the legacy key stored with
	// no scope at all, schema version 4.
	db, err := bbolt.Open(g.cfg.DB, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		keys := tx.Bucket([]byte("keys"))
		id := be.BigEndian.AppendUint64(nil, uint64(legacyID))
		v := keys.Get(id)
		if v == nil {
			return fmt.Errorf("key %d not in the keys bucket", legacyID)
		}
		old := strings.Replace(string(v), `"scope_permissions":{}`, `"scope_permissions":null`, 1)
		if old == string(v) {
			return fmt.Errorf("key %d: no empty scope in %s", legacyID, v)
		}
		if err := keys.Put(id, []byte(old)); err != nil {
			return err
		}
		return tx.Bucket([]byte("meta")).Put([]byte("schema_version"), be.BigEndian.AppendUint64(nil, 4))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	g = restart(t, g)
	api = NewAPI(g.URL, testAdminKey)
	expectStatus(t, api, 200, "GET", "/user/api-keys", legacy, nil)
	expectStatus(t, api, 200, "POST", "/v1/chat/completions", legacy,
		map[string]any{"model": "m", "messages": []map[string]any{{"role": "user", "content": "hi"}}})
	expectStatus(t, api, 403, "GET", "/user/api-keys", narrow, nil)
	keys := expectStatus(t, api, 200, "GET", fmt.Sprintf("/admin/users/%d", u.ID), api.AdminKey, nil).JSON()["keys"].([]any)
	for _, k := range keys {
		m := k.(map[string]any)
		got := fmt.Sprint(m["scope_permissions"])
		switch int64(m["id"].(float64)) {
		case legacyID:
			if got != fmt.Sprint(map[string]any{"admin": []any{"*"}, "read": []any{"*"}, "write": []any{"*"}}) {
				t.Errorf("upgraded key scope %s", got)
			}
		case narrowID:
			if got != fmt.Sprint(map[string]any{"read": []any{storage.ResourceUsage}}) {
				t.Errorf("narrow key scope %s after the upgrade", got)
			}
		}
	}
	if resp, err := api.Do("GET", "/health", "", nil); err != nil || resp.Status != http.StatusOK {
		t.Fatalf("health after the upgrade: %v %v", resp, err)
	}
}
