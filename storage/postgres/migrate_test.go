package postgres

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// The database's share rule is storage.ReserveAmount, over every
// combination of a grid of positions.
func TestReserveAmountInDatabase(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	type args struct{ available, holds, waiting, min, max int64 }
	var cases []args
	batch := &pgx.Batch{}
	for _, available := range []int64{-50, 0, 5, 33, 100, 1000} {
		for _, holds := range []int64{0, 1, 3} {
			for _, waiting := range []int64{0, 2, 19} {
				for _, minimum := range []int64{0, 1, 10, 20, 400} {
					for _, maximum := range []int64{0, 10, 300, 400, 4106} {
						a := args{available, holds, waiting, minimum, maximum}
						cases = append(cases, a)
						batch.Queue(`SELECT gw_reserve_amount($1, $2, $3, $4, $5)`, a.available, a.holds, a.waiting, a.min, a.max)
					}
				}
			}
		}
	}
	results := conn.SendBatch(ctx, batch)
	defer results.Close()
	for _, a := range cases {
		var got int64
		if err := results.QueryRow().Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := storage.ReserveAmount(a.available, a.holds, a.waiting, a.min, a.max); got != want {
			t.Errorf("gw_reserve_amount%+v = %d, storage.ReserveAmount = %d", a, got, want)
		}
	}
}

