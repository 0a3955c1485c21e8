package admin

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// rowsOf is records as rows of usage, as usageSince gives them.
func rowsOf(recs []storage.UsageRecord) []storage.UsageRollup {
	rows := make([]storage.UsageRollup, len(recs))
	for i := range recs {
		rows[i] = recordRow(&recs[i])
	}
	return rows
}

func TestBucketStats(t *testing.T) {
	first := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	at := func(min int) time.Time { return first.Add(time.Duration(min) * time.Minute) }
	recs := []storage.UsageRecord{
		{Time: at(150), Model: "b", Status: 200, TotalTokens: 5, Credits: 5},
		{Time: at(125), Model: "a", Status: 500, TotalTokens: 1, Credits: 1},
		{Time: at(121), Model: "a", Status: 200, TotalTokens: 2, Credits: 2},
		{Time: at(120), Model: "a", Status: 200, TotalTokens: 3, Credits: 3},
		{Time: at(59), Model: "a", Status: 200, Estimated: true, TotalTokens: 4, Credits: 4},
		{Time: at(180), Model: "a", Status: 200, TotalTokens: 9, Credits: 9}, // after the last bucket
		{Time: at(-1), Model: "a", Status: 200, TotalTokens: 9, Credits: 9},  // before the first
	}
	refusals := []storage.AuditEntry{
		{Time: at(10), Action: "security.ip_denied"},
		{Time: at(20), Action: "security.ip_denied"},
		{Time: at(70), Action: "security.unknown_key"},
		{Time: at(-30), Action: "security.unknown_key"},
	}
	starts, rows, refRows := bucketStats(rowsOf(recs), refusals, first, time.Hour, 3)
	if !slices.Equal(starts, []time.Time{first, at(60), at(120)}) {
		t.Errorf("buckets %v", starts)
	}
	var got []string
	for _, r := range rows {
		got = append(got, fmt.Sprintf("%s %s %s %d/%d", r.Start.Format("15:04"), r.Model, r.Outcome, r.Requests, r.Credits))
	}
	want := []string{"10:00 a estimated 1/4", "12:00 a error 1/1", "12:00 a success 2/5", "12:00 b success 1/5"}
	if !slices.Equal(got, want) {
		t.Errorf("usage rows\n%v\nwant\n%v", got, want)
	}
	got = nil
	for _, r := range refRows {
		got = append(got, fmt.Sprintf("%s %s %d", r.Start.Format("15:04"), r.Kind, r.Count))
	}
	if want := []string{"10:00 ip_denied 2", "11:00 unknown_key 1"}; !slices.Equal(got, want) {
		t.Errorf("refusal rows %v, want %v", got, want)
	}
}

func TestAdminStatsRoute(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	key, uid := registerUser(t, h, "s@example.com")
	settle(t, app, uid, keyIDOf(t, h, key), "gpt-4o-mini", 2, 3, time.Now())
	settle(t, app, uid, keyIDOf(t, h, key), "gpt-4o-mini", 2, 3, time.Now().AddDate(0, 0, -3))
	for period, want := range map[string][2]int{"": {24, 1}, "hour": {24, 1}, "day": {30, 2}} {
		code, body, _ := call(t, h, "GET", "/admin/stats?period="+period, testAdminKey, nil)
		mustStatus(t, "stats "+period, code, 200, body)
		if n := len(body["buckets"].([]any)); n != want[0] {
			t.Errorf("period %q: %d buckets, want %d", period, n, want[0])
		}
		if n := body["totals"].(map[string]any)["requests"].(float64); int(n) != want[1] {
			t.Errorf("period %q: %v requests, want %d", period, n, want[1])
		}
		if _, ok := body["outcomes_since_start"].(map[string]any)["insufficient_credits"]; !ok {
			t.Errorf("period %q: outcomes lack insufficient_credits: %v", period, body["outcomes_since_start"])
		}
	}
	if code, _, _ := call(t, h, "GET", "/admin/stats?period=week", testAdminKey, nil); code != 422 {
		t.Errorf("period=week: %d, want 422", code)
	}
	if code, _, _ := call(t, h, "GET", "/admin/stats", key, nil); code != 401 {
		t.Errorf("a user key on /admin/stats: %d, want 401", code)
	}
}
