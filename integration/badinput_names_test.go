package integration

import (
	"fmt"
	"strings"
	"testing"
)

// controlNames are names with control or invisible formatting characters,
// blank, or too long: every name field must refuse them (422) and store
// nothing.
var controlNames = []string{
	"a\x00b", "line\nbreak", "tab\there", "bell\x07", "esc\x1b[31mred", "del\x7f", "c1\u0085x",
	"rtl\u202eevil", "zero\u200bwidth", "bom\ufeffx", "   ", "",
	strings.Repeat("n", 101), strings.Repeat("é", 101),
}

func TestBadInputControlCharactersInNames(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	keyA, userA := g.registerUser("alice@example.com")
	_, keyA2 := g.createKey(keyA, map[string]any{"key_name": "second"})
	plan := g.do("POST", "/admin/plans", map[string]any{"name": "basic"}, adminAuth()).mustStatus(t, 200, "plan").json()
	planID := int64(plan["plan"].(map[string]any)["id"].(float64))
	A, admin := bearer(keyA), adminAuth()
	var cases []badCase
	for i, n := range controlNames {
		q := fmt.Sprintf("%.24q", n)
		email := fmt.Sprintf("ctl%d@example.com", i)
		cases = append(cases,
			badCase{"register username " + q, "POST", "/auth/register", "", mustJSONBytes(t, map[string]any{"username": n, "email": email}), nil},
			badCase{"register key_name " + q, "POST", "/auth/register", "", mustJSONBytes(t, map[string]any{"username": "ctl", "email": "k" + email, "key_name": n}), nil},
			badCase{"create key_name " + q, "POST", "/user/api-keys", A, mustJSONBytes(t, map[string]any{"key_name": n}), nil},
			badCase{"rename key " + q, "PUT", fmt.Sprintf("/user/api-keys/%d", keyA2), A, mustJSONBytes(t, map[string]any{"key_name": n}), nil},
			badCase{"profile username " + q, "PUT", "/user/profile", A, mustJSONBytes(t, map[string]any{"username": n}), nil},
			badCase{"plan name " + q, "POST", "/admin/plans", admin, mustJSONBytes(t, map[string]any{"name": n}), nil},
			badCase{"rename plan " + q, "PUT", fmt.Sprintf("/admin/plans/%d", planID), admin, mustJSONBytes(t, map[string]any{"name": n}), nil},
		)
		// The display name may be cleared or long, but not hold controls.
		if strings.TrimSpace(n) != "" && len([]rune(n)) <= 100 {
			cases = append(cases, badCase{"profile name " + q, "PUT", "/user/profile", A, mustJSONBytes(t, map[string]any{"name": n}), nil})
		}
	}
	runBadCases(t, g, cases, []int64{userA}, []string{keyA})
}
