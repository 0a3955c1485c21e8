package integration

// Integration tests of the gateway's access side (issue #4) through a real
// Caddy: key extraction, the in-memory key index following the management
// API, access rules, plans, rate limits across a reload, log hygiene and
// security audit events.

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitFor polls check until it holds (for things written asynchronously:
// access-log lines, audit entries); it fails the test after about 5s.
func waitFor(t *testing.T, what string, check func() bool) {
	t.Helper()
	for range 200 {
		if check() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s never happened", what)
}

func wantRefusal(t *testing.T, r response, status int, code, msgPart, what string) {
	t.Helper()
	r.mustStatus(t, status, what)
	if r.errorCode() != code || !strings.Contains(r.errorMessage(), msgPart) {
		t.Fatalf("%s: error %s, want code %q with %q", what, r.Body, code, msgPart)
	}
	if status == 401 && !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("%s: 401 without WWW-Authenticate: Bearer", what)
	}
}

func TestAccessKeyExtractionAndUpstreamHeaders(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("extract@example.com")

	wantRefusal(t, g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini")), 401, "missing_api_key", "Missing API key", "no key")
	wantRefusal(t, g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer("sk-not-a-gateway-key")), 401, "invalid_api_key", "Invalid API key", "malformed key")
	wantRefusal(t, g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer("gw_live_"+strings.Repeat("x", 43))), 401, "invalid_api_key", "Invalid API key", "unknown key")
	if n := len(up.requests()); n != 0 {
		t.Fatalf("refused requests reached the upstream: %d", n)
	}

	r := g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)).mustStatus(t, 200, "bearer")
	for _, h := range []string{"X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests",
		"X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"} {
		if len(r.Header.Values(h)) != 1 {
			t.Errorf("response has not exactly one %s: %v", h, r.Header)
		}
	}
	if r.Header.Get("X-Ratelimit-Limit-Requests") == "999999" {
		t.Error("the upstream's rate-limit header replaced the gateway's")
	}
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), "X-Api-Key: "+key).mustStatus(t, 200, "x-api-key")
	g.do("GET", "/v1/models", nil, "x-api-key: "+key).mustStatus(t, 200, "models")
	wantRefusal(t, g.do("GET", "/v1/files", nil, bearer(key)), 404, "unknown_url", "/v1/files", "unlisted path")

	seen := up.requests()
	if len(seen) != 3 {
		t.Fatalf("upstream saw %d requests, want 3", len(seen))
	}
	for _, s := range seen {
		if got := s.Header.Get("Authorization"); got != "Bearer "+upstreamKey {
			t.Errorf("%s %s: upstream Authorization %q, want the operator's key", s.Method, s.Path, got)
		}
		if s.Header.Get("X-Api-Key") != "" {
			t.Errorf("%s %s: x-api-key reached the upstream", s.Method, s.Path)
		}
		for name, vals := range s.Header {
			if strings.Contains(strings.Join(vals, " "), key[8:]) {
				t.Errorf("the client's key reached the upstream in %s", name)
			}
		}
	}
}

func TestAccessKeyChangesTakeEffectAtOnce(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	owner, _ := g.registerUser("lifecycle@example.com")
	key, id := g.createKey(owner, map[string]any{"key_name": "worker"})
	models := func(k string) response { return g.do("GET", "/v1/models", nil, bearer(k)) }

	models(key).mustStatus(t, 200, "new key")
	g.updateKey(owner, id, map[string]any{"is_active": false})
	wantRefusal(t, models(key), 401, "inactive_api_key", "API key is inactive", "deactivated")
	g.updateKey(owner, id, map[string]any{"is_active": true})
	models(key).mustStatus(t, 200, "reactivated")

	rotated := g.updateKey(owner, id, map[string]any{"action": "rotate"})
	newKey, _ := rotated["api_key"].(string)
	wantRefusal(t, models(key), 401, "invalid_api_key", "Invalid API key", "old secret after rotation")
	models(newKey).mustStatus(t, 200, "rotated key")

	g.do("DELETE", fmt.Sprintf("/user/api-keys/%d", id), map[string]any{"confirmation": "DELETE_KEY"}, bearer(owner)).mustStatus(t, 200, "delete")
	wantRefusal(t, models(newKey), 401, "invalid_api_key", "Invalid API key", "deleted key")

	// Expiry: a key expiring in a moment works, then says it expired.
	expAt := time.Now().Add(1500 * time.Millisecond)
	short, _ := g.createKey(owner, map[string]any{"key_name": "short", "expiration_date": expAt.UTC().Format(time.RFC3339Nano)})
	models(short).mustStatus(t, 200, "before expiry")
	time.Sleep(time.Until(expAt) + 100*time.Millisecond)
	wantRefusal(t, models(short), 401, "expired_api_key", "API key has expired", "after expiry")

	// max_requests counts metered requests.
	capped, _ := g.createKey(owner, map[string]any{"key_name": "capped", "max_requests": 1})
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(capped)).mustStatus(t, 200, "first capped request")
	wantRefusal(t, g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(capped)), 429, "request_limit_reached", "API key request limit reached", "over max_requests")
}

