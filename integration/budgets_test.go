package integration

// Integration tests of spend budgets (issue #21) through a real Caddy: a
// key's (and a user's) budget is enforced in the reservation itself, so
// concurrent requests never spend past it; its window resets on the
// gateway's clock; bad input on every budget field is a 422.

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
)

// keyView returns the key id as GET /user/api-keys shows it to owner.
func (g *gateway) keyView(owner string, id int64) map[string]any {
	g.t.Helper()
	out := g.do("GET", "/user/api-keys", nil, bearer(owner)).mustStatus(g.t, 200, "list keys").json()
	keys, _ := out["keys"].([]any)
	for _, k := range keys {
		if m, _ := k.(map[string]any); m["id"] == float64(id) {
			return m
		}
	}
	g.t.Fatalf("key %d not listed: %v", id, out)
	return nil
}

// TestKeyBudgetUnderConcurrency: a key with spend_limit 100 hit by 40
// concurrent requests spends at most 100; those that do not fit get 402
// key_budget_exceeded (never a credit refusal: the balance is ample), and
// the key's view adds up.
func TestKeyBudgetUnderConcurrency(t *testing.T) {
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), GatewayBlock: "credit_wait 2s"})
	owner, _ := g.registerUser("budget@example.com")
	key, id := g.createKey(owner, map[string]any{"key_name": "budgeted", "spend_limit": 100, "spend_limit_reset": "monthly"})
	got := burst(t, g, 40, uncappedChat("t30", false), key)
	if len(got[200]) == 0 || len(got[402]) == 0 || len(got[200])+len(got[402]) != 40 {
		t.Fatalf("statuses %v", got)
	}
	for _, body := range got[402] {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal([]byte(body), &e) != nil || e.Error.Code != "key_budget_exceeded" || !strings.Contains(e.Error.Message, "resets at") {
			t.Fatalf("402 body %s", body)
		}
	}
	left := wantBilled(t, g, owner, 1000, len(got[200]))
	spent := 1000 - left
	if spent > 100 || spent == 0 {
		t.Fatalf("the key spent %d of its budget of 100", spent)
	}
	v := g.keyView(owner, id)
	if v["spend_limit"] != float64(100) || v["spend_limit_reset"] != "monthly" || v["spend_used"] != float64(spent) ||
		v["spend_remaining"] != float64(100-spent) || v["spend_resets_at"] == nil {
		t.Fatalf("key view %v, spent %d", v, spent)
	}
	// Once nothing fits, every request is refused at once, before the
	// upstream; other keys of the user are not affected.
	for 100-spent >= 1 {
		r := g.do("POST", "/v1/chat/completions", uncappedChat("t30", false), bearer(key))
		if r.Status == 402 {
			break
		}
		r.mustStatus(t, 200, "a request the budget still fits")
		spent = 1000 - settledBalance(t, g, owner)
	}
	n := up.n.Load()
	wantRefusal(t, g.do("POST", "/v1/chat/completions", uncappedChat("t30", false), bearer(key)), 402, "key_budget_exceeded", "spend budget exceeded", "spent key")
	if up.n.Load() != n {
		t.Fatal("a refused request reached the upstream")
	}
	g.do("POST", "/v1/chat/completions", uncappedChat("t30", false), bearer(owner)).mustStatus(t, 200, "another key of the user")
	// Raising the budget lets the key go on.
	g.updateKey(owner, id, map[string]any{"spend_limit": 1000})
	g.do("POST", "/v1/chat/completions", uncappedChat("t30", false), bearer(key)).mustStatus(t, 200, "raised budget")
}

