package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// The ledger is grouped in batches of ids, from where the last run
// stopped, up to the first entry that is not old yet: entries newer than
// the cut, and every entry after one, are left as they are; a later run
// goes on from there. Balances stay the running sums throughout.
func TestLedgerGroupedInBatches(t *testing.T) {
	ctx := context.Background()
	defer func(b int64) { ledgerBatch = b }(ledgerBatch)
	ledgerBatch = 4
	s := openNode(t, pgtest.DatabaseURL(t), "grouping")
	clock := time.Now().UTC().Add(-48 * time.Hour)
	s.now = func() time.Time { return clock }
	u, k := storetest.Register(t, s, "group@example.com", 1000)
	u2, k2 := storetest.Register(t, s, "group2@example.com", 1000)
	settle := func(uid, kid int64, n int) {
		t.Helper()
		for range n {
			r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: uid, KeyID: kid, Credits: 5})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.Settle(ctx, r, 2, storage.UsageRecord{Model: "m", Status: 200}); err != nil {
				t.Fatal(err)
			}
			clock = clock.Add(time.Second)
		}
	}
	settle(u.ID, k.ID, 5)
	settle(u2.ID, k2.ID, 3)
	settle(u.ID, k.ID, 4)
	cut := clock
	clock = clock.Add(time.Hour)
	settle(u.ID, k.ID, 2) // newer than the cut
	if _, err := s.PruneUsage(ctx, cut, time.Time{}); err != nil {
		t.Fatal(err)
	}
	covered := func(uid int64) (entries int, requests int64) {
		for _, e := range mustLedger(t, s, uid) {
			if e.Kind == storage.LedgerCharge {
				entries++
				requests += e.Requests
			}
		}
		return
	}
	// User 1's 9 old charges span ids 3-7 and 11-14 (batches of 4 ids from
	// 1: 1-4, 5-8, 9-12, 13-14): four grouped entries, and 2 new ones.
	if n, req := covered(u.ID); req != 11 || n != 4+2 {
		t.Fatalf("user 1: %d charge entries for %d requests", n, req)
	}
	if n, req := covered(u2.ID); req != 3 || n != 2 {
		t.Fatalf("user 2: %d charge entries for %d requests", n, req)
	}
	var upto int64
	if err := s.pool.QueryRow(ctx, `SELECT upto FROM gw_ledger_grouped`).Scan(&upto); err != nil || upto != 14 {
		t.Fatalf("grouped up to %d, %v", upto, err)
	}
	mustVerify(t, s)
	// The next run goes on from there.
	if _, err := s.PruneUsage(ctx, clock.Add(time.Minute), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n, req := covered(u.ID); req != 11 || n != 5 {
		t.Fatalf("user 1 after the next run: %d charge entries for %d requests", n, req)
	}
	mustVerify(t, s)
}
