package storage

import (
	"context"
	"time"

	"go.etcd.io/bbolt"
)

// ListUsage returns usage records matching f, newest first. It flushes
// queued settlements first, so a settled request is always listed.
func (s *BoltStore) ListUsage(ctx context.Context, f UsageFilter) ([]UsageRecord, error) {
	if err := s.Flush(ctx); err != nil {
		return nil, err
	}
	var out []UsageRecord
	var lo, hi []byte
	if !f.Since.IsZero() {
		lo = dayKey(f.Since)
	}
	if !f.Until.IsZero() {
		hi = dayKey(f.Until)
	}
	err := s.view(func(tx *bbolt.Tx) error {
		usage := tx.Bucket(bUsage)
		days := usage.Cursor()
		var day []byte
		if hi != nil {
			day, _ = days.Seek(hi)
			if day == nil || string(day) > string(hi) {
				day, _ = days.Prev()
			}
		} else {
			day, _ = days.Last()
		}
		for ; day != nil; day, _ = days.Prev() {
			if lo != nil && string(day) < string(lo) {
				break
			}
			b := usage.Bucket(day)
			if b == nil {
				continue
			}
			c := b.Cursor()
			for k, v := c.Last(); k != nil; k, v = c.Prev() {
				var r UsageRecord
				if err := jsonUnmarshal(v, &r); err != nil {
					return err
				}
				if (f.UserID != 0 && r.UserID != f.UserID) || (f.KeyID != 0 && r.KeyID != f.KeyID) ||
					(!f.Since.IsZero() && r.Time.Before(f.Since)) || (!f.Until.IsZero() && r.Time.After(f.Until)) {
					continue
				}
				out = append(out, r)
				if f.Limit > 0 && len(out) >= f.Limit {
					return nil
				}
			}
		}
		return nil
	})
	return out, err
}

// PruneUsage deletes the day buckets of usage records before the day of
// before (UTC) and returns how many records they held.
func (s *BoltStore) PruneUsage(ctx context.Context, before time.Time) (int, error) {
	if err := s.Flush(ctx); err != nil {
		return 0, err
	}
	cut := string(dayKey(before))
	n := 0
	err := s.update(func(tx *bbolt.Tx) error {
		usage := tx.Bucket(bUsage)
		var names [][]byte
		c := usage.Cursor()
		for k, v := c.First(); k != nil && string(k) < cut; k, v = c.Next() {
			if v != nil {
				continue
			}
			names = append(names, append([]byte(nil), k...))
			n += usage.Bucket(k).Stats().KeyN
		}
		for _, name := range names {
			if err := usage.DeleteBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
