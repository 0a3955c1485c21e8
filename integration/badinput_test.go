package integration

// Bad input over HTTP (issue #7, part 5): every endpoint gets malformed
// JSON, wrong types, missing fields, huge bodies and headers, non-numeric
// and foreign ids, negative and zero amounts, control characters in names
// and invalid keys of every shape. Each must get a clear 4xx JSON error,
// change nothing in the store (compared through the list and balance
// endpoints), reach no upstream, and leave the process serving.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
)

// badCase is one request that must be refused.
type badCase struct {
	name    string
	method  string
	path    string
	auth    string // full header, e.g. bearer(key); "" for none
	body    []byte // nil: no body
	headers []string
}

// endpointTemplate is a valid request body of an endpoint, from which the
// wrong-type, missing-field and bad-value cases are derived.
type endpointTemplate struct {
	method, path string
	auth         string
	body         map[string]any
	required     []string // fields whose absence must be refused
}

// wrongTypes returns values of other JSON types than v.
func wrongTypes(v any) []any {
	switch v.(type) {
	case string:
		return []any{123, true, []any{"x"}, map[string]any{"a": 1}}
	case int, int64: // integer fields: a fraction or an out-of-range number is a type error
		return []any{"12", 1.5, true, []any{1}, map[string]any{"a": 1}, 1e30}
	case float64: // decimal fields (display prices)
		return []any{"12", true, []any{1}, map[string]any{"a": 1}}
	case bool:
		return []any{"true", 1, []any{true}, map[string]any{}}
	case []string, []any:
		return []any{"x", 1, true, map[string]any{"a": "b"}, []any{1, 2}}
	case map[string]any:
		return []any{"x", 1, true, []any{"read"}}
	}
	return []any{"x"}
}