// TestKeyBudgetHeldIsWaitedFor: a request without max_tokens holds all a
// key's budget while it runs; a second request of the key waits for it
// (credit_wait) instead of a false budget refusal, and goes through once
// the first settles below what it held. With credit_wait 0 it is refused
// at once, saying what is held.
func TestKeyBudgetHeldIsWaitedFor(t *testing.T) {
	for _, wait := range []string{"0", "5s"} {
		t.Run("credit_wait "+wait, func(t *testing.T) {
			up := startPacedUpstream(t)
			g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), GatewayBlock: "credit_wait " + wait,
				ServerBlock: "metrics", SiteOptions: "handle /metrics {\n\t\tmetrics\n\t}"})
			owner, _ := g.registerUser("held-budget@example.com")
			key, _ := g.createKey(owner, map[string]any{"key_name": "budgeted", "spend_limit": 100})
			holder := holdCredits(t, g, up, key)
			second := make(chan response, 1)
			go func() {
				second <- doRequest(t, g.tester.Client, "POST", gatewayBase+"/v1/chat/completions", uncappedChat("t10", false), bearer(key))
			}()
			if wait == "0" {
				wantRefusal(t, <-second, 402, "key_budget_exceeded", "0 of 100 credits spent and 100 held by requests in flight", "held budget")
			} else {
				waitFor(t, "the second request waiting", func() bool { return g.metric("gatewayz_credit_waiting") == 1 })
			}
			close(up.release)
			(<-holder).mustStatus(t, 200, "the holder")
			if wait != "0" {
				(<-second).mustStatus(t, 200, "the request that waited for the budget")
			}
		})
	}
}

// TestKeyBudgetWindowReset: a daily budget spent before midnight UTC is
// whole again after it, on the gateway's clock; the refusal says when.
func TestKeyBudgetWindowReset(t *testing.T) {
	var now atomic.Pointer[time.Time]
	setNow := func(t time.Time) { now.Store(&t) }
	setNow(time.Date(2026, 3, 4, 23, 59, 0, 0, time.UTC))
	t.Cleanup(caddymodule.SetClock(func() time.Time { return *now.Load() }))
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	owner, _ := g.registerUser("daily@example.com")
	key, id := g.createKey(owner, map[string]any{"key_name": "daily", "spend_limit": 25, "spend_limit_reset": "daily"})
	body := map[string]any{"model": "t10", "max_tokens": 5, "messages": []map[string]any{{"role": "user", "content": "hello"}}}
	for i := 0; ; i++ {
		r := g.do("POST", "/v1/chat/completions", body, bearer(key))
		if r.Status == 402 {
			wantRefusal(t, r, 402, "key_budget_exceeded", "resets at 2026-03-05T00:00:00Z (daily)", "spent for the day")
			break
		}
		r.mustStatus(t, 200, "within the budget")
		if i > 10 {
			t.Fatal("the budget never ran out")
		}
	}
	settledBalance(t, g, owner)
	v := g.keyView(owner, id)
	used, _ := v["spend_used"].(float64)
	if used == 0 || used > 25 || v["spend_resets_at"] != "2026-03-05T00:00:00Z" {
		t.Fatalf("key view before midnight %v", v)
	}
	setNow(time.Date(2026, 3, 5, 0, 0, 1, 0, time.UTC))
	if v := g.keyView(owner, id); v["spend_used"] != float64(0) || v["spend_remaining"] != float64(25) || v["spend_resets_at"] != "2026-03-06T00:00:00Z" {
		t.Fatalf("key view after midnight %v", v)
	}
	g.do("POST", "/v1/chat/completions", body, bearer(key)).mustStatus(t, 200, "after the reset")
	settledBalance(t, g, owner)
	if v := g.keyView(owner, id); v["spend_used"] == float64(0) {
		t.Fatalf("the new window counts nothing: %v", v)
	}
}

