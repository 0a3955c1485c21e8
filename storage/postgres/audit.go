package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// auditChunk is how many entries ExportAudit and VerifyAudit read per
// query.
const auditChunk = 1000

// AppendAudit stores e at the end of the hash chain. The head row is locked
// for the transaction, so appends of several nodes make one chain. Times
// are truncated to microseconds before hashing: what is hashed is what
// PostgreSQL gives back.
func (s *Store) AppendAudit(ctx context.Context, e *storage.AuditEntry) error {
	if s.closed.Load() {
		return storage.ErrClosed
	}
	if e == nil || e.Action == "" {
		return fmt.Errorf("storage: audit entry needs an action: %w", storage.ErrInvalid)
	}
	ne := *e
	if ne.Time.IsZero() {
		ne.Time = s.now()
	}
	ne.Time = ne.Time.UTC().Truncate(time.Microsecond)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var last int64
		var prev string
		if err := tx.QueryRow(ctx, `SELECT last_id, hash FROM gw_audit_head FOR UPDATE`).Scan(&last, &prev); err != nil {
			return err
		}
		stored, err := storage.SealAudit(ne, last+1, prev)
		if err != nil {
			return err
		}
		doc, err := json.Marshal(&stored)
		if err != nil {
			return err
		}
		batch := &pgx.Batch{}
		batch.Queue(`INSERT INTO gw_audit (id, user_id, key_id, action, time, doc) VALUES ($1, $2, $3, $4, $5, $6)`,
			stored.ID, stored.UserID, stored.KeyID, stored.Action, stored.Time, string(doc))
		batch.Queue(`UPDATE gw_audit_head SET last_id = $1, hash = $2`, stored.ID, stored.Hash)
		if err := tx.SendBatch(ctx, batch).Close(); err != nil {
			return err
		}
		ne = stored
		return nil
	})
	if err != nil {
		return mapErr(err)
	}
	*e = ne
	return nil
}

// ListAudit returns entries matching f, newest first.
func (s *Store) ListAudit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditEntry, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	var c conditions
	c.ids(f.UserID, f.KeyID)
	if f.Action != "" || len(f.Actions) > 0 {
		c.add("action = ANY($%d)", append([]string{f.Action}, f.Actions...))
	}
	if !f.Since.IsZero() {
		c.add("time >= $%d", f.Since)
	}
	if !f.Until.IsZero() {
		c.add("time <= $%d", f.Until)
	}
	sql := `SELECT id, doc FROM gw_audit` + c.sql()
	sql += ` ORDER BY id DESC`
	if f.Limit > 0 {
		sql += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	var out []storage.AuditEntry
	err := s.scanAudit(ctx, sql, c.args, func(_ int64, e storage.AuditEntry, _ string) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// scanAudit calls fn with each entry the query (id, doc) returns.
func (s *Store) scanAudit(ctx context.Context, sql string, args []any, fn func(id int64, e storage.AuditEntry, doc string) error) error {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return mapErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var doc string
		if err := rows.Scan(&id, &doc); err != nil {
			return mapErr(err)
		}
		var e storage.AuditEntry
		if err := json.Unmarshal([]byte(doc), &e); err != nil {
			return fmt.Errorf("audit entry %d does not decode: %w", id, storage.ErrAuditChainBroken)
		}
		if err := fn(id, e, doc); err != nil {
			return err
		}
	}
	return mapErr(rows.Err())
}

// VerifyAudit walks the chain from the first entry, checking every link
// and hash and that the last entry is the recorded head.
func (s *Store) VerifyAudit(ctx context.Context) (int, error) {
	if s.closed.Load() {
		return 0, storage.ErrClosed
	}
	// The head first: entries appended after it are not checked against it.
	var headID int64
	var headHash string
	if err := s.pool.QueryRow(ctx, `SELECT last_id, hash FROM gw_audit_head`).Scan(&headID, &headHash); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("audit head record missing: %w", storage.ErrAuditChainBroken)
		}
		return 0, mapErr(err)
	}
	n := 0
	prev := ""
	var lastID int64
	for {
		got := 0
		err := s.scanAudit(ctx, `SELECT id, doc FROM gw_audit WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3`,
			[]any{lastID, headID, auditChunk}, func(id int64, e storage.AuditEntry, _ string) error {
				if err := storage.CheckAuditLink(e, id, prev); err != nil {
					return err
				}
				prev, lastID = e.Hash, id
				n++
				got++
				return nil
			})
		if err != nil {
			return n, err
		}
		if got < auditChunk {
			break
		}
	}
	if lastID != headID || prev != headHash {
		return n, fmt.Errorf("audit chain ends at entry %d, but the head is entry %d: %w", lastID, headID, storage.ErrAuditChainBroken)
	}
	return n, nil
}

// ExportAudit writes the chain as JSON lines, oldest first, a chunk per
// query.
func (s *Store) ExportAudit(ctx context.Context, w io.Writer) error {
	if s.closed.Load() {
		return storage.ErrClosed
	}
	var after int64
	var buf strings.Builder
	for {
		buf.Reset()
		got := 0
		err := s.scanAudit(ctx, `SELECT id, doc FROM gw_audit WHERE id > $1 ORDER BY id LIMIT $2`, []any{after, auditChunk},
			func(id int64, _ storage.AuditEntry, doc string) error {
				buf.WriteString(doc)
				buf.WriteByte('\n')
				after = id
				got++
				return nil
			})
		if err != nil {
			return err
		}
		if got == 0 {
			return nil
		}
		if _, err := io.WriteString(w, buf.String()); err != nil {
			return err
		}
	}
}
