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
		name := s.nameResolver(tx)
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
			base, err := time.Parse("20060102", string(day))
			if err != nil {
				continue // not a day bucket
			}
			full, err := scanUsageDay(b, base, name, &f, &out)
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
func scanUsageDay(b *bbolt.Bucket, base time.Time, name func(uint32) (string, error), f *UsageFilter, out *[]UsageRecord) (bool, error) {
	match := func(k, v []byte) (bool, error) {
		r, err := decodeUsage(v, int64(binary.BigEndian.Uint64(k)), base, name)
		if err != nil {
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
			if full, err := match(k, v); err != nil || full {
				return full, err
			}
		}
		return false, nil
	}
	// Every user: order the day's records by sequence, newest first.
	type rec struct {
		seq  uint64
		k, v []byte
	}
	var all []rec
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) == 16 {
			all = append(all, rec{binary.BigEndian.Uint64(k[8:]), k, v})
		}
	}
	slices.SortFunc(all, func(a, b rec) int { return cmp.Compare(b.seq, a.seq) })
	for _, r := range all {
		if full, err := match(r.k, r.v); err != nil || full {
			return full, err
		}
	}
	return false, nil
}

// PruneUsage deletes the day buckets of usage records before the day of
// detailBefore (UTC), groups the older runs of charge entries of the
// ledger (see compactLedger), and, when rollupsBefore is set, deletes the
// rollups and totals of the days before it. It returns how many records
// the deleted day buckets held.
func (s *BoltStore) PruneUsage(ctx context.Context, detailBefore, rollupsBefore time.Time) (int, error) {
	if err := s.Flush(ctx); err != nil {
		return 0, err
	}
	cut := string(dayKey(detailBefore))
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
		if err := compactLedger(tx.Bucket(bLedger), detailBefore); err != nil {
			return err
		}
		if rollupsBefore.IsZero() {
			return nil
		}
		if err := pruneRollups(tx.Bucket(bRollups), rollupsBefore); err != nil {
			return err
		}
		return pruneTotals(tx.Bucket(bUsageTotals), dayNum(rollupsBefore))
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
