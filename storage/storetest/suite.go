package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func confUsers(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "Alice@Example.com", 100)
	if u.ID == 0 || k.ID == 0 || k.UserID != u.ID || u.CreatedAt.IsZero() || k.CreatedAt.IsZero() {
		t.Fatalf("ids/timestamps not set: %+v %+v", u, k)
	}
	got, err := s.GetUser(ctx, u.ID)
	if err != nil || got.Email != "Alice@Example.com" {
		t.Fatalf("GetUser = %+v, %v", got, err)
	}
	for _, e := range []string{"alice@example.com", "ALICE@EXAMPLE.COM"} {
		if got, err := s.UserByEmail(ctx, e); err != nil || got.ID != u.ID {
			t.Fatalf("UserByEmail(%s) = %v, %v", e, got, err)
		}
	}
	dup := &storage.User{Email: "alice@EXAMPLE.com"}
	k2, _ := NewKey(t, "primary")
	if err := s.Register(ctx, dup, k2, 5); !errors.Is(err, storage.ErrDuplicate) {
		t.Fatalf("duplicate email: %v", err)
	}
	// The failed registration left nothing behind: its key hash is free.
	if _, err := s.KeyByHash(ctx, k2.Hash); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("failed register left key: %v", err)
	}
	if b := MustBalance(t, s, u.ID); b.Credits != 100 || b.Reserved != 0 {
		t.Fatalf("balance = %+v", b)
	}
	if _, err := s.GetUser(ctx, 9999); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}

	u2, _ := Register(t, s, "bob@example.com", 0)
	if _, err := s.UpdateUser(ctx, u2.ID, func(x *storage.User) error { x.Email = "ALICE@example.com"; return nil }); !errors.Is(err, storage.ErrDuplicate) {
		t.Fatalf("update to taken email: %v", err)
	}
	upd, err := s.UpdateUser(ctx, u2.ID, func(x *storage.User) error { x.Email = "robert@example.com"; x.Name = "Robert"; return nil })
	if err != nil || upd.Name != "Robert" || upd.ID != u2.ID {
		t.Fatalf("UpdateUser = %+v, %v", upd, err)
	}
	if _, err := s.UserByEmail(ctx, "bob@example.com"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("old email still indexed: %v", err)
	}
	if got, err := s.UserByEmail(ctx, "Robert@Example.com"); err != nil || got.ID != u2.ID {
		t.Fatalf("new email: %v %v", got, err)
	}
	boom := errors.New("boom")
	if _, err := s.UpdateUser(ctx, u2.ID, func(x *storage.User) error { x.Name = "X"; return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn error: %v", err)
	}
	if got, _ := s.GetUser(ctx, u2.ID); got.Name != "Robert" {
		t.Fatalf("aborted update was stored: %+v", got)
	}
	Register(t, s, "carol@example.com", 0)
	list, total, err := s.ListUsers(ctx, 1, 1)
	if err != nil || total != 3 || len(list) != 1 || list[0].ID != u2.ID {
		t.Fatalf("ListUsers = %v, %d, %v", list, total, err)
	}
	all, total, _ := s.ListUsers(ctx, 0, 0)
	if len(all) != 3 || total != 3 || all[0].ID != u.ID {
		t.Fatalf("ListUsers all = %v %d", all, total)
	}
}

