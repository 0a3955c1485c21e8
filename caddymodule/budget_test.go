package caddymodule

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// TestBudgetRefusal: a budget's 402 names its code (in the message too,
// for Anthropic's shape), what was spent and held, when the budget resets,
// and the max_tokens that would fit a client's own cap.
func TestBudgetRefusal(t *testing.T) {
	m := Metering{}
	m.provisionMetering()
	now := time.Date(2026, 3, 4, 15, 0, 0, 0, time.UTC) // a Wednesday
	chat := func(maxTok int64) *inferenceRequest {
		return &inferenceRequest{Endpoint: endpointChat, Model: "x", PromptTokens: 10, MaxTokens: maxTok, choices: 1}
	}
	for _, tc := range []struct {
		name  string
		ir    *inferenceRequest
		be    storage.BudgetExceeded
		reset storage.BudgetReset
		code  string
		want  []string
		not   []string
	}{
		{"key, daily", chat(0), storage.BudgetExceeded{Key: true, Limit: 100, Used: 95, Needed: 11}, storage.ResetDaily, codeKeyBudget,
			[]string{"API key spend budget exceeded (key_budget_exceeded)", "95 of 100 credits spent", "needs up to 11", "resets at 2026-03-05T00:00:00Z (daily)"},
			[]string{"held by", "max_tokens"}},
		{"key, weekly, held in flight", chat(0), storage.BudgetExceeded{Key: true, Limit: 100, Used: 50, Reserved: 45, Needed: 11}, storage.ResetWeekly, codeKeyBudget,
			[]string{"50 of 100 credits spent and 45 held by requests in flight", "resets at 2026-03-09T00:00:00Z (weekly)"}, nil},
		{"user, monthly", chat(0), storage.BudgetExceeded{Limit: 500, Used: 500, Needed: 11}, storage.ResetMonthly, codeUserBudget,
			[]string{"Account spend budget exceeded (user_budget_exceeded)", "resets at 2026-04-01T00:00:00Z (monthly)"}, nil},
		{"never resets", chat(0), storage.BudgetExceeded{Key: true, Limit: 10, Used: 10, Needed: 11}, storage.ResetNever, codeKeyBudget,
			[]string{"does not reset: raise spend_limit"}, []string{"resets at"}},
		{"client cap that a lower one would fit", chat(100), storage.BudgetExceeded{Key: true, Limit: 100, Used: 50, Needed: 110}, storage.ResetDaily, codeKeyBudget,
			[]string{"lower max_tokens to at most 40"}, nil},
	} {
		plan := m.planReservation(nil, tc.ir)
		gerr := plan.budgetRefusal(nil, tc.ir, &tc.be, tc.reset, now)
		if gerr.Status != http.StatusPaymentRequired || gerr.Code != tc.code || gerr.Type != "insufficient_quota" || gerr.RetryAfter != 0 || gerr.clearsSoon() {
			t.Errorf("%s: %+v", tc.name, gerr)
		}
		for _, w := range tc.want {
			if !strings.Contains(gerr.Message, w) {
				t.Errorf("%s: %q lacks %q", tc.name, gerr.Message, w)
			}
		}
		for _, w := range tc.not {
			if strings.Contains(gerr.Message, w) {
				t.Errorf("%s: %q has %q", tc.name, gerr.Message, w)
			}
		}
	}
}

// TestSetClock: the exported clock hook moves clockNow and restores it.
func TestSetClock(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	restore := SetClock(func() time.Time { return at })
	if !Now().Equal(at) || !clockNow().Equal(at) {
		t.Fatalf("clock %v, want %v", Now(), at)
	}
	restore()
	if d := time.Since(Now()); d < 0 || d > time.Minute {
		t.Fatalf("restored clock is off by %v", d)
	}
}

// TestSpendNoticeHook: a settlement tells the state's spent hook what it
// did to the key's and the user's budgets, and a spent budget refuses the
// next request with 402 before the upstream.
func TestSpendNoticeHook(t *testing.T) {
	e := newTestEnv(t, nil)
	limit := int64(20)
	key, k := e.newKey(t, "", func(k *storage.APIKey) {
		k.Budget = storage.Budget{Limit: &limit, Reset: storage.ResetDaily}
	})
	var notices []SpendNotice
	e.g.state.spent = func(n SpendNotice) { notices = append(notices, n) }
	t.Cleanup(func() { e.g.state.spent = nil })
	rec := e.do(t, "POST", "/v1/chat/completions", strings.Replace(chatBody, `"max_tokens":10`, `"max_tokens":2`, 1), "", bearer(key))
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if len(notices) != 1 {
		t.Fatalf("%d notices", len(notices))
	}
	n := notices[0]
	ks := n.Spent.Key
	if n.KeyID != k.ID || n.UserID != k.UserID || n.KeyReset != storage.ResetDaily || !ks.Valid || !ks.Limited ||
		ks.Limit != 20 || ks.Before != 0 || ks.After != 6 || !ks.Crossed(30) || ks.Crossed(50) || !n.Spent.User.Valid {
		t.Fatalf("notice %+v", n)
	}
	upstream := e.upstream.Load()
	wantError(t, e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)), 402, codeKeyBudget, "resets at")
	if e.upstream.Load() != upstream || len(notices) != 1 {
		t.Fatal("a refused request reached the upstream or was settled")
	}
}

func TestBudgetHeld(t *testing.T) {
	plan := reservationPlan{minCredits: 10, maxCredits: 100}
	for _, tc := range []struct {
		be   storage.BudgetExceeded
		want bool
	}{
		{storage.BudgetExceeded{Limit: 100, Used: 0, Reserved: 100}, true}, // all held: wait
		{storage.BudgetExceeded{Limit: 100, Used: 90, Reserved: 5}, true},  // 10 left once the hold settles
		{storage.BudgetExceeded{Limit: 100, Used: 91, Reserved: 5}, false}, // spent: refuse
		{storage.BudgetExceeded{Limit: 100, Used: 95, Reserved: 0}, false}, // nothing held
		{storage.BudgetExceeded{Limit: 0, Used: 0, Reserved: 0}, false},    // a zero budget
	} {
		if got := plan.budgetHeld(&tc.be); got != tc.want {
			t.Errorf("%+v: held %v, want %v", tc.be, got, tc.want)
		}
	}
}
