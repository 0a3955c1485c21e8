package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
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
	dsn, pool, exec, ms := oldSchema(t, 1)
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

// oldSchema makes a database schema of the given version beside the test
// database's current one (in a schema of its own), and returns its DSN, a
// pool on it, a function running a statement on it, and the migrations.
func oldSchema(t *testing.T, version int) (string, *pgxpool.Pool, func(string, ...any), []migration) {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	name := fmt.Sprintf("v%d", version)
	if _, err := admin.Exec(ctx, `CREATE SCHEMA `+name); err != nil {
		t.Fatal(err)
	}
	dsn = withSearchPath(t, dsn, name)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, pool, ms[:version]); err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	return dsn, pool, exec, ms
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

// A database of schema version 4 with usage records and charge entries
// upgrades to the rollups (0005): the records read as before, the rollups are their
// sums, and once every record is pruned the reports from the rollups are
// unchanged and the grouped ledger still adds up to the balances.
func TestMigrateBuildsRollups(t *testing.T) {
	ctx := context.Background()
	dsn, pool, exec, ms := oldSchema(t, 4)
	exec(`INSERT INTO gw_accounts (user_id, credits) VALUES (1, 100000), (2, 100000)`)
	exec(`INSERT INTO gw_ledger (user_id, kind, amount, balance_after, time) VALUES (1, 'grant', 100000, 100000, now()), (2, 'grant', 100000, 100000, now())`)
	base := time.Date(2026, 11, 28, 21, 0, 0, 0, time.UTC)
	models := []string{"gpt-4o-mini", "claude-sonnet-4-5", "gpt-4o"}
	for i := 0; i < 40; i++ {
		user := int64(1 + i%2)
		var hold int64
		var status string
		if err := pool.QueryRow(ctx, `SELECT hold_id, status FROM gw_reserve($1, $2, 1000, 0, 0, 0, 7)`, user, user+10).Scan(&hold, &status); err != nil || status != "ok" {
			t.Fatalf("version 4 reserve: %q, %v", status, err)
		}
		rec := storage.UsageRecord{Model: models[i%3], PromptTokens: int64(10 * i), CompletionTokens: int64(3 * i), TotalTokens: int64(13 * i),
			CachedTokens: int64(i % 4), CacheWriteTokens: int64(i % 3), RequestID: fmt.Sprintf("req-%d", i),
			Time: base.Add(time.Duration(i) * 71 * time.Minute), Status: 200, Estimated: i%5 == 0, Endpoint: "/v1/chat/completions"}
		if i%7 == 0 {
			rec.Status = 502
		}
		doc, _ := json.Marshal(&rec)
		exec(`SELECT gw_settle($1, $2, $3, $4, $5, $6, $7, $8, $9)`, hold, int64(13*i%50), time.Now(), rec.Time, dayNum(rec.Time), dayNum(rec.Time)/100, rec.TotalTokens, rec.RequestID, string(doc))
	}
	if err := migrateTo(ctx, pool, ms); err != nil {
		t.Fatal(err)
	}
	s := openNode(t, dsn, "upgraded")
	recs, err := s.ListUsage(ctx, storage.UsageFilter{})
	if err != nil || len(recs) != 40 {
		t.Fatalf("records after the upgrade: %d, %v", len(recs), err)
	}
	reports := storetest.RollupsOfAll(recs)
	storetest.CheckRollups(t, s, "built by the upgrade", reports)
	for _, uid := range []int64{1, 2} {
		for _, e := range mustLedger(t, s, uid) {
			if e.Kind == storage.LedgerCharge && e.Requests != 1 {
				t.Fatalf("charge entry of before the upgrade: %+v", e)
			}
		}
	}
	if n, err := s.PruneUsage(ctx, time.Now().Add(time.Hour), time.Time{}); err != nil || n != 40 {
		t.Fatalf("PruneUsage = %d, %v", n, err)
	}
	storetest.CheckRollups(t, s, "after pruning every record", reports)
	charged := map[int64]int64{}
	for _, r := range recs {
		if r.Credits > 0 {
			charged[r.UserID]++
		}
	}
	for _, uid := range []int64{1, 2} {
		l := mustLedger(t, s, uid)
		if len(l) != 2 || l[1].Kind != storage.LedgerCharge || l[1].Requests != charged[uid] || l[1].BalanceAfter != l[0].Amount+l[1].Amount {
			t.Fatalf("user %d ledger after grouping: %+v", uid, l)
		}
	}
	mustVerify(t, s)
}