func confKeys(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, primary := Register(t, s, "k@example.com", 10)
	other, _ := Register(t, s, "o@example.com", 10)

	got, err := s.KeyByHash(ctx, primary.Hash)
	if err != nil || got.ID != primary.ID || !got.IsPrimary {
		t.Fatalf("KeyByHash = %+v, %v", got, err)
	}
	k2, plain2 := NewKey(t, "second")
	k2.UserID = u.ID
	if err := s.CreateKey(ctx, k2); err != nil {
		t.Fatal(err)
	}
	if got, err := s.KeyByHash(ctx, Keyring.Hash(plain2)); err != nil || got.ID != k2.ID {
		t.Fatalf("KeyByHash(second) = %v, %v", got, err)
	}
	dupName, _ := NewKey(t, "second")
	dupName.UserID = u.ID
	if err := s.CreateKey(ctx, dupName); !errors.Is(err, storage.ErrDuplicate) {
		t.Fatalf("duplicate name: %v", err)
	}
	sameNameOtherUser, _ := NewKey(t, "second")
	sameNameOtherUser.UserID = other.ID
	if err := s.CreateKey(ctx, sameNameOtherUser); err != nil {
		t.Fatalf("same name for another user: %v", err)
	}
	dupHash, _ := NewKey(t, "third")
	dupHash.UserID = u.ID
	dupHash.Hash = k2.Hash
	if err := s.CreateKey(ctx, dupHash); !errors.Is(err, storage.ErrDuplicate) {
		t.Fatalf("duplicate hash: %v", err)
	}
	orphan, _ := NewKey(t, "x")
	orphan.UserID = 4242
	if err := s.CreateKey(ctx, orphan); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("key for unknown user: %v", err)
	}
	keys, err := s.ListKeys(ctx, u.ID)
	if err != nil || len(keys) != 2 || keys[0].ID != k2.ID || keys[1].ID != primary.ID {
		t.Fatalf("ListKeys = %v, %v", keys, err)
	}
	all, err := s.AllKeys(ctx)
	if err != nil || len(all) != 4 {
		t.Fatalf("AllKeys = %d, %v", len(all), err)
	}
	// Renaming to a used name fails, to a free one works.
	if _, err := s.UpdateKey(ctx, k2.ID, func(k *storage.APIKey) error { k.KeyName = "primary"; return nil }); !errors.Is(err, storage.ErrDuplicate) {
		t.Fatalf("rename to used name: %v", err)
	}
	upd, err := s.UpdateKey(ctx, k2.ID, func(k *storage.APIKey) error { k.KeyName = "renamed"; k.IsActive = false; return nil })
	if err != nil || upd.KeyName != "renamed" || upd.IsActive {
		t.Fatalf("UpdateKey = %+v, %v", upd, err)
	}
	if got, _ := s.GetKey(ctx, k2.ID); got.KeyName != "renamed" {
		t.Fatalf("GetKey after update: %+v", got)
	}
	if err := s.DeleteKey(ctx, k2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KeyByHash(ctx, k2.Hash); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("deleted key resolves: %v", err)
	}
	if _, err := s.GetKey(ctx, k2.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("deleted key: %v", err)
	}
	if err := s.DeleteKey(ctx, k2.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// The name is free again.
	again, _ := NewKey(t, "renamed")
	again.UserID = u.ID
	if err := s.CreateKey(ctx, again); err != nil {
		t.Fatalf("reuse deleted name: %v", err)
	}
}

func confKeyRotation(t *testing.T, s storage.Store) {
	ctx := context.Background()
	_, k := Register(t, s, "rot@example.com", 0)
	oldHash := k.Hash

	// Rotation with a grace period: both hashes resolve.
	_, plainNew := NewKey(t, "")
	newHash := Keyring.Hash(plainNew)
	rotated, err := s.UpdateKey(ctx, k.ID, func(x *storage.APIKey) error {
		x.PrevHash, x.PrevHashExpiresAt = x.Hash, time.Now().Add(time.Hour)
		x.Hash = newHash
		return nil
	})
	if err != nil || rotated.ID != k.ID {
		t.Fatalf("rotate: %v", err)
	}
	for _, h := range [][]byte{oldHash, newHash} {
		if got, err := s.KeyByHash(ctx, h); err != nil || got.ID != k.ID {
			t.Fatalf("during grace KeyByHash = %v, %v", got, err)
		}
	}
	// Rotation again without grace: only the newest hash resolves.
	_, plain3 := NewKey(t, "")
	hash3 := Keyring.Hash(plain3)
	if _, err := s.UpdateKey(ctx, k.ID, func(x *storage.APIKey) error {
		x.PrevHash, x.PrevHashExpiresAt = x.Hash, time.Now()
		x.Hash = hash3
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, h := range [][]byte{oldHash, newHash} {
		if _, err := s.KeyByHash(ctx, h); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("old hash still resolves: %v", err)
		}
	}
	if got, err := s.KeyByHash(ctx, hash3); err != nil || got.ID != k.ID {
		t.Fatalf("new hash: %v %v", got, err)
	}
}

func confDeleteUser(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "del@example.com", 50)
	k2, _ := NewKey(t, "two")
	k2.UserID = u.ID
	if err := s.CreateKey(ctx, k2); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUser(ctx, u.ID); err != nil {
		t.Fatal(err)
	}
	for _, h := range [][]byte{k.Hash, k2.Hash} {
		if _, err := s.KeyByHash(ctx, h); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("key of deleted user resolves: %v", err)
		}
	}
	if _, err := s.UserByEmail(ctx, "del@example.com"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("email of deleted user: %v", err)
	}
	if keys, _ := s.ListKeys(ctx, u.ID); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
	if err := s.DeleteUser(ctx, u.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// The email can register again, as a new user.
	u2, _ := Register(t, s, "del@example.com", 1)
	if u2.ID == u.ID {
		t.Fatal("id reused")
	}
}

