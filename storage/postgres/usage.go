package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

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
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.UserID != 0 {
		add("user_id = $%d", f.UserID)
	}
	if f.KeyID != 0 {
		add("key_id = $%d", f.KeyID)
	}
	if !f.Since.IsZero() {
		add("time >= $%d", f.Since)
	}
	if !f.Until.IsZero() {
		add("time <= $%d", f.Until)
	}
	sql := `SELECT doc::text FROM gw_usage`
	if len(where) > 0 {
		sql += ` WHERE ` + strings.Join(where, " AND ")
	}
	sql += ` ORDER BY time DESC, id DESC`
	if f.Limit > 0 {
		sql += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	rows, err := s.pool.Query(ctx, sql, args...)
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

// PruneUsage deletes the usage records before the UTC day of before, in
// batches of pruneBatch rows, and the totals of the days (and of the
// months) wholly before it. One node prunes at a time: while another
// holds the lock, it returns 0 at once.
func (s *Store) PruneUsage(ctx context.Context, before time.Time) (int, error) {
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
	b := before.UTC()
	cut := time.Date(b.Year(), b.Month(), b.Day(), 0, 0, 0, 0, time.UTC)
	n := 0
	for {
		tag, err := conn.Exec(ctx, `DELETE FROM gw_usage WHERE id IN (SELECT id FROM gw_usage WHERE time < $1 LIMIT $2)`, cut, pruneBatch)
		if err != nil {
			return n, mapErr(err)
		}
		n += int(tag.RowsAffected())
		if tag.RowsAffected() < pruneBatch {
			break
		}
	}
	day := dayNum(cut)
	if _, err := conn.Exec(ctx, `DELETE FROM gw_usage_totals WHERE (kind = 'd' AND period < $1) OR (kind = 'm' AND period < $2)`,
		day, day/100); err != nil {
		return n, mapErr(err)
	}
	return n, nil
}