// TestUserBudget: an admin's budget on a user bounds all the user's keys,
// is set by POST /admin/limit without touching the rate limits, and shows
// in the admin's user view; the Anthropic route refuses in its own shape.
func TestUserBudget(t *testing.T) {
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	owner, uid := g.registerUser("allowance@example.com")
	second, _ := g.createKey(owner, map[string]any{"key_name": "second"})
	out := g.do("POST", "/admin/limit", map[string]any{"user_id": uid, "spend_limit": 30, "spend_limit_reset": "weekly"}, adminAuth()).
		mustStatus(t, 200, "set the user's budget").json()
	if b, _ := out["spend_budget"].(map[string]any); b["spend_limit"] != float64(30) || b["spend_limit_reset"] != "weekly" || out["rate_limits"] != nil {
		t.Fatalf("answer %v", out)
	}
	body := map[string]any{"model": "t10", "max_tokens": 5, "messages": []map[string]any{{"role": "user", "content": "hello"}}}
	refused := false
	for i := 0; i < 10 && !refused; i++ {
		r := g.do("POST", "/v1/chat/completions", body, bearer([]string{owner, second}[i%2]))
		if r.Status == 402 {
			wantRefusal(t, r, 402, "user_budget_exceeded", "Account spend budget exceeded", "user budget")
			refused = true
			continue
		}
		r.mustStatus(t, 200, "within the user's budget")
	}
	if !refused {
		t.Fatal("the user's budget never ran out")
	}
	spent := 1000 - settledBalance(t, g, owner)
	user := g.do("GET", fmt.Sprintf("/admin/users/%d", uid), nil, adminAuth()).mustStatus(t, 200, "admin view").json()
	b, _ := user["spend_budget"].(map[string]any)
	if spent > 30 || b["spend_used"] != float64(spent) || b["spend_remaining"] != float64(30-spent) || b["spend_resets_at"] == nil {
		t.Fatalf("spent %d; admin view %v", spent, b)
	}
	if user["rate_limits"] != nil {
		t.Fatalf("setting the budget set rate limits: %v", user["rate_limits"])
	}
	// Anthropic's shape on /v1/messages, the code leading the message.
	r := g.do("POST", "/v1/messages", map[string]any{"model": "t10", "max_tokens": 5,
		"messages": []map[string]any{{"role": "user", "content": "hello"}}}, "x-api-key: "+owner)
	var e struct {
		Type  string `json:"type"`
		Error struct{ Type, Message string }
	}
	if r.Status != 402 || json.Unmarshal(r.Body, &e) != nil || e.Type != "error" || e.Error.Type != "billing_error" ||
		!strings.HasPrefix(e.Error.Message, "Account spend budget exceeded (user_budget_exceeded)") {
		t.Fatalf("/v1/messages refusal: %d %s", r.Status, r.Body)
	}
	// Removing the budget lifts it.
	g.do("POST", "/admin/limit", map[string]any{"user_id": uid, "spend_limit": nil}, adminAuth()).mustStatus(t, 200, "remove the budget")
	g.do("POST", "/v1/chat/completions", body, bearer(owner)).mustStatus(t, 200, "budget removed")
}