func confPlans(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, _ := Register(t, s, "p@example.com", 0)
	if err := s.CreatePlan(ctx, &storage.Plan{}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("plan without name: %v", err)
	}
	basic := &storage.Plan{Name: "basic", DailyRequestLimit: 100, Models: []string{"gpt-4o*"}, IsActive: true}
	pro := &storage.Plan{Name: "pro", DailyRequestLimit: 1000, IsActive: true}
	for _, p := range []*storage.Plan{basic, pro} {
		if err := s.CreatePlan(ctx, p); err != nil || p.ID == 0 {
			t.Fatalf("CreatePlan: %v", err)
		}
	}
	if got, err := s.GetPlan(ctx, basic.ID); err != nil || got.Name != "basic" || got.Models[0] != "gpt-4o*" {
		t.Fatalf("GetPlan = %+v, %v", got, err)
	}
	if _, err := s.UpdatePlan(ctx, pro.ID, func(p *storage.Plan) error { p.IsActive = false; return nil }); err != nil {
		t.Fatal(err)
	}
	plans, err := s.ListPlans(ctx)
	if err != nil || len(plans) != 2 || plans[0].ID != basic.ID || plans[1].IsActive {
		t.Fatalf("ListPlans = %v, %v", plans, err)
	}
	if _, err := s.ActiveUserPlan(ctx, u.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("no plan yet: %v", err)
	}
	now := time.Now()
	if _, err := s.AssignPlan(ctx, u.ID, 999, now, now.Add(time.Hour)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown plan: %v", err)
	}
	if _, err := s.AssignPlan(ctx, 999, basic.ID, now, now.Add(time.Hour)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
	up1, err := s.AssignPlan(ctx, u.ID, basic.ID, now, now.Add(time.Hour))
	if err != nil || !up1.ActiveAt(now) {
		t.Fatalf("AssignPlan = %+v, %v", up1, err)
	}
	up2, err := s.AssignPlan(ctx, u.ID, pro.ID, now, now.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	act, err := s.ActiveUserPlan(ctx, u.ID)
	if err != nil || act.ID != up2.ID || act.PlanID != pro.ID {
		t.Fatalf("ActiveUserPlan = %+v, %v", act, err)
	}
	if act.ActiveAt(now.Add(3 * time.Hour)) {
		t.Fatal("plan active after its end")
	}
}

func confLimits(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, _ := Register(t, s, "l@example.com", 0)
	if _, err := s.UserLimits(ctx, u.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("no limits yet: %v", err)
	}
	l := storage.RateLimits{RequestsPerMinute: 10, TokensPerDay: 5000}
	if err := s.SetUserLimits(ctx, u.ID, l); err != nil {
		t.Fatal(err)
	}
	if got, err := s.UserLimits(ctx, u.ID); err != nil || got != l {
		t.Fatalf("UserLimits = %+v, %v", got, err)
	}
	if err := s.SetUserLimits(ctx, 999, l); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("limits for unknown user: %v", err)
	}
}

func confReserveSettle(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "r@example.com", 100)
	r1, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 60})
	if err != nil {
		t.Fatal(err)
	}
	if b := MustBalance(t, s, u.ID); b.Credits != 100 || b.Reserved != 60 || b.Available() != 40 {
		t.Fatalf("after reserve: %+v", b)
	}
	if _, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 41}); !errors.Is(err, storage.ErrInsufficientCredits) {
		t.Fatalf("over-reserve: %v", err)
	}
	r2, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 40})
	if err != nil {
		t.Fatal(err)
	}
	if r1.ID == r2.ID {
		t.Fatal("reservation ids not unique")
	}
	if n := s.OpenReservations(); n != 2 {
		t.Fatalf("open = %d", n)
	}
	if _, _, err := s.Settle(ctx, r1, -1, storage.UsageRecord{}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("negative cost: %v", err)
	}
	charged, after, err := s.Settle(ctx, r1, 25, storage.UsageRecord{Model: "m", TotalTokens: 25, RequestID: "req-1", Status: 200})
	if err != nil || charged != 25 || after != 75 {
		t.Fatalf("Settle = %d, %d, %v", charged, after, err)
	}
	if _, _, err := s.Settle(ctx, r1, 1, storage.UsageRecord{}); !errors.Is(err, storage.ErrAlreadySettled) {
		t.Fatalf("second settle: %v", err)
	}
	if err := s.Refund(ctx, r1); !errors.Is(err, storage.ErrAlreadySettled) {
		t.Fatalf("refund after settle: %v", err)
	}
	if err := s.Refund(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if err := s.Refund(ctx, r2); !errors.Is(err, storage.ErrAlreadySettled) {
		t.Fatalf("second refund: %v", err)
	}
	if _, _, err := s.Settle(ctx, r2, 1, storage.UsageRecord{}); !errors.Is(err, storage.ErrAlreadySettled) {
		t.Fatalf("settle after refund: %v", err)
	}
	if b := MustBalance(t, s, u.ID); b.Credits != 75 || b.Reserved != 0 {
		t.Fatalf("after settle+refund: %+v", b)
	}
	if n := s.OpenReservations(); n != 0 {
		t.Fatalf("open = %d", n)
	}
	// A zero-cost settlement counts the request and records usage, without a ledger entry.
	r3, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 5})
	if err != nil {
		t.Fatal(err)
	}
	if charged, after, err := s.Settle(ctx, r3, 0, storage.UsageRecord{Model: "m", RequestID: "req-0"}); err != nil || charged != 0 || after != 75 {
		t.Fatalf("zero settle = %d %d %v", charged, after, err)
	}
	entries := ledger(t, s, u.ID)
	if len(entries) != 2 {
		t.Fatalf("ledger = %+v", entries)
	}
	if e := entries[1]; e.Kind != storage.LedgerCharge || e.Amount != -25 || e.BalanceAfter != 75 || e.RequestID != "req-1" || e.KeyID != k.ID {
		t.Fatalf("charge entry = %+v", e)
	}
	if entries[0].Kind != storage.LedgerGrant || entries[0].Amount != 100 {
		t.Fatalf("grant entry = %+v", entries[0])
	}
	usage, err := s.ListUsage(ctx, storage.UsageFilter{UserID: u.ID})
	if err != nil || len(usage) != 2 || usage[0].RequestID != "req-0" || usage[1].Credits != 25 {
		t.Fatalf("usage = %+v, %v", usage, err)
	}
	key, err := s.GetKey(ctx, k.ID)
	if err != nil || key.RequestsUsed != 2 || key.LastUsedAt == nil {
		t.Fatalf("key counters = %+v, %v", key, err)
	}
	if _, err := s.Reserve(ctx, storage.ReserveRequest{UserID: 4242, Credits: 1}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("reserve for unknown user: %v", err)
	}
	if _, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, Credits: -1}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("negative reserve: %v", err)
	}
}

