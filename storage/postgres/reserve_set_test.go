package postgres

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// The set-based batch reservation (gw_reserve_batch, migration 0010) must
// decide exactly what the batch's calls of gw_reserve decide one after
// another. Each test builds the same data in two databases (setFixture),
// reserves the same batches through gw_reserve_batch on one and one by one
// on the other, and compares every answer and every table after each
// batch.

// resCall is one reservation, as Reserve queues it (reserveCall's
// arguments).
type resCall struct {
	user, key, credits, min, waiting, max int64
	keyWindow, userWindow                 time.Time
	keyLimit, userLimit                   *int64
	limits                                []int64 // nil: none; else 24 values (storage.LimitState flattened)
	now                                   time.Time
	tokens                                int64
	counted                               bool
}

// args are the call's arguments, in reserveSQL's order, for node 1.
func (c resCall) args() []any {
	var now *int64
	var day *int32
	if c.limits != nil {
		at := c.now
		if at.IsZero() {
			at = setBase
		}
		n, d := at.Unix(), dayNum(at)
		now, day = &n, &d
	}
	return []any{c.user, c.key, c.credits, c.min, c.waiting, c.max, int64(1), c.keyWindow, c.keyLimit, c.userWindow, c.userLimit,
		now, day, c.limits, c.tokens, c.counted}
}

func (c resCall) String() string {
	return fmt.Sprintf("{u%d k%d %d/%d w%d max%d kw%v kl%v uw%v ul%v lim%v now%v tok%d counted%v}", c.user, c.key, c.credits, c.min,
		c.waiting, c.max, c.keyWindow.Unix(), ptr(c.keyLimit), c.userWindow.Unix(), ptr(c.userLimit), c.limits, c.now.Unix(), c.tokens,
		c.counted)
}

func ptr(p *int64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}

func i64(v int64) *int64 { return &v }

// Limit indexes (0-based in the flattened array): level 0 plan, 1 user, 2
// key; requests per minute, hour, day, month, then tokens per the same.
const (
	limPlan = 0
	limUser = 8
	limKey  = 16
	winMin  = 0
	winHour = 1
	winDay  = 2
	winMon  = 3
	limTok  = 4
)

// lims is a limits array with the given index: value pairs set.
func lims(kv ...int64) []int64 {
	l := make([]int64, 24)
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return l
}

// resOutcome is what comparing a scenario found: the answers of each
// batch (the set-based ones, equal to the others) and how many calls of
// gw_reserve each batch made (-1: not known).
type resOutcome struct {
	answers [][]string
	perCall []int
}

// compareReserve builds scenario's data in two databases and reserves
// each of its batches set-based on one and one call at a time on the
// other, failing on the first answer or table that differs.
func compareReserve(t *testing.T, seed int64, scenario func(f *setFixture, rng *rand.Rand) [][]resCall) resOutcome {
	t.Helper()
	ctx := context.Background()
	set, one := setTwin(t), setTwin(t)
	fs, fo := &setFixture{t: t, ctx: ctx, pool: set}, &setFixture{t: t, ctx: ctx, pool: one}
	bs := scenario(fs, rand.New(rand.NewSource(seed)))
	bo := scenario(fo, rand.New(rand.NewSource(seed)))
	if fmt.Sprint(bs) != fmt.Sprint(bo) {
		t.Fatal("the scenario built different batches on the two databases")
	}
	compareTables(t, set, one, "before the first batch")
	var out resOutcome
	for i := range bs {
		got, perCall := reserveSetBatch(t, set, bs[i])
		want := reserveOneByOne(t, one, bo[i])
		for j := range want {
			if got[j] != want[j] {
				t.Fatalf("batch %d call %d %v:\nset-based  %s\none by one %s", i, j, bs[i][j], got[j], want[j])
			}
		}
		compareTables(t, set, one, fmt.Sprintf("after batch %d", i))
		out.answers = append(out.answers, got)
		out.perCall = append(out.perCall, perCall)
	}
	return out
}

