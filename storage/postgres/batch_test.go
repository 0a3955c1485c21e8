package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// batchItem is the settlement of res at cost, as Settle queues it.
func batchItem(t *testing.T, s *Store, res *storage.Reservation, cost int64) *settleItem {
	t.Helper()
	call, err := s.settleCall(res, cost, storage.UsageRecord{Model: "m", RequestID: fmt.Sprint("r", res.ID)})
	if err != nil {
		t.Fatal(err)
	}
	return &settleItem{userID: res.UserID, keyID: res.KeyID, call: call, done: make(chan struct{})}
}

func mustReserve(t *testing.T, s *Store, user, key, credits int64) *storage.Reservation {
	t.Helper()
	r, err := s.Reserve(context.Background(), storage.ReserveRequest{UserID: user, KeyID: key, Credits: credits})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// One flush settles the settlements of several users in one transaction,
// each exactly once: the same hold twice in one batch is charged once.
func TestSettleBatch(t *testing.T) {
	s := openNode(t, pgtest.DatabaseURL(t), "batch")
	u1, k1 := storetest.Register(t, s, "b1@example.com", 100)
	u2, k2 := storetest.Register(t, s, "b2@example.com", 100)
	r1 := mustReserve(t, s, u1.ID, k1.ID, 20)
	r2 := mustReserve(t, s, u2.ID, k2.ID, 20)
	r3 := mustReserve(t, s, u1.ID, k1.ID, 20)
	items := []*settleItem{batchItem(t, s, r2, 5), batchItem(t, s, r1, 7), batchItem(t, s, r3, 9), batchItem(t, s, r1, 7)}
	s.batcher.flush(items)
	statuses := map[string]int{}
	for _, it := range items {
		if it.err != nil {
			t.Fatalf("settlement of hold %v: %v", it.call.args[0], it.err)
		}
		statuses[it.status]++
	}
	if statuses["ok"] != 3 || statuses["settled"] != 1 {
		t.Fatalf("statuses = %v, want 3 ok and 1 settled (the repeat)", statuses)
	}
	if b := storetest.MustBalance(t, s, u1.ID); b.Credits != 84 || b.Reserved != 0 {
		t.Fatalf("user 1: %+v, want 84 credits, nothing reserved", b)
	}
	if b := storetest.MustBalance(t, s, u2.ID); b.Credits != 95 || b.Reserved != 0 {
		t.Fatalf("user 2: %+v, want 95 credits, nothing reserved", b)
	}
	mustVerify(t, s)
}

// A settlement that fails for real (here: a usage document that is not
// JSON) aborts the batch's transaction; the others are then applied one by
// one and succeed, and only the bad one reports its error.
func TestSettleBatchBadItem(t *testing.T) {
	s := openNode(t, pgtest.DatabaseURL(t), "batch")
	u, k := storetest.Register(t, s, "bad@example.com", 100)
	good1, bad, good2 := mustReserve(t, s, u.ID, k.ID, 10), mustReserve(t, s, u.ID, k.ID, 10), mustReserve(t, s, u.ID, k.ID, 10)
	items := []*settleItem{batchItem(t, s, good1, 3), batchItem(t, s, bad, 4), batchItem(t, s, good2, 5)}
	items[1].call.args[8] = "not json"
	s.batcher.flush(items)
	for _, it := range items {
		switch {
		case it == items[1] && it.err == nil:
			t.Fatal("the bad settlement reported no error")
		case it != items[1] && (it.err != nil || it.status != "ok"):
			t.Fatalf("a good settlement failed with the bad one: %q, %v", it.status, it.err)
		}
	}
	if errors.Is(items[1].err, storage.ErrUnavailable) {
		t.Fatalf("a bad document is no outage: %v", items[1].err)
	}
	// The bad one's hold is still open: its reservation can be refunded.
	if b := storetest.MustBalance(t, s, u.ID); b.Credits != 92 || b.Reserved != 10 {
		t.Fatalf("balance %+v, want 92 credits and the bad one's 10 reserved", b)
	}
	if err := s.Refund(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, s)
}

// Many concurrent settlements through Settle, with a commit window so that
// they share transactions: every one is charged exactly once, and what
// Settle answers is committed (another node reads it at once).
func TestSettleConcurrent(t *testing.T) {
	dsn := pgtest.DatabaseURL(t)
	s := mustOpen(t, dsn, Options{Node: "batch", Lease: time.Minute, CommitWindow: 2 * time.Millisecond})
	other := openNode(t, dsn, "reader")
	const users, perUser = 4, 25
	ids, keys := make([]int64, users), make([]int64, users)
	for i := range ids {
		u, k := storetest.Register(t, s, fmt.Sprintf("c%d@example.com", i), 10_000)
		ids[i], keys[i] = u.ID, k.ID
	}
	var wg sync.WaitGroup
	errs := make(chan error, users*perUser)
	for i := range users * perUser {
		wg.Go(func() {
			ctx := context.Background()
			r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: ids[i%users], KeyID: keys[i%users], Credits: 50})
			if err != nil {
				errs <- err
				return
			}
			charged, _, err := s.Settle(ctx, r, int64(i%7+1), storage.UsageRecord{Model: "m", RequestID: fmt.Sprint("c", i)})
			if err == nil && charged != int64(i%7+1) {
				err = fmt.Errorf("request %d charged %d", i, charged)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for u := range users {
		want := int64(10_000)
		for i := u; i < users*perUser; i += users {
			want -= int64(i%7 + 1)
		}
		if b := storetest.MustBalance(t, other, ids[u]); b.Credits != want || b.Reserved != 0 {
			t.Fatalf("user %d: %+v, want %d credits, nothing reserved", u, b, want)
		}
	}
	if n := s.OpenReservations(); n != 0 {
		t.Fatalf("open reservations = %d", n)
	}
	mustVerify(t, other)
}

// A reservation committed asynchronously can be lost in a database crash,
// and the hold id sequence can fall back with it, handing the same id to
// another request. The lost reservation's settlement and refund must not
// end that other request's hold: they name the hold's user and key.
func TestSettleReusedHoldID(t *testing.T) {
	ctx := context.Background()
	opts := Options{Node: "async", Lease: time.Minute, AsyncReserve: true}
	s := mustOpen(t, pgtest.DatabaseURL(t), opts)
	u1, k1 := storetest.Register(t, s, "lost@example.com", 100)
	u2, k2 := storetest.Register(t, s, "other@example.com", 100)
	lost := mustReserve(t, s, u1.ID, k1.ID, 30)
	// The crash, as the database sees it: the hold never was, and the
	// sequence hands its id out again.
	if _, err := s.pool.Exec(ctx, `SELECT gw_refund($1)`, int64(lost.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `SELECT setval(pg_get_serial_sequence('gw_holds', 'id'), $1, false)`, int64(lost.ID)); err != nil {
		t.Fatal(err)
	}
	again := mustReserve(t, s, u2.ID, k2.ID, 40)
	if again.ID != lost.ID {
		t.Fatalf("the sequence gave %d, want the lost id %d", again.ID, lost.ID)
	}
	if _, _, err := s.Settle(ctx, lost, 25, storage.UsageRecord{Model: "m"}); !errors.Is(err, storage.ErrAlreadySettled) {
		t.Fatalf("settling the lost reservation: %v, want ErrAlreadySettled", err)
	}
	if err := s.Refund(ctx, lost); !errors.Is(err, storage.ErrAlreadySettled) {
		t.Fatalf("refunding the lost reservation: %v, want ErrAlreadySettled", err)
	}
	if b := storetest.MustBalance(t, s, u2.ID); b.Credits != 100 || b.Reserved != 40 {
		t.Fatalf("the other user's hold was touched: %+v", b)
	}
	if charged, _, err := s.Settle(ctx, again, 25, storage.UsageRecord{Model: "m"}); err != nil || charged != 25 {
		t.Fatalf("settling the hold that has the id now: %d, %v", charged, err)
	}
	if b := storetest.MustBalance(t, s, u1.ID); b.Credits != 100 || b.Reserved != 0 {
		t.Fatalf("the lost reservation's user: %+v, want nothing charged, nothing reserved", b)
	}
	mustVerify(t, s)
}
