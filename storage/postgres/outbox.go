package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// The alert outbox (migrations/0004_alert_outbox.sql).

// AppendEvents stores events and their deliveries in one transaction; an
// event id stored already (by this node or another) is skipped.
func (s *Store) AppendEvents(ctx context.Context, events []storage.OutboxEvent) error {
	if len(events) == 0 {
		return nil
	}
	now := s.now().UTC()
	return s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		for _, oe := range events {
			ev := oe.Event
			if ev.ID == "" || ev.Type == "" {
				return nil, fmt.Errorf("storage: event without id or type: %w", storage.ErrInvalid)
			}
			if ev.CreatedAt.IsZero() {
				ev.CreatedAt = now
			}
			ev.CreatedAt = ev.CreatedAt.UTC().Truncate(time.Microsecond)
			doc, err := json.Marshal(ev)
			if err != nil {
				return nil, err
			}
			tag, err := tx.Exec(ctx, `INSERT INTO gw_events (id, user_id, created_at, doc) VALUES ($1, $2, $3, $4)
				ON CONFLICT (id) DO NOTHING`, ev.ID, ev.UserID, ev.CreatedAt, string(doc))
			if err != nil {
				return nil, err
			}
			if tag.RowsAffected() == 0 {
				continue // stored already
			}
			if len(oe.Targets) > 0 {
				if _, err := tx.Exec(ctx, `INSERT INTO gw_deliveries (event_id, target, due_at, created_at)
					SELECT $1, t, $2, $2 FROM unnest($3::text[]) AS t ON CONFLICT DO NOTHING`,
					ev.ID, now, oe.Targets); err != nil {
					return nil, err
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO gw_deliveries (event_id, target, webhook_id, owner_id, due_at, created_at)
				SELECT $1, 'webhook:' || id, id, user_id, $2, $2 FROM gw_webhooks
				WHERE user_id = $3 AND active AND CASE WHEN $4 <> 0 THEN id = $4 ELSE ($5 = ANY(events) OR '*' = ANY(events)) END
				ON CONFLICT DO NOTHING`,
				ev.ID, now, ev.UserID, oe.Webhook, ev.Type); err != nil {
				return nil, err
			}
		}
		return nil, nil
	})
}

const deliveryColumns = `d.id, e.doc, d.target, d.webhook_id, d.owner_id, d.state, d.attempts, d.due_at,
	d.last_attempt_at, d.last_status, d.last_error, d.created_at, d.delivered_at`

func scanDelivery(row pgx.Row) (storage.Delivery, error) {
	var d storage.Delivery
	var doc string
	err := row.Scan(&d.ID, &doc, &d.Target, &d.WebhookID, &d.OwnerID, &d.State, &d.Attempts, &d.DueAt,
		&d.LastAttemptAt, &d.LastStatus, &d.LastError, &d.CreatedAt, &d.DeliveredAt)
	if err != nil {
		return d, err
	}
	if err := json.Unmarshal([]byte(doc), &d.Event); err != nil {
		return d, fmt.Errorf("storage: corrupt event: %w", err)
	}
	d.DueAt, d.CreatedAt = d.DueAt.UTC(), d.CreatedAt.UTC()
	return d, nil
}

// ClaimDeliveries leases up to limit due deliveries. The rows are locked
// with SKIP LOCKED, so nodes claiming at once take different ones; the
// lease (due_at moved forward) keeps them from later claims until the
// attempt is recorded or the lease ends.
func (s *Store) ClaimDeliveries(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]storage.Delivery, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	rows, err := s.pool.Query(ctx, `WITH c AS (
			SELECT id FROM gw_deliveries WHERE state = 'pending' AND due_at <= $1
			ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED)
		UPDATE gw_deliveries d SET due_at = $2 FROM c, gw_events e
		WHERE d.id = c.id AND e.id = d.event_id
		RETURNING `+deliveryColumns, now.UTC(), now.Add(lease).UTC(), limit)
	if err != nil {
		return nil, mapErr(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.Delivery, error) { return scanDelivery(r) })
	return out, mapErr(err)
}

// FinishDelivery records an attempt's outcome.
func (s *Store) FinishDelivery(ctx context.Context, id int64, r storage.DeliveryResult) error {
	return s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		d, err := scanDelivery(tx.QueryRow(ctx, `SELECT `+deliveryColumns+` FROM gw_deliveries d
			JOIN gw_events e ON e.id = d.event_id WHERE d.id = $1 FOR UPDATE OF d`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, storage.ErrNotFound
		}
		if err != nil {
			return nil, err
		}
		storage.FinishDeliveryState(&d, r)
		_, err = tx.Exec(ctx, `UPDATE gw_deliveries SET state = $2, attempts = $3, due_at = $4, last_attempt_at = $5,
			last_status = $6, last_error = $7, delivered_at = $8 WHERE id = $1`,
			id, d.State, d.Attempts, d.DueAt, d.LastAttemptAt, d.LastStatus, d.LastError, d.DeliveredAt)
		return nil, err
	})
}

// ListDeliveries returns recent deliveries, newest first.
func (s *Store) ListDeliveries(ctx context.Context, f storage.DeliveryFilter) ([]storage.Delivery, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	limit := storage.ClampDeliveryLimit(f.Limit)
	var rows pgx.Rows
	var err error
	if f.OwnerID != 0 {
		rows, err = s.pool.Query(ctx, `SELECT `+deliveryColumns+` FROM gw_deliveries d JOIN gw_events e ON e.id = d.event_id
			WHERE d.owner_id = $1 ORDER BY d.id DESC LIMIT $2`, f.OwnerID, limit)
	} else {
		rows, err = s.pool.Query(ctx, `SELECT `+deliveryColumns+` FROM gw_deliveries d JOIN gw_events e ON e.id = d.event_id
			ORDER BY d.id DESC LIMIT $1`, limit)
	}
	if err != nil {
		return nil, mapErr(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.Delivery, error) { return scanDelivery(r) })
	return out, mapErr(err)
}

// PruneOutbox deletes events created before before (their deliveries go
// with them).
func (s *Store) PruneOutbox(ctx context.Context, before time.Time) (int, error) {
	if s.closed.Load() {
		return 0, storage.ErrClosed
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM gw_events WHERE created_at < $1`, before.UTC())
	if err != nil {
		return 0, mapErr(err)
	}
	return int(tag.RowsAffected()), nil
}

// CreateWebhook stores w unless its user has maxPerUser webhooks. The
// user's row is locked so that concurrent creations count each other.
func (s *Store) CreateWebhook(ctx context.Context, w *storage.Webhook, maxPerUser int) error {
	if w == nil || w.UserID == 0 || w.URL == "" {
		return fmt.Errorf("storage: webhook needs a user and a url: %w", storage.ErrInvalid)
	}
	nw := *w
	nw.CreatedAt = s.now().UTC().Truncate(time.Microsecond)
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		var one int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM gw_users WHERE id = $1 FOR UPDATE`, nw.UserID).Scan(&one); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return nil, storage.ErrNotFound
			}
			return nil, err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM gw_webhooks WHERE user_id = $1`, nw.UserID).Scan(&n); err != nil {
			return nil, err
		}
		if n >= maxPerUser {
			return nil, fmt.Errorf("storage: %d webhooks per user: %w", maxPerUser, storage.ErrTooMany)
		}
		if err := tx.QueryRow(ctx, `SELECT nextval(pg_get_serial_sequence('gw_webhooks', 'id'))`).Scan(&nw.ID); err != nil {
			return nil, err
		}
		doc, err := json.Marshal(&nw)
		if err != nil {
			return nil, err
		}
		_, err = tx.Exec(ctx, `INSERT INTO gw_webhooks (id, user_id, events, active, doc) VALUES ($1, $2, $3, $4, $5)`,
			nw.ID, nw.UserID, nw.Events, nw.IsActive, string(doc))
		return nil, err
	})
	if err != nil {
		return err
	}
	*w = nw
	return nil
}

// GetWebhook returns webhook id.
func (s *Store) GetWebhook(ctx context.Context, id int64) (*storage.Webhook, error) {
	return getDoc[storage.Webhook](ctx, s, `SELECT doc FROM gw_webhooks WHERE id = $1`, id)
}

// ListWebhooks returns a user's webhooks, oldest first.
func (s *Store) ListWebhooks(ctx context.Context, userID int64) ([]*storage.Webhook, error) {
	return listDocs[storage.Webhook](ctx, s, `SELECT doc FROM gw_webhooks WHERE user_id = $1 ORDER BY id`, userID)
}

// DeleteWebhook deletes the user's webhook id.
func (s *Store) DeleteWebhook(ctx context.Context, userID, id int64) error {
	return s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		tag, err := tx.Exec(ctx, `DELETE FROM gw_webhooks WHERE id = $1 AND user_id = $2`, id, userID)
		if err == nil && tag.RowsAffected() == 0 {
			err = storage.ErrNotFound
		}
		return nil, err
	})
}