func mustLedger(t *testing.T, s *Store, uid int64) []storage.LedgerEntry {
	t.Helper()
	l, err := s.Ledger(context.Background(), uid)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Nodes of the builds before the shared limits keep working through the
// upgrade: a hold made at version 5 settles at version 6, and the version 3
// call (budgets) and version 2 call (neither) still reserve, refuse over a
// budget holding nothing, and end in the spend window they counted in.
func TestMigrateKeepsOlderReserveCalls(t *testing.T) {
	ctx := context.Background()
	dsn, pool, exec, ms := oldSchema(t, 5)
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

// A database of schema version 8 with top-ups (idempotency keys), charges
// (none) and usage records upgrades to version 9: the ledger's unique key
// covers only the entries with an idempotency key, and still refuses a
// second entry with the same key; a repeated top-up is still a replay;
// the usage records have no primary key and are pruned as before.
func TestMigrateFewerIndexes(t *testing.T) {
	ctx := context.Background()
	dsn, pool, exec, ms := oldSchema(t, 8)
	exec(`INSERT INTO gw_accounts (user_id, credits) VALUES (1, 0), (2, 0)`)
	for _, uid := range []int64{1, 2} {
		var balance int64
		var status string
		if err := pool.QueryRow(ctx, `SELECT balance, status FROM gw_add_credits($1, 100, 'topup', 'idem-1', '', now())`, uid).Scan(&balance, &status); err != nil || status != "ok" || balance != 100 {
			t.Fatalf("version 8 top-up: %d %q, %v", balance, status, err)
		}
	}
	old := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for i := range 6 {
		var hold int64
		var status string
		if err := pool.QueryRow(ctx, `SELECT hold_id, status FROM gw_reserve($1, 0, 10, 0, 7)`, int64(1+i%2)).Scan(&hold, &status); err != nil || status != "ok" {
			t.Fatalf("reserve: %q, %v", status, err)
		}
		doc, _ := json.Marshal(&storage.UsageRecord{Model: "m", TotalTokens: 5, Time: old})
		exec(`SELECT gw_settle_held($1, 3, now(), $2, $3, $4, 5, 'r', $5, $6, 0)`, hold, old, dayNum(old), dayNum(old)/100, string(doc), int64(1+i%2))
	}

	if err := migrateTo(ctx, pool, ms); err != nil {
		t.Fatal(err)
	}
	var indexes []string
	rows, err := pool.Query(ctx, `SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename IN ('gw_ledger', 'gw_usage') ORDER BY indexname`)
	if err == nil {
		indexes, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"gw_ledger_idempotency", "gw_ledger_pkey", "gw_ledger_user", "gw_usage_key", "gw_usage_time", "gw_usage_user"}
	if len(indexes) != len(want) {
		t.Fatalf("indexes after the upgrade: %q", indexes)
	}
	for i, name := range want {
		if !strings.Contains(indexes[i], "INDEX "+name+" ON") {
			t.Fatalf("index %d after the upgrade: %q, want %s", i, indexes[i], name)
		}
	}
	if !strings.Contains(indexes[0], "UNIQUE") || !strings.HasSuffix(indexes[0], "WHERE (idempotency_key IS NOT NULL)") {
		t.Fatalf("idempotency index: %q", indexes[0])
	}
	var nulls int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM gw_ledger WHERE idempotency_key IS NULL`).Scan(&nulls); err != nil || nulls != 6 {
		t.Fatalf("charge entries without a key: %d, %v", nulls, err)
	}

	// The key is still unique per user, whoever writes the entry.
	_, err = pool.Exec(ctx, `INSERT INTO gw_ledger (user_id, kind, amount, balance_after, idempotency_key, time) VALUES (1, 'topup', 1, 101, 'idem-1', now())`)
	if !isDuplicate(err) {
		t.Fatalf("a second ledger entry with key idem-1: %v, want a duplicate", err)
	}
	s := openNode(t, dsn, "upgraded")
	for _, uid := range []int64{1, 2} {
		before, err := s.Balance(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		bal, replayed, err := s.AddCredits(ctx, uid, 100, storage.LedgerTopUp, "idem-1", "")
		if err != nil || !replayed || bal != 100 {
			t.Fatalf("user %d: top-up repeated after the upgrade = %d %v %v, want the first one's 100, replayed", uid, bal, replayed, err)
		}
		if after, err := s.Balance(ctx, uid); err != nil || after != before {
			t.Fatalf("user %d: balance %+v after a replay, was %+v (%v)", uid, after, before, err)
		}
		bal, replayed, err = s.AddCredits(ctx, uid, 5, storage.LedgerTopUp, "idem-2", "")
		if err != nil || replayed || bal != before.Credits+5 {
			t.Fatalf("user %d: a new key after the upgrade = %d %v %v", uid, bal, replayed, err)
		}
		if bal2, replayed, err := s.AddCredits(ctx, uid, 5, storage.LedgerTopUp, "idem-2", ""); err != nil || !replayed || bal2 != bal {
			t.Fatalf("user %d: the new key repeated = %d %v %v", uid, bal2, replayed, err)
		}
	}
	if n, err := s.PruneUsage(ctx, old.AddDate(0, 0, 2), time.Time{}); err != nil || n != 6 {
		t.Fatalf("PruneUsage = %d, %v", n, err)
	}
	mustVerify(t, s)
}