func confSettleCap(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "cap@example.com", 30)
	r1, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	// r1's real cost is far above its reservation: it may take everything
	// except what r2 holds.
	charged, after, err := s.Settle(ctx, r1, 1000, storage.UsageRecord{})
	if err != nil || charged != 20 || after != 10 {
		t.Fatalf("capped settle = %d, %d, %v", charged, after, err)
	}
	charged, after, err = s.Settle(ctx, r2, 1000, storage.UsageRecord{})
	if err != nil || charged != 10 || after != 0 {
		t.Fatalf("second capped settle = %d, %d, %v", charged, after, err)
	}
	if _, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, Credits: 1}); !errors.Is(err, storage.ErrInsufficientCredits) {
		t.Fatalf("reserve at zero: %v", err)
	}
	if sum := ledgerSum(t, s, u.ID); sum != 0 {
		t.Fatalf("ledger sum = %d", sum)
	}
}

func confConcurrent(t *testing.T, s storage.Store) {
	ctx := context.Background()
	const initial = 100
	u, k := Register(t, s, "c@example.com", initial)
	var charged atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			for i := 0; i < 20; i++ {
				r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 7})
				if errors.Is(err, storage.ErrInsufficientCredits) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if b := MustBalance(t, s, u.ID); b.Credits < 0 || b.Available() < 0 {
					t.Errorf("balance went negative: %+v", b)
				}
				if rng.IntN(4) == 0 {
					if err := s.Refund(ctx, r); err != nil {
						t.Error(err)
					}
					continue
				}
				c, _, err := s.Settle(ctx, r, int64(rng.IntN(8)), storage.UsageRecord{Model: "m"})
				if err != nil {
					t.Error(err)
					return
				}
				charged.Add(c)
			}
		}(uint64(g))
	}
	wg.Wait()
	b := MustBalance(t, s, u.ID)
	if b.Credits < 0 || b.Reserved != 0 {
		t.Fatalf("final balance %+v", b)
	}
	if initial-b.Credits != charged.Load() {
		t.Fatalf("charged %d, balance moved %d", charged.Load(), initial-b.Credits)
	}
	if sum := ledgerSum(t, s, u.ID); sum != b.Credits {
		t.Fatalf("ledger sum %d != balance %d", sum, b.Credits)
	}
	verifyLedger(t, s)
}

func confMaxRequests(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "max@example.com", 1_000_000)
	const limit = 10
	var ok, limited atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var held []*storage.Reservation
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: limit})
			switch {
			case errors.Is(err, storage.ErrRequestLimit):
				limited.Add(1)
			case err != nil:
				t.Error(err)
			default:
				ok.Add(1)
				mu.Lock()
				held = append(held, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok.Load() != limit || limited.Load() != 32-limit {
		t.Fatalf("ok %d limited %d", ok.Load(), limited.Load())
	}
	// Refunding frees a slot; settling uses it up for good.
	if err := s.Refund(ctx, held[0]); err != nil {
		t.Fatal(err)
	}
	r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: limit})
	if err != nil {
		t.Fatalf("slot after refund: %v", err)
	}
	held[0] = r
	for _, r := range held {
		if _, _, err := s.Settle(ctx, r, 1, storage.UsageRecord{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: limit}); !errors.Is(err, storage.ErrRequestLimit) {
		t.Fatalf("after %d settled: %v", limit, err)
	}
	if got, err := s.GetKey(ctx, k.ID); err != nil || got.RequestsUsed != limit {
		t.Fatalf("requests_used = %v, %v", got, err)
	}
	// A higher cap lets more through.
	if r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: limit + 1}); err != nil {
		t.Fatalf("raised cap: %v", err)
	} else if err := s.Refund(ctx, r); err != nil {
		t.Fatal(err)
	}
}

