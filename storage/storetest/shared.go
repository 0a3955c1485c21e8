package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// RunShared runs the two-handle part of the suite: what must hold when two
// store instances (two gateway processes) use one database. open returns
// two handles on a fresh, empty database for each subtest; the suite closes
// both. A backend whose database only one process can open (bbolt) passes
// the same store twice.
func RunShared(t *testing.T, open func(t *testing.T) (a, b storage.Store)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b storage.Store)
	}{
		{"NoOverspend", sharedOverspend},
		{"IdempotentTopUps", sharedTopUps},
		{"ChangeFeed", sharedChangeFeed},
		{"EveryChange", sharedEveryChange},
		{"AuditChain", sharedAuditChain},
		{"LedgerOrder", sharedLedgerOrder},
		{"NoBudgetOverspend", sharedBudget},
		{"OutboxClaims", sharedOutboxClaims},
	}
	runPairs(t, tests, open)
}

// runPairs runs each test on two fresh handles from open, closing both
// after.
func runPairs[S storage.Store](t *testing.T, tests []struct {
	name string
	fn   func(t *testing.T, a, b S)
}, open func(t *testing.T) (a, b S)) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := open(t)
			defer a.Close()
			if storage.Store(b) != storage.Store(a) {
				defer b.Close()
			}
			tc.fn(t, a, b)
		})
	}
}

// sharedOverspend: reservations on either handle see the other's holds, a
// capped settlement leaves what the other handle holds, and concurrent
// traffic through both never takes the balance below zero.
func sharedOverspend(t *testing.T, a, b storage.Store) {
	ctx := context.Background()
	u, k := Register(t, a, "both@example.com", 100)
	r1, err := a.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 60})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 41}); !errors.Is(err, storage.ErrInsufficientCredits) {
		t.Fatalf("over-reserve on the other handle: %v", err)
	}
	r2, err := b.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 40})
	if err != nil {
		t.Fatal(err)
	}
	if bal := MustBalance(t, a, u.ID); bal.Credits != 100 || bal.Reserved != 100 {
		t.Fatalf("balance with holds on both handles: %+v", bal)
	}
	if charged, after, err := a.Settle(ctx, r1, 1000, storage.UsageRecord{Model: "m"}); err != nil || charged != 60 || after != 40 {
		t.Fatalf("capped settle = %d, %d, %v", charged, after, err)
	}
	if charged, after, err := b.Settle(ctx, r2, 1000, storage.UsageRecord{Model: "m"}); err != nil || charged != 40 || after != 0 {
		t.Fatalf("second capped settle = %d, %d, %v", charged, after, err)
	}
	if _, _, err := b.AddCredits(ctx, u.ID, 500, storage.LedgerTopUp, "", ""); err != nil {
		t.Fatal(err)
	}

	const initial = 500
	var charged atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 32; g++ {
		s := []storage.Store{a, b}[g%2]
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 2))
			for i := 0; i < 20; i++ {
				r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 9})
				if errors.Is(err, storage.ErrInsufficientCredits) {
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
				// Costs above the reservation are capped at what the user has.
				c, after, err := s.Settle(ctx, r, int64(rng.IntN(14)), storage.UsageRecord{Model: "m"})
				if err != nil {
					t.Error(err)
					return
				}
				if after < 0 {
					t.Errorf("balance after a settlement went negative: %d", after)
				}
				charged.Add(c)
			}
		}(uint64(g))
	}
	wg.Wait()
	for _, s := range []storage.Store{a, b} {
		bal := MustBalance(t, s, u.ID)
		if bal.Credits < 0 || bal.Reserved != 0 || initial-bal.Credits != charged.Load() {
			t.Fatalf("final balance %+v, charged %d of %d", bal, charged.Load(), initial)
		}
		if sum := ledgerSum(t, s, u.ID); sum != bal.Credits {
			t.Fatalf("ledger sum %d != balance %d", sum, bal.Credits)
		}
		verifyLedger(t, s)
	}
}

