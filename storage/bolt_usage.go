package storage

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"slices"
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
			if day == nil {
				day, _ = days.Last()
			} else if string(day) > string(hi) {
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
			full, err := scanUsageDay(b, &f, &out)
			if err != nil || full {
				return err
			}
		}
		return nil
	})
	return out, err
}

// scanUsageDay appends the matching records of one day bucket to out,
// newest first, and reports whether the limit is reached. Records are keyed
// user id + sequence, so a user's records are one range.
func scanUsageDay(b *bbolt.Bucket, f *UsageFilter, out *[]UsageRecord) (bool, error) {
	match := func(v []byte) (bool, error) {
		var r UsageRecord
		if err := jsonUnmarshal(v, &r); err != nil {
			return false, err
		}
		if (f.UserID != 0 && r.UserID != f.UserID) || (f.KeyID != 0 && r.KeyID != f.KeyID) ||
			(!f.Since.IsZero() && r.Time.Before(f.Since)) || (!f.Until.IsZero() && r.Time.After(f.Until)) {
			return false, nil
		}
		*out = append(*out, r)
		return f.Limit > 0 && len(*out) >= f.Limit, nil
	}
	c := b.Cursor()
	if f.UserID != 0 {
		prefix := id8(f.UserID)
		k, v := c.Seek(pair(f.UserID, -1)) // past the user's last record
		if k == nil {
			k, v = c.Last()
		} else if !bytes.HasPrefix(k, prefix) {
			k, v = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
			if full, err := match(v); err != nil || full {
				return full, err
			}
		}
		return false, nil
	}
	// Every user: order the day's records by sequence, newest first.
	type rec struct {
		seq uint64
		v   []byte
	}
	var all []rec
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) == 16 {
			all = append(all, rec{binary.BigEndian.Uint64(k[8:]), v})
		}
	}
	slices.SortFunc(all, func(a, b rec) int { return cmp.Compare(b.seq, a.seq) })
	for _, r := range all {
		if full, err := match(r.v); err != nil || full {
			return full, err
		}
	}
	return false, nil
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
		return pruneTotals(tx.Bucket(bUsageTotals), dayNum(before))
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