func TestAccessIPAllowlist(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	owner, _ := g.registerUser("ip@example.com")
	private, _ := g.createKey(owner, map[string]any{"key_name": "private", "ip_allowlist": []string{"10.0.0.0/8"}})
	local, _ := g.createKey(owner, map[string]any{"key_name": "local", "ip_allowlist": []string{"203.0.113.9", "127.0.0.0/8"}})
	v6, _ := g.createKey(owner, map[string]any{"key_name": "v6", "ip_allowlist": []string{"::1"}})

	wantRefusal(t, g.do("GET", "/v1/models", nil, bearer(private)), 403, "ip_not_allowed", "IP address not allowed", "outside the CIDR")
	// No trusted proxies: a spoofed X-Forwarded-For changes nothing.
	wantRefusal(t, g.do("GET", "/v1/models", nil, bearer(private), "X-Forwarded-For: 10.1.2.3"), 403, "ip_not_allowed", "", "spoofed XFF")
	g.do("GET", "/v1/models", nil, bearer(local)).mustStatus(t, 200, "inside the CIDR")
	wantRefusal(t, g.do("GET", "/v1/models", nil, bearer(v6)), 403, "ip_not_allowed", "", "v4 client, v6 allowlist")
	doRequest(t, &http.Client{}, "GET", "http://[::1]:9080/v1/models", nil, bearer(v6), "Host: localhost:9080").mustStatus(t, 200, "v6 client")
	wantRefusal(t, doRequest(t, &http.Client{}, "GET", "http://[::1]:9080/v1/models", nil, bearer(local), "Host: localhost:9080"), 403, "ip_not_allowed", "", "v6 client, v4 allowlist")

	// Behind a trusted proxy, Caddy's client IP comes from X-Forwarded-For.
	g.reload(gatewayConfig{DBPath: g.DBPath, Upstream: up.hostPort(), ServerBlock: "servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}"})
	g.do("GET", "/v1/models", nil, bearer(private), "X-Forwarded-For: 10.1.2.3").mustStatus(t, 200, "XFF from a trusted proxy")
	wantRefusal(t, g.do("GET", "/v1/models", nil, bearer(private), "X-Forwarded-For: 192.0.2.1"), 403, "ip_not_allowed", "", "trusted XFF outside")
}

func TestAccessReferrerAndScope(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	owner, _ := g.registerUser("ref@example.com")
	web, _ := g.createKey(owner, map[string]any{"key_name": "web", "domain_referrers": []string{"*.example.com", "example.org"}})

	wantRefusal(t, g.do("GET", "/v1/models", nil, bearer(web)), 403, "domain_not_allowed", "Domain not allowed", "no Origin or Referer")
	wantRefusal(t, g.do("GET", "/v1/models", nil, bearer(web), "Referer: https://evil.net/?app.example.com"), 403, "domain_not_allowed", "", "substring in the query")
	wantRefusal(t, g.do("GET", "/v1/models", nil, bearer(web), "Origin: https://example.com"), 403, "domain_not_allowed", "", "apex against a wildcard")
	wantRefusal(t, g.do("GET", "/v1/models", nil, bearer(web), "Origin: https://evil.net", "Referer: https://app.example.com/"), 403, "domain_not_allowed", "", "Origin wins over Referer")
	g.do("GET", "/v1/models", nil, bearer(web), "Origin: https://app.example.com").mustStatus(t, 200, "wildcard Origin")
	g.do("GET", "/v1/models", nil, bearer(web), "Referer: https://example.org/page").mustStatus(t, 200, "exact Referer")

	readOnly, _ := g.createKey(owner, map[string]any{"key_name": "ro", "scope_permissions": map[string]any{"read": []string{"*"}}})
	wantRefusal(t, g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(readOnly)), 403, "insufficient_permissions", "write permission on chat", "read-only key")
	chatOnly, _ := g.createKey(owner, map[string]any{"key_name": "chat", "scope_permissions": map[string]any{"write": []string{"chat"}}})
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(chatOnly)).mustStatus(t, 200, "write/chat key")
}

