package integration

import "testing"

// An IPv6 literal accepted in domain_referrers must match an Origin with
// that host: the API accepts "::1", the gateway normalizes it to ":" (it
// strips what it takes for a port), so the key can never be used.
func TestReferrerIPv6Literal(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	owner, _ := g.registerUser("v6@example.com")
	key, _ := g.createKey(owner, map[string]any{"key_name": "v6", "domain_referrers": []string{"::1"}})
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key), "Origin: http://[::1]:8080").
		mustStatus(t, 200, "Origin on the allowed IPv6 host")
}
