package integration

import (
	"fmt"
	"strings"
	"testing"
)

// The management routes enforce a key's ip_allowlist and domain_referrers
// as the gateway does: a restricted key used from elsewhere can neither
// manage keys nor read the account, and the refusal is audited.
func TestAPINetworkRestrictions(t *testing.T) {
	e := startAPI(t, apiOptions{})
	primary, uid := e.register("netrestrict@example.com")
	ipKey, ipKeyID := e.createKey(primary, map[string]any{"key_name": "office", "ip_allowlist": []string{"10.0.0.1"}})
	refKey, refKeyID := e.createKey(primary, map[string]any{"key_name": "web", "domain_referrers": []string{"app.example.com"}})
	localKey, _ := e.createKey(primary, map[string]any{"key_name": "local", "ip_allowlist": []string{"127.0.0.1", "::1"}})

	// From 127.0.0.1, the key allowed only from 10.0.0.1 is refused on
	// every user route, reads and changes alike.
	const ipDetail = "IP address not allowed for this API key"
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/user/api-keys", nil},
		{"GET", "/user/profile", nil},
		{"GET", "/user/balance", nil},
		{"PUT", fmt.Sprintf("/user/api-keys/%d", ipKeyID), map[string]any{"action": "rotate"}},
		{"PUT", fmt.Sprintf("/user/api-keys/%d", refKeyID), map[string]any{"key_name": "hijacked"}},
		{"DELETE", fmt.Sprintf("/user/api-keys/%d", refKeyID), nil},
		{"DELETE", "/user/account", nil},
	} {
		out := e.expect(403, c.method, c.path, ipKey, c.body, ipDetail)
		if out.str("detail") != ipDetail || out.str("code") != "ip_not_allowed" {
			t.Fatalf("%s %s: body %v", c.method, c.path, out)
		}
	}

	// The referrer-restricted key: no Origin or Referer, or a foreign one,
	// is refused; its own domain is let through.
	const domainDetail = "Domain not allowed for this API key"
	out := e.expect(403, "GET", "/user/api-keys", refKey, nil, domainDetail)
	if out.str("detail") != domainDetail || out.str("code") != "domain_not_allowed" {
		t.Fatalf("no Origin: body %v", out)
	}
	if code, out := e.call("GET", "/user/api-keys", refKey, nil, "Origin", "https://evil.example.com"); code != 403 || out.str("detail") != domainDetail {
		t.Fatalf("foreign Origin: %d %v", code, out)
	}
	if code, out := e.call("GET", "/user/api-keys", refKey, nil, "Origin", "https://app.example.com"); code != 200 {
		t.Fatalf("allowed Origin: %d %v", code, out)
	}
	if code, out := e.call("GET", "/user/profile", refKey, nil, "Referer", "https://app.example.com/settings"); code != 200 {
		t.Fatalf("allowed Referer: %d %v", code, out)
	}

	// Allowed IP, and the unrestricted key.
	e.expect(200, "GET", "/user/api-keys", localKey, nil)
	e.expect(200, "GET", "/user/profile", localKey, nil)

	// Nothing was changed by the refused calls.
	keys := e.expect(200, "GET", "/user/api-keys", primary, nil)
	names := map[string]bool{}
	for _, k := range keys.list("keys") {
		names[k.str("key_name")] = true
	}
	for _, n := range []string{"office", "web", "local"} {
		if !names[n] {
			t.Fatalf("key %q missing after refused calls: %v", n, keys)
		}
	}
	if names["hijacked"] {
		t.Fatal("a refused rename was applied")
	}

	// The refusals are audited as the gateway's are, without the key.
	for _, action := range []string{"security.ip_denied", "security.referrer_denied"} {
		path := fmt.Sprintf("/admin/audit-logs?action=%s&user_id=%d", action, uid)
		eventually(t, action+" audit entry", func() bool {
			return e.expect(200, "GET", path, apiAdminKey, nil).int("total_logs") > 0
		})
		_, _, body := e.raw("GET", path, apiAdminKey, nil)
		if strings.Contains(string(body), ipKey) || strings.Contains(string(body), refKey) {
			t.Fatalf("%s audit entries hold a full key", action)
		}
	}
}