func clone(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func mustJSONBytes(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// malformedBodies are bodies no endpoint may accept.
var malformedBodies = []string{
	``, ` `, `{`, `}`, `{"a":}`, `{"a" 1}`, `[]`, `[{}]`, `null`, `"str"`, `123`, `true`,
	`{"key_name":"x"}{"key_name":"y"}`, `{"key_name":"x",}`, `{'key_name':'x'}`,
	"{\"key_name\":\"x\"\x00}", `{"unknown_field_xyz":1}`, `{"__proto__":{"admin":true}}`,
}

// fingerprint captures the store as the API shows it: users, balances,
// keys (with limits, activity, expiry), plans, subscriptions, admin
// limits and usage totals.
func fingerprint(t *testing.T, g *gateway, userIDs []int64, keys []string) string {
	t.Helper()
	var b strings.Builder
	add := func(what string, r response) {
		if r.Status != 200 {
			t.Fatalf("fingerprint %s: %d %s", what, r.Status, r.Body)
		}
		var v any
		if err := json.Unmarshal(r.Body, &v); err != nil {
			t.Fatalf("fingerprint %s: %v", what, err)
		}
		v = dropVolatile(v)
		js, _ := json.Marshal(v)
		fmt.Fprintf(&b, "%s=%s\n", what, js)
	}
	add("balance", g.do("GET", "/admin/balance?limit=1000", nil, adminAuth()))
	add("plans", g.do("GET", "/admin/plans", nil, adminAuth()))
	for _, id := range userIDs {
		add(fmt.Sprintf("user %d", id), g.do("GET", fmt.Sprintf("/admin/users/%d", id), nil, adminAuth()))
	}
	for i, k := range keys {
		add(fmt.Sprintf("keys of %d", i), g.do("GET", "/user/api-keys", nil, bearer(k)))
		add(fmt.Sprintf("profile of %d", i), g.do("GET", "/user/profile", nil, bearer(k)))
		r := g.do("GET", "/user/monitor", nil, bearer(k))
		var m map[string]any
		_ = json.Unmarshal(r.Body, &m)
		js, _ := json.Marshal(m["usage_metrics"])
		fmt.Fprintf(&b, "usage of %d=%s\n", i, js)
	}
	return b.String()
}

// dropVolatile removes fields that change with the clock alone.
func dropVolatile(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range []string{"timestamp", "days_remaining", "message", "last_audit_check", "verified_at", "period", "last_used_at"} {
			delete(x, k)
		}
		for k, e := range x {
			x[k] = dropVolatile(e)
		}
	case []any:
		for i, e := range x {
			x[i] = dropVolatile(e)
		}
	}
	return v
}

func TestBadInputEveryEndpoint(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	keyA, userA := g.registerUser("alice@example.com")
	keyB, userB := g.registerUser("bob@example.com")
	_, keyA2 := g.createKey(keyA, map[string]any{"key_name": "second", "max_requests": 50})
	_, keyB2 := g.createKey(keyB, map[string]any{"key_name": "bobs"})
	plan := g.do("POST", "/admin/plans", map[string]any{"name": "basic", "daily_request_limit": 10, "monthly_request_limit": 100,
		"daily_token_limit": 1000, "monthly_token_limit": 10000, "price_per_month": 5}, adminAuth()).mustStatus(t, 200, "plan").json()
	planID := int64(plan["plan"].(map[string]any)["id"].(float64))
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(keyA)).mustStatus(t, 200, "chat")
	upstreamBefore := len(up.requests())

	users := []int64{userA, userB}
	keys := []string{keyA, keyB}

	A, admin := bearer(keyA), adminAuth()
	templates := []endpointTemplate{
		{"POST", "/auth/register", "", map[string]any{"username": "newbie", "email": "newbie@example.com",
			"auth_method": "email", "environment_tag": "live", "key_name": "Primary Key"}, []string{"username", "email"}},
		{"POST", "/auth/register", admin, map[string]any{"username": "newbie", "email": "newbie@example.com",
			"initial_credits": 10}, []string{"username", "email"}},
		{"POST", "/user/api-keys", A, map[string]any{"key_name": "k", "environment_tag": "live",
			"scope_permissions": map[string]any{"read": []any{"*"}}, "expiration_days": 30, "max_requests": 10,
			"ip_allowlist": []any{"10.0.0.1"}, "domain_referrers": []any{"example.com"}}, []string{"key_name"}},
		{"PUT", fmt.Sprintf("/user/api-keys/%d", keyA2), A, map[string]any{"key_name": "renamed", "max_requests": 5,
			"is_active": false, "expiration_days": 3, "ip_allowlist": []any{"10.0.0.2"}}, nil},
		{"DELETE", fmt.Sprintf("/user/api-keys/%d", keyA2), A, map[string]any{"confirmation": "DELETE_KEY"}, []string{"confirmation"}},
		{"PUT", "/user/profile", A, map[string]any{"username": "alice2", "name": "Alice", "email": "alice2@example.com",
			"preferences": map[string]any{"theme": "dark"}}, nil},
		{"DELETE", "/user/account", A, map[string]any{"confirmation": "DELETE_ACCOUNT"}, []string{"confirmation"}},
		{"POST", "/admin/add_credits", admin, map[string]any{"user_id": userA, "credits": 5}, []string{"credits"}},
		{"POST", "/admin/limit", admin, map[string]any{"user_id": userA,
			"rate_limits": map[string]any{"requests_per_minute": 5}}, []string{"user_id"}},
		{"POST", "/admin/assign-plan", admin, map[string]any{"user_id": userA, "plan_id": planID, "duration_months": 1},
			[]string{"user_id", "plan_id"}},
		{"POST", "/admin/plans", admin, map[string]any{"name": "p2", "daily_request_limit": 1, "monthly_request_limit": 2,
			"daily_token_limit": 3, "monthly_token_limit": 4, "price_per_month": 1.25, "features": []any{"x"}}, []string{"name"}},
		{"PUT", fmt.Sprintf("/admin/plans/%d", planID), admin, map[string]any{"name": "renamed", "daily_request_limit": 7}, nil},
	}

	var cases []badCase
	for _, tp := range templates {
		ep := tp.method + " " + tp.path
		for _, m := range malformedBodies {
			cases = append(cases, badCase{ep + " malformed " + fmt.Sprintf("%q", m), tp.method, tp.path, tp.auth, []byte(m), nil})
		}
		cases = append(cases, badCase{ep + " invalid UTF-8", tp.method, tp.path, tp.auth,
			[]byte("{\"key_name\":\"\xff\xfe\",\"username\":\"\xc3\x28\",\"name\":\"\xed\xa0\x80\"}"), nil})
		// Huge body: beyond any limit.
		huge := bytes.Repeat([]byte("a"), 5<<20)
		cases = append(cases, badCase{ep + " huge body", tp.method, tp.path, tp.auth,
			append(append([]byte(`{"key_name":"`), huge...), `"}`...), nil})
		fields := make([]string, 0, len(tp.body))
		for f := range tp.body {
			fields = append(fields, f)
		}
		sort.Strings(fields)
		for _, f := range fields {
			for _, wv := range wrongTypes(tp.body[f]) {
				b := clone(tp.body)
				b[f] = wv
				cases = append(cases, badCase{fmt.Sprintf("%s %s=%s", ep, f, mustJSONBytes(t, wv)), tp.method, tp.path, tp.auth, mustJSONBytes(t, b), nil})
			}
		}
		for _, f := range tp.required {
			b := clone(tp.body)
			delete(b, f)
			cases = append(cases, badCase{ep + " without " + f, tp.method, tp.path, tp.auth, mustJSONBytes(t, b), nil})
		}
		// Unknown extra field.
		b := clone(tp.body)
		b["is_admin"] = true
		cases = append(cases, badCase{ep + " unknown field", tp.method, tp.path, tp.auth, mustJSONBytes(t, b), nil})
		// Invalid keys of every shape on user routes; bad admin bearers on
		// admin routes.
		if tp.auth == A {
			for _, k := range invalidKeys(keyA) {
				cases = append(cases, badCase{ep + " key " + fmt.Sprintf("%.20q", k), tp.method, tp.path, "Authorization: " + k, mustJSONBytes(t, tp.body), nil})
			}
		}
		if tp.auth == admin && tp.path != "/auth/register" { // register is public
			for _, k := range []string{"", "Bearer", "Bearer ", "Basic " + testAdminKey, "Bearer " + testAdminKey + " ",
				"Bearer " + strings.ToUpper(testAdminKey), "Bearer " + keyA, testAdminKey} {
				if strings.TrimSpace(k) == "Bearer "+testAdminKey {
					continue
				}
				cases = append(cases, badCase{ep + " admin auth " + fmt.Sprintf("%.20q", k), tp.method, tp.path, "Authorization: " + k, mustJSONBytes(t, tp.body), nil})
			}
		}
	}

	// Negative, zero and out-of-range amounts.
	const maxInt, minInt = int64(1<<63 - 1), int64(-1 << 63)
	for _, v := range []any{0, -1, -1000000, minInt, maxInt, 1e19, 1.5} {
		vs := fmt.Sprint(v)
		cases = append(cases,
			badCase{"add_credits credits=" + vs, "POST", "/admin/add_credits", admin, mustJSONBytes(t, map[string]any{"user_id": userA, "credits": v}), nil},
			badCase{"create key expiration_days=" + vs, "POST", "/user/api-keys", A, mustJSONBytes(t, map[string]any{"key_name": "e" + vs, "expiration_days": v}), nil},
			badCase{"assign-plan duration_months=" + vs, "POST", "/admin/assign-plan", admin, mustJSONBytes(t, map[string]any{"user_id": userA, "plan_id": planID, "duration_months": v}), nil},
		)
	}
	for _, v := range []any{0, -1, minInt, 1e19, 1.5} {
		vs := fmt.Sprint(v)
		cases = append(cases,
			badCase{"create key max_requests=" + vs, "POST", "/user/api-keys", A, mustJSONBytes(t, map[string]any{"key_name": "n" + vs, "max_requests": v}), nil},
			badCase{"update key max_requests=" + vs, "PUT", fmt.Sprintf("/user/api-keys/%d", keyA2), A, mustJSONBytes(t, map[string]any{"max_requests": v}), nil},
		)
	}
	for _, v := range []any{-1, minInt, 1e19, 1.5} {
		vs := fmt.Sprint(v)
		cases = append(cases,
			badCase{"register initial_credits=" + vs, "POST", "/auth/register", admin, mustJSONBytes(t, map[string]any{"username": "neg", "email": "neg@example.com", "initial_credits": v}), nil},
			badCase{"limit requests_per_minute=" + vs, "POST", "/admin/limit", admin, mustJSONBytes(t, map[string]any{"user_id": userA, "rate_limits": map[string]any{"requests_per_minute": v}}), nil},
			badCase{"plan daily_request_limit=" + vs, "POST", "/admin/plans", admin, mustJSONBytes(t, map[string]any{"name": "neg" + vs, "daily_request_limit": v}), nil},
		)
	}
	for _, v := range []any{-1, -1e30} {
		cases = append(cases, badCase{"plan price_per_month=" + fmt.Sprint(v), "POST", "/admin/plans", admin, mustJSONBytes(t, map[string]any{"name": "price", "price_per_month": v}), nil})
	}
	// Bad values of the right type.
	for _, c := range []struct {
		name string
		body map[string]any
	}{
		{"environment_tag", map[string]any{"key_name": "x", "environment_tag": "prod"}},
		{"ip_allowlist", map[string]any{"key_name": "x", "ip_allowlist": []any{"10.0.0.300"}}},
		{"ip_allowlist cidr", map[string]any{"key_name": "x", "ip_allowlist": []any{"10.0.0.0/33"}}},
		{"ip_allowlist empty", map[string]any{"key_name": "x", "ip_allowlist": []any{""}}},
		{"domain_referrers", map[string]any{"key_name": "x", "domain_referrers": []any{"http://example.com/path"}}},
		{"domain_referrers wildcard", map[string]any{"key_name": "x", "domain_referrers": []any{"*"}}},
		{"expiration_date past", map[string]any{"key_name": "x", "expiration_date": "2001-01-01T00:00:00Z"}},
		{"expiration_date garbage", map[string]any{"key_name": "x", "expiration_date": "tomorrow"}},
		{"scope more than caller", map[string]any{"key_name": "x", "scope_permissions": map[string]any{"root": []any{"*"}}}},
		{"action", map[string]any{"key_name": "x", "action": "delete"}},
		{"duplicate name", map[string]any{"key_name": "second"}},
	} {
		cases = append(cases, badCase{"create key " + c.name, "POST", "/user/api-keys", A, mustJSONBytes(t, c.body), nil})
	}
	cases = append(cases,
		badCase{"register bad email", "POST", "/auth/register", "", mustJSONBytes(t, map[string]any{"username": "x", "email": "not-an-email"}), nil},
		badCase{"register duplicate email", "POST", "/auth/register", "", mustJSONBytes(t, map[string]any{"username": "x", "email": "alice@example.com"}), nil},
		badCase{"register duplicate email case", "POST", "/auth/register", "", mustJSONBytes(t, map[string]any{"username": "x", "email": "ALICE@example.com"}), nil},
		badCase{"register auth_method", "POST", "/auth/register", "", mustJSONBytes(t, map[string]any{"username": "x", "email": "x@example.com", "auth_method": "password"}), nil},
		badCase{"profile duplicate email", "PUT", "/user/profile", A, mustJSONBytes(t, map[string]any{"email": "bob@example.com"}), nil},
		badCase{"profile preferences not object", "PUT", "/user/profile", A, mustJSONBytes(t, map[string]any{"preferences": "dark"}), nil},
		badCase{"update key no fields", "PUT", fmt.Sprintf("/user/api-keys/%d", keyA2), A, []byte(`{}`), nil},
		badCase{"update key bad action", "PUT", fmt.Sprintf("/user/api-keys/%d", keyA2), A, []byte(`{"action":"explode"}`), nil},
		badCase{"delete key wrong confirmation", "DELETE", fmt.Sprintf("/user/api-keys/%d", keyA2), A, []byte(`{"confirmation":"DELETE"}`), nil},
		badCase{"delete account wrong confirmation", "DELETE", "/user/account", A, []byte(`{"confirmation":"DELETE_KEY"}`), nil},
		badCase{"add_credits both refs", "POST", "/admin/add_credits", admin, mustJSONBytes(t, map[string]any{"user_id": userA, "api_key": keyA, "credits": 5}), nil},
		badCase{"add_credits unknown user", "POST", "/admin/add_credits", admin, mustJSONBytes(t, map[string]any{"user_id": 999999, "credits": 5}), nil},
		badCase{"add_credits unknown key", "POST", "/admin/add_credits", admin, mustJSONBytes(t, map[string]any{"api_key": "gw_live_" + strings.Repeat("u", 43), "credits": 5}), nil},
		badCase{"add_credits user_id 0", "POST", "/admin/add_credits", admin, mustJSONBytes(t, map[string]any{"user_id": 0, "credits": 5}), nil},
		badCase{"assign unknown plan", "POST", "/admin/assign-plan", admin, mustJSONBytes(t, map[string]any{"user_id": userA, "plan_id": 999999}), nil},
		badCase{"assign unknown user", "POST", "/admin/assign-plan", admin, mustJSONBytes(t, map[string]any{"user_id": 999999, "plan_id": planID}), nil},
	)

	// Ids: non-numeric, out of range, and other users' (foreign).
	for _, id := range []string{"abc", "-1", "0", "1.5", "1e3", "0x10", "99999999999999999999", "%20", "1%00", "１", "999999"} {
		cases = append(cases,
			badCase{"update key id " + id, "PUT", "/user/api-keys/" + id, A, []byte(`{"key_name":"x"}`), nil},
			badCase{"delete key id " + id, "DELETE", "/user/api-keys/" + id, A, []byte(`{"confirmation":"DELETE_KEY"}`), nil},
			badCase{"admin user id " + id, "GET", "/admin/users/" + id, admin, nil, nil},
			badCase{"update plan id " + id, "PUT", "/admin/plans/" + id, admin, []byte(`{"name":"x"}`), nil},
			badCase{"deactivate plan id " + id, "DELETE", "/admin/plans/" + id, admin, nil, nil},
			badCase{"public plan id " + id, "GET", "/plans/" + id, "", nil, nil},
		)
	}
	for _, fid := range []int64{keyB2, keyB2 + 1000} {
		cases = append(cases,
			badCase{fmt.Sprintf("update foreign key %d", fid), "PUT", fmt.Sprintf("/user/api-keys/%d", fid), A, []byte(`{"key_name":"stolen"}`), nil},
			badCase{fmt.Sprintf("rotate foreign key %d", fid), "PUT", fmt.Sprintf("/user/api-keys/%d", fid), A, []byte(`{"action":"rotate"}`), nil},
			badCase{fmt.Sprintf("delete foreign key %d", fid), "DELETE", fmt.Sprintf("/user/api-keys/%d", fid), A, []byte(`{"confirmation":"DELETE_KEY"}`), nil},
		)
	}
	// Query parameters.
	for _, q := range []string{"limit=abc", "limit=-1", "offset=-5", "offset=x", "start_date=yesterday", "end_date=2024-13-45", "key_id=abc", "key_id=-1"} {
		cases = append(cases,
			badCase{"user audit " + q, "GET", "/user/api-keys/audit-logs?" + q, A, nil, nil},
			badCase{"admin audit " + q, "GET", "/admin/audit-logs?" + q, admin, nil, nil},
		)
	}
	for _, q := range []string{"limit=abc", "offset=-1", "limit=0"} {
		cases = append(cases, badCase{"admin balance " + q, "GET", "/admin/balance?" + q, admin, nil, nil})
	}
	for _, q := range []string{"days=abc", "days=-1", "days=0"} {
		cases = append(cases, badCase{"monitor " + q, "GET", "/user/monitor?" + q, A, nil, nil})
	}
	// Huge headers: a 200 KiB Authorization and many headers. (Past Go's
	// 1 MB header limit the server answers 431 before any handler runs.)
	bigHdr := "Authorization: Bearer gw_live_" + strings.Repeat("A", 200<<10)
	cases = append(cases,
		badCase{"huge authorization on a user route", "GET", "/user/balance", bigHdr, nil, nil},
		badCase{"huge authorization on an admin route", "GET", "/admin/balance", "Authorization: Bearer " + strings.Repeat("A", 200<<10), nil, nil},
		badCase{"huge authorization on /v1", "POST", "/v1/chat/completions", bigHdr, mustJSONBytes(t, chatBody("gpt-4o-mini")), nil},
		badCase{"huge unrelated header", "POST", "/user/api-keys", A, []byte(`{"key_name":"x","max_requests":-1}`), []string{"X-Filler: " + strings.Repeat("f", 500<<10)}},
		badCase{"header beyond the server limit", "GET", "/user/balance", A, nil, []string{"X-Filler: " + strings.Repeat("f", 2<<20)}},
	)

	// Inference: bad bodies never reach the upstream.
	chatOK := chatBody("gpt-4o-mini")
	for _, m := range malformedBodies {
		cases = append(cases, badCase{"chat malformed " + fmt.Sprintf("%q", m), "POST", "/v1/chat/completions", A, []byte(m), nil})
	}
	for f, wvs := range map[string][]any{
		"model":      {123, nil, "", []any{"m"}},
		"messages":   {"hello", 1, map[string]any{}, nil},
		"max_tokens": {"16", -1, 1.5, 1e30, true},
		"stream":     {"yes", 1},
		"n":          {-1, "2", 1.5},
	} {
		for _, wv := range wvs {
			b := clone(chatOK)
			b[f] = wv
			cases = append(cases, badCase{fmt.Sprintf("chat %s=%s", f, mustJSONBytes(t, wv)), "POST", "/v1/chat/completions", A, mustJSONBytes(t, b), nil})
		}
	}
	cases = append(cases, badCase{"chat huge body", "POST", "/v1/chat/completions", A,
		mustJSONBytes(t, map[string]any{"model": "m", "messages": []any{map[string]any{"role": "user", "content": strings.Repeat("x", 5<<20)}}}), nil})
	for _, k := range invalidKeys(keyA) {
		cases = append(cases, badCase{"chat key " + fmt.Sprintf("%.20q", k), "POST", "/v1/chat/completions", "Authorization: " + k, mustJSONBytes(t, chatOK), nil})
		if !strings.ContainsAny(k, "\r\n") && strings.HasPrefix(k, "Bearer ") {
			cases = append(cases, badCase{"chat x-api-key " + fmt.Sprintf("%.20q", k), "POST", "/v1/chat/completions", "", mustJSONBytes(t, chatOK), []string{"X-Api-Key: " + strings.TrimPrefix(k, "Bearer ")}})
		}
	}

	runBadCases(t, g, cases, users, keys)
	if n := len(up.requests()); n != upstreamBefore {
		t.Errorf("%d bad requests reached the upstream", n-upstreamBefore)
	}
	// Still serving, and the valid versions still work.
	g.do("GET", "/health", nil).mustStatus(t, 200, "health")
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(keyA)).mustStatus(t, 200, "chat at the end")
	g.do("POST", "/user/api-keys", map[string]any{"key_name": "clé ключ 鍵 🔑"}, bearer(keyA)).mustStatus(t, 200, "unicode key name")
	list := g.do("GET", "/user/api-keys", nil, bearer(keyA)).mustStatus(t, 200, "list")
	if !strings.Contains(string(list.Body), "clé ключ 鍵 🔑") {
		t.Errorf("a unicode key name did not round-trip: %s", list.Body)
	}
}

