package storetest

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// budgetDay is the day the budget cases run on (a Wednesday).
var budgetDay = time.Date(2026, 3, 4, 15, 0, 0, 0, time.UTC)

func limited(reset storage.BudgetReset, limit int64, at time.Time) storage.BudgetWindow {
	return storage.Budget{Limit: &limit, Reset: reset}.Window(at)
}

// budgetErr asserts err is a *BudgetExceeded of the key (or the user)
// and returns it.
func budgetErr(t *testing.T, err error, key bool) *storage.BudgetExceeded {
	t.Helper()
	var be *storage.BudgetExceeded
	if !errors.As(err, &be) || !errors.Is(err, storage.ErrBudgetExceeded) || be.Key != key {
		t.Fatalf("want a budget refusal (key %v), got %v", key, err)
	}
	return be
}

func keySpend(t *testing.T, s storage.Store, id int64) storage.Spend {
	t.Helper()
	k, err := s.GetKey(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return k.Spend
}

// confKeyBudget: a key's budget bounds what its reservations hold and its
// settlements charge, in the window the reservation was made in; refunds
// give the room back; the key's budget is checked before the user's and
// both before the balance.
func confKeyBudget(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "budget@example.com", 1000)
	kb := limited(storage.ResetDaily, 100, budgetDay)
	req := func(credits, minCredits int64) storage.ReserveRequest {
		return storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: credits, MinCredits: minCredits, KeyBudget: kb}
	}
	r1, err := s.Reserve(ctx, req(60, 0))
	if err != nil {
		t.Fatal(err)
	}
	be := budgetErr(t, ignoreRes(s.Reserve(ctx, req(41, 0))), true)
	if be.Limit != 100 || be.Used != 0 || be.Reserved != 60 || be.Needed != 41 {
		t.Fatalf("refusal = %+v", be)
	}
	if b := MustBalance(t, s, u.ID); b.Reserved != 60 {
		t.Fatalf("a refusal held credits: %+v", b)
	}
	charged, _, err := s.Settle(ctx, r1, 30, storage.UsageRecord{Model: "m"})
	if err != nil || charged != 30 {
		t.Fatalf("settle = %d, %v", charged, err)
	}
	if sp := r1.Spent.Key; !sp.Valid || sp.Before != 0 || sp.After != 30 || sp.Limit != 100 || !sp.Limited || !sp.Window.Equal(kb.Start) {
		t.Fatalf("key spend change = %+v", sp)
	}
	if sp := r1.Spent.User; !sp.Valid || sp.Before != 0 || sp.After != 30 || sp.Limited {
		t.Fatalf("user spend change = %+v", sp)
	}
	if sp := keySpend(t, s, k.ID); sp.Used != 30 || sp.SpendIn(kb.Start) != 30 {
		t.Fatalf("key spend = %+v", sp)
	}
	// A flexible request takes what the budget leaves (70 of 100).
	r2, err := s.Reserve(ctx, req(100, 10))
	if err != nil || r2.Amount != 70 {
		t.Fatalf("flexible reservation = %+v, %v", r2, err)
	}
	budgetErr(t, ignoreRes(s.Reserve(ctx, req(1, 0))), true)
	if err := s.Refund(ctx, r2); err != nil {
		t.Fatal(err)
	}
	// A cost above the hold is capped by the budget, as by a balance.
	r3, err := s.Reserve(ctx, req(50, 0))
	if err != nil {
		t.Fatal(err)
	}
	if charged, _, err := s.Settle(ctx, r3, 500, storage.UsageRecord{Model: "m"}); err != nil || charged != 70 {
		t.Fatalf("capped settle = %d, %v", charged, err)
	}
	if sp := keySpend(t, s, k.ID); sp.Used != 100 {
		t.Fatalf("key spend = %+v", sp)
	}
	budgetErr(t, ignoreRes(s.Reserve(ctx, req(1, 0))), true)
	// A zero-cost request still fits a spent budget.
	if r, err := s.Reserve(ctx, req(0, 0)); err != nil {
		t.Fatal(err)
	} else if err := s.Refund(ctx, r); err != nil {
		t.Fatal(err)
	}
	// Without a limit the key's spend is still counted.
	r4, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 5, KeyBudget: storage.BudgetWindow{Start: kb.Start}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Settle(ctx, r4, 5, storage.UsageRecord{Model: "m"}); err != nil {
		t.Fatal(err)
	}
	if sp := keySpend(t, s, k.ID); sp.Used != 105 {
		t.Fatalf("key spend = %+v", sp)
	}
	if b := MustBalance(t, s, u.ID); b.Credits != 1000-105 || b.Reserved != 0 {
		t.Fatalf("balance = %+v", b)
	}

	// The next day is a new window, whatever the old one spent.
	next := limited(storage.ResetDaily, 100, budgetDay.AddDate(0, 0, 1))
	r5, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 100, KeyBudget: next})
	if err != nil {
		t.Fatal(err)
	}
	if sp := keySpend(t, s, k.ID); sp.SpendIn(next.Start) != 0 {
		t.Fatalf("new window counts %+v", sp)
	}
	// A request whose clock is behind counts in the later window.
	budgetErr(t, ignoreRes(s.Reserve(ctx, req(1, 0))), true)
	if _, _, err := s.Settle(ctx, r5, 100, storage.UsageRecord{Model: "m"}); err != nil {
		t.Fatal(err)
	}
	if sp := keySpend(t, s, k.ID); !sp.Window.Equal(next.Start) || sp.Used != 100 {
		t.Fatalf("key spend after the day's reset = %+v", sp)
	}
	verifyLedger(t, s)
}

