package admin

import (
	"encoding/csv"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func TestDailyByModel(t *testing.T) {
	first := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	rec := func(at time.Time, model string, credits int64) storage.UsageRecord {
		return storage.UsageRecord{Time: at, Model: model, TotalTokens: credits * 2, PromptTokens: credits, CompletionTokens: credits, Credits: credits}
	}
	for _, tc := range []struct {
		name  string
		recs  []storage.UsageRecord
		days  int
		dates []string
		rows  []string // "date model requests credits"
	}{
		{"empty period still lists its days", nil, 3, []string{"2026-03-01", "2026-03-02", "2026-03-03"}, nil},
		{"grouped by day and model, sorted", []storage.UsageRecord{
			rec(first.Add(50*time.Hour), "b", 5),
			rec(first.Add(49*time.Hour), "a", 1),
			rec(first.Add(48*time.Hour), "a", 2),
			rec(first.Add(time.Hour), "b", 7),
		}, 3, []string{"2026-03-01", "2026-03-02", "2026-03-03"}, []string{
			"2026-03-01 b 1 7", "2026-03-03 a 2 3", "2026-03-03 b 1 5",
		}},
		{"records before the period are left out", []storage.UsageRecord{
			rec(first.Add(-time.Second), "a", 9),
			rec(first, "a", 4),
		}, 1, []string{"2026-03-01"}, []string{"2026-03-01 a 1 4"}},
		{"a non-UTC time counts on its UTC day", []storage.UsageRecord{
			rec(time.Date(2026, 3, 1, 23, 30, 0, 0, time.FixedZone("X", -2*3600)), "a", 1),
		}, 2, []string{"2026-03-01", "2026-03-02"}, []string{"2026-03-02 a 1 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dates, rows := dailyByModel(rowsOf(tc.recs), first, tc.days)
			if !slices.Equal(dates, tc.dates) {
				t.Errorf("dates %v, want %v", dates, tc.dates)
			}
			var got []string
			for _, r := range rows {
				got = append(got, fmt.Sprintf("%s %s %d %d", r.Date, r.Model, r.Requests, r.Credits))
				if r.Tokens != r.Credits*2 {
					t.Errorf("%s %s: %d tokens for %d credits", r.Date, r.Model, r.Tokens, r.Credits)
				}
			}
			if !slices.Equal(got, tc.rows) {
				t.Errorf("rows %v, want %v", got, tc.rows)
			}
		})
	}
}

func TestCSVSafe(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"gpt-4o":          "gpt-4o",
		"=HYPERLINK(1)":   "'=HYPERLINK(1)",
		"+1":              "'+1",
		"-1":              "'-1",
		"@SUM(A1)":        "'@SUM(A1)",
		"\tx":             "'\tx",
		"a=b":             "a=b",
		"<img src=x>":     "<img src=x>",
		"chatcmpl-abc=12": "chatcmpl-abc=12",
	} {
		if got := csvSafe(in); got != want {
			t.Errorf("csvSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseUsageQuery(t *testing.T) {
	day := time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		query string
		ok    bool
		want  usageQuery
	}{
		{"", true, usageQuery{limit: 100}},
		{"limit=5&model=+gpt-4o+&key_id=7", true, usageQuery{filter: storage.UsageFilter{KeyID: 7}, model: "gpt-4o", limit: 5}},
		{"date=2026-02-28", true, usageQuery{filter: storage.UsageFilter{Since: day, Until: day.AddDate(0, 0, 1)}, limit: 100}},
		{"limit=999999", true, usageQuery{limit: 1000}},
		{"limit=0", false, usageQuery{}},
		{"key_id=0", false, usageQuery{}},
		{"key_id=abc", false, usageQuery{}},
		{"date=2026-02-30", false, usageQuery{}},
		{"date=yesterday", false, usageQuery{}},
		{"model=" + strings.Repeat("m", 201), false, usageQuery{}},
	} {
		r := httptest.NewRequest("GET", "/user/usage?"+tc.query, nil)
		got, err := parseUsageQuery(r, maxUsageLimit)
		if tc.ok != (err == nil) {
			t.Errorf("%q: err %v, want ok=%v", tc.query, err, tc.ok)
			continue
		}
		if err != nil {
			if !isAPIError(err) {
				t.Errorf("%q: %v is not an API error", tc.query, err)
			}
			continue
		}
		if got.model != tc.want.model || got.limit != tc.want.limit || got.filter.KeyID != tc.want.filter.KeyID ||
			!got.filter.Since.Equal(tc.want.filter.Since) || !got.filter.Until.Equal(tc.want.filter.Until) {
			t.Errorf("%q: %+v, want %+v", tc.query, got, tc.want)
		}
	}
}

// FuzzUsageQuery: any query string is parsed or refused with an API error;
// nothing panics, and an accepted query is within its bounds.
func FuzzUsageQuery(f *testing.F) {
	for _, s := range []string{"", "limit=5", "key_id=1&model=x&date=2026-01-01", "date=2026-13-01", "limit=-1", "limit=1e9", "model=%00", "%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r := httptest.NewRequest("GET", "/user/usage", nil)
		r.URL.RawQuery = raw
		q, err := parseUsageQuery(r, maxUsageLimit)
		if err != nil {
			if !isAPIError(err) {
				t.Fatalf("%q: %v is not an API error", raw, err)
			}
			return
		}
		if q.limit < 1 || q.limit > maxUsageLimit || len(q.model) > maxModelFilter || q.filter.KeyID < 0 {
			t.Fatalf("%q: out of bounds %+v", raw, q)
		}
		if !q.filter.Since.IsZero() && q.filter.Until.Sub(q.filter.Since) != 24*time.Hour {
			t.Fatalf("%q: a day filter of %s", raw, q.filter.Until.Sub(q.filter.Since))
		}
	})
}

// The user usage routes through the real handler and store: filters, the
// key names, the CSV export and the daily view, and the scope they need.
func TestUserUsageRoutes(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	key, uid := registerUser(t, h, "u@example.com")
	other, otherID := registerUser(t, h, "v@example.com")
	kid := keyIDOf(t, h, key)
	now := time.Now().UTC()
	settle(t, app, uid, kid, "gpt-4o-mini", 3, 4, now.Add(-2*time.Minute))
	settle(t, app, uid, kid, "=cmd|' /C calc'!A0", 1, 1, now.Add(-time.Minute))
	settle(t, app, uid, kid, "gpt-4o-mini", 10, 10, now.AddDate(0, 0, -40))
	settle(t, app, otherID, keyIDOf(t, h, other), "gpt-4o-mini", 50, 50, now)

	code, body, _ := call(t, h, "GET", "/user/usage", key, nil)
	mustStatus(t, "usage", code, 200, body)
	recs := body["records"].([]any)
	if len(recs) != 3 {
		t.Fatalf("%d records, want the caller's 3", len(recs))
	}
	first := recs[0].(map[string]any)
	if first["key_name"] == "" {
		t.Errorf("record without the key's name: %v", first)
	}
	if !strings.HasSuffix(first["api_key"].(string), "…") || strings.Contains(fmt.Sprint(body), key) {
		t.Errorf("usage shows more than the masked key: %v", first["api_key"])
	}

	code, body, _ = call(t, h, "GET", "/user/usage?model=gpt-4o-mini&limit=1", key, nil)
	mustStatus(t, "usage by model", code, 200, body)
	if recs := body["records"].([]any); len(recs) != 1 || recs[0].(map[string]any)["credits"].(float64) != 7 {
		t.Errorf("model filter with limit 1: %v", recs)
	}
	code, body, _ = call(t, h, "GET", "/user/usage?date="+now.AddDate(0, 0, -40).Format(time.DateOnly), key, nil)
	mustStatus(t, "usage by day", code, 200, body)
	if recs := body["records"].([]any); len(recs) != 1 || recs[0].(map[string]any)["credits"].(float64) != 20 {
		t.Errorf("day filter: %v", recs)
	}

	// The export: a header, the rows, and a formula-looking model defused.
	req := httptest.NewRequest("GET", "/user/usage/export", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	rec := httptest.NewRecorder()
	h.serve(rec, req)
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/csv") {
		t.Fatalf("export: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	rows, err := csv.NewReader(rec.Body).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 || !slices.Equal(rows[0], usageCSVHeader) {
		t.Fatalf("export has %d rows, header %v", len(rows), rows[0])
	}
	if rows[1][2] != "'=cmd|' /C calc'!A0" {
		t.Errorf("formula-looking model exported as %q", rows[1][2])
	}

	code, body, _ = call(t, h, "GET", "/user/usage/daily?days=30", key, nil)
	mustStatus(t, "daily", code, 200, body)
	if n := len(body["dates"].([]any)); n != 30 {
		t.Errorf("%d dates, want 30", n)
	}
	today := body["today"].(map[string]any)
	if today["credits"].(float64) != 9 || today["requests"].(float64) != 2 {
		t.Errorf("today %v, want 2 requests and 9 credits", today)
	}
	if rows := body["rows"].([]any); len(rows) != 2 {
		t.Errorf("daily rows %v, want the two models of today", rows)
	}
	code, body, _ = call(t, h, "GET", fmt.Sprintf("/user/usage/daily?key_id=%d", keyIDOf(t, h, other)), key, nil)
	mustStatus(t, "daily of another user's key", code, 200, body)
	if rows := body["rows"].([]any); len(rows) != 0 {
		t.Errorf("another user's key shows usage: %v", rows)
	}

	// A key without read on usage gets a 403 from each route.
	code, created, _ := call(t, h, "POST", "/user/api-keys", key, map[string]any{
		"key_name": "chat-only", "scope_permissions": map[string]any{"write": []string{"chat"}}})
	mustStatus(t, "create chat-only key", code, 200, created)
	narrow := created["api_key"].(string)
	for _, p := range []string{"/user/usage", "/user/usage/export", "/user/usage/daily"} {
		if code, body, _ := call(t, h, "GET", p, narrow, nil); code != 403 {
			t.Errorf("%s with a chat-only key: %d %v, want 403", p, code, body)
		}
	}
	if code, _, _ := call(t, h, "GET", "/user/usage", "", nil); code != 401 {
		t.Errorf("/user/usage without a key: %d", code)
	}
}