// confFlexibleReserve: a flexible reservation takes its share of the
// available balance in one step (ReserveAmount), and a refusal says whether
// the balance or open reservations are short.
func confFlexibleReserve(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "flex@example.com", 100)
	// Alone: everything the balance affords, up to Credits.
	r1, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 500, MinCredits: 10})
	if err != nil || r1.Amount != 100 || r1.Available != 0 {
		t.Fatalf("alone: %+v, %v", r1, err)
	}
	// Everything is held: the refusal names the holds, not the balance.
	_, err = s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 500, MinCredits: 10})
	var short *storage.CreditShortage
	if !errors.As(err, &short) || !errors.Is(err, storage.ErrInsufficientCredits) {
		t.Fatalf("held: %v", err)
	}
	if short.BalanceShort() || short.Needed != 10 || short.Credits != 100 || short.Reserved != 100 || short.Holds != 1 {
		t.Fatalf("held shortage = %+v", short)
	}
	if _, _, err := s.Settle(ctx, r1, 40, storage.UsageRecord{Model: "m", RequestID: "flex-1"}); err != nil {
		t.Fatal(err)
	}
	// 60 left, two waiting behind: a third each.
	r2, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 500, MinCredits: 10, Waiting: 2})
	if err != nil || r2.Amount != 20 || r2.Available != 40 {
		t.Fatalf("with two waiting: %+v, %v", r2, err)
	}
	// 40 left, one open reservation: half of it.
	r3, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 500, MinCredits: 10})
	if err != nil || r3.Amount != 20 {
		t.Fatalf("beside one hold: %+v, %v", r3, err)
	}
	// A share below the minimum holds the minimum; a fixed request its cost.
	r4, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 500, MinCredits: 15, Waiting: 5})
	if err != nil || r4.Amount != 15 {
		t.Fatalf("minimum: %+v, %v", r4, err)
	}
	if b := MustBalance(t, s, u.ID); b.Credits != 60 || b.Reserved != 55 {
		t.Fatalf("balance = %+v", b)
	}
	// The balance itself is short: no wait can help.
	_, err = s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 70})
	if !errors.As(err, &short) || !short.BalanceShort() || short.Needed != 70 || short.Holds != 3 {
		t.Fatalf("balance short: %v", err)
	}
	for _, r := range []*storage.Reservation{r2, r3, r4} {
		if err := s.Refund(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if b := MustBalance(t, s, u.ID); b.Credits != 60 || b.Reserved != 0 {
		t.Fatalf("after refunds: %+v", b)
	}
	if _, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, Credits: 5, MinCredits: -1}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("negative minimum: %v", err)
	}
}

func confAddCredits(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, _ := Register(t, s, "a@example.com", 10)
	bal, replayed, err := s.AddCredits(ctx, u.ID, 50, storage.LedgerTopUp, "idem-1", "top up")
	if err != nil || bal != 60 || replayed {
		t.Fatalf("AddCredits = %d %v %v", bal, replayed, err)
	}
	bal, replayed, err = s.AddCredits(ctx, u.ID, 50, storage.LedgerTopUp, "idem-1", "top up")
	if err != nil || bal != 60 || !replayed {
		t.Fatalf("replay = %d %v %v", bal, replayed, err)
	}
	if bal, _, err := s.AddCredits(ctx, u.ID, 5, storage.LedgerTopUp, "", ""); err != nil || bal != 65 {
		t.Fatalf("no idempotency key = %d %v", bal, err)
	}
	if _, _, err := s.AddCredits(ctx, u.ID, -5, storage.LedgerTopUp, "", ""); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("negative top-up: %v", err)
	}
	if _, _, err := s.AddCredits(ctx, u.ID, -66, storage.LedgerAdjust, "", ""); !errors.Is(err, storage.ErrInsufficientCredits) {
		t.Fatalf("adjust below zero: %v", err)
	}
	if bal, _, err := s.AddCredits(ctx, u.ID, -65, storage.LedgerAdjust, "", "reset"); err != nil || bal != 0 {
		t.Fatalf("adjust to zero = %d %v", bal, err)
	}
	if _, _, err := s.AddCredits(ctx, 4242, 5, storage.LedgerTopUp, "", ""); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
	entries, err := s.Ledger(ctx, u.ID)
	if err != nil || len(entries) != 4 {
		t.Fatalf("ledger = %+v %v", entries, err)
	}
	if entries[1].IdempotencyKey != "idem-1" || entries[1].Kind != storage.LedgerTopUp || entries[3].Kind != storage.LedgerAdjust {
		t.Fatalf("entries = %+v", entries)
	}
	// Concurrent replays of one key add once.
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := s.AddCredits(ctx, u.ID, 7, storage.LedgerTopUp, "idem-2", ""); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if b := MustBalance(t, s, u.ID); b.Credits != 7 {
		t.Fatalf("after concurrent replays: %+v", b)
	}
	if sum := ledgerSum(t, s, u.ID); sum != 7 {
		t.Fatalf("ledger sum %d", sum)
	}
}

