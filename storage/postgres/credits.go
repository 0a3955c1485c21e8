package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Reserve holds credit (and a max_requests slot) in one call of
// gw_reserve: with the account row locked, it takes the share rule's amount
// (storage.ReserveAmount) of the available balance when that covers it, and
// adds a hold row of this node. With req.Limits, the same call checks and
// counts the rate limits and plan quotas first (storage.LimitCounter).
// Concurrent reservations of this node are committed together
// (batcher); each runs in the batch exactly as it would alone.
func (s *Store) Reserve(ctx context.Context, req storage.ReserveRequest) (*storage.Reservation, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	if req.Credits < 0 || req.MinCredits < 0 || req.Waiting < 0 || req.MaxRequests < 0 {
		return nil, fmt.Errorf("storage: negative reservation: %w", storage.ErrInvalid)
	}
	if (req.KeyBudget.Limited && req.KeyBudget.Limit < 0) || (req.UserBudget.Limited && req.UserBudget.Limit < 0) {
		return nil, fmt.Errorf("storage: negative spend limit: %w", storage.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var id, held, credits, reserved, holds, used, inWindow *int64
	var status string
	var counts []int64
	var breach *int32
	// Concurrent reservations share a transaction (batch.go): one turn on
	// a hot user's rows and one commit for all of them.
	sql, args := s.reserveCall(req)
	err := s.reserves.do(req.UserID, req.KeyID, sql, args,
		[]any{&id, &held, &credits, &reserved, &holds, &status, &used, &inWindow, &counts, &breach})
	if err != nil {
		return nil, err
	}
	var state *storage.LimitState
	if req.Limits != nil {
		state = unflatten(counts)
	}
	switch status {
	case "ok":
	case "insufficient":
		return nil, &storage.CreditShortage{Needed: *held, Credits: *credits, Reserved: *reserved, Holds: *holds, Limits: state}
	case "key_budget", "user_budget":
		w := req.UserBudget
		if status == "key_budget" {
			w = req.KeyBudget
		}
		return nil, &storage.BudgetExceeded{Key: status == "key_budget", Limit: w.Limit, Used: *used, Reserved: *inWindow,
			Needed: *held, Limits: state}
	case "limited":
		return nil, exceeded(req.Limits, *breach, counts)
	case "request_limit":
		return nil, storage.ErrRequestLimit
	case "not_found":
		return nil, fmt.Errorf("storage: unknown user %d: %w", req.UserID, storage.ErrNotFound)
	default:
		return nil, fmt.Errorf("storage: gw_reserve answered %q", status)
	}
	s.openN.Add(1)
	s.holds.Store(*id, struct{}{})
	return &storage.Reservation{ID: uint64(*id), UserID: req.UserID, KeyID: req.KeyID, Amount: *held,
		Available: *credits - *reserved, Limits: state}, nil
}

// reserveCall is the call of gw_reserve for req.
func (s *Store) reserveCall(req storage.ReserveRequest) (string, []any) {
	var now *int64
	var day *int32
	var limits []int64
	tokens, counted := int64(0), false
	if lim := req.Limits; lim != nil {
		n, d, l := limitArgs(lim)
		now, day, limits = &n, &d, l
		tokens, counted = max(lim.Tokens, 0), lim.Counted
	}
	sql := reserveSQL
	if s.opts.AsyncReserve {
		sql = reserveAsyncSQL
	}
	return sql, []any{req.UserID, req.KeyID, req.Credits, req.MinCredits, req.Waiting,
		req.MaxRequests, s.node, req.KeyBudget.Start, limitArg(req.KeyBudget), req.UserBudget.Start, limitArg(req.UserBudget),
		now, day, limits, tokens, counted}
}

// limitArg is a budget window's limit as gw_reserve takes it: null for none.
func limitArg(w storage.BudgetWindow) *int64 {
	if !w.Limited {
		return nil
	}
	return &w.Limit
}

// reserveSQL is gw_reserve with the spend windows and the limits (null:
// none) of migration 0006.
const reserveSQL = `SELECT hold_id, held, balance, reserved_total, open_holds, status, budget_used, budget_reserved, counts, breach
	FROM gw_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`

// reserveAsyncSQL is reserveSQL committed without waiting for the WAL
// flush (Options.AsyncReserve): synchronous_commit off for this statement's
// own transaction only, which commits right after it. (A SET clause on the
// function would not do: it is undone when the function returns, before
// the commit.)
const reserveAsyncSQL = `SELECT hold_id, held, balance, reserved_total, open_holds, status, budget_used, budget_reserved, counts, breach
	FROM set_config('synchronous_commit', 'off', true), gw_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`

// OpenReservations counts the reservations made through this handle and
// not yet settled or refunded.
func (s *Store) OpenReservations() int64 { return s.openN.Load() }

// Settle charges min(cost, what the user has beyond other holds) exactly
// once, with the ledger entry, the usage record and the totals, in one call
// of gw_settle_spend. Concurrent settlements of this node are committed
// together (settleBatcher); Settle returns once its own is committed.
func (s *Store) Settle(ctx context.Context, res *storage.Reservation, cost int64, rec storage.UsageRecord) (charged, balanceAfter int64, err error) {
	if s.closed.Load() {
		return 0, 0, storage.ErrClosed
	}
	if res == nil {
		return 0, 0, fmt.Errorf("storage: nil reservation: %w", storage.ErrInvalid)
	}
	if cost < 0 {
		return 0, 0, fmt.Errorf("storage: negative cost: %w", storage.ErrInvalid)
	}
	call, err := s.settleCall(res, cost, rec)
	if err != nil {
		return 0, 0, err
	}
	// Concurrent settlements share a transaction (batch.go); this returns
	// once the one holding this settlement has committed. It does not end
	// with ctx: a settlement asked for is applied, or kept for a retry.
	var status string
	var sp spendRow
	err = s.settles.do(res.UserID, res.KeyID, settleSpendSQL, call.args, sp.dest(&charged, &balanceAfter, &status))
	if err != nil {
		return 0, 0, s.retryLater(call, err)
	}
	if status == "ok" {
		spent := sp.settleSpend()
		res.Spent = &spent
	}
	return s.settled(int64(res.ID), status, charged, balanceAfter)
}

// dest is where settleSpendSQL's row is scanned: the charge, the balance
// and the status, then r.
func (r *spendRow) dest(charged, balance *int64, status *string) []any {
	return []any{charged, balance, status,
		&r.keyTracked, &r.keyWindow, &r.keyBefore, &r.keyAfter, &r.keyLimit,
		&r.userTracked, &r.userWindow, &r.userBefore, &r.userAfter, &r.userLimit}
}

// settleCall is the call of gw_settle (gw_settle_spend, the first time)
// that settles hold at cost with rec.
func (s *Store) settleCall(res *storage.Reservation, cost int64, rec storage.UsageRecord) (heldCall, error) {
	if y := rec.Time.UTC().Year(); !rec.Time.IsZero() && (y < 1 || y > 9999) {
		return heldCall{}, fmt.Errorf("storage: usage record time %v out of range: %w", rec.Time, storage.ErrInvalid)
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	if rec.Time.IsZero() {
		rec.Time = now
	} else {
		// The database keeps microseconds: the record says what is stored.
		rec.Time = rec.Time.UTC().Truncate(time.Microsecond)
	}
	doc, err := json.Marshal(&rec)
	if err != nil {
		return heldCall{}, err
	}
	return heldCall{settleSQL, []any{int64(res.ID), cost, now, rec.Time, dayNum(rec.Time), dayNum(rec.Time) / 100,
		rec.TotalTokens, rec.RequestID, string(doc), res.UserID, res.KeyID}}, nil
}

// spendRow is what gw_settle_spend answers about the spend windows.
type spendRow struct {
	keyTracked, userTracked *bool
	keyWindow, userWindow   *time.Time
	keyBefore, keyAfter     *int64
	userBefore, userAfter   *int64
	keyLimit, userLimit     *int64 // the hold's (null: none)
}

// settleSpend turns the row into Reservation.Spent.
func (r *spendRow) settleSpend() storage.SettleSpend {
	change := func(tracked *bool, w *time.Time, before, after, limit *int64) storage.SpendChange {
		if tracked == nil || !*tracked || w == nil || before == nil || after == nil {
			return storage.SpendChange{}
		}
		c := storage.SpendChange{Valid: true, Window: windowTime(*w), Before: *before, After: *after}
		if limit != nil {
			c.Limit, c.Limited = *limit, true
		}
		return c
	}
	return storage.SettleSpend{
		Key:  change(r.keyTracked, r.keyWindow, r.keyBefore, r.keyAfter, r.keyLimit),
		User: change(r.userTracked, r.userWindow, r.userBefore, r.userAfter, r.userLimit),
	}
}

// windowTime is a stored window start as Go has it: the zero time for the
// never-ending window.
func windowTime(t time.Time) time.Time {
	if t.Unix() == (time.Time{}).Unix() {
		return time.Time{}
	}
	return t.UTC()
}

// The settlement and refund calls name the hold's user and key besides its
// id (migration 0007): an id handed out again after a database crash lost
// the (asynchronously committed) reservation that had it is not this
// request's hold.
const (
	settleSQL = `SELECT coalesce(charged, 0), coalesce(balance, 0), status FROM gw_settle_held($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`
	refundSQL = `SELECT 0::bigint, 0::bigint, gw_refund_held($1, $2, $3)`
	// settleSpendSQL is the first attempt of a settlement, which reports
	// what it did to the spend windows; a retry goes through settleSQL.
	settleSpendSQL = `SELECT coalesce(charged, 0), coalesce(balance, 0), status,
		key_tracked, key_window, key_before, key_after, key_limit, user_tracked, user_window, user_before, user_after, user_limit
		FROM gw_settle_held($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`
)

// done forgets a hold this handle made, now settled or refunded.
func (s *Store) done(hold int64) {
	if _, ok := s.holds.LoadAndDelete(hold); ok {
		s.openN.Add(-1)
	}
}

// orphanAge is how old an open hold of this node must be before
// releaseOrphans may refund it: far longer than a Reserve call takes.
const orphanAge = time.Minute

// releaseOrphans refunds this node's open holds that no caller holds: those
// whose Reserve committed but whose answer was lost with the connection.
// Without this they would hold credit until the node stops.
func (s *Store) releaseOrphans(ctx context.Context) error {
	rows, err := s.pool.Query(ctx, `SELECT id FROM gw_holds WHERE node_id = $1 AND state = 'open' AND created_at < now() - $2 * interval '1 microsecond'`,
		s.node, orphanAge.Microseconds())
	if err != nil {
		return mapErr(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return mapErr(err)
	}
	for _, id := range ids {
		if _, ok := s.holds.Load(id); ok {
			continue
		}
		if _, err := s.pool.Exec(ctx, `SELECT gw_refund($1)`, id); err != nil {
			return mapErr(err)
		}
	}
	return nil
}

// heldCall is a settlement or refund of a hold: a call of gw_settle or
// gw_refund answering (charged, balance, status).
type heldCall struct {
	sql  string
	args []any
}

// retryLater keeps a settlement or refund that failed because the database
// could not be reached, for keepAlive to apply once it is back, and returns
// err. A repeat is harmless: if the first call did commit, the hold row is
// gone and the repeat finds nothing to do.
func (s *Store) retryLater(call heldCall, err error) error {
	if tryAgain(err) {
		s.retryMu.Lock()
		s.retries = append(s.retries, call)
		s.retryMu.Unlock()
	}
	return err
}

// retryHeld applies the kept settlements and refunds, keeping those that
// fail again because the database is still unreachable, and reports
// whether any is still kept.
func (s *Store) retryHeld(ctx context.Context) (kept bool) {
	s.retryMu.Lock()
	calls := s.retries
	s.retries = nil
	s.retryMu.Unlock()
	for i, call := range calls {
		var charged, balance int64
		var status string
		err := s.pool.QueryRow(ctx, call.sql, call.args...).Scan(&charged, &balance, &status)
		if err != nil && tryAgain(err) {
			s.dropDeadConnections(err)
			s.retryMu.Lock()
			s.retries = append(s.retries, calls[i:]...)
			s.retryMu.Unlock()
			return true
		}
		if err == nil {
			// Applied now, or by the first attempt (status "settled"):
			// either way the reservation is over.
			s.done(call.args[0].(int64))
		}
	}
	s.retryMu.Lock()
	defer s.retryMu.Unlock()
	return len(s.retries) > 0
}

// tryAgain reports whether a settlement or refund that failed with err
// must be kept for a retry: the database could not be reached or could not
// do it right now (passing: a deadlock, a full disk, a standby after a
// failover), or the call was cut short (the node closing cancels its
// background work; a statement timeout) before the database answered it.
// Only a final answer of the database ends it; a kept call applied twice
// charges once (its hold is gone the second time).
func tryAgain(err error) bool {
	return errors.Is(mapErr(err), storage.ErrUnavailable) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// dropDeadConnections empties the pool of its idle connections when err
// says the connection to the database was lost: after an outage every idle
// connection is dead and would fail its next use in turn, one retry or one
// feed poll each. Not on a timeout or a full server: a slow or busy
// database keeps its connections.
func (s *Store) dropDeadConnections(err error) {
	if connectionLost(err) {
		s.pool.Reset()
	}
}

// connectionLost reports whether err says the connection to the database
// was lost (or the server is going down), rather than that the database
// answered: a server that answers with a conflict, a full disk or "too
// many connections" is alive, and so are its connections; a timeout says
// nothing about them either.
func connectionLost(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P01", "57P02", "57P03", "57P05": // shutdown, crash, starting up, idle session timeout
			return true
		}
		return strings.HasPrefix(pgErr.Code, "08")
	}
	return errors.Is(mapErr(err), storage.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err)
}

// settled turns gw_settle's and gw_refund's status into Settle's results.
func (s *Store) settled(hold int64, status string, charged, balance int64) (int64, int64, error) {
	switch status {
	case "ok":
		s.done(hold)
		return charged, balance, nil
	case "settled":
		return 0, 0, storage.ErrAlreadySettled
	}
	return 0, 0, fmt.Errorf("storage: unexpected settlement status %q", status)
}

// Refund releases a reservation without charging, exactly once.
func (s *Store) Refund(ctx context.Context, res *storage.Reservation) error {
	if s.closed.Load() {
		return storage.ErrClosed
	}
	if res == nil {
		return fmt.Errorf("storage: nil reservation: %w", storage.ErrInvalid)
	}
	var charged, balance int64
	var status string
	call := heldCall{refundSQL, []any{int64(res.ID), res.UserID, res.KeyID}}
	if err := s.pool.QueryRow(ctx, call.sql, call.args...).Scan(&charged, &balance, &status); err != nil {
		return s.retryLater(call, mapErr(err))
	}
	_, _, err := s.settled(int64(res.ID), status, 0, 0)
	return err
}

// AddCredits appends a ledger entry in one call of gw_add_credits; a
// non-empty idempotency key is applied once per user (unique in the
// ledger). Credits added (not replayed) are a ChangeCredits change in the
// same transaction, so that requests waiting for credits on every node
// retry.
func (s *Store) AddCredits(ctx context.Context, userID, amount int64, kind storage.LedgerKind, idempotencyKey, note string) (int64, bool, error) {
	if s.closed.Load() {
		return 0, false, storage.ErrClosed
	}
	switch {
	case kind != storage.LedgerGrant && kind != storage.LedgerTopUp && kind != storage.LedgerAdjust:
		return 0, false, fmt.Errorf("storage: ledger kind %q cannot be added directly: %w", kind, storage.ErrInvalid)
	case amount == 0:
		return 0, false, fmt.Errorf("storage: zero credit amount: %w", storage.ErrInvalid)
	case amount < 0 && kind != storage.LedgerAdjust:
		return 0, false, fmt.Errorf("storage: negative amount needs kind %s: %w", storage.LedgerAdjust, storage.ErrInvalid)
	}
	var idem *string
	if idempotencyKey != "" {
		idem = &idempotencyKey
	}
	var balance *int64
	var status string
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		err := tx.QueryRow(ctx, `SELECT balance, status FROM gw_add_credits($1, $2, $3, $4, $5, $6)`,
			userID, amount, string(kind), idem, note, s.now().UTC()).Scan(&balance, &status)
		if err != nil || status != "ok" || amount < 0 {
			return nil, err
		}
		return []storage.Change{{Kind: storage.ChangeCredits, UserID: userID}}, nil
	})
	if err != nil {
		return 0, false, err
	}
	switch status {
	case "ok", "replayed":
		return *balance, status == "replayed", nil
	case "insufficient":
		return 0, false, storage.ErrInsufficientCredits
	case "not_found":
		return 0, false, fmt.Errorf("storage: unknown user %d: %w", userID, storage.ErrNotFound)
	}
	return 0, false, fmt.Errorf("storage: gw_add_credits answered %q", status)
}

// Balance returns the user's credits and what open holds reserve.
func (s *Store) Balance(ctx context.Context, userID int64) (storage.Balance, error) {
	if s.closed.Load() {
		return storage.Balance{}, storage.ErrClosed
	}
	var b storage.Balance
	err := s.pool.QueryRow(ctx, `SELECT credits, reserved FROM gw_accounts WHERE user_id = $1`, userID).Scan(&b.Credits, &b.Reserved)
	if errors.Is(err, pgx.ErrNoRows) {
		return storage.Balance{}, fmt.Errorf("storage: unknown user %d: %w", userID, storage.ErrNotFound)
	}
	return b, mapErr(err)
}

// Ledger returns the user's entries, oldest first.
func (s *Store) Ledger(ctx context.Context, userID int64) ([]storage.LedgerEntry, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	var out []storage.LedgerEntry
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM gw_accounts WHERE user_id = $1)`, userID).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return storage.ErrNotFound
		}
		var err error
		out, err = collectLedger(ctx, tx, `WHERE user_id = $1 ORDER BY id`, userID)
		return err
	})
	return out, mapErr(err)
}

func collectLedger(ctx context.Context, q querier, where string, args ...any) ([]storage.LedgerEntry, error) {
	// Charge entries written before schema 3 have requests 0: one each.
	rows, err := q.Query(ctx, `SELECT id, user_id, kind, amount, balance_after, key_id, request_id, coalesce(idempotency_key, ''), note, time,
		CASE WHEN kind = 'charge' THEN GREATEST(requests, 1) ELSE requests END
		FROM gw_ledger `+where, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.LedgerEntry, error) {
		var e storage.LedgerEntry
		var kind string
		err := r.Scan(&e.ID, &e.UserID, &kind, &e.Amount, &e.BalanceAfter, &e.KeyID, &e.RequestID, &e.IdempotencyKey, &e.Note, &e.Time, &e.Requests)
		e.Kind, e.Time = storage.LedgerKind(kind), e.Time.UTC()
		return e, err
	})
}

// VerifyLedger checks for every account that its balance equals the sum of
// its ledger, that each entry's balance_after is the running sum and never
// negative, and that reserved and holds are what its open holds add up to
// and how many there are, in one consistent snapshot.
func (s *Store) VerifyLedger(ctx context.Context) error {
	var problems []error
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT user_id, id, amount, balance_after,
			sum(amount) OVER (PARTITION BY user_id ORDER BY id) FROM gw_ledger ORDER BY user_id, id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var uid, id, amount, after, running int64
			if err := rows.Scan(&uid, &id, &amount, &after, &running); err != nil {
				return err
			}
			if after != running {
				problems = append(problems, fmt.Errorf("user %d entry %d: balance_after %d, running sum %d", uid, id, after, running))
			}
			if running < 0 {
				problems = append(problems, fmt.Errorf("user %d entry %d: balance below zero (%d)", uid, id, running))
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT a.user_id, a.credits, a.reserved, a.holds,
			coalesce((SELECT sum(amount) FROM gw_ledger l WHERE l.user_id = a.user_id), 0),
			coalesce((SELECT sum(amount) FROM gw_holds h WHERE h.user_id = a.user_id AND h.state = 'open'), 0),
			(SELECT count(*) FROM gw_holds h WHERE h.user_id = a.user_id AND h.state = 'open')
			FROM gw_accounts a ORDER BY a.user_id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var uid, credits, reserved, holds, sum, held, open int64
			if err := rows.Scan(&uid, &credits, &reserved, &holds, &sum, &held, &open); err != nil {
				return err
			}
			if credits != sum {
				problems = append(problems, fmt.Errorf("user %d: stored balance %d, ledger sum %d", uid, credits, sum))
			}
			if reserved != held {
				problems = append(problems, fmt.Errorf("user %d: reserved %d, open holds %d", uid, reserved, held))
			}
			if holds != open {
				problems = append(problems, fmt.Errorf("user %d: %d holds counted, %d open", uid, holds, open))
			}
		}
		return rows.Err()
	})
	if err != nil {
		return mapErr(err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("storage: ledger verification failed: %w", errors.Join(problems...))
	}
	return nil
}

// dayNum names the UTC day of t as yyyymmdd (the month is dayNum/100).
func dayNum(t time.Time) int32 {
	y, m, d := t.UTC().Date()
	return int32(y*10000 + int(m)*100 + d)
}

// settleSetSQL is the settlements of a batch in one statement: the calls'
// arguments as arrays, settled in their order by gw_settle_batch
// (migration 0008: one statement per table for the whole batch, each call
// charged as gw_settle_held would one after another), answering
// settleSpendSQL's row for each, in the calls' order.
const settleSetSQL = `SELECT coalesce(r.charged, 0), coalesce(r.balance, 0), r.status,
		r.key_tracked, r.key_window, r.key_before, r.key_after, r.key_limit,
		r.user_tracked, r.user_window, r.user_before, r.user_after, r.user_limit
	FROM gw_settle_batch($1::bigint[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::int[], $6::int[], $7::bigint[],
		$8::text[], $9::text[]::jsonb[], $10::bigint[], $11::bigint[]) WITH ORDINALITY AS r
	ORDER BY r.ordinality`

// settleSet is settleSetSQL for calls (settleCall's arguments each), or ""
// when they do not fit it.
func settleSet(calls []*batchCall) (string, []any) {
	n := len(calls)
	holds, costs, days, months, tokens, users, keys := make([]int64, n), make([]int64, n), make([]int32, n), make([]int32, n),
		make([]int64, n), make([]int64, n), make([]int64, n)
	nows, times := make([]time.Time, n), make([]time.Time, n)
	reqs, docs := make([]string, n), make([]string, n)
	for i, c := range calls {
		a := c.args
		ok := len(a) == 11 && c.sql == settleSpendSQL
		ok = ok && as(a[0], &holds[i]) && as(a[1], &costs[i]) && as(a[2], &nows[i]) && as(a[3], &times[i]) &&
			as(a[4], &days[i]) && as(a[5], &months[i]) && as(a[6], &tokens[i]) && as(a[7], &reqs[i]) && as(a[8], &docs[i]) &&
			as(a[9], &users[i]) && as(a[10], &keys[i])
		if !ok {
			return "", nil
		}
	}
	return settleSetSQL, []any{holds, costs, nows, times, days, months, tokens, reqs, docs, users, keys}
}

// as sets *dst to v when v is a T, and reports whether it was.
func as[T any](v any, dst *T) bool {
	t, ok := v.(T)
	if ok {
		*dst = t
	}
	return ok
}

// reserveSetSQL is the reservations of a batch in one statement: the
// calls' arguments as arrays, reserved in their order by gw_reserve_batch
// (migration 0010: one statement per table for the whole batch, each call
// decided as gw_reserve would one after another), answering reserveSQL's
// row for each, in the calls' order. The limits of all calls are one
// array, 24 values a call ($16), whose call's slice is taken when it has
// limits ($15). It locks the batch's key rows, then its account rows, in
// id order itself (setLocks).
const reserveSetSQL = `SELECT r.hold_id, r.held, r.balance, r.reserved_total, r.open_holds, r.status, r.budget_used, r.budget_reserved,
		r.counts, r.breach
	FROM gw_reserve_batch($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::timestamptz[],
		$8::bigint[], $9::timestamptz[], $10::bigint[], $11::bigint[], $12::int[], $13::bigint[], $14::boolean[], $15::boolean[],
		$16::bigint[], $17::bigint) WITH ORDINALITY AS r
	ORDER BY r.ordinality`

// reserveSet is reserveSetSQL for calls (reserveCall's arguments each), or
// "" when they do not fit it.
func reserveSet(calls []*batchCall) (string, []any) {
	n := len(calls)
	cols := make([][]int64, 6)
	for i := range cols {
		cols[i] = make([]int64, n)
	}
	kws, uws := make([]time.Time, n), make([]time.Time, n)
	kls, uls, nows := make([]*int64, n), make([]*int64, n), make([]*int64, n)
	days := make([]*int32, n)
	tokens, limited, counted := make([]int64, n), make([]bool, n), make([]bool, n)
	limits := make([]int64, 24*n)
	var node int64
	if len(calls[0].args) != 16 || !as(calls[0].args[6], &node) {
		return "", nil
	}
	async := calls[0].sql == reserveAsyncSQL
	for i, c := range calls {
		a := c.args
		var callNode int64
		var lim []int64
		ok := len(a) == 16 && (c.sql == reserveAsyncSQL) == async && (c.sql == reserveSQL || c.sql == reserveAsyncSQL)
		for j := 0; ok && j < len(cols); j++ {
			ok = as(a[j], &cols[j][i])
		}
		ok = ok && as(a[6], &callNode) && callNode == node && as(a[7], &kws[i]) && as(a[8], &kls[i]) && as(a[9], &uws[i]) &&
			as(a[10], &uls[i]) && as(a[11], &nows[i]) && as(a[12], &days[i]) && as(a[13], &lim) && as(a[14], &tokens[i]) &&
			as(a[15], &counted[i])
		if !ok || (lim != nil && len(lim) != 24) {
			return "", nil
		}
		if lim != nil {
			limited[i] = true
			copy(limits[24*i:], lim)
		}
	}
	sql := reserveSetSQL
	if async {
		sql = strings.Replace(sql, "FROM gw_reserve_batch(", "FROM set_config('synchronous_commit', 'off', true), gw_reserve_batch(", 1)
	}
	return sql, []any{cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], kws, kls, uws, uls, nows, days, tokens, counted, limited,
		limits, node}
}
