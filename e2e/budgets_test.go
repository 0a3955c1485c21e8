package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// TestBudgetSurvivesRestart: a key's spend budget is enforced by bin/caddy
// on bbolt and what the key spent is still counted after a restart.
func TestBudgetSurvivesRestart(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	g := startGateway(t, up.URL, nil)
	checkBudgetAcrossRestart(t, g)
}

// TestPostgresBudgetSurvivesRestart: the same on PostgreSQL.
func TestPostgresBudgetSurvivesRestart(t *testing.T) {
	dsn := pgtest.DatabaseURL(t)
	up, _ := newUpstream(t, mockOptions())
	g := startOnPostgres(t, up.URL, dsn)
	checkBudgetAcrossRestart(t, g)
	verifyDatabase(t, dsn)
}

// budgetState is the budget part of a key view (or of the admin's user
// view).
type budgetState struct {
	Limit     *int64  `json:"spend_limit"`
	Reset     string  `json:"spend_limit_reset"`
	Used      int64   `json:"spend_used"`
	Remaining *int64  `json:"spend_remaining"`
	ResetsAt  *string `json:"spend_resets_at"`
}

// String shows the state with its optional fields' values.
func (b budgetState) String() string {
	show := func(p any) string {
		switch v := p.(type) {
		case *int64:
			if v != nil {
				return fmt.Sprint(*v)
			}
		case *string:
			if v != nil {
				return *v
			}
		}
		return "null"
	}
	return fmt.Sprintf("limit %s %s, used %d, remaining %s, resets at %s", show(b.Limit), b.Reset, b.Used, show(b.Remaining), show(b.ResetsAt))
}

func keyBudget(t *testing.T, api *API, owner string, id int64) budgetState {
	t.Helper()
	var out struct {
		Keys []struct {
			ID int64 `json:"id"`
			budgetState
		} `json:"keys"`
	}
	if err := json.Unmarshal(mustOK(t, "list keys")(api.Do("GET", "/user/api-keys", owner, nil)).Body, &out); err != nil {
		t.Fatal(err)
	}
	for _, k := range out.Keys {
		if k.ID == id {
			return k.budgetState
		}
	}
	t.Fatalf("key %d not listed", id)
	return budgetState{}
}

func userBudget(t *testing.T, api *API, userID int64) budgetState {
	t.Helper()
	var out struct {
		Budget budgetState `json:"spend_budget"`
	}
	if err := json.Unmarshal(mustOK(t, "admin user view")(api.Do("GET", fmt.Sprintf("/admin/users/%d", userID), testAdminKey, nil)).Body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Budget
}

// wantBudgetRefusal sends a chat with key and wants the key's budget
// refusal.
func wantBudgetRefusal(t *testing.T, api *API, key, what string) {
	t.Helper()
	resp, err := api.Chat(key, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	if resp.Status != 402 || json.Unmarshal(resp.Body, &e) != nil || e.Error.Code != "key_budget_exceeded" {
		t.Fatalf("%s: %d %s", what, resp.Status, resp.Body)
	}
}

// checkBudgetAcrossRestart spends a key's budget through g, stops it,
// starts it again on the same database, and checks the spend, the refusal
// and the user's budget are as they were.
func checkBudgetAcrossRestart(t *testing.T, g *Gateway) {
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("budget", "budget@example.com", 100_000)
	if err != nil {
		t.Fatal(err)
	}
	limit := int64(2*jsonCost + jsonCost/2)
	key, id, err := api.CreateKey(u.APIKey, map[string]any{"key_name": "budgeted", "spend_limit": limit, "spend_limit_reset": "monthly"})
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "user budget")(api.Do("POST", "/admin/limit", testAdminKey, map[string]any{"user_id": u.ID, "spend_limit": 1_000_000, "spend_limit_reset": "weekly"}))
	ok := 0
	for ; ok < 10; ok++ {
		resp, err := api.Chat(key, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status == 402 {
			break
		}
		if resp.Status != 200 {
			t.Fatalf("chat: %d %s", resp.Status, resp.Body)
		}
	}
	if ok == 0 || ok == 10 {
		t.Fatalf("%d requests before the budget ran out", ok)
	}
	wantBudgetRefusal(t, api, key, "spent key")
	c, err := api.UserCredits(u.ID)
	if err != nil {
		t.Fatal(err)
	}
	spent := 100_000 - c.Credits
	before := keyBudget(t, api, u.APIKey, id)
	if before.Used != spent || spent > limit || before.Limit == nil || *before.Limit != limit || before.Reset != "monthly" ||
		before.Remaining == nil || *before.Remaining != limit-spent || before.ResetsAt == nil {
		t.Fatalf("key budget %+v after spending %d of %d", before, spent, limit)
	}
	userBefore := userBudget(t, api, u.ID)
	if userBefore.Used != spent || userBefore.Reset != "weekly" {
		t.Fatalf("user budget %+v after spending %d", userBefore, spent)
	}

	if err := g.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	g = restart(t, g)
	api = NewAPI(g.URL, testAdminKey)
	if after := keyBudget(t, api, u.APIKey, id); after.String() != before.String() || after.Used != spent {
		t.Fatalf("key budget after the restart %v, before %v", after, before)
	}
	if after := userBudget(t, api, u.ID); after.Used != spent || after.Limit == nil || *after.Limit != 1_000_000 || after.Reset != "weekly" {
		t.Fatalf("user budget after the restart %+v", after)
	}
	wantBudgetRefusal(t, api, key, "spent key after the restart")
	// Raising the budget lets the key go on, counting from what it spent.
	mustOK(t, "raise the budget")(api.Do("PUT", fmt.Sprintf("/user/api-keys/%d", id), u.APIKey, map[string]any{"spend_limit": limit + 10*int64(jsonCost)}))
	mustOK(t, "chat after raising the budget")(api.Chat(key, false, 0))
	if b := keyBudget(t, api, u.APIKey, id); b.Used <= spent {
		t.Fatalf("key budget after one more request %+v, spent %d before", b, spent)
	}
	if err := g.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}