func confUsage(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "usage@example.com", 1000)
	u2, k2 := Register(t, s, "usage2@example.com", 1000)
	days := []time.Time{
		time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 3, 10, 0, 0, 0, time.UTC),
	}
	for i, d := range days {
		for j, who := range []struct {
			uid, kid int64
		}{{u.ID, k.ID}, {u2.ID, k2.ID}} {
			r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: who.uid, KeyID: who.kid, Credits: 10})
			if err != nil {
				t.Fatal(err)
			}
			rec := storage.UsageRecord{Model: "m", TotalTokens: int64(i), RequestID: fmt.Sprintf("r%d-%d", i, j), Time: d}
			if _, _, err := s.Settle(ctx, r, 3, rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := s.ListUsage(ctx, storage.UsageFilter{UserID: u.ID})
	if err != nil || len(got) != 3 || got[0].RequestID != "r2-0" || got[2].RequestID != "r0-0" {
		t.Fatalf("ListUsage(user) = %+v, %v", got, err)
	}
	got, _ = s.ListUsage(ctx, storage.UsageFilter{KeyID: k2.ID, Limit: 2})
	if len(got) != 2 || got[0].RequestID != "r2-1" || got[0].KeyID != k2.ID {
		t.Fatalf("ListUsage(key, limit) = %+v", got)
	}
	got, _ = s.ListUsage(ctx, storage.UsageFilter{Since: days[1].Add(-time.Minute), Until: days[1].Add(time.Minute)})
	if len(got) != 2 || got[0].Time.Day() != 2 || got[1].Time.Day() != 2 {
		t.Fatalf("ListUsage(window) = %+v", got)
	}
	var order []string
	got, _ = s.ListUsage(ctx, storage.UsageFilter{Until: days[2].Add(48 * time.Hour)})
	for _, r := range got {
		order = append(order, r.RequestID)
	}
	if strings.Join(order, ",") != "r2-1,r2-0,r1-1,r1-0,r0-1,r0-0" {
		t.Fatalf("ListUsage(all) order = %v", order)
	}
	got, _ = s.ListUsage(ctx, storage.UsageFilter{UserID: u2.ID, Until: days[1].Add(time.Hour), Limit: 5})
	if len(got) != 2 || got[0].RequestID != "r1-1" || got[1].RequestID != "r0-1" {
		t.Fatalf("ListUsage(user, until) = %+v", got)
	}
	got, _ = s.ListUsage(ctx, storage.UsageFilter{Since: days[2].Add(time.Hour)})
	if len(got) != 0 {
		t.Fatalf("ListUsage(since after last) = %+v", got)
	}
	n, err := s.PruneUsage(ctx, days[2], time.Time{})
	if err != nil || n != 4 {
		t.Fatalf("PruneUsage = %d, %v", n, err)
	}
	got, _ = s.ListUsage(ctx, storage.UsageFilter{})
	if len(got) != 2 || got[0].Time.Day() != 3 {
		t.Fatalf("after prune = %+v", got)
	}
	// Pruning usage leaves the ledger intact.
	if sum := ledgerSum(t, s, u.ID); sum != 991 {
		t.Fatalf("ledger sum %d", sum)
	}
}

// usageSums adds up what ListUsage returns for the user in the UTC day of
// day and the UTC month of day.
func usageSums(t *testing.T, s storage.Store, uid int64, day time.Time) (dReq, dTok, mReq, mTok int64) {
	t.Helper()
	day = day.UTC()
	d0 := time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, time.UTC)
	m0 := time.Date(day.Year(), day.Month(), 1, 0, 0, 0, 0, time.UTC)
	recs, err := s.ListUsage(context.Background(), storage.UsageFilter{UserID: uid, Since: m0, Until: m0.AddDate(0, 1, 0).Add(-1)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		mReq++
		mTok += r.TotalTokens
		if !r.Time.Before(d0) && r.Time.Before(d0.AddDate(0, 0, 1)) {
			dReq++
			dTok += r.TotalTokens
		}
	}
	return
}