// TestBudgetBadInput: every budget field refuses what is not an integer
// credit amount or a known period with a 422 in {"detail"} shape, never a
// 500, and changes nothing.
func TestBudgetBadInput(t *testing.T) {
	g := startGateway(t, gatewayConfig{})
	owner, uid := g.registerUser("bad@example.com")
	_, id := g.createKey(owner, map[string]any{"key_name": "target", "spend_limit": 10})
	before := g.keyView(owner, id)
	bad := []map[string]any{
		{"spend_limit": -1}, {"spend_limit": 1.5}, {"spend_limit": "100"}, {"spend_limit": true},
		{"spend_limit": []int{1}}, {"spend_limit": map[string]any{}}, {"spend_limit": json.Number("1e3")},
		{"spend_limit": json.Number("100000000000000000000")},
		{"spend_limit_reset": "hourly"}, {"spend_limit_reset": ""}, {"spend_limit_reset": 7}, {"spend_limit_reset": "DAILY"},
		{"spend_limit": 5, "spend_limit_reset": "yearly"},
	}
	for _, fields := range bad {
		create := map[string]any{"key_name": "new"}
		update := map[string]any{}
		limit := map[string]any{"user_id": uid}
		for k, v := range fields {
			create[k], update[k], limit[k] = v, v, v
		}
		for _, c := range []struct {
			method, path string
			body         map[string]any
			auth         string
		}{
			{"POST", "/user/api-keys", create, bearer(owner)},
			{"PUT", fmt.Sprintf("/user/api-keys/%d", id), update, bearer(owner)},
			{"POST", "/admin/limit", limit, adminAuth()},
			{"PUT", fmt.Sprintf("/admin/api-keys/%d", id), update, adminAuth()},
		} {
			r := g.do(c.method, c.path, c.body, c.auth)
			if r.Status != 422 || r.json()["detail"] == nil {
				t.Errorf("%s %s %v: %d %s", c.method, c.path, fields, r.Status, r.Body)
			}
		}
	}
	after := g.keyView(owner, id)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("refused updates changed the key:\n%v\n%v", before, after)
	}
	if keys := g.do("GET", "/user/api-keys", nil, bearer(owner)).json()["keys"].([]any); len(keys) != 2 {
		t.Fatalf("a refused create made a key: %d keys", len(keys))
	}
	user := g.do("GET", fmt.Sprintf("/admin/users/%d", uid), nil, adminAuth()).json()
	if b, _ := user["spend_budget"].(map[string]any); b["spend_limit"] != nil {
		t.Fatalf("a refused /admin/limit set a budget: %v", b)
	}
	// Without rate_limits or a budget field, /admin/limit is still a 422.
	g.do("POST", "/admin/limit", map[string]any{"user_id": uid}, adminAuth()).mustStatus(t, 422, "nothing to set")
}

// TestKeyBudgetNeedsKeyWrites: a key cannot raise its own budget unless
// its scope allows key writes.
func TestKeyBudgetNeedsKeyWrites(t *testing.T) {
	g := startGateway(t, gatewayConfig{})
	owner, _ := g.registerUser("self@example.com")
	chatOnly, chatID := g.createKey(owner, map[string]any{"key_name": "chat", "spend_limit": 5,
		"scope_permissions": map[string]any{"write": []string{"chat"}}})
	writer, writerID := g.createKey(owner, map[string]any{"key_name": "writer", "spend_limit": 5,
		"scope_permissions": map[string]any{"read": []string{"api_keys"}, "write": []string{"api_keys"}}})
	r := g.do("PUT", fmt.Sprintf("/user/api-keys/%d", chatID), map[string]any{"spend_limit": 1000}, bearer(chatOnly))
	if r.Status != 403 {
		t.Fatalf("a chat-only key raised its own budget: %d %s", r.Status, r.Body)
	}
	if v := g.keyView(owner, chatID); v["spend_limit"] != float64(5) {
		t.Fatalf("budget changed: %v", v)
	}
	out := g.updateKey(writer, writerID, map[string]any{"spend_limit": 1000, "spend_limit_reset": "weekly"})
	if k, _ := out["updated_key"].(map[string]any); k["spend_limit"] != float64(1000) || k["spend_limit_reset"] != "weekly" {
		t.Fatalf("update answer %v", out)
	}
	// The operator may set any key's budget; a key may not use that route.
	path := fmt.Sprintf("/admin/api-keys/%d", chatID)
	if r := g.do("PUT", path, map[string]any{"spend_limit": 1000}, bearer(owner)); r.Status != 401 {
		t.Fatalf("a user key on the admin route: %d %s", r.Status, r.Body)
	}
	out = g.do("PUT", path, map[string]any{"spend_limit": 1000, "spend_limit_reset": "daily"}, adminAuth()).mustStatus(t, 200, "admin sets the budget").json()
	if k, _ := out["updated_key"].(map[string]any); k["spend_limit"] != float64(1000) || k["spend_limit_reset"] != "daily" {
		t.Fatalf("admin update answer %v", out)
	}
	if v := g.keyView(owner, chatID); v["spend_limit"] != float64(1000) || v["spend_limit_reset"] != "daily" {
		t.Fatalf("key view after the admin's update %v", v)
	}
}