// confBudgetRollover: a settlement charges the window its reservation was
// made in; a window that ended meanwhile takes the charge (capped by the
// hold) without touching the new one.
func confBudgetRollover(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "roll@example.com", 1000)
	d1 := limited(storage.ResetDaily, 100, budgetDay)
	d2 := limited(storage.ResetDaily, 100, budgetDay.AddDate(0, 0, 1))
	old, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 50, KeyBudget: d1})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 100, KeyBudget: d2})
	if err != nil {
		t.Fatalf("the new window counts the old one's hold: %v", err)
	}
	charged, _, err := s.Settle(ctx, old, 80, storage.UsageRecord{Model: "m"})
	if err != nil || charged != 50 || old.Spent.Key.Valid {
		t.Fatalf("late settlement = %d, %+v, %v", charged, old.Spent.Key, err)
	}
	if sp := keySpend(t, s, k.ID); sp.SpendIn(d2.Start) != 0 {
		t.Fatalf("the old window's charge went to the new one: %+v", sp)
	}
	if _, _, err := s.Settle(ctx, cur, 100, storage.UsageRecord{Model: "m"}); err != nil || cur.Spent.Key.After != 100 {
		t.Fatalf("settle = %+v, %v", cur.Spent.Key, err)
	}
	if sp := keySpend(t, s, k.ID); sp.SpendIn(d2.Start) != 100 {
		t.Fatalf("key spend = %+v", sp)
	}
	verifyLedger(t, s)
}

// confUserBudget: an admin's budget on a user, stored and read back, and
// enforced across the user's keys.
func confUserBudget(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "ub@example.com", 1000)
	k2, _ := NewKey(t, "second")
	k2.UserID = u.ID
	if err := s.CreateKey(ctx, k2); err != nil {
		t.Fatal(err)
	}
	if b, sp, err := s.UserBudget(ctx, u.ID); err != nil || b.Limit != nil || b.Reset != storage.ResetNever || sp.Used != 0 {
		t.Fatalf("no budget = %+v %+v %v", b, sp, err)
	}
	limit := int64(50)
	want := storage.Budget{Limit: &limit, Reset: storage.ResetMonthly}
	if err := s.SetUserBudget(ctx, u.ID, want); err != nil {
		t.Fatal(err)
	}
	b, _, err := s.UserBudget(ctx, u.ID)
	if err != nil || b.Limit == nil || *b.Limit != 50 || b.Reset != storage.ResetMonthly {
		t.Fatalf("budget = %+v, %v", b, err)
	}
	if err := s.SetUserBudget(ctx, 9999, want); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
	if _, _, err := s.UserBudget(ctx, 9999); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
	neg := int64(-1)
	if err := s.SetUserBudget(ctx, u.ID, storage.Budget{Limit: &neg}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("negative limit: %v", err)
	}
	if err := s.SetUserBudget(ctx, u.ID, storage.Budget{Limit: &limit, Reset: "hourly"}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("unknown period: %v", err)
	}
	if _, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, KeyBudget: storage.BudgetWindow{Limit: -1, Limited: true}}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("negative limit in a reservation: %v", err)
	}
	ub := b.Window(budgetDay)
	r1, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 30, UserBudget: ub})
	if err != nil {
		t.Fatal(err)
	}
	be := budgetErr(t, ignoreRes(s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k2.ID, Credits: 21, UserBudget: ub})), false)
	if be.Limit != 50 || be.Reserved != 30 {
		t.Fatalf("refusal = %+v", be)
	}
	// The key's budget is checked first.
	budgetErr(t, ignoreRes(s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k2.ID, Credits: 21, UserBudget: ub,
		KeyBudget: limited(storage.ResetNever, 20, budgetDay)})), true)
	if _, _, err := s.Settle(ctx, r1, 30, storage.UsageRecord{Model: "m"}); err != nil {
		t.Fatal(err)
	}
	if sp := r1.Spent.User; !sp.Valid || sp.After != 30 || sp.Limit != 50 {
		t.Fatalf("user spend change = %+v", sp)
	}
	if _, sp, err := s.UserBudget(ctx, u.ID); err != nil || sp.SpendIn(ub.Start) != 30 {
		t.Fatalf("user spend = %+v, %v", sp, err)
	}
	// Budgets before the balance: a user short of both gets the budget's.
	if err := s.SetUserBudget(ctx, u.ID, storage.Budget{}); err != nil {
		t.Fatal(err)
	}
	if b, _, _ := s.UserBudget(ctx, u.ID); b.Limit != nil || b.Reset != storage.ResetNever {
		t.Fatalf("budget not removed: %+v", b)
	}
	// A period without a limit is kept for when a limit comes.
	if err := s.SetUserBudget(ctx, u.ID, storage.Budget{Reset: storage.ResetDaily}); err != nil {
		t.Fatal(err)
	}
	if b, _, _ := s.UserBudget(ctx, u.ID); b.Limit != nil || b.Reset != storage.ResetDaily {
		t.Fatalf("period without a limit: %+v", b)
	}
	if err := s.SetUserBudget(ctx, u.ID, storage.Budget{}); err != nil {
		t.Fatal(err)
	}
	budgetErr(t, ignoreRes(s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 5000, UserBudget: ub})), false)
	verifyLedger(t, s)
}

