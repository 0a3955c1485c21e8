package e2e

import (
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// accessLog is the access log configuration docs/operations.md gives
// operators. Caddy redacts Authorization in access logs but logs every
// other request header, including X-Api-Key, in clear, from a copy taken
// before any handler runs, so a handler cannot remove it: the log's
// filter encoder must drop it.
const accessLog = `	log {
		format filter {
			request>headers>X-Api-Key delete
		}
	}
`

// debugCaddyfile is Caddyfile.example with debug logging and an access log:
// the most an operator would turn on while investigating.
func debugCaddyfile(t *testing.T) string {
	return writeCaddyfile(t, func(s string) string {
		s = strings.Replace(s, "{\n\tgatewayz {", "{\n\tdebug\n\tgatewayz {", 1)
		return strings.Replace(s, "{$GATEWAYZ_LISTEN::8080} {\n", "{$GATEWAYZ_LISTEN::8080} {\n"+accessLog, 1)
	})
}

// secrets collects every full key the gateway issued, and every response
// that must not show one.
type secrets struct {
	t     *testing.T
	keys  []string // full keys seen in register/create/rotate responses
	other []string // extra secrets: admin key, server secret, upstream key
	seen  []string // "what: body+headers" of every other response
}

func (s *secrets) key(k string) string {
	if !strings.HasPrefix(k, "gw_") || len(k) < 40 {
		s.t.Fatalf("not a full key: %q", k)
	}
	s.keys = append(s.keys, k)
	return k
}

// record keeps a response for the leak check.
func (s *secrets) record(what string, resp *Response) *Response {
	var b strings.Builder
	b.Write(resp.Body)
	for name, vs := range resp.Header {
		for _, v := range vs {
			fmt.Fprintf(&b, "\n%s: %s", name, v)
		}
	}
	s.seen = append(s.seen, what+": "+b.String())
	return resp
}

// leaks returns the places in text that hold a full key or its secret
// part, or one of the other secrets.
func (s *secrets) leaks(text string) []string {
	var out []string
	for _, k := range s.keys {
		// The secret part follows "gw_<env>_" and may itself hold "_".
		_, secretPart, _ := strings.Cut(strings.TrimPrefix(k, "gw_"), "_")
		if strings.Contains(text, k) || strings.Contains(text, secretPart) {
			out = append(out, k[:12]+"…")
		}
	}
	for _, o := range s.other {
		if strings.Contains(text, o) {
			out = append(out, "secret "+o[:6]+"…")
		}
	}
	return out
}

// TestNoKeyLeaks runs the whole flow with debug and access logging on and
// checks that no full key appears in any log line, in any response other
// than the one that issued it, in the audit log (list and export) or in
// the bytes of the database file; and that admin endpoints refuse missing
// and wrong admin keys.
func TestNoKeyLeaks(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	const upstreamKey = "sk-operator-upstream-9e8d7c6b5a4f3e2d"
	g := startGateway(t, up.URL, func(c *Config) {
		c.Caddyfile = debugCaddyfile(t)
		c.APIKey = upstreamKey
	})
	api := NewAPI(g.URL, testAdminKey)
	s := &secrets{t: t, other: []string{testAdminKey, testSecret, upstreamKey}}
	do := func(what, method, path, bearer string, body any, headers ...string) *Response {
		t.Helper()
		resp, err := api.Do(method, path, bearer, body, headers...)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return s.record(what, resp)
	}
	ok := func(resp *Response) *Response {
		t.Helper()
		if resp.Status != http.StatusOK {
			t.Fatalf("%s %s", resp.Body, resp.Header)
		}
		return resp
	}

	// Issuing responses: the only places a full key may appear.
	resp := mustOK(t, "register")(api.Do("POST", "/auth/register", "", map[string]any{"username": "eve", "email": "eve@example.com"}))
	k1 := s.key(resp.JSON()["api_key"].(string))
	uid := int64(resp.JSON()["user_id"].(float64))
	k1ID := int64(resp.JSON()["key_id"].(float64))
	k2, k2ID, err := api.CreateKey(k1, map[string]any{"key_name": "second"})
	if err != nil {
		t.Fatal(err)
	}
	s.key(k2)
	resp = mustOK(t, "rotate")(api.Do("PUT", fmt.Sprintf("/user/api-keys/%d", k2ID), k1, map[string]any{"action": "rotate"}))
	k3 := s.key(resp.JSON()["api_key"].(string))
	resp = mustOK(t, "bulk rotate")(api.Do("PUT", fmt.Sprintf("/user/api-keys/%d", k2ID), k1,
		map[string]any{"action": "bulk_rotate"}))
	newKeys := map[int64]string{}
	for _, nk := range resp.JSON()["new_keys"].([]any) {
		m := nk.(map[string]any)
		newKeys[int64(m["key_id"].(float64))] = s.key(m["new_api_key"].(string))
	}
	if len(newKeys) != 2 || newKeys[k1ID] == "" || newKeys[k2ID] == "" {
		t.Fatalf("bulk_rotate: new keys %v, want keys %d and %d", newKeys, k1ID, k2ID)
	}
	k1, k3 = newKeys[k1ID], newKeys[k2ID]
	// Keys that never authenticate still must not be logged.
	unknown := s.key("gw_live_" + strings.Repeat("Z", 43))
	wrongEnv := s.key("gw_test_" + strings.Repeat("Q", 43))

	// Inference, both ways of sending a key.
	ok(do("chat", "POST", "/v1/chat/completions", k1, chatBody(false)))
	ok(do("stream", "POST", "/v1/chat/completions", k1, chatBody(true)))
	ok(do("chat x-api-key", "POST", "/v1/chat/completions", "", chatBody(false), "X-Api-Key: "+k3))
	do("unknown key", "POST", "/v1/chat/completions", unknown, chatBody(false))
	do("unknown x-api-key", "POST", "/v1/chat/completions", "", chatBody(false), "X-Api-Key: "+wrongEnv)
	do("models", "GET", "/v1/models", k1, nil)
	// A deactivated key.
	ok(do("deactivate", "PUT", fmt.Sprintf("/user/api-keys/%d", k2ID), k1, map[string]any{"is_active": false}))
	do("inactive key", "POST", "/v1/chat/completions", k3, chatBody(false))
	do("inactive key api", "GET", "/user/balance", k3, nil)
	// The management API called the wrong ways.
	do("api unknown key", "GET", "/user/balance", unknown, nil)
	do("api x-api-key", "GET", "/user/balance", "", nil, "X-Api-Key: "+k1)

	// Every read of the management API.
	for _, p := range []string{"/user/api-keys", "/user/api-keys/usage", "/user/api-keys/audit-logs",
		"/user/balance", "/user/profile", "/user/plan/usage", "/user/plan/entitlements", "/user/monitor"} {
		do("GET "+p, "GET", p, k1, nil)
	}
	ok(do("add credits by key", "POST", "/admin/add_credits", testAdminKey, map[string]any{"api_key": k1, "credits": 5}))
	for _, p := range []string{"/admin/balance", "/admin/monitor", "/admin/audit-logs", "/admin/audit-logs/export",
		"/admin/audit-logs/verify", "/admin/security", fmt.Sprintf("/admin/users/%d", uid), "/admin/plans"} {
		ok(do("GET "+p, "GET", p, testAdminKey, nil))
	}
	backup := ok(do("backup", "GET", "/admin/backup", testAdminKey, nil))
	if len(backup.Body) == 0 {
		t.Fatal("empty backup")
	}

	// Admin endpoints refuse a missing or wrong admin key, and a user key.
	for _, rt := range []struct{ method, path string }{
		{"POST", "/admin/add_credits"}, {"GET", "/admin/balance"}, {"GET", "/admin/monitor"},
		{"POST", "/admin/limit"}, {"POST", "/admin/assign-plan"}, {"GET", "/admin/plans"},
		{"POST", "/admin/plans"}, {"PUT", "/admin/plans/1"}, {"DELETE", "/admin/plans/1"},
		{"GET", "/admin/users/1"}, {"GET", "/admin/audit-logs"}, {"GET", "/admin/audit-logs/verify"},
		{"GET", "/admin/audit-logs/export"}, {"GET", "/admin/security"}, {"GET", "/admin/backup"},
	} {
		for _, bearer := range []string{"", "wrong-admin-key", testAdminKey + "x", testAdminKey[:len(testAdminKey)-1], k1} {
			r := do("admin "+rt.path, rt.method, rt.path, bearer, map[string]any{"user_id": uid, "credits": 1})
			if r.Status != http.StatusUnauthorized || r.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s with bearer %q: %d %s, want 401 with WWW-Authenticate", rt.method, rt.path, bearer, r.Status, r.Body)
			}
		}
	}
	// Nothing above changed the balance: only the 5 credits added.
	c, err := api.UserCredits(uid)
	if err != nil {
		t.Fatal(err)
	}
	if c.Credits != 1000+5-2*jsonCost-streamCost {
		t.Errorf("credits %d, want %d", c.Credits, 1000+5-2*jsonCost-streamCost)
	}

	for _, body := range s.seen {
		if l := s.leaks(body); len(l) > 0 {
			t.Errorf("response leaks %v: %.300s", l, body)
		}
	}
	if err := g.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	lines := g.Logs().Lines()
	if len(lines) < 20 || !strings.Contains(g.Logs().String(), `"level":"debug"`) || !strings.Contains(g.Logs().String(), "handled request") {
		t.Fatalf("expected debug and access log lines, got %d lines", len(lines))
	}
	for _, line := range lines {
		if l := s.leaks(line); len(l) > 0 {
			t.Errorf("log line leaks %v: %s", l, line)
		}
	}
	// Every file the process wrote: the database, its backup, Caddy's
	// autosave.json and data directory.
	err = filepath.WalkDir(g.cfg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, l := range s.leaks(string(b)) {
			// The server secret may only be in its own file, and only
			// when it was generated (it is set here, so nowhere).
			t.Errorf("file %s holds %s", path, l)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if l := s.leaks(string(backup.Body)); len(l) > 0 {
		t.Errorf("backup holds %v", l)
	}
}

// chatBody is a small chat completion request.
func chatBody(stream bool) map[string]any {
	b := map[string]any{
		"model":    "mock-model",
		"messages": []map[string]string{{"role": "user", "content": "Say hello"}},
	}
	if stream {
		b["stream"] = true
	}
	return b
}