// sharedTopUps: a top-up repeated with one idempotency key through either
// handle, in sequence or at once, adds once and reports one balance.
func sharedTopUps(t *testing.T, a, b storage.Store) {
	ctx := context.Background()
	u, _ := Register(t, a, "idem@example.com", 10)
	if bal, replayed, err := a.AddCredits(ctx, u.ID, 50, storage.LedgerTopUp, "idem-1", ""); err != nil || bal != 60 || replayed {
		t.Fatalf("first top-up = %d %v %v", bal, replayed, err)
	}
	if bal, replayed, err := b.AddCredits(ctx, u.ID, 50, storage.LedgerTopUp, "idem-1", ""); err != nil || bal != 60 || !replayed {
		t.Fatalf("replay on the other handle = %d %v %v", bal, replayed, err)
	}
	var firsts atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		s := []storage.Store{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			bal, replayed, err := s.AddCredits(ctx, u.ID, 7, storage.LedgerTopUp, "idem-2", "")
			if err != nil || bal != 67 {
				t.Errorf("concurrent top-up = %d %v", bal, err)
			}
			if !replayed {
				firsts.Add(1)
			}
		}()
	}
	wg.Wait()
	if firsts.Load() != 1 {
		t.Fatalf("%d top-ups were not replays, want 1", firsts.Load())
	}
	for _, s := range []storage.Store{a, b} {
		if bal := MustBalance(t, s, u.ID); bal.Credits != 67 {
			t.Fatalf("balance after replays: %+v", bal)
		}
		if sum := ledgerSum(t, s, u.ID); sum != 67 {
			t.Fatalf("ledger sum %d", sum)
		}
	}
}

// sharedChangeFeed: a change made through one handle reaches the
// subscribers of both.
func sharedChangeFeed(t *testing.T, a, b storage.Store) {
	ctx := context.Background()
	logA, _ := subscribe(t, a)
	logB, _ := subscribe(t, b)
	kc := makeKeyChanges(t, a, "feed@example.com")
	kc.waitFor(t, logB)
	kc.waitFor(t, logA)
	// And the other way round.
	if _, err := b.UpdateUser(ctx, kc.user.ID, func(x *storage.User) error { x.IsActive = false; return nil }); err != nil {
		t.Fatal(err)
	}
	logA.waitFor(t, "user update from the other handle", func(c storage.Change) bool {
		return c.Kind == storage.ChangeUser && c.UserID == kc.user.ID
	})
	// A top-up on one handle wakes the credit waiters of the other.
	if _, _, err := b.AddCredits(ctx, kc.user.ID, 5, storage.LedgerTopUp, "", ""); err != nil {
		t.Fatal(err)
	}
	logA.waitFor(t, "credits from the other handle", func(c storage.Change) bool {
		return c.Kind == storage.ChangeCredits && c.UserID == kc.user.ID
	})
}

// sharedEveryChange: every change the gateway caches something about, made
// through one handle, reaches the other handle's subscribers naming what
// changed: a key deactivated, its expiry and scopes changed, its secret
// rotated (naming the old hash), the key deleted (naming its hash); a plan
// assigned, a plan's definition changed, admin limits set; an account
// deleted (naming its keys' hashes).
func sharedEveryChange(t *testing.T, a, b storage.Store) {
	ctx := context.Background()
	logB, _ := subscribe(t, b)
	u, k := Register(t, a, "every@example.com", 0)
	gone, gk := Register(t, a, "every-gone@example.com", 0)
	plan := &storage.Plan{Name: "every"}
	if err := a.CreatePlan(ctx, plan); err != nil {
		t.Fatal(err)
	}
	_, plainNew := NewKey(t, "")
	newHash := Keyring.Hash(plainNew)
	updateKey := func(fn func(*storage.APIKey)) func() error {
		return func() error {
			_, err := a.UpdateKey(ctx, k.ID, func(x *storage.APIKey) error { fn(x); return nil })
			return err
		}
	}
	isKey := func(c storage.Change) bool { return c.Kind == storage.ChangeKey && c.KeyID == k.ID }
	names := func(h []byte) func(storage.Change) bool {
		return func(c storage.Change) bool {
			for _, o := range c.OldHashes {
				if bytes.Equal(o, h) {
					return true
				}
			}
			return false
		}
	}
	steps := []struct {
		name string
		do   func() error
		want func(storage.Change) bool
	}{
		{"key deactivation", updateKey(func(x *storage.APIKey) { x.IsActive = false }), isKey},
		{"key expiry change", updateKey(func(x *storage.APIKey) {
			exp := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
			x.ExpirationDate = &exp
		}), isKey},
		{"key scope change", updateKey(func(x *storage.APIKey) { x.Scopes = storage.Scopes{"read": {"models"}} }), isKey},
		{"key rotation", updateKey(func(x *storage.APIKey) {
			x.PrevHash, x.PrevHashExpiresAt, x.Hash = x.Hash, time.Time{}, newHash
		}), func(c storage.Change) bool { return isKey(c) && names(k.Hash)(c) }},
		{"plan assignment", func() error {
			_, err := a.AssignPlan(ctx, u.ID, plan.ID, time.Now(), time.Now().Add(time.Hour))
			return err
		}, func(c storage.Change) bool {
			return c.Kind == storage.ChangeLimits && c.UserID == u.ID && c.PlanID == plan.ID
		}},
		{"plan change", func() error {
			_, err := a.UpdatePlan(ctx, plan.ID, func(p *storage.Plan) error { p.DailyRequestLimit = 7; return nil })
			return err
		}, func(c storage.Change) bool { return c.Kind == storage.ChangePlan && c.PlanID == plan.ID }},
		{"admin limits", func() error { return a.SetUserLimits(ctx, u.ID, storage.RateLimits{RequestsPerMinute: 3}) },
			func(c storage.Change) bool { return c.Kind == storage.ChangeLimits && c.UserID == u.ID }},
		{"key deletion", func() error { return a.DeleteKey(ctx, k.ID) },
			func(c storage.Change) bool { return isKey(c) && names(newHash)(c) }},
		{"account deletion", func() error { return a.DeleteUser(ctx, gone.ID) },
			func(c storage.Change) bool {
				return c.Kind == storage.ChangeUser && c.UserID == gone.ID && names(gk.Hash)(c)
			}},
	}
	for _, st := range steps {
		from := len(logB.snapshot())
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		logB.waitForAfter(t, st.name, from, st.want)
	}
}

