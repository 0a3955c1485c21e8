package admin

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func TestUserMatches(t *testing.T) {
	u := &storage.User{ID: 42, Email: "Ada@Example.com", Username: "ada", Name: "Ada Lovelace"}
	for q, want := range map[string]bool{
		"":         true,
		"ada@":     true,
		"example":  true,
		"lovelace": true,
		"42":       true,
		"4":        false, // an id matches whole, not as a substring
		"bob":      false,
	} {
		if got := userMatches(u, q); got != want {
			t.Errorf("userMatches(%q) = %v, want %v", q, got, want)
		}
	}
}

func TestAdminUserDirectory(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	var ids []int64
	for i := range 3 {
		_, id := registerUser(t, h, fmt.Sprintf("user%d@example.com", i))
		ids = append(ids, id)
	}
	key, _ := registerUser(t, h, "carol@other.org")
	settle(t, app, ids[1], 0, "m", 10, 5, time.Now())

	code, body, _ := call(t, h, "GET", "/admin/users?q=EXAMPLE.COM&limit=2&offset=1", testAdminKey, nil)
	mustStatus(t, "search", code, 200, body)
	users := body["users"].([]any)
	if body["total"].(float64) != 3 || len(users) != 2 {
		t.Fatalf("search: total %v, %d users, want 3 and a page of 2", body["total"], len(users))
	}
	second := users[0].(map[string]any)
	if int64(second["user_id"].(float64)) != ids[1] || second["spent_last_30_days"].(float64) != 15 || second["credits"].(float64) != 1000-15 {
		t.Errorf("second user %v: want id %d, 15 spent, 985 credits", second, ids[1])
	}
	code, body, _ = call(t, h, "GET", "/admin/users?q=nobody", testAdminKey, nil)
	mustStatus(t, "no match", code, 200, body)
	if len(body["users"].([]any)) != 0 {
		t.Errorf("no match lists %v", body["users"])
	}

	// The ledger: newest first, the top-up once however often it is sent.
	for range 2 {
		req := map[string]any{"user_id": ids[0], "credits": 250, "note": "welcome"}
		code, body, _ := callWithHeader(t, h, "POST", "/admin/add_credits", testAdminKey, req, http.Header{"Idempotency-Key": {"once"}})
		mustStatus(t, "top up", code, 200, body)
	}
	code, body, _ = call(t, h, "GET", fmt.Sprintf("/admin/users/%d/ledger?limit=10", ids[0]), testAdminKey, nil)
	mustStatus(t, "ledger", code, 200, body)
	entries := body["entries"].([]any)
	if len(entries) != 2 || body["total"].(float64) != 2 {
		t.Fatalf("ledger %v: want the grant and one top-up", entries)
	}
	top := entries[0].(map[string]any)
	if top["kind"] != "top_up" || top["amount"].(float64) != 250 || top["balance_after"].(float64) != 1250 || top["note"] != "welcome" {
		t.Errorf("newest entry %v", top)
	}
	code, body, _ = call(t, h, "GET", fmt.Sprintf("/admin/users/%d/usage", ids[1]), testAdminKey, nil)
	mustStatus(t, "user usage", code, 200, body)
	if len(body["records"].([]any)) != 1 {
		t.Errorf("user usage %v", body["records"])
	}
	for _, p := range []string{"/admin/users/999/ledger", "/admin/users/999/usage"} {
		if code, _, _ := call(t, h, "GET", p, testAdminKey, nil); code != 404 {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	for _, p := range []string{"/admin/users", "/admin/users/1/ledger", "/admin/users/1/usage"} {
		if code, _, _ := call(t, h, "GET", p, key, nil); code != 401 {
			t.Errorf("%s with a user key: %d, want 401", p, code)
		}
	}
	if code, _, _ := call(t, h, "GET", "/admin/users/abc/ledger", testAdminKey, nil); code != 422 {
		t.Errorf("non-numeric user id: %d, want 422", code)
	}
}
