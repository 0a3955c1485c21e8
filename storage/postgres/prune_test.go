package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// One node prunes at a time: while another holds the pruning lock, a
// node's PruneUsage deletes nothing and returns at once; after, it prunes
// the old usage records and totals.
func TestPruneUsageOneNodeAtATime(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	a := open(t, dsn, named("a"))
	u, k := storetest.Register(t, a, "old@example.com", 1000)
	old := time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC)
	var lim [storage.NumLevels]storage.WindowCounts
	lim[storage.LevelUser].Requests[storage.WindowMinute] = 10
	for range 3 {
		r, err := a.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1,
			Limits: &storage.LimitRequest{Now: old, Limits: lim}})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.Settle(ctx, r, 1, storage.UsageRecord{Model: "m", Time: old}); err != nil {
			t.Fatal(err)
		}
	}
	other, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	if _, err := other.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(0x67770002)); err != nil {
		t.Fatal(err)
	}
	cut := old.AddDate(0, 2, 0)
	if n, err := a.PruneUsage(ctx, cut, cut); err != nil || n != 0 {
		t.Fatalf("PruneUsage while another node prunes = %d, %v", n, err)
	}
	count := func(sql string) (n int64) {
		t.Helper()
		if err := other.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM gw_usage`); n != 3 {
		t.Fatalf("%d usage records left while locked, want 3", n)
	}
	if _, err := other.Exec(ctx, `SELECT pg_advisory_unlock($1)`, int64(0x67770002)); err != nil {
		t.Fatal(err)
	}
	if n, err := a.PruneUsage(ctx, cut, cut); err != nil || n != 3 {
		t.Fatalf("PruneUsage = %d, %v", n, err)
	}
	for _, table := range []string{"gw_usage", "gw_usage_totals"} {
		if n := count(`SELECT count(*) FROM ` + table); n != 0 {
			t.Fatalf("%d rows left in %s", n, table)
		}
	}
}