func TestAccessPlanEntitlements(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, uid := g.registerUser("plan@example.com")
	testKey, _ := g.createKey(key, map[string]any{"key_name": "t", "environment_tag": "test"})

	// Trial: 10,000 tokens a day, half for a test key.
	if got := g.do("GET", "/v1/models", nil, bearer(testKey)).mustStatus(t, 200, "trial").Header.Get("X-Ratelimit-Limit-Tokens"); got != "5000" {
		t.Errorf("test key token limit %q, want 5000", got)
	}

	plan := g.do("POST", "/admin/plans", map[string]any{"name": "Small", "daily_request_limit": 2, "monthly_request_limit": 100,
		"daily_token_limit": 100000, "monthly_token_limit": 1000000, "models": []string{"gpt-4o*"}}, adminAuth()).
		mustStatus(t, 200, "create plan").json()
	planID := plan["plan"].(map[string]any)["id"]
	g.do("POST", "/admin/assign-plan", map[string]any{"user_id": uid, "plan_id": planID, "duration_months": 1}, adminAuth()).mustStatus(t, 200, "assign plan")

	wantRefusal(t, g.do("POST", "/v1/chat/completions", chatBody("llama-3"), bearer(key)), 403, "model_not_allowed", `"llama-3" is not available on your plan (Small)`, "model outside the plan")
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)).mustStatus(t, 200, "plan request 1")
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o"), bearer(key)).mustStatus(t, 200, "plan request 2")
	r := g.do("POST", "/v1/chat/completions", chatBody("gpt-4o"), bearer(key))
	wantRefusal(t, r, 429, "plan_limit_exceeded", "Plan limit exceeded: Daily request limit exceeded (2) for live environment", "over the plan's daily requests")
	if r.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// A test key of the same user gets half (1), already used up.
	wantRefusal(t, g.do("POST", "/v1/chat/completions", chatBody("gpt-4o"), bearer(testKey)), 429, "plan_limit_exceeded", "(1) for test environment", "test key")
	g.do("GET", "/v1/models", nil, bearer(key)).mustStatus(t, 200, "free route past the plan limit")
}

func TestAccessRateLimitsSurviveReload(t *testing.T) {
	up := startFakeOpenAI(t)
	site := "limits {\n\t\t\t\trequests_per_day 3\n\t\t\t}"
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), GatewayBlock: site})
	key, uid := g.registerUser("limits@example.com")

	for i := range 2 {
		r := g.do("GET", "/v1/models", nil, bearer(key)).mustStatus(t, 200, "within the limit")
		if got, want := r.Header.Get("X-Ratelimit-Remaining-Requests"), fmt.Sprint(2-i); got != want {
			t.Errorf("remaining after %d: %q, want %q", i+1, got, want)
		}
	}
	// A reload (another config on the same database) keeps the counters.
	g.reload(gatewayConfig{DBPath: g.DBPath, Upstream: up.hostPort(), GatewayBlock: site, AppOptions: "signup_credits 10"})
	g.do("GET", "/v1/models", nil, bearer(key)).mustStatus(t, 200, "third request after the reload")
	r := g.do("GET", "/v1/models", nil, bearer(key))
	wantRefusal(t, r, 429, "rate_limit_exceeded", "Day request limit exceeded (3)", "fourth request")
	if r.Header.Get("Retry-After") == "" || r.Header.Get("X-Ratelimit-Remaining-Requests") != "0" {
		t.Errorf("429 headers: %v", r.Header)
	}
	// An admin limit for the user wins over the site's, at once.
	g.do("POST", "/admin/limit", map[string]any{"user_id": uid, "rate_limits": map[string]any{"requests_per_day": 10}}, adminAuth()).mustStatus(t, 200, "admin limit")
	g.do("GET", "/v1/models", nil, bearer(key)).mustStatus(t, 200, "after the admin limit")
}