// A database of schema version 1 with open and released holds upgrades to
// counted holds; a node of the older build keeps reserving through the
// version 1 call, counted too.
func TestMigrateCountsOpenHolds(t *testing.T) {
	ctx := context.Background()
	dsn, pool, ms := olderSchema(t, 1)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO gw_accounts (user_id, credits) VALUES (1, 100), (2, 50)`)
	exec(`INSERT INTO gw_ledger (user_id, kind, amount, balance_after, time) VALUES (1, 'grant', 100, 100, now()), (2, 'grant', 50, 50, now())`)
	oldReserve := func(user, credits, node int64) {
		t.Helper()
		var status string
		if err := pool.QueryRow(ctx, `SELECT status FROM gw_reserve($1, 0, $2, 0, $3)`, user, credits, node).Scan(&status); err != nil || status != "ok" {
			t.Fatalf("version 1 reserve: %q, %v", status, err)
		}
	}
	oldReserve(1, 30, 7)
	oldReserve(1, 20, 7)
	oldReserve(2, 10, 8)
	exec(`SELECT gw_release(ARRAY[8::bigint])`) // user 2's hold: released, no longer open

	if err := migrateTo(ctx, pool, ms); err != nil {
		t.Fatal(err)
	}
	holds := func(user int64) int64 {
		t.Helper()
		var n int64
		if err := pool.QueryRow(ctx, `SELECT holds FROM gw_accounts WHERE user_id = $1`, user).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if h1, h2 := holds(1), holds(2); h1 != 2 || h2 != 0 {
		t.Fatalf("holds after the upgrade = %d, %d, want 2, 0", h1, h2)
	}
	s := openNode(t, dsn, "upgraded")
	mustVerify(t, s)

	// An older node's reservation counts: 40 available among four.
	oldReserve(1, 10, 7)
	r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: 1, Credits: 100, MinCredits: 1})
	if err != nil || r.Amount != 10 || r.Available != 30 {
		t.Fatalf("flexible beside three holds: %+v, %v", r, err)
	}
	mustVerify(t, s)
	exec(`SELECT gw_refund(id) FROM gw_holds ORDER BY id`)
	if h1 := holds(1); h1 != 0 {
		t.Fatalf("holds after every refund = %d", h1)
	}
	mustVerify(t, s)
}

// olderSchema returns the DSN of a PostgreSQL schema of its own (the test
// database has the current one) migrated to version, a pool on it, and all
// the migrations.
func olderSchema(t *testing.T, version int) (string, *pgxpool.Pool, []migration) {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	schema := fmt.Sprintf("v%d", version)
	if _, err := admin.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatal(err)
	}
	dsn = withSearchPath(t, dsn, schema)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) <= version {
		t.Fatalf("%d migrations, want more than %d", len(ms), version)
	}
	if err := migrateTo(ctx, pool, ms[:version]); err != nil {
		t.Fatal(err)
	}
	return dsn, pool, ms
}

// withSearchPath returns dsn (a URL or keyword/value string) with its
// search_path set to schema.
func withSearchPath(t *testing.T, dsn, schema string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return dsn + " search_path=" + schema
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Nodes of the builds before the shared limits keep working through the
// upgrade: a hold made at version 5 settles at version 6, and the version 3
// call (budgets) and version 2 call (neither) still reserve, refuse over a
// budget holding nothing, and end in the spend window they counted in.
func TestMigrateKeepsOlderReserveCalls(t *testing.T) {
	ctx := context.Background()
	dsn, pool, ms := olderSchema(t, 5)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO gw_accounts (user_id, credits) VALUES (1, 100)`)
	exec(`INSERT INTO gw_ledger (user_id, kind, amount, balance_after, time) VALUES (1, 'grant', 100, 100, now())`)
	window := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	budgetReserve := func(credits, min, limit int64) (hold int64, status string) {
		t.Helper()
		var id *int64
		if err := pool.QueryRow(ctx, `SELECT hold_id, status FROM gw_reserve($1, 0, $2, $3, 0, 0, 7, NULL, NULL, $4, $5)`,
			1, credits, min, window, limit).Scan(&id, &status); err != nil {
			t.Fatalf("version 3 reserve: %v", err)
		}
		if id != nil {
			hold = *id
		}
		return hold, status
	}
	first, status := budgetReserve(30, 30, 50)
	if status != "ok" {
		t.Fatalf("version 3 reserve before the upgrade: %q", status)
	}

	if err := migrateTo(ctx, pool, ms); err != nil {
		t.Fatal(err)
	}
	s := openNode(t, dsn, "upgraded")
	mustVerify(t, s)

	// 20 left in the budget's window: 30 is refused, holding nothing.
	if _, status := budgetReserve(30, 30, 50); status != "user_budget" {
		t.Fatalf("over the budget: %q, want user_budget", status)
	}
	second, status := budgetReserve(20, 20, 50)
	if status != "ok" {
		t.Fatalf("the budget's rest: %q", status)
	}
	var third int64
	if err := pool.QueryRow(ctx, `SELECT hold_id FROM gw_reserve($1, 0, $2, $2, 0, 0, 7)`, 1, 10).Scan(&third); err != nil {
		t.Fatalf("version 2 reserve: %v", err)
	}
	mustVerify(t, s)
	// The version 2 hold counts in the window in force too: with it and
	// the second, 20 is all the settlement could charge.
	exec(`SELECT gw_refund($1)`, second)
	exec(`SELECT gw_refund($1)`, third)
	var charged int64
	if err := pool.QueryRow(ctx, `SELECT charged FROM gw_settle($1, 25, now(), now(), 20261205, 202612, 40, 'r1', '{}')`,
		first).Scan(&charged); err != nil || charged != 25 {
		t.Fatalf("settling the hold made before the upgrade: %d, %v", charged, err)
	}
	mustVerify(t, s)
	var credits, reserved, holds, heldTokens, spendUsed, spendReserved int64
	if err := pool.QueryRow(ctx, `SELECT credits, reserved, holds, held_tokens, spend_used, spend_reserved FROM gw_accounts WHERE user_id = 1`).
		Scan(&credits, &reserved, &holds, &heldTokens, &spendUsed, &spendReserved); err != nil {
		t.Fatal(err)
	}
	if credits != 75 || reserved != 0 || holds != 0 || heldTokens != 0 || spendUsed != 25 || spendReserved != 0 {
		t.Fatalf("account = credits %d reserved %d holds %d held_tokens %d spend %d+%d, want 75 0 0 0 25+0",
			credits, reserved, holds, heldTokens, spendUsed, spendReserved)
	}
}
