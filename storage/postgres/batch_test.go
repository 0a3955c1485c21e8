package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// settleResult is what a settlement's call answers.
type settleResult struct {
	charged, balance int64
	status           string
	spend            spendRow
}

// settleBatchCall is the settlement of res at cost, as Settle queues it.
func settleBatchCall(t *testing.T, s *Store, res *storage.Reservation, cost int64) (*batchCall, *settleResult) {
	t.Helper()
	call, err := s.settleCall(res, cost, storage.UsageRecord{Model: "m", RequestID: fmt.Sprint("r", res.ID)})
	if err != nil {
		t.Fatal(err)
	}
	r := &settleResult{}
	return &batchCall{userID: res.UserID, keyID: res.KeyID, sql: settleSpendSQL, args: call.args,
		dest: r.spend.dest(&r.charged, &r.balance, &r.status), done: make(chan struct{})}, r
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
	var calls []*batchCall
	var results []*settleResult
	for _, x := range []struct {
		res  *storage.Reservation
		cost int64
	}{{r2, 5}, {r1, 7}, {r3, 9}, {r1, 7}} {
		c, r := settleBatchCall(t, s, x.res, x.cost)
		calls, results = append(calls, c), append(results, r)
	}
	// In one statement (settleSet): no fallback to one call at a time.
	if sql, _ := settleSet(calls); sql == "" {
		t.Fatal("the settlements do not fit one statement")
	}
	if err := s.settles.send(context.Background(), calls); err != nil {
		t.Fatal(err)
	}
	statuses := map[string]int{}
	for i, c := range calls {
		if c.err != nil {
			t.Fatalf("settlement of hold %v: %v", c.args[0], c.err)
		}
		statuses[results[i].status]++
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
	var calls []*batchCall
	var results []*settleResult
	for _, x := range []struct {
		res  *storage.Reservation
		cost int64
	}{{good1, 3}, {bad, 4}, {good2, 5}} {
		c, r := settleBatchCall(t, s, x.res, x.cost)
		calls, results = append(calls, c), append(results, r)
	}
	calls[1].args[8] = "not json"
	s.settles.flush(calls)
	for i, c := range calls {
		switch {
		case i == 1 && c.err == nil:
			t.Fatal("the bad settlement reported no error")
		case i != 1 && (c.err != nil || results[i].status != "ok"):
			t.Fatalf("a good settlement failed with the bad one: %q, %v", results[i].status, c.err)
		}
	}
	if errors.Is(calls[1].err, storage.ErrUnavailable) {
		t.Fatalf("a bad document is no outage: %v", calls[1].err)
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

// One batch reserves for several users in one statement and transaction,
// each call as it would alone and in the batch's order: of three
// reservations of 40 against 100 credits, the third finds 20 available
// and is refused, holding nothing; limits are counted per call.
func TestReserveBatch(t *testing.T) {
	for _, async := range []bool{false, true} {
		t.Run(fmt.Sprint("async=", async), func(t *testing.T) { reserveBatch(t, async) })
	}
}

func reserveBatch(t *testing.T, async bool) {
	s := mustOpen(t, pgtest.DatabaseURL(t), Options{Node: "batch", Lease: time.Minute, AsyncReserve: async})
	u1, k1 := storetest.Register(t, s, "rb1@example.com", 100)
	u2, k2 := storetest.Register(t, s, "rb2@example.com", 100)
	type answer struct {
		id, held, credits, reserved, holds, used, inWindow *int64
		status                                             string
		counts                                             []int64
		breach                                             *int32
	}
	var calls []*batchCall
	var answers []*answer
	// User 2 may make 2 requests a minute: its second call is refused.
	var l [storage.NumLevels]storage.WindowCounts
	l[storage.LevelUser].Requests[storage.WindowMinute] = 2
	lim := &storage.LimitRequest{Now: time.Now(), Limits: l, Tokens: 5}
	for _, req := range []storage.ReserveRequest{
		{UserID: u1.ID, KeyID: k1.ID, Credits: 40}, {UserID: u2.ID, KeyID: k2.ID, Credits: 40, Limits: lim},
		{UserID: u1.ID, KeyID: k1.ID, Credits: 40}, {UserID: u1.ID, KeyID: k1.ID, Credits: 40},
		{UserID: u2.ID, KeyID: k2.ID, Credits: 1, Limits: lim}, {UserID: u2.ID, KeyID: k2.ID, Credits: 1, Limits: lim},
	} {
		a := &answer{}
		sql, args := s.reserveCall(req)
		calls = append(calls, &batchCall{userID: req.UserID, keyID: req.KeyID, sql: sql, args: args, done: make(chan struct{}),
			dest: []any{&a.id, &a.held, &a.credits, &a.reserved, &a.holds, &a.status, &a.used, &a.inWindow, &a.counts, &a.breach}})
		answers = append(answers, a)
	}
	if sql, _ := reserveSet(calls); sql == "" {
		t.Fatal("the reservations do not fit one statement")
	}
	if err := s.reserves.send(context.Background(), calls); err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := range calls {
		got = append(got, answers[i].status)
	}
	if want := []string{"ok", "ok", "ok", "insufficient", "ok", "limited"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("statuses %v, want %v", got, want)
	}
	if c := answers[4].counts; len(c) != 24 || c[9] != 2 {
		t.Fatalf("user 2's second call counted %v, want 2 requests this minute", c)
	}
	if answers[0].counts != nil {
		t.Fatalf("a call without limits answered counts %v", answers[0].counts)
	}
	if b := storetest.MustBalance(t, s, u1.ID); b.Credits != 100 || b.Reserved != 80 {
		t.Fatalf("user 1: %+v, want 80 of 100 reserved", b)
	}
	if b := storetest.MustBalance(t, s, u2.ID); b.Reserved != 41 {
		t.Fatalf("user 2: %+v, want 41 reserved", b)
	}
	for _, i := range []int{0, 1, 2, 4} {
		res := &storage.Reservation{ID: uint64(*answers[i].id), UserID: []int64{u1.ID, u2.ID, u1.ID, 0, u2.ID}[i],
			KeyID: []int64{k1.ID, k2.ID, k1.ID, 0, k2.ID}[i], Amount: *answers[i].held}
		if err := s.Refund(context.Background(), res); err != nil {
			t.Fatal(err)
		}
	}
	mustVerify(t, s)
}

// Calls that do not fit one statement (arguments of other types, or a
// reservation of another node or commit mode among them) are sent one
// statement each: the set builders answer "".
func TestSetStatementsRefuseMisfits(t *testing.T) {
	reserve := func(sql string, node any) *batchCall {
		return &batchCall{sql: sql, args: []any{int64(1), int64(2), int64(3), int64(0), int64(0), int64(0), node,
			time.Time{}, (*int64)(nil), time.Time{}, (*int64)(nil), (*int64)(nil), (*int32)(nil), []int64(nil), int64(0), false}}
	}
	settle := func(hold any) *batchCall {
		return &batchCall{sql: settleSpendSQL, args: []any{hold, int64(1), time.Time{}, time.Time{}, int32(20261205), int32(202612),
			int64(0), "r", "{}", int64(1), int64(2)}}
	}
	tests := []struct {
		name  string
		set   func([]*batchCall) (string, []any)
		calls []*batchCall
		fits  bool
	}{
		{"reservations", reserveSet, []*batchCall{reserve(reserveSQL, int64(7)), reserve(reserveSQL, int64(7))}, true},
		{"async reservations", reserveSet, []*batchCall{reserve(reserveAsyncSQL, int64(7)), reserve(reserveAsyncSQL, int64(7))}, true},
		{"mixed commit modes", reserveSet, []*batchCall{reserve(reserveSQL, int64(7)), reserve(reserveAsyncSQL, int64(7))}, false},
		{"two nodes", reserveSet, []*batchCall{reserve(reserveSQL, int64(7)), reserve(reserveSQL, int64(8))}, false},
		{"node of another type", reserveSet, []*batchCall{reserve(reserveSQL, 7)}, false},
		{"short limits", reserveSet, []*batchCall{func() *batchCall { c := reserve(reserveSQL, int64(7)); c.args[13] = []int64{1}; return c }()}, false},
		{"settlements", settleSet, []*batchCall{settle(int64(1)), settle(int64(2))}, true},
		{"hold of another type", settleSet, []*batchCall{settle(int64(1)), settle(uint64(2))}, false},
		{"too few arguments", settleSet, []*batchCall{{sql: settleSpendSQL, args: []any{int64(1)}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sql, args := tt.set(tt.calls)
			if fits := sql != ""; fits != tt.fits {
				t.Fatalf("fits = %v, want %v", fits, tt.fits)
			}
			if tt.fits && strings.Contains(sql, "set_config") != (tt.calls[0].sql == reserveAsyncSQL) {
				t.Fatalf("synchronous_commit off in %q for %q", sql, tt.calls[0].sql)
			}
			if !tt.fits && args != nil {
				t.Fatalf("arguments %v for a misfit", args)
			}
		})
	}
}