// accessLogFilter is the site `log` block operators need: Caddy's access
// log copies the request headers before any handler runs (so removing
// x-api-key in the gateway cannot hide it) and redacts only Authorization,
// Cookie and Proxy-Authorization by itself; the filter encoder drops
// x-api-key.
const accessLogFilter = `log {
		output file %s
		format filter {
			wrap json
			fields {
				request>headers>X-Api-Key delete
			}
		}
	}`

func TestAccessKeysNeverLogged(t *testing.T) {
	up := startFakeOpenAI(t)
	logFile := filepath.Join(t.TempDir(), "access.log")
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), SiteOptions: fmt.Sprintf(accessLogFilter, logFile)})
	key, uid := g.registerUser("logs@example.com")
	g.do("GET", "/v1/models", nil, "X-Api-Key: "+key).mustStatus(t, 200, "x-api-key")
	g.do("GET", "/v1/models", nil, bearer(key)).mustStatus(t, 200, "bearer")
	g.do("GET", "/v1/models", nil, "X-Api-Key: gw_live_"+strings.Repeat("u", 43)).mustStatus(t, 401, "unknown")

	var logs string
	waitFor(t, "three gateway access-log lines", func() bool {
		b, _ := os.ReadFile(logFile)
		logs = string(b)
		return strings.Count(logs, `"uri":"/v1/models"`) == 3
	})
	if strings.Contains(logs, key[8:]) || strings.Contains(logs, strings.Repeat("u", 43)) {
		t.Fatalf("a key was logged:\n%s", logs)
	}
	for _, want := range []string{fmt.Sprintf(`"gatewayz_user_id":"%d"`, uid), `"gatewayz_key_id":"`, `"gatewayz_env":"live"`, fmt.Sprintf(`"user_id":"%d"`, uid)} {
		if !strings.Contains(logs, want) {
			t.Errorf("access log lacks %s:\n%s", want, logs)
		}
	}
}

func TestAccessSecurityAudit(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: "security_audit_per_minute 2"})
	owner, _ := g.registerUser("audit@example.com")
	private, id := g.createKey(owner, map[string]any{"key_name": "private", "ip_allowlist": []string{"10.0.0.1"}})
	unknown := "gw_live_" + strings.Repeat("Z", 43)
	for range 5 {
		g.do("GET", "/v1/models", nil, bearer(private)).mustStatus(t, 403, "denied IP")
		g.do("GET", "/v1/models", nil, bearer(unknown)).mustStatus(t, 401, "unknown key")
	}
	count := func(action string) ([]any, string) {
		r := g.do("GET", "/admin/audit-logs?action="+action, nil, adminAuth()).mustStatus(t, 200, "audit logs")
		logs, _ := r.json()["logs"].([]any)
		return logs, string(r.Body)
	}
	waitFor(t, "security audit entries", func() bool {
		ip, _ := count("security.ip_denied")
		unk, _ := count("security.unknown_key")
		return len(ip) == 2 && len(unk) == 2
	})
	// Rate-limited: still two of each after more refusals were written.
	ip, raw := count("security.ip_denied")
	unk, rawUnknown := count("security.unknown_key")
	if len(ip) != 2 || len(unk) != 2 {
		t.Fatalf("audit entries: %d ip_denied, %d unknown_key; want 2 each", len(ip), len(unk))
	}
	if !strings.Contains(raw, fmt.Sprintf(`"api_key_id":%d`, id)) || !strings.Contains(raw, "127.0.0.1") {
		t.Errorf("ip_denied entries lack the key id or IP: %s", raw)
	}
	if !strings.Contains(rawUnknown, "gw_live_ZZZZ…") {
		t.Errorf("unknown_key entries lack the masked prefix: %s", rawUnknown)
	}
	if strings.Contains(raw+rawUnknown, private[8:]) || strings.Contains(rawUnknown, strings.Repeat("Z", 43)) {
		t.Fatal("an audit entry contains a key")
	}
}
