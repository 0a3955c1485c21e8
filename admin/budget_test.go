package admin

import (
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func TestBudgetInputDecoding(t *testing.T) {
	for _, tc := range []struct {
		body      string
		status    int // 0: accepted
		limit     *int64
		limitSet  bool
		reset     storage.BudgetReset
		resetGone bool
	}{
		{body: `{"spend_limit": 100}`, limit: ptr(100), limitSet: true, reset: storage.ResetNever},
		{body: `{"spend_limit": 0, "spend_limit_reset": "daily"}`, limit: ptr(0), limitSet: true, reset: storage.ResetDaily},
		{body: `{"spend_limit": null}`, limitSet: true, reset: storage.ResetNever},
		{body: `{"spend_limit_reset": "weekly"}`, reset: storage.ResetWeekly},
		{body: `{"spend_limit_reset": "monthly"}`, reset: storage.ResetMonthly},
		{body: `{"spend_limit_reset": "never"}`, reset: storage.ResetNever},
		{body: `{"spend_limit": -1}`, status: 422},
		{body: `{"spend_limit": 1.5}`, status: 422},
		{body: `{"spend_limit": 100.0}`, status: 422},
		{body: `{"spend_limit": 1e2}`, status: 422},
		{body: `{"spend_limit": "100"}`, status: 422},
		{body: `{"spend_limit": true}`, status: 422},
		{body: `{"spend_limit": [100]}`, status: 422},
		{body: `{"spend_limit": 99999999999999999999}`, status: 422},
		{body: `{"spend_limit_reset": "hourly"}`, status: 422},
		{body: `{"spend_limit_reset": ""}`, status: 422},
		{body: `{"spend_limit_reset": "Daily"}`, status: 422},
		{body: `{"spend_limit_reset": 1}`, status: 422},
		{body: `{"spend_limit_reset": null}`, reset: storage.ResetNever, resetGone: true},
	} {
		var req updateKeyRequest
		err := decodeBody([]byte(tc.body), &req)
		var b storage.Budget
		if err == nil {
			b, err = req.budget(storage.Budget{})
		}
		if tc.status != 0 {
			ae, ok := err.(*apiError)
			if !ok || ae.Status != tc.status || ae.Detail == "" {
				t.Errorf("%s: %v, want %d", tc.body, err, tc.status)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.body, err)
			continue
		}
		if req.SpendLimit.set != tc.limitSet || (b.Limit == nil) != (tc.limit == nil) || (b.Limit != nil && *b.Limit != *tc.limit) || b.Reset != tc.reset {
			t.Errorf("%s: budget %+v (limit set %v)", tc.body, b, req.SpendLimit.set)
		}
		if tc.resetGone && req.budgetInput.given() {
			t.Errorf("%s: a null reset counts as given", tc.body)
		}
	}
}

// A budget change keeps what the request does not name.
func TestBudgetInputKeepsTheRest(t *testing.T) {
	var req updateKeyRequest
	if err := decodeBody([]byte(`{"spend_limit_reset": "monthly"}`), &req); err != nil {
		t.Fatal(err)
	}
	b, err := req.budget(storage.Budget{Limit: ptr(50), Reset: storage.ResetDaily})
	if err != nil || b.Limit == nil || *b.Limit != 50 || b.Reset != storage.ResetMonthly {
		t.Fatalf("budget %+v, %v", b, err)
	}
	req = updateKeyRequest{}
	if err := decodeBody([]byte(`{"spend_limit": null}`), &req); err != nil {
		t.Fatal(err)
	}
	if b, _ := req.budget(storage.Budget{Limit: ptr(50), Reset: storage.ResetDaily}); b.Limit != nil || b.Reset != storage.ResetDaily {
		t.Fatalf("budget %+v", b)
	}
}

func TestBudgetView(t *testing.T) {
	now := time.Date(2026, 3, 4, 15, 0, 0, 0, time.UTC)
	today := time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		b         storage.Budget
		sp        storage.Spend
		used      int64
		remaining any
		resetsAt  any
	}{
		{"none", storage.Budget{}, storage.Spend{Used: 7}, 7, nil, nil},
		{"daily, spent today", storage.Budget{Limit: ptr(100), Reset: storage.ResetDaily}, storage.Spend{Window: today, Used: 30}, 30, int64(70), today.AddDate(0, 0, 1)},
		{"daily, spent yesterday", storage.Budget{Limit: ptr(100), Reset: storage.ResetDaily}, storage.Spend{Window: today.AddDate(0, 0, -1), Used: 100}, 0, int64(100), today.AddDate(0, 0, 1)},
		{"over the limit", storage.Budget{Limit: ptr(10), Reset: storage.ResetNever}, storage.Spend{Used: 12}, 12, int64(0), nil},
		{"monthly", storage.Budget{Limit: ptr(5), Reset: storage.ResetMonthly}, storage.Spend{Window: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), Used: 1}, 1, int64(4), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)},
	} {
		v := budgetView(map[string]any{}, tc.b, tc.sp, now)
		if v["spend_used"] != tc.used || v["spend_remaining"] != tc.remaining || v["spend_resets_at"] != tc.resetsAt {
			t.Errorf("%s: %v", tc.name, v)
		}
		if v["spend_limit_reset"] == storage.BudgetReset("") {
			t.Errorf("%s: empty reset", tc.name)
		}
	}
}

func ptr(v int64) *int64 { return &v }