// runBadCases sends each case and checks that it got a 4xx JSON error and
// changed nothing the API shows for users and keys.
func runBadCases(t *testing.T, g *gateway, cases []badCase, users []int64, keys []string) {
	t.Helper()
	before := fingerprint(t, g, users, keys)
	t.Logf("%d bad requests", len(cases))
	for _, c := range cases {
		r := sendBad(t, g, c)
		what := fmt.Sprintf("%s %s [%s]", c.method, c.path, c.name)
		switch {
		case r.Status == 0:
			t.Errorf("%s: connection failed", what)
			continue
		case r.Status < 400 || r.Status >= 500:
			t.Errorf("%s: status %d, want 4xx: %.300s", what, r.Status, r.Body)
		case r.Status == http.StatusRequestHeaderFieldsTooLarge:
			// Go's server refuses before Caddy runs: plain text by design.
		default:
			var body map[string]any
			if err := json.Unmarshal(r.Body, &body); err != nil || (body["detail"] == nil && body["error"] == nil) {
				t.Errorf("%s: status %d without a JSON error body: %.300s", what, r.Status, r.Body)
			}
			if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("%s: Content-Type %q", what, ct)
			}
		}
		if t.Failed() && len(r.Body) > 0 && bytes.Contains(r.Body, []byte("goroutine ")) {
			t.Fatalf("%s: stack trace in the body", what)
		}
		if os.Getenv("BADINPUT_TRACE") != "" { // which case preceded a failure

			t.Logf("case %s -> %d", what, r.Status)
		}
		if after := fingerprint(t, g, users, keys); after != before {
			t.Errorf("%s changed the store: %s", what, firstDiff(before, after))
			before = after // report each change once
		}
	}
}

