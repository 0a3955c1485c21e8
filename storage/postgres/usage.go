package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// pruneBatch is how many usage rows one pruning statement deletes, so that
// no statement holds its locks for long.
const pruneBatch = 5000

// pruneLock is the advisory lock under which one node at a time prunes.
const pruneLock = 0x67770002

// ListUsage returns usage records matching f, newest first.
func (s *Store) ListUsage(ctx context.Context, f storage.UsageFilter) ([]storage.UsageRecord, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	var c conditions
	c.ids(f.UserID, f.KeyID)
	if !f.Since.IsZero() {
		c.add("time >= $%d", f.Since)
	}
	if !f.Until.IsZero() {
		c.add("time <= $%d", f.Until)
	}
	sql := `SELECT doc::text FROM gw_usage` + c.sql()
	sql += ` ORDER BY time DESC, id DESC`
	if f.Limit > 0 {
		sql += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	rows, err := s.pool.Query(ctx, sql, c.args...)
	if err != nil {
		return nil, mapErr(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.UsageRecord, error) {
		var doc string
		var rec storage.UsageRecord
		if err := r.Scan(&doc); err != nil {
			return rec, err
		}
		if err := json.Unmarshal([]byte(doc), &rec); err != nil {
			return rec, fmt.Errorf("storage: corrupt usage record: %w", err)
		}
		rec.Time = rec.Time.UTC()
		return rec, nil
	})
	return out, mapErr(err)
}

// UsageTotals reads the user's totals of the UTC day of dayStart and the
// UTC month of monthStart.
func (s *Store) UsageTotals(ctx context.Context, userID int64, dayStart, monthStart time.Time) (dayReq, dayTok, monthReq, monthTok int64, err error) {
	if s.closed.Load() {
		return 0, 0, 0, 0, storage.ErrClosed
	}
	err = s.pool.QueryRow(ctx, `SELECT
		coalesce(sum(requests) FILTER (WHERE kind = 'd'), 0), coalesce(sum(tokens) FILTER (WHERE kind = 'd'), 0),
		coalesce(sum(requests) FILTER (WHERE kind = 'm'), 0), coalesce(sum(tokens) FILTER (WHERE kind = 'm'), 0)
		FROM gw_usage_totals WHERE user_id = $1 AND ((kind = 'd' AND period = $2) OR (kind = 'm' AND period = $3))`,
		userID, dayNum(dayStart), dayNum(monthStart)/100).Scan(&dayReq, &dayTok, &monthReq, &monthTok)
	return dayReq, dayTok, monthReq, monthTok, mapErr(err)
}

// PruneUsage deletes the usage records before the UTC day of
// detailBefore, in batches of pruneBatch rows, and groups the charge
// entries of the ledger older than detailBefore (see compactLedgerSQL);
// when rollupsBefore is set, it deletes the rollups and the totals of the
// days (and of the months) wholly before it too. One node prunes at a
// time: while another holds the lock, it returns 0 at once.
func (s *Store) PruneUsage(ctx context.Context, detailBefore, rollupsBefore time.Time) (int, error) {
	if s.closed.Load() {
		return 0, storage.ErrClosed
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, mapErr(err)
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, int64(pruneLock)).Scan(&locked); err != nil {
		return 0, mapErr(err)
	}
	if !locked {
		return 0, nil
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(pruneLock))
	// By ctid (the records have no index on id since schema 9), the
	// oldest first: each batch is a range of gw_usage_time, wherever its
	// rows lie in the table.
	n, err := deleteBatches(ctx, conn, `DELETE FROM gw_usage WHERE ctid IN
		(SELECT ctid FROM gw_usage WHERE time < $1 ORDER BY time LIMIT $2)`,
		storage.RollupDay.Truncate(detailBefore))
	if err != nil {
		return n, err
	}
	if err := compactLedger(ctx, conn, detailBefore.UTC()); err != nil {
		return n, err
	}
	if rollupsBefore.IsZero() {
		return n, nil
	}
	cut := storage.RollupDay.Truncate(rollupsBefore)
	if _, err := deleteBatches(ctx, conn, `DELETE FROM gw_usage_rollups WHERE ctid IN
		(SELECT ctid FROM gw_usage_rollups WHERE start < $1 LIMIT $2)`, cut); err != nil {
		return n, err
	}
	day := dayNum(cut)
	if _, err := conn.Exec(ctx, `DELETE FROM gw_usage_totals WHERE (kind = 'd' AND period < $1) OR (kind = 'm' AND period < $2)`,
		day, day/100); err != nil {
		return n, mapErr(err)
	}
	return n, nil
}

// deleteBatches runs a DELETE of at most $2 rows before $1 until it
// deletes fewer, so that no statement holds its locks for long.
func deleteBatches(ctx context.Context, conn *pgxpool.Conn, sql string, cut time.Time) (int, error) {
	n := 0
	for {
		tag, err := conn.Exec(ctx, sql, cut, pruneBatch)
		if err != nil {
			return n, mapErr(err)
		}
		n += int(tag.RowsAffected())
		if tag.RowsAffected() < pruneBatch {
			return n, nil
		}
	}
}

// ledgerBatch is how many ledger ids one grouping statement covers (a
// variable for tests).
var ledgerBatch int64 = 50000

// compactLedger groups the charge entries older than cut, from where the
// last run stopped (gw_ledger_grouped) up to the first entry that is not
// older than cut, ledgerBatch ids per statement: it reads only what became
// old since the last run, walking the primary key. A run of charges that
// two statements (or two runs) split becomes two entries.
func compactLedger(ctx context.Context, conn *pgxpool.Conn, cut time.Time) error {
	var upto int64
	if err := conn.QueryRow(ctx, `SELECT upto FROM gw_ledger_grouped`).Scan(&upto); err != nil {
		return mapErr(err)
	}
	// end: the first id after upto that is not old, or past the last one.
	var end int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(
		(SELECT id FROM gw_ledger WHERE id > $1 AND time >= $2 ORDER BY id LIMIT 1),
		(SELECT coalesce(max(id), 0) + 1 FROM gw_ledger))`, upto, cut).Scan(&end); err != nil {
		return mapErr(err)
	}
	for upto+1 < end {
		hi := min(end, upto+1+ledgerBatch)
		if _, err := conn.Exec(ctx, compactLedgerSQL, upto, hi); err != nil {
			return mapErr(err)
		}
		if _, err := conn.Exec(ctx, `UPDATE gw_ledger_grouped SET upto = $1`, hi-1); err != nil {
			return mapErr(err)
		}
		upto = hi - 1
	}
	return nil
}

// compactLedgerSQL groups, for every user, each run of consecutive charge
// entries (in id order, without an idempotency key) among the entries
// with ids in ($1, $2) into one entry: the run's last entry, given the
// run's sum as amount and its request count; the others are deleted. The
// last entry's balance_after stays, so every balance_after is still the
// running sum (as bbolt's compactLedger). A user's entries are written
// under their account's row lock, so an entry still being written in the
// range belongs to a user none of whose visible entries follows it.
const compactLedgerSQL = `WITH g AS (
	SELECT id, user_id, amount, key_id, requests, time,
		kind = 'charge' AND idempotency_key IS NULL AS charge,
		sum(CASE WHEN kind = 'charge' AND idempotency_key IS NULL THEN 0 ELSE 1 END)
			OVER (PARTITION BY user_id ORDER BY id) AS run
	FROM gw_ledger WHERE id > $1 AND id < $2
), runs AS (
	SELECT user_id, run, max(id) AS last_id, sum(amount) AS amount, sum(GREATEST(requests, 1)) AS requests,
		CASE WHEN min(key_id) = max(key_id) THEN min(key_id) ELSE 0 END AS key_id, min(time) AS first
	FROM g WHERE charge GROUP BY user_id, run HAVING count(*) > 1
), gone AS (
	DELETE FROM gw_ledger d USING g JOIN runs r ON r.user_id = g.user_id AND r.run = g.run
	WHERE d.id = g.id AND g.charge AND g.id <> r.last_id
)
UPDATE gw_ledger e SET amount = r.amount, requests = r.requests, key_id = r.key_id, request_id = '',
	note = r.requests || ' requests settled from ' || to_char(r.first AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
FROM runs r WHERE e.id = r.last_id`

// UsageRollups returns the rollups matching f, ordered by start, user,
// key, model and outcome.
func (s *Store) UsageRollups(ctx context.Context, f storage.RollupFilter) ([]storage.UsageRollup, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	if f.Period != storage.RollupHour && f.Period != storage.RollupDay {
		return nil, fmt.Errorf("storage: rollup period %q: %w", f.Period, storage.ErrInvalid)
	}
	var c conditions
	c.add(`period = $%d::text::"char"`, rollupPeriodCode(f.Period))
	c.ids(f.UserID, f.KeyID)
	if !f.Since.IsZero() {
		c.add("start >= $%d", f.Since)
	}
	if !f.Until.IsZero() {
		c.add("start < $%d", f.Until)
	}
	rows, err := s.pool.Query(ctx, `SELECT start, user_id, key_id, model, outcome, `+rollupSums+` FROM gw_usage_rollups`+
		c.sql()+` ORDER BY start, user_id, key_id, model COLLATE "C", outcome COLLATE "C"`, c.args...)
	if err != nil {
		return nil, mapErr(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.UsageRollup, error) {
		var u storage.UsageRollup
		var outcome string
		err := r.Scan(&u.Start, &u.UserID, &u.KeyID, &u.Model, &outcome, &u.Requests, &u.PromptTokens, &u.CompletionTokens,
			&u.TotalTokens, &u.CachedTokens, &u.CacheWriteTokens, &u.Credits)
		u.Start, u.Outcome = u.Start.UTC(), storage.Outcome(outcome)
		return u, err
	})
	return out, mapErr(err)
}

const rollupSums = `requests, prompt_tokens, completion_tokens, total_tokens, cached_tokens, cache_write_tokens, credits`

var rollupColumns = []string{"period", "start", "user_id", "key_id", "model", "outcome", "requests", "prompt_tokens",
	"completion_tokens", "total_tokens", "cached_tokens", "cache_write_tokens", "credits"}

// rollupPeriodCode is the period column's value for p.
func rollupPeriodCode(p storage.RollupPeriod) string {
	if p == storage.RollupDay {
		return "d"
	}
	return "h"
}

// rollupPeriodChar is the period column's value for p, as a COPY of a
// "char" column takes it.
func rollupPeriodChar(p storage.RollupPeriod) rune { return rune(rollupPeriodCode(p)[0]) }