// checkTotals compares UsageTotals with the ListUsage sums for each day.
func checkTotals(t *testing.T, s storage.Store, uids []int64, days []time.Time) {
	t.Helper()
	for _, uid := range uids {
		for _, d := range days {
			dr, dt, mr, mt, err := s.UsageTotals(context.Background(), uid, d, d)
			if err != nil {
				t.Fatal(err)
			}
			wdr, wdt, wmr, wmt := usageSums(t, s, uid, d)
			if dr != wdr || dt != wdt || mr != wmr || mt != wmt {
				t.Fatalf("user %d %s: UsageTotals = %d/%d day, %d/%d month; ListUsage sums %d/%d, %d/%d",
					uid, d.Format(time.DateOnly), dr, dt, mr, mt, wdr, wdt, wmr, wmt)
			}
		}
	}
}

func confUsageTotals(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "totals@example.com", 1_000_000)
	u2, k2 := Register(t, s, "totals2@example.com", 1_000_000)
	days := []time.Time{
		time.Date(2026, 1, 30, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(2026, 1, 31, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 2, 1, 22, 0, 0, 0, time.FixedZone("UTC-5", -5*3600)), // Feb 2 UTC
		time.Date(2026, 3, 15, 12, 0, 0, 0, time.UTC),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		uid, kid := u.ID, k.ID
		if i%3 == 0 {
			uid, kid = u2.ID, k2.ID
		}
		d := days[rng.IntN(len(days))]
		tokens := rng.Int64N(1000)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: uid, KeyID: kid, Credits: 10})
			if err != nil {
				t.Error(err)
				return
			}
			if _, _, err := s.Settle(ctx, r, 1, storage.UsageRecord{Model: "m", TotalTokens: tokens, Time: d}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// A refund counts nothing.
	r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Refund(ctx, r); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, []int64{u.ID, u2.ID}, days)
	if _, _, mr, _, _ := s.UsageTotals(ctx, u.ID, days[0], days[0]); mr == 0 {
		t.Fatal("no requests counted in January")
	}
	// A user or day without records gives zeros.
	empty := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	if a, b, c, d, err := s.UsageTotals(ctx, u.ID, empty, empty); err != nil || a != 0 || b != 0 || c != 0 || d != 0 {
		t.Fatalf("empty period: %d %d %d %d %v", a, b, c, d, err)
	}
	// Pruning the rollups drops the totals of the pruned days with them.
	if _, err := s.PruneUsage(ctx, days[2], days[2]); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, []int64{u.ID, u2.ID}, days)
}