// invalidKeys are Authorization values that must not authenticate.
func invalidKeys(valid string) []string {
	secret := strings.TrimPrefix(valid, "gw_live_")
	return []string{
		"", "Bearer", "Bearer ", "Bearer  ", "bearer", "Basic " + valid, "Token " + valid, valid,
		"Bearer " + valid[:len(valid)-1], "Bearer " + valid + "x", "Bearer " + strings.ToUpper(valid),
		"Bearer gw_test_" + secret, "Bearer gw_prod_" + secret, "Bearer gw_live_", "Bearer gw_",
		"Bearer sk-" + secret, "Bearer " + strings.Repeat("A", 51), "Bearer gw_live_" + strings.Repeat("!", 43),
		"Bearer gw_live_" + secret + "\x00", "Bearer gw_live_" + secret[:20] + "é" + secret[22:],
		"Bearer " + valid + "," + valid, "Bearer null", "Bearer undefined", "Bearer {}", "Bearer ' OR 1=1 --",
	}
}

// sendBad sends a bad case with the test client; a transport error is
// status 0.
func sendBad(t *testing.T, g *gateway, c badCase) response {
	t.Helper()
	var rd *bytes.Reader
	if c.body != nil {
		rd = bytes.NewReader(c.body)
	}
	var req *http.Request
	var err error
	if rd != nil {
		req, err = http.NewRequest(c.method, gatewayBase+c.path, rd)
	} else {
		req, err = http.NewRequest(c.method, gatewayBase+c.path, nil)
	}
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	if c.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hdrs := append([]string(nil), c.headers...)
	if c.auth != "" {
		hdrs = append(hdrs, c.auth)
	}
	for _, h := range hdrs {
		name, value, _ := strings.Cut(h, ":")
		req.Header[http.CanonicalHeaderKey(name)] = append(req.Header[http.CanonicalHeaderKey(name)], strings.TrimPrefix(value, " "))
	}
	// Beyond the server's 1 MB header limit, Go's server answers 431 and
	// closes the connection, possibly while the client is still writing:
	// such a request gets a connection of its own, and a reset is fine.
	size := len(c.auth)
	for _, h := range c.headers {
		size += len(h)
	}
	oversized := size > 1<<20
	client := g.tester.Client
	if oversized {
		client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	}
	resp, err := client.Do(req)
	if err != nil && oversized {
		return response{Status: http.StatusRequestHeaderFieldsTooLarge}
	}
	if err != nil {
		// Invalid header bytes are refused by the client itself: nothing
		// was sent, so there is nothing to check.
		if strings.Contains(err.Error(), "invalid header") {
			return response{Status: 400, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"detail":"not sent"}`)}
		}
		t.Logf("%s: %v", c.name, err)
		return response{}
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b.Bytes()}
}

// firstDiff returns after from the first line that differs from before.
func firstDiff(before, after string) string {
	bl, al := strings.Split(before, "\n"), strings.Split(after, "\n")
	for i := range al {
		if i >= len(bl) || bl[i] != al[i] {
			return strings.Join(al[i:min(i+2, len(al))], "\n")
		}
	}
	return after
}