// reserveSetBatch reserves calls through reserveSet (gw_reserve_batch) in
// one transaction, answering their rows and how many calls of gw_reserve
// it made (-1: not known, without the rights to count).
func reserveSetBatch(t *testing.T, pool *pgxpool.Pool, calls []resCall) ([]string, int) {
	t.Helper()
	ctx := context.Background()
	bcs := make([]*batchCall, len(calls))
	for i, c := range calls {
		bcs[i] = &batchCall{userID: c.user, keyID: c.key, sql: reserveSQL, args: c.args()}
	}
	sql, args := reserveSet(bcs)
	if sql == "" {
		t.Fatal("the calls do not fit reserveSetSQL")
	}
	var out []string
	perCall := -1
	conn, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var super bool
		if err := tx.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
			return err
		}
		if super {
			if _, err := tx.Exec(ctx, `SET LOCAL track_functions = 'pl'`); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		if out, err = collectRows(rows); err != nil {
			return err
		}
		if super {
			return tx.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::int FROM pg_stat_xact_user_functions
				WHERE funcname = 'gw_reserve'`).Scan(&perCall)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(calls) {
		t.Fatalf("%d answers for %d calls", len(out), len(calls))
	}
	return out, perCall
}

// reserveOneByOne reserves calls one gw_reserve call each, in order, in
// one transaction.
func reserveOneByOne(t *testing.T, pool *pgxpool.Pool, calls []resCall) []string {
	t.Helper()
	args := make([][]any, len(calls))
	for i, c := range calls {
		args[i] = c.args()
	}
	return oneByOne(t, pool, reserveSQL, args, collectRows)
}

// collectRows prints each row's values (hold id, held, balance, reserved,
// open holds, status, budget used and reserved, counts, breach).
func collectRows(rows pgx.Rows) ([]string, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		vals, err := r.Values()
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%#v", vals), nil
	})
}

// statuses are the statuses of a batch's answers.
func statuses(as []string) string {
	var out []string
	for _, a := range as {
		for _, s := range []string{"ok", "insufficient", "key_budget", "user_budget", "limited", "request_limit", "not_found"} {
			if strings.Contains(a, fmt.Sprintf("%q", s)) {
				out = append(out, s)
				break
			}
		}
	}
	return strings.Join(out, " ")
}

// requireReserveSetBased fails unless no batch of o called gw_reserve.
func requireReserveSetBased(t *testing.T, o resOutcome) {
	t.Helper()
	for i, n := range o.perCall {
		if n > 0 {
			t.Fatalf("batch %d made %d calls of gw_reserve: the per-call path, not the set-based one", i, n)
		}
	}
}

// One hot user with many calls: flexible amounts sharing what is left
// between the open and waiting requests, request slots, rate windows
// rolled across a minute and an hour, tokens counted.
func TestReserveSetHotUser(t *testing.T) {
	o := compareReserve(t, 1, func(f *setFixture, rng *rand.Rand) [][]resCall {
		f.user(1, 100_000)
		var batches [][]resCall
		for b := range 2 {
			var batch []resCall
			for i := range 40 {
				batch = append(batch, resCall{user: 1, key: setKey(1), credits: 3000, min: 100 + int64(i), waiting: int64(i % 4),
					max: 1000, limits: lims(limUser+winMin, 1000, limKey+limTok+winHour, 1<<40),
					now: setBase.Add(time.Duration(b*3600+i*7) * time.Second), tokens: int64(10 * i)})
			}
			batches = append(batches, batch)
		}
		return batches
	})
	requireReserveSetBased(t, o)
}

// Many users' calls interleaved, with and without keys, limits and caps.
func TestReserveSetManyUsers(t *testing.T) {
	o := compareReserve(t, 2, func(f *setFixture, rng *rand.Rand) [][]resCall {
		for u := int64(1); u <= 8; u++ {
			f.user(u, 500*u)
		}
		var batch []resCall
		for i := range 48 {
			u := int64(i%8 + 1)
			c := resCall{user: u, key: setKey(u), credits: 50 + int64(i), userWindow: setBase.Truncate(time.Hour), userLimit: i64(400)}
			if i%3 == 0 {
				c.key = 0
			}
			if i%2 == 0 {
				c.limits = lims(limUser+winDay, 100, limPlan+winDay, 100)
				c.tokens = 5
			}
			batch = append(batch, c)
		}
		return [][]resCall{batch}
	})
	requireReserveSetBased(t, o)
}

// A balance running out mid-batch: fixed amounts until one does not fit
// (insufficient, still counted in the request rates), then a smaller one
// that fits, and flexible ones taking their share of what is left.
func TestReserveSetBalanceRunsOut(t *testing.T) {
	o := compareReserve(t, 3, func(f *setFixture, rng *rand.Rand) [][]resCall {
		f.user(1, 100)
		f.user(2, 1000)
		lim := lims(limUser+winMin, 100, limKey+winMin, 100)
		return [][]resCall{{
			{user: 1, key: setKey(1), credits: 30, limits: lim, tokens: 7},
			{user: 2, key: setKey(2), credits: 30},
			{user: 1, key: setKey(1), credits: 30, limits: lim, tokens: 7},
			{user: 1, key: setKey(1), credits: 30, limits: lim, tokens: 7},
			{user: 1, key: setKey(1), credits: 30, limits: lim, tokens: 7}, // insufficient: 10 left
			{user: 1, key: setKey(1), credits: 10, limits: lim, tokens: 7},
			{user: 1, key: setKey(1), credits: 10, limits: lim, tokens: 7, counted: true}, // insufficient, not counted again
			{user: 2, key: setKey(2), credits: 500, min: 100, waiting: 2},
			{user: 2, key: setKey(2), credits: 500, min: 100, waiting: 1},
			{user: 2, key: setKey(2), credits: 500, min: 100},
			{user: 2, key: setKey(2), credits: 500, min: 100},
		}}
	})
	requireReserveSetBased(t, o)
	if got := statuses(o.answers[0]); got != "ok ok ok ok insufficient ok insufficient ok ok ok ok" {
		t.Fatalf("statuses %s", got)
	}
}

// Key and user spend caps reached mid-batch, windows rolled mid-batch by a
// call naming a newer one, and holds of an older window.
func TestReserveSetBudgets(t *testing.T) {
	w1, w2 := setBase.Add(-24*time.Hour).Truncate(time.Hour), setBase.Truncate(time.Hour)
	o := compareReserve(t, 4, func(f *setFixture, rng *rand.Rand) [][]resCall {
		f.user(1, 100_000)
		f.exec(`INSERT INTO gw_keys (id, user_id, key_name, doc) VALUES (201, 1, 'second', '{}')`)
		var batch []resCall
		for i := range 10 {
			batch = append(batch, resCall{user: 1, key: setKey(1), credits: 30, keyWindow: w1, keyLimit: i64(100), userWindow: w1,
				userLimit: i64(200), limits: lims(limKey+winHour, 1000)})
			batch = append(batch, resCall{user: 1, key: 201, credits: 25, keyWindow: w1, keyLimit: i64(1000), userWindow: w1,
				userLimit: i64(200)})
			if i == 6 { // the user's window rolls: its cap has room again
				batch = append(batch, resCall{user: 1, key: 201, credits: 40, keyWindow: w2, keyLimit: i64(60), userWindow: w2,
					userLimit: i64(150)})
			}
		}
		batch = append(batch, resCall{user: 1, key: setKey(1), credits: 60, min: 10, keyWindow: w2, keyLimit: i64(100), userWindow: w2,
			userLimit: i64(150)})
		return [][]resCall{batch, batch}
	})
	requireReserveSetBased(t, o)
	got := statuses(o.answers[0])
	if !strings.Contains(got, "key_budget") || !strings.Contains(got, "user_budget") {
		t.Fatalf("statuses %s, want both caps reached", got)
	}
}

// A key's request limit (max_requests: settled plus in flight) reached
// mid-batch; its refusals still count in the request rates.
func TestReserveSetRequestLimit(t *testing.T) {
	o := compareReserve(t, 5, func(f *setFixture, rng *rand.Rand) [][]resCall {
		f.user(1, 100_000)
		f.user(2, 100_000)
		f.exec(`UPDATE gw_keys SET requests_used = 3 WHERE id = $1`, setKey(1))
		var batch []resCall
		for i := range 8 {
			batch = append(batch, resCall{user: 1, key: setKey(1), credits: 10, max: 6, limits: lims(limKey+winMin, 1000)})
			batch = append(batch, resCall{user: 2, key: setKey(2), credits: 10, max: 4, counted: i%2 == 0,
				limits: lims(limUser+winHour, 1000)})
		}
		return [][]resCall{batch}
	})
	requireReserveSetBased(t, o)
	if got := statuses(o.answers[0]); strings.Count(got, "request_limit") != 9 {
		t.Fatalf("statuses %s", got)
	}
}

// Rate limits reached mid-batch, requests and tokens, key and user level,
// across a minute's end; counted retries pass the request rates.
func TestReserveSetRateLimits(t *testing.T) {
	o := compareReserve(t, 6, func(f *setFixture, rng *rand.Rand) [][]resCall {
		f.user(1, 100_000)
		f.user(2, 100_000)
		f.exec(`INSERT INTO gw_keys (id, user_id, key_name, doc) VALUES (201, 1, 'second', '{}')`)
		keyReq := lims(limKey+winMin, 3, limUser+winHour, 100)
		userTok := lims(limUser+limTok+winMin, 250, limKey+limTok+winDay, 10_000)
		userReq := lims(limUser+winMin, 4)
		keyTok := lims(limKey+limTok+winMin, 150, limKey+limTok+winHour, 1000) // reached exactly by the third call of 50
		var batch []resCall
		for i := range 12 {
			now := setBase.Add(time.Duration(50+i) * time.Second) // the minute ends after the tenth
			batch = append(batch,
				resCall{user: 1, key: setKey(1), credits: 5, limits: keyReq, now: now, tokens: 1},
				resCall{user: 1, key: 201, credits: 5, limits: userTok, now: now, tokens: 60},
				resCall{user: 2, key: setKey(2), credits: 5, limits: userReq, now: now, counted: i%3 == 2},
				resCall{user: 2, key: setKey(2), credits: 5, limits: keyTok, now: now, tokens: 50})
		}
		return [][]resCall{batch, batch}
	})
	requireReserveSetBased(t, o)
	if got := statuses(o.answers[0]); strings.Count(got, "limited") < 10 {
		t.Fatalf("statuses %s, want the rate limits reached", got)
	}
}

// Plan limits (requests and tokens a day and a month: usage totals plus
// open holds) reached mid-batch.
func TestReserveSetPlanLimits(t *testing.T) {
	o := compareReserve(t, 7, func(f *setFixture, rng *rand.Rand) [][]resCall {
		f.user(1, 100_000)
		f.user(2, 100_000)
		day := dayNum(setBase)
		f.exec(`INSERT INTO gw_usage_totals (user_id, kind, period, requests, tokens) VALUES
			(1, 'd', $1, 5, 500), (1, 'm', $2, 20, 4000), (1, 'd', $1 - 1, 50, 50), (2, 'm', $2, 7, 100)`, day, day/100)
		var batch []resCall
		for i := range 10 {
			batch = append(batch,
				resCall{user: 1, key: setKey(1), credits: 10, limits: lims(limPlan+winDay, 9, limPlan+limTok+winMon, 5000), tokens: 100},
				resCall{user: 2, key: setKey(2), credits: 10, limits: lims(limPlan+winMon, 12, limPlan+limTok+winDay, 1000),
					tokens: int64(100 * i), counted: i == 3})
		}
		return [][]resCall{batch}
	})
	requireReserveSetBased(t, o)
	if got := statuses(o.answers[0]); strings.Count(got, "limited") < 5 {
		t.Fatalf("statuses %s, want the plan limits reached", got)
	}
}

// Calls without a key, of a deleted key (billed to the user without key
// counters, even with a request limit), of another user's key, and of a
// user without an account (not_found, nothing written).
func TestReserveSetOddCalls(t *testing.T) {
	o := compareReserve(t, 8, func(f *setFixture, rng *rand.Rand) [][]resCall {
		f.user(1, 1000)
		f.user(2, 1000)
		f.exec(`INSERT INTO gw_keys (id, user_id, key_name, doc) VALUES (301, 2, 'doomed', '{}')`)
		f.exec(`DELETE FROM gw_keys WHERE id = 301`)
		lim := lims(limUser+winMin, 100, limKey+winMin, 2, limPlan+winDay, 100)
		return [][]resCall{{
			{user: 1, key: 0, credits: 30, limits: lim},
			{user: 2, key: 301, credits: 30, max: 1, limits: lim, keyLimit: i64(5), keyWindow: setBase},
			{user: 999, key: setKey(1), credits: 30, max: 1, limits: lim},
			{user: 999, key: 0, credits: 30},
			{user: 1, key: setKey(2), credits: 30, max: 2, limits: lim},
			{user: 2, key: setKey(2), credits: 30, max: 2, limits: lim},
			{user: 2, key: setKey(2), credits: 30, max: 2, limits: lim},
			{user: 2, key: 301, credits: 30, max: 1},
			{user: 999, key: 301, credits: 30},
			{user: 1, key: setKey(1), credits: 0},
		}}
	})
	requireReserveSetBased(t, o)
	if got := statuses(o.answers[0]); got != "ok ok not_found not_found ok ok limited ok not_found ok" {
		t.Fatalf("statuses %s", got)
	}
}

// Rows the set-based path does not model (here: a key whose rate arrays
// are not of three windows) send the whole batch through gw_reserve, one
// by one.
func TestReserveSetFallback(t *testing.T) {
	o := compareReserve(t, 9, func(f *setFixture, rng *rand.Rand) [][]resCall {
		f.user(1, 1000)
		f.user(2, 1000)
		f.exec(`UPDATE gw_keys SET rate_req = '{0,0}' WHERE id = $1`, setKey(2))
		return [][]resCall{{
			{user: 1, key: setKey(1), credits: 30},
			{user: 2, key: setKey(2), credits: 30},
			{user: 1, key: setKey(1), credits: 30},
		}}
	})
	if o.perCall[0] >= 0 && o.perCall[0] != 3 {
		t.Fatalf("%d calls of gw_reserve, want the batch's 3", o.perCall[0])
	}
}

// Malformed calls (a null where the loop takes none, a negative amount,
// arrays of different lengths) go through gw_reserve one by one, and
// answer what it answers.
func TestReserveSetMalformed(t *testing.T) {
	ctx := context.Background()
	set, one := setTwin(t), setTwin(t)
	for _, p := range []*pgxpool.Pool{set, one} {
		f := &setFixture{t: t, ctx: ctx, pool: p}
		f.user(1, 1000)
	}
	const call = `SELECT r.hold_id, r.held, r.balance, r.reserved_total, r.open_holds, r.status, r.budget_used, r.budget_reserved,
		r.counts, r.breach FROM gw_reserve_batch($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
		$7::timestamptz[], $8::bigint[], $9::timestamptz[], $10::bigint[], $11::bigint[], $12::int[], $13::bigint[], $14::boolean[],
		$15::boolean[], $16::bigint[], 1) WITH ORDINALITY r ORDER BY r.ordinality`
	t0 := []time.Time{{}, {}}
	nulls := []*int64{nil, nil}
	days := []*int32{nil, nil}
	f := []bool{false, false}
	for i, args := range [][]any{
		{[]int64{1, 1}, []int64{101, 101}, []int64{10, 5}, []int64{0, 0}, []int64{0, -1}, []int64{0, 0}, t0, nulls, t0, nulls, nulls,
			days, []int64{0, 0}, f, f, make([]int64, 48)},
		{[]int64{1, 1}, []int64{101, 101}, []int64{10, 5}, []int64{0, 0}, []int64{0, 0}, []int64{0, 0}, t0, nulls, t0, nulls, nulls,
			days, []int64{0, 0}, f, f, make([]int64, 47)},
		{[]int64{1, 1}, []int64{101, 101}, []int64{10, 5}, []int64{0, 0}, []int64{0, 0}, []int64{0, 0}, t0, nulls, t0, nulls, nulls,
			days, []int64{0, 0}, f, []bool{false, true}, make([]int64, 48)}, // limited without a time
	} {
		var got []string
		err := pgx.BeginFunc(ctx, set, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, call, args...)
			if err != nil {
				return err
			}
			got, err = collectRows(rows)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		err = pgx.BeginFunc(ctx, one, func(tx pgx.Tx) error {
			for j := range 2 {
				var lim []int64
				if args[14].([]bool)[j] {
					lim = args[15].([]int64)[24*j : min(24*j+24, len(args[15].([]int64)))]
				}
				rows, err := tx.Query(ctx, reserveSQL, int64(1), int64(101), args[2].([]int64)[j], args[3].([]int64)[j], args[4].([]int64)[j], int64(0), int64(1),
					time.Time{}, nil, time.Time{}, nil, nil, nil, lim, int64(0), false)
				if err != nil {
					return err
				}
				a, err := collectRows(rows)
				if err != nil {
					return err
				}
				want = append(want, a...)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("case %d: set-based\n%s\none by one\n%s", i, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		compareTables(t, set, one, fmt.Sprint("after case ", i))
	}
}

// Random batches over a few users with random balances, caps, windows,
// limits, slots, deleted keys, missing users and counted retries, each
// seed's batches on two copies of the same data.
func TestReserveSetRandom(t *testing.T) {
	for seed := int64(1); seed <= 16; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			o := compareReserve(t, seed, randomReserveScenario)
			requireReserveSetBased(t, o)
		})
	}
}

func randomReserveScenario(f *setFixture, rng *rand.Rand) [][]resCall {
	const users = 5
	windows := []time.Time{{}, setBase.Add(-time.Hour).Truncate(time.Hour), setBase.Truncate(time.Hour)}
	limit := func(lo, n int) *int64 {
		if rng.Intn(3) == 0 {
			return nil
		}
		v := int64(lo + rng.Intn(n))
		return &v
	}
	for u := int64(1); u <= users; u++ {
		f.user(u, int64(rng.Intn(1500)))
		if rng.Intn(2) == 0 {
			f.exec(`UPDATE gw_keys SET requests_used = $2 WHERE id = $1`, setKey(u), rng.Intn(20))
		}
		if rng.Intn(2) == 0 {
			f.exec(`INSERT INTO gw_usage_totals (user_id, kind, period, requests, tokens) VALUES ($1, 'd', $2, $3, $4), ($1, 'm', $5, $6, $7)`,
				u, dayNum(setBase), rng.Intn(20), rng.Intn(2000), dayNum(setBase)/100, rng.Intn(40), rng.Intn(4000))
		}
	}
	if rng.Intn(3) == 0 {
		f.exec(`DELETE FROM gw_keys WHERE id = $1`, setKey(users))
	}
	randLimits := func() []int64 {
		if rng.Intn(4) == 0 {
			return nil
		}
		l := make([]int64, 24)
		for range 1 + rng.Intn(4) {
			lvl := []int{limPlan, limUser, limKey}[rng.Intn(3)]
			w := rng.Intn(3)
			if lvl == limPlan {
				w = 2 + rng.Intn(2)
			}
			if rng.Intn(2) == 0 {
				l[lvl+w] = int64(1 + rng.Intn(30))
			} else {
				l[lvl+limTok+w] = int64(50 + rng.Intn(2500))
			}
		}
		return l
	}
	var batches [][]resCall
	for range 3 {
		var batch []resCall
		for range 10 + rng.Intn(50) {
			u := int64(1 + rng.Intn(users))
			k := setKey(u)
			switch rng.Intn(10) {
			case 0:
				k = 0
			case 1:
				k = setKey(int64(1 + rng.Intn(users))) // perhaps another user's
			}
			if rng.Intn(25) == 0 {
				u = 999 // no account
			}
			c := resCall{user: u, key: k, credits: int64(rng.Intn(120)), max: int64(rng.Intn(3) * 10),
				keyWindow: windows[rng.Intn(3)], keyLimit: limit(20, 400), userWindow: windows[rng.Intn(3)], userLimit: limit(50, 800),
				limits: randLimits(), now: setBase.Add(time.Duration(rng.Intn(7200)-3600) * time.Second), tokens: int64(rng.Intn(220) - 20),
				counted: rng.Intn(6) == 0}
			// Reserve sends no tokens below zero, but gw_reserve takes
			// them (clamped where it holds them): so must the batch.
			if rng.Intn(2) == 0 {
				c.min, c.waiting = int64(rng.Intn(40)), int64(rng.Intn(4))
			}
			batch = append(batch, c)
		}
		batches = append(batches, batch)
	}
	return batches
}

// reservePerCallSQL is the batch statement of schema version 8 and
// before: gw_reserve once per element of the arrays (reserveSetSQL's
// arguments), to compare gw_reserve_batch with.
const reservePerCallSQL = `SELECT r.hold_id, r.held, r.balance, r.reserved_total, r.open_holds, r.status, r.budget_used, r.budget_reserved,
		r.counts, r.breach
	FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::timestamptz[],
		$8::bigint[], $9::timestamptz[], $10::bigint[], $11::bigint[], $12::int[], $13::bigint[], $14::boolean[], $15::boolean[])
		WITH ORDINALITY AS a(uid, kid, credits, min, waiting, maxreq, kw, kl, uw, ul, now, day, tokens, counted, limited, n)
	CROSS JOIN LATERAL gw_reserve(a.uid, a.kid, a.credits, a.min, a.waiting, a.maxreq, $17, a.kw, a.kl, a.uw, a.ul, a.now, a.day,
		CASE WHEN a.limited THEN ($16::bigint[])[(a.n - 1) * 24 + 1 : a.n * 24] END, a.tokens, a.counted) r
	ORDER BY a.n`

// BenchmarkReserveBatchStatement times one batch statement of 16
// reservations with limits and spend caps (each in a transaction rolled
// back, so every batch finds the same rows): gw_reserve_batch against
// gw_reserve once per call, for one hot user and for 16 users.
func BenchmarkReserveBatchStatement(b *testing.B) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.DatabaseURL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	t := &testing.T{}
	f := &setFixture{t: t, ctx: ctx, pool: pool}
	for u := int64(1); u <= 16; u++ {
		f.user(u, 1_000_000)
	}
	lim := lims(limUser+winMin, 1000, limUser+limTok+winHour, 1<<40, limKey+winMin, 1000, limPlan+winDay, 100_000)
	for _, users := range []int64{1, 16} {
		calls := make([]*batchCall, 16)
		for i := range calls {
			u := int64(i)%users + 1
			c := resCall{user: u, key: setKey(u), credits: 100, min: 10, waiting: 2, max: 1_000_000, userWindow: setBase.Truncate(time.Hour),
				userLimit: i64(1 << 40), limits: lim, tokens: 50}
			calls[i] = &batchCall{userID: u, keyID: setKey(u), sql: reserveSQL, args: c.args()}
		}
		_, args := reserveSet(calls)
		for _, v := range []struct{ name, sql string }{{"per-call", reservePerCallSQL}, {"set-based", reserveSetSQL}} {
			b.Run(fmt.Sprintf("users=%d/%s", users, v.name), func(b *testing.B) {
				for range b.N {
					tx, err := pool.Begin(ctx)
					if err != nil {
						b.Fatal(err)
					}
					rows, err := tx.Query(ctx, v.sql, args...)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := collectRows(rows); err != nil {
						b.Fatal(err)
					}
					tx.Rollback(ctx)
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/16, "µs/reservation")
			})
		}
	}
}