func confAudit(t *testing.T, s storage.Store) {
	ctx := context.Background()
	if n, err := s.VerifyAudit(ctx); err != nil || n != 0 {
		t.Fatalf("empty chain: %d %v", n, err)
	}
	_, plain := NewKey(t, "")
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var ids []int64
	for i := 0; i < 5; i++ {
		e := &storage.AuditEntry{UserID: int64(1 + i%2), KeyID: int64(10 + i), Action: []string{"key.create", "key.rotate"}[i%2],
			Actor: "admin", IP: "127.0.0.1", Time: base.Add(time.Duration(i) * time.Hour),
			Details: map[string]any{"n": i, "big": int64(1) << 40, "nested": map[string]any{"k": []string{"a", "b"}}, "note": "key " + plain}}
		if err := s.AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
		if e.ID == 0 || e.Hash == "" || (i == 0) != (e.PrevHash == "") {
			t.Fatalf("entry %d: %+v", i, e)
		}
		if strings.Contains(fmt.Sprint(e.Details), plain) {
			t.Fatalf("plaintext key in audit details: %v", e.Details)
		}
		ids = append(ids, e.ID)
	}
	if n, err := s.VerifyAudit(ctx); err != nil || n != 5 {
		t.Fatalf("VerifyAudit = %d, %v", n, err)
	}
	got, err := s.ListAudit(ctx, storage.AuditFilter{UserID: 1})
	if err != nil || len(got) != 3 || got[0].ID != ids[4] {
		t.Fatalf("ListAudit(user) = %+v %v", got, err)
	}
	got, _ = s.ListAudit(ctx, storage.AuditFilter{Actions: []string{"key.rotate"}, Limit: 1})
	if len(got) != 1 || got[0].ID != ids[3] {
		t.Fatalf("ListAudit(action) = %+v", got)
	}
	got, _ = s.ListAudit(ctx, storage.AuditFilter{Since: base.Add(90 * time.Minute), Until: base.Add(3 * time.Hour)})
	if len(got) != 2 || got[0].ID != ids[3] || got[1].ID != ids[2] {
		t.Fatalf("ListAudit(window) = %+v", got)
	}
	got, _ = s.ListAudit(ctx, storage.AuditFilter{KeyID: 12})
	if len(got) != 1 || got[0].ID != ids[2] {
		t.Fatalf("ListAudit(key) = %+v", got)
	}
	var buf bytes.Buffer
	if err := s.ExportAudit(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 5 || !strings.Contains(lines[0], `"prev_hash":""`) {
		t.Fatalf("export = %q", buf.String())
	}
	if strings.Contains(buf.String(), plain) || strings.Contains(buf.String(), plain[8:]) {
		t.Fatal("plaintext key in exported audit")
	}
	if err := s.AppendAudit(ctx, &storage.AuditEntry{}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("entry without action: %v", err)
	}
}

func confSubscribe(t *testing.T, s storage.Store) {
	ctx := context.Background()
	log, unsub := subscribe(t, s)
	kc := makeKeyChanges(t, s, "sub@example.com")
	kc.waitFor(t, log)
	// A top-up is a change too: requests waiting for credits retry on it.
	if _, _, err := s.AddCredits(ctx, kc.user.ID, 5, storage.LedgerTopUp, "", ""); err != nil {
		t.Fatal(err)
	}
	log.waitFor(t, "credits", func(c storage.Change) bool { return c.Kind == storage.ChangeCredits && c.UserID == kc.user.ID })

	// After unsubscribing nothing more arrives: a second subscription sees
	// the next change, the first does not.
	unsub()
	seen := len(log.snapshot())
	later, _ := subscribe(t, s)
	if _, err := s.UpdateUser(ctx, kc.user.ID, func(*storage.User) error { return nil }); err != nil {
		t.Fatal(err)
	}
	later.waitFor(t, "user update", func(c storage.Change) bool { return c.Kind == storage.ChangeUser && c.UserID == kc.user.ID })
	if got := log.snapshot(); len(got) != seen {
		t.Errorf("change recorded after unsubscribe: %+v", got[seen:])
	}
}

// keyChanges are the mutations the change feed must report: a user and
// key registered, the key rotated, the user's limits set, a plan created
// and the key deleted.
type keyChanges struct {
	user        *storage.User
	key         *storage.APIKey
	rotatedHash []byte
	planID      int64
}

// makeKeyChanges makes them through s, on a user registered with email.
func makeKeyChanges(t *testing.T, s storage.Store, email string) keyChanges {
	t.Helper()
	ctx := context.Background()
	u, k := Register(t, s, email, 0)
	_, plainNew := NewKey(t, "")
	kc := keyChanges{user: u, key: k, rotatedHash: Keyring.Hash(plainNew)}
	if _, err := s.UpdateKey(ctx, k.ID, func(x *storage.APIKey) error {
		x.PrevHash, x.PrevHashExpiresAt, x.Hash = x.Hash, time.Time{}, kc.rotatedHash
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUserLimits(ctx, u.ID, storage.RateLimits{RequestsPerDay: 1}); err != nil {
		t.Fatal(err)
	}
	p := &storage.Plan{Name: "feed"}
	if err := s.CreatePlan(ctx, p); err != nil {
		t.Fatal(err)
	}
	kc.planID = p.ID
	if err := s.DeleteKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	return kc
}

// waitFor waits until log holds every change kc must deliver (made on
// any handle of the database): the key's creation, its rotation naming
// the old hash, the user's limits, the plan, and the key's deletion
// naming the current hash.
func (kc keyChanges) waitFor(t *testing.T, log *changeLog) {
	t.Helper()
	k := kc.key
	log.waitFor(t, "key creation", func(c storage.Change) bool {
		return c.Kind == storage.ChangeKey && c.KeyID == k.ID && len(c.OldHashes) == 0
	})
	log.waitFor(t, "key rotation", func(c storage.Change) bool {
		return c.Kind == storage.ChangeKey && c.KeyID == k.ID && len(c.OldHashes) == 1 && bytes.Equal(c.OldHashes[0], k.Hash)
	})
	log.waitFor(t, "limits", func(c storage.Change) bool { return c.Kind == storage.ChangeLimits && c.UserID == kc.user.ID })
	log.waitFor(t, "plan", func(c storage.Change) bool { return c.Kind == storage.ChangePlan && c.PlanID == kc.planID })
	log.waitFor(t, "key deletion", func(c storage.Change) bool {
		return c.Kind == storage.ChangeKey && c.KeyID == k.ID && len(c.OldHashes) > 0 && bytes.Equal(c.OldHashes[0], kc.rotatedHash)
	})
}

// confBackup checks the hot backup of a store that offers one, and Ping.
func confBackup(t *testing.T, s storage.Store) {
	ctx := context.Background()
	Register(t, s, "b@example.com", 5)
	if b, ok := s.(storage.HotBackuper); ok {
		var buf bytes.Buffer
		n, err := b.Backup(ctx, &buf)
		if err != nil || n == 0 || int64(buf.Len()) != n {
			t.Fatalf("Backup = %d, %v (buf %d)", n, err, buf.Len())
		}
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}
