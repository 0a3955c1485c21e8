package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// The alert outbox and the users' webhooks (schema version 7):
//
//	events             event id → creation time (unix ns): dedupe and pruning
//	deliveries         id → Delivery JSON (with its event)
//	deliveries_due     due time (unix ns) ‖ id → nil, pending deliveries only
//	deliveries_owner   owner user id ‖ id → nil, deliveries to users' webhooks
//	webhooks           id → Webhook JSON
//	webhooks_by_user   user id ‖ id → nil
//
// A claim moves a delivery's due entry to the end of its lease, so a
// process that dies mid-attempt leaves it due again when the lease ends
// (and at once after a restart, whose clock is past the lease or close).
var (
	bEvents          = []byte("events")
	bDeliveries      = []byte("deliveries")
	bDeliveriesDue   = []byte("deliveries_due")
	bDeliveriesOwner = []byte("deliveries_owner")
	bWebhooks        = []byte("webhooks")
	bWebhooksByUser  = []byte("webhooks_by_user")
)

// migrateOutbox creates the outbox and webhook buckets.
func migrateOutbox(tx *bbolt.Tx) error {
	for _, name := range [][]byte{bEvents, bDeliveries, bDeliveriesDue, bDeliveriesOwner, bWebhooks, bWebhooksByUser} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

func dueKey(t time.Time, id int64) []byte {
	k := make([]byte, 16)
	binary.BigEndian.PutUint64(k, uint64(max(t.UnixNano(), 0)))
	binary.BigEndian.PutUint64(k[8:], uint64(id))
	return k
}

// AppendEvents stores events and their deliveries in one transaction.
func (s *BoltStore) AppendEvents(ctx context.Context, events []OutboxEvent) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	if len(events) == 0 {
		return nil
	}
	now := s.now().UTC()
	return s.update(func(tx *bbolt.Tx) error {
		evb := tx.Bucket(bEvents)
		for _, oe := range events {
			ev := oe.Event
			if ev.ID == "" || ev.Type == "" {
				return fmt.Errorf("storage: event without id or type: %w", ErrInvalid)
			}
			if evb.Get([]byte(ev.ID)) != nil {
				continue
			}
			if ev.CreatedAt.IsZero() {
				ev.CreatedAt = now
			}
			ev.CreatedAt = ev.CreatedAt.UTC()
			if err := evb.Put([]byte(ev.ID), u64(uint64(ev.CreatedAt.UnixNano()))); err != nil {
				return err
			}
			for _, t := range oe.Targets {
				if err := addDelivery(tx, &Delivery{Event: ev, Target: t}, now); err != nil {
					return err
				}
			}
			hooks, err := userWebhooks(tx, ev.UserID)
			if err != nil {
				return err
			}
			for _, w := range hooks {
				if oe.Webhook != 0 && w.ID != oe.Webhook || oe.Webhook == 0 && !w.Wants(ev.Type) {
					continue
				}
				d := &Delivery{Event: ev, Target: WebhookTarget(w.ID), WebhookID: w.ID, OwnerID: w.UserID}
				if err := addDelivery(tx, d, now); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func addDelivery(tx *bbolt.Tx, d *Delivery, now time.Time) error {
	b := tx.Bucket(bDeliveries)
	id, err := nextID(b)
	if err != nil {
		return err
	}
	d.ID, d.State, d.DueAt, d.CreatedAt = id, DeliveryPending, now, now
	if err := putJSON(b, id8(id), d); err != nil {
		return err
	}
	if d.OwnerID != 0 {
		if err := tx.Bucket(bDeliveriesOwner).Put(pair(d.OwnerID, id), nil); err != nil {
			return err
		}
	}
	return tx.Bucket(bDeliveriesDue).Put(dueKey(d.DueAt, id), nil)
}

// ClaimDeliveries leases up to limit due deliveries.
func (s *BoltStore) ClaimDeliveries(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Delivery, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	var out []Delivery
	until := now.Add(lease).UTC()
	err := s.update(func(tx *bbolt.Tx) error {
		out = out[:0]
		due := tx.Bucket(bDeliveriesDue)
		db := tx.Bucket(bDeliveries)
		end := dueKey(now, 1<<62)
		var keys [][]byte
		c := due.Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k, end) <= 0 && len(keys) < limit; k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			id := int64(binary.BigEndian.Uint64(k[8:]))
			if err := due.Delete(k); err != nil {
				return err
			}
			var d Delivery
			if err := getJSON(db, id8(id), &d); err != nil {
				continue // pruned: a stale index entry
			}
			if d.State != DeliveryPending {
				continue
			}
			d.DueAt = until
			if err := putJSON(db, id8(id), &d); err != nil {
				return err
			}
			if err := due.Put(dueKey(until, id), nil); err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

// FinishDelivery records an attempt's outcome.
func (s *BoltStore) FinishDelivery(ctx context.Context, id int64, r DeliveryResult) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	return s.update(func(tx *bbolt.Tx) error {
		db := tx.Bucket(bDeliveries)
		var d Delivery
		if err := getJSON(db, id8(id), &d); err != nil {
			return err
		}
		due := tx.Bucket(bDeliveriesDue)
		if d.State == DeliveryPending {
			if err := due.Delete(dueKey(d.DueAt, id)); err != nil {
				return err
			}
		}
		d.finish(r)
		if d.State == DeliveryPending {
			if err := due.Put(dueKey(d.DueAt, id), nil); err != nil {
				return err
			}
		}
		return putJSON(db, id8(id), &d)
	})
}

// ListDeliveries returns recent deliveries, newest first.
func (s *BoltStore) ListDeliveries(ctx context.Context, f DeliveryFilter) ([]Delivery, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	limit := deliveryLimit(f.Limit)
	var out []Delivery
	err := s.view(func(tx *bbolt.Tx) error {
		db := tx.Bucket(bDeliveries)
		add := func(id []byte) error {
			var d Delivery
			if err := getJSON(db, id, &d); err != nil {
				return nil // pruned
			}
			out = append(out, d)
			return nil
		}
		if f.OwnerID == 0 {
			c := db.Cursor()
			for k, _ := c.Last(); k != nil && len(out) < limit; k, _ = c.Prev() {
				if err := add(k); err != nil {
					return err
				}
			}
			return nil
		}
		prefix := id8(f.OwnerID)
		c := tx.Bucket(bDeliveriesOwner).Cursor()
		k, _ := c.Seek(pair(f.OwnerID, -1)) // past the owner's last entry
		if k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix) && len(out) < limit; k, _ = c.Prev() {
			if err := add(k[8:]); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// PruneOutbox deletes events created before before and their deliveries.
func (s *BoltStore) PruneOutbox(ctx context.Context, before time.Time) (int, error) {
	if err := ctxErr(ctx); err != nil {
		return 0, err
	}
	n := 0
	cut := uint64(max(before.UnixNano(), 0))
	err := s.update(func(tx *bbolt.Tx) error {
		n = 0
		evb := tx.Bucket(bEvents)
		var evKeys [][]byte
		if err := evb.ForEach(func(k, v []byte) error {
			if len(v) == 8 && binary.BigEndian.Uint64(v) < cut {
				evKeys = append(evKeys, bytes.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range evKeys {
			if err := evb.Delete(k); err != nil {
				return err
			}
		}
		db := tx.Bucket(bDeliveries)
		var gone []Delivery
		if err := db.ForEach(func(_, v []byte) error {
			var d Delivery
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			if d.Event.CreatedAt.Before(before) {
				gone = append(gone, d)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, d := range gone {
			if err := db.Delete(id8(d.ID)); err != nil {
				return err
			}
			if err := tx.Bucket(bDeliveriesDue).Delete(dueKey(d.DueAt, d.ID)); err != nil {
				return err
			}
			if d.OwnerID != 0 {
				if err := tx.Bucket(bDeliveriesOwner).Delete(pair(d.OwnerID, d.ID)); err != nil {
					return err
				}
			}
		}
		n = len(evKeys)
		return nil
	})
	return n, err
}

// CreateWebhook stores w unless its user has maxPerUser webhooks.
func (s *BoltStore) CreateWebhook(ctx context.Context, w *Webhook, maxPerUser int) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	if w == nil || w.UserID == 0 || w.URL == "" {
		return fmt.Errorf("storage: webhook needs a user and a url: %w", ErrInvalid)
	}
	nw := *w
	nw.CreatedAt = s.now().UTC()
	err := s.update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bUsers).Get(id8(nw.UserID)) == nil {
			return ErrNotFound
		}
		hooks, err := userWebhooks(tx, nw.UserID)
		if err != nil {
			return err
		}
		if len(hooks) >= maxPerUser {
			return fmt.Errorf("storage: %d webhooks per user: %w", maxPerUser, ErrTooMany)
		}
		b := tx.Bucket(bWebhooks)
		if nw.ID, err = nextID(b); err != nil {
			return err
		}
		if err := putJSON(b, id8(nw.ID), &nw); err != nil {
			return err
		}
		return tx.Bucket(bWebhooksByUser).Put(pair(nw.UserID, nw.ID), nil)
	})
	if err != nil {
		return err
	}
	*w = nw
	return nil
}

// GetWebhook returns webhook id.
func (s *BoltStore) GetWebhook(ctx context.Context, id int64) (*Webhook, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	var w Webhook
	err := s.view(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bWebhooks), id8(id), &w) })
	if err != nil {
		return nil, err
	}
	return &w, nil
}

// ListWebhooks returns a user's webhooks, oldest first.
func (s *BoltStore) ListWebhooks(ctx context.Context, userID int64) ([]*Webhook, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	var out []*Webhook
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		out, err = userWebhooks(tx, userID)
		return err
	})
	return out, err
}

func userWebhooks(tx *bbolt.Tx, userID int64) ([]*Webhook, error) {
	var out []*Webhook
	prefix := id8(userID)
	b := tx.Bucket(bWebhooks)
	c := tx.Bucket(bWebhooksByUser).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		w := new(Webhook)
		if err := getJSON(b, k[8:], w); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

// DeleteWebhook deletes the user's webhook id.
func (s *BoltStore) DeleteWebhook(ctx context.Context, userID, id int64) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	return s.update(func(tx *bbolt.Tx) error {
		return deleteWebhookTx(tx, userID, id)
	})
}

func deleteWebhookTx(tx *bbolt.Tx, userID, id int64) error {
	idx := tx.Bucket(bWebhooksByUser)
	if idx.Get(pair(userID, id)) == nil {
		return ErrNotFound
	}
	if err := idx.Delete(pair(userID, id)); err != nil {
		return err
	}
	return tx.Bucket(bWebhooks).Delete(id8(id))
}

// deleteUserWebhooks removes a deleted user's webhooks (DeleteUser).
func deleteUserWebhooks(tx *bbolt.Tx, userID int64) error {
	hooks, err := userWebhooks(tx, userID)
	if err != nil {
		return err
	}
	for _, w := range hooks {
		if err := deleteWebhookTx(tx, userID, w.ID); err != nil {
			return err
		}
	}
	return nil
}