// sharedAuditChain: appends through both handles at once make one chain
// that verifies on either.
func sharedAuditChain(t *testing.T, a, b storage.Store) {
	ctx := context.Background()
	const perHandle = 20
	var wg sync.WaitGroup
	for i := 0; i < 2*perHandle; i++ {
		s := []storage.Store{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := &storage.AuditEntry{UserID: int64(i%3 + 1), Action: "key.create", Actor: "admin", Details: map[string]any{"n": i}}
			if err := s.AppendAudit(ctx, e); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, s := range []storage.Store{a, b} {
		if n, err := s.VerifyAudit(ctx); err != nil || n != 2*perHandle {
			t.Fatalf("VerifyAudit = %d, %v", n, err)
		}
		got, err := s.ListAudit(ctx, storage.AuditFilter{Limit: 10 * perHandle})
		if err != nil || len(got) != 2*perHandle {
			t.Fatalf("ListAudit = %d entries, %v", len(got), err)
		}
		ids := map[int64]bool{}
		for _, e := range got {
			if ids[e.ID] {
				t.Fatalf("audit id %d listed twice", e.ID)
			}
			ids[e.ID] = true
		}
	}
}

// sharedLedgerOrder: with top-ups and settlements through both handles,
// each handle reads the same ledger, oldest first, where every entry's
// balance_after is the one before plus its amount and the last is the
// balance.
func sharedLedgerOrder(t *testing.T, a, b storage.Store) {
	ctx := context.Background()
	u, k := Register(t, a, "order@example.com", 1000)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		s := []storage.Store{a, b}[g%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				if i%3 == 0 {
					if _, _, err := s.AddCredits(ctx, u.ID, 5, storage.LedgerTopUp, fmt.Sprintf("g%d-%d", g, i), ""); err != nil {
						t.Error(err)
					}
					continue
				}
				r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 4})
				if err != nil {
					t.Error(err)
					return
				}
				if _, _, err := s.Settle(ctx, r, 3, storage.UsageRecord{Model: "m"}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	want := ledger(t, a, u.ID)
	got := ledger(t, b, u.ID)
	if len(want) != len(got) {
		t.Fatalf("ledger lengths differ between handles: %d, %d", len(want), len(got))
	}
	balance := MustBalance(t, b, u.ID).Credits
	var topUps, charged int64
	for _, e := range want {
		switch e.Kind {
		case storage.LedgerTopUp:
			topUps++
		case storage.LedgerCharge:
			charged += e.Requests // the store may group a user's charges
		}
	}
	if n := len(want); topUps != 8*4 || charged != 8*6 || want[n-1].BalanceAfter != balance {
		t.Fatalf("ledger of %d entries (%d top-ups, charges of %d requests) ends at %d, balance %d",
			n, topUps, charged, want[n-1].BalanceAfter, balance)
	}
	for i := range want {
		if want[i].ID != got[i].ID || want[i].BalanceAfter != got[i].BalanceAfter {
			t.Fatalf("entry %d differs between handles: %+v, %+v", i, want[i], got[i])
		}
		prev := int64(0)
		if i > 0 {
			prev = want[i-1].BalanceAfter
			if want[i].ID <= want[i-1].ID {
				t.Fatalf("ledger not in id order at %d: %d after %d", i, want[i].ID, want[i-1].ID)
			}
		}
		if want[i].BalanceAfter != prev+want[i].Amount {
			t.Fatalf("entry %d: balance_after %d, previous %d, amount %d", i, want[i].BalanceAfter, prev, want[i].Amount)
		}
	}
}