func ignoreRes(_ *storage.Reservation, err error) error { return err }

// confBudgetConcurrent: many goroutines reserving and settling against a
// small key budget and a small user budget never charge past either.
func confBudgetConcurrent(t *testing.T, s storage.Store) {
	budgetConcurrent(t, s, s, "conc@example.com")
}

// budgetConcurrent runs the invariant through two handles (the same store
// twice on a single-process backend).
func budgetConcurrent(t *testing.T, a, b storage.Store, email string) {
	ctx := context.Background()
	u, k := Register(t, a, email, 100000)
	k2, _ := NewKey(t, "other")
	k2.UserID = u.ID
	if err := a.CreateKey(ctx, k2); err != nil {
		t.Fatal(err)
	}
	const keyLimit, userLimit = 100, 150
	kb := limited(storage.ResetMonthly, keyLimit, budgetDay)
	ub := limited(storage.ResetWeekly, userLimit, budgetDay)
	var charged [2]atomic.Int64
	var refused atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 40; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			s := []storage.Store{a, b}[g%2]
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			which := g % 2 // key k or k2
			keyID := []int64{k.ID, k2.ID}[which]
			for i := 0; i < 15; i++ {
				req := storage.ReserveRequest{UserID: u.ID, KeyID: keyID, Credits: 9, UserBudget: ub}
				if which == 0 {
					req.KeyBudget = kb
					if rng.IntN(2) == 0 {
						req.MinCredits = 3
					}
				}
				r, err := s.Reserve(ctx, req)
				if errors.Is(err, storage.ErrBudgetExceeded) {
					refused.Add(1)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if rng.IntN(5) == 0 {
					if err := s.Refund(ctx, r); err != nil {
						t.Error(err)
					}
					continue
				}
				c, _, err := s.Settle(ctx, r, int64(rng.IntN(14)), storage.UsageRecord{Model: "m"})
				if err != nil {
					t.Error(err)
					return
				}
				charged[which].Add(c)
			}
		}(g)
	}
	wg.Wait()
	if c := charged[0].Load(); c > keyLimit {
		t.Fatalf("the key charged %d past its budget of %d", c, keyLimit)
	}
	if c := charged[0].Load() + charged[1].Load(); c > userLimit {
		t.Fatalf("the user charged %d past the budget of %d", c, userLimit)
	}
	if refused.Load() == 0 {
		t.Fatal("no reservation was refused: the budgets were not reached")
	}
	if sp := keySpend(t, a, k.ID); sp.SpendIn(kb.Start) != charged[0].Load() {
		t.Fatalf("key spend %+v, charged %d", sp, charged[0].Load())
	}
	if _, sp, err := b.UserBudget(ctx, u.ID); err != nil || sp.SpendIn(ub.Start) != charged[0].Load()+charged[1].Load() {
		t.Fatalf("user spend %+v (%v), charged %d", sp, err, charged[0].Load()+charged[1].Load())
	}
	if bal := MustBalance(t, a, u.ID); bal.Reserved != 0 || 100000-bal.Credits != charged[0].Load()+charged[1].Load() {
		t.Fatalf("balance %+v", bal)
	}
	verifyLedger(t, a)
}

// sharedBudget: the budget invariant through two handles on one database.
func sharedBudget(t *testing.T, a, b storage.Store) {
	budgetConcurrent(t, a, b, "shared-budget@example.com")
}
