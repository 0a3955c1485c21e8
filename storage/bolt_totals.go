package storage

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Per-user usage totals: requests and tokens per UTC day and per UTC month,
// kept in bUsageTotals beside the usage records and updated in the same
// group-committed transaction as each settlement, so reading a user's plan
// counters costs two small records instead of a month of usage records.
//
// Key: user id (8 bytes) + period kind ('d' or 'm') + period number
// (4 bytes: yyyymmdd or yyyymm). Value: requests, tokens (8 bytes each).

const (
	totalsDay   = 'd'
	totalsMonth = 'm'
)

func totalsKey(userID int64, kind byte, n uint32) []byte {
	k := make([]byte, 13)
	binary.BigEndian.PutUint64(k, uint64(userID))
	k[8] = kind
	binary.BigEndian.PutUint32(k[9:], n)
	return k
}

// dayNum and monthNum name the UTC day (yyyymmdd) and month (yyyymm) of t.
func dayNum(t time.Time) uint32 {
	y, m, d := t.UTC().Date()
	return uint32(y)*10000 + uint32(m)*100 + uint32(d)
}

func monthNum(t time.Time) uint32 {
	y, m, _ := t.UTC().Date()
	return uint32(y)*100 + uint32(m)
}

func decodeTotals(v []byte) (requests, tokens int64, err error) {
	if v == nil {
		return 0, 0, nil
	}
	if len(v) != 16 {
		return 0, 0, fmt.Errorf("storage: corrupt usage totals record")
	}
	return int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:])), nil
}

// totalsDelta accumulates a batch's increments of one totals record.
type totalsDelta struct{ requests, tokens int64 }

type totalsID struct {
	userID int64
	kind   byte
	n      uint32
}

// addTotals adds one settled request of tokens to the user's day and month.
func addTotals(m map[totalsID]totalsDelta, userID int64, day time.Time, tokens int64) {
	for _, id := range [2]totalsID{{userID, totalsDay, dayNum(day)}, {userID, totalsMonth, monthNum(day)}} {
		d := m[id]
		d.requests++
		d.tokens += tokens
		m[id] = d
	}
}

// applyTotals writes accumulated deltas (read-modify-write in tx).
func applyTotals(b *bbolt.Bucket, m map[totalsID]totalsDelta) error {
	for id, d := range m {
		k := totalsKey(id.userID, id.kind, id.n)
		req, tok, err := decodeTotals(b.Get(k))
		if err != nil {
			return err
		}
		v := make([]byte, 16)
		binary.BigEndian.PutUint64(v, uint64(req+d.requests))
		binary.BigEndian.PutUint64(v[8:], uint64(tok+d.tokens))
		if err := b.Put(k, v); err != nil {
			return err
		}
	}
	return nil
}

// UsageTotals returns the requests and total tokens of the user's usage
// records in the UTC day holding dayStart and in the UTC month holding
// monthStart (the same sums ListUsage's records give). It flushes queued
// settlements first, so every settled request is counted.
func (s *BoltStore) UsageTotals(ctx context.Context, userID int64, dayStart, monthStart time.Time) (dayReq, dayTok, monthReq, monthTok int64, err error) {
	if err := s.Flush(ctx); err != nil {
		return 0, 0, 0, 0, err
	}
	err = s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bUsageTotals)
		var err error
		if dayReq, dayTok, err = decodeTotals(b.Get(totalsKey(userID, totalsDay, dayNum(dayStart)))); err != nil {
			return err
		}
		monthReq, monthTok, err = decodeTotals(b.Get(totalsKey(userID, totalsMonth, monthNum(monthStart))))
		return err
	})
	if err != nil {
		return 0, 0, 0, 0, err
	}
	return dayReq, dayTok, monthReq, monthTok, nil
}

// pruneTotals deletes the day totals before the day cut (yyyymmdd) and
// the month totals of months wholly before it, as PruneUsage deletes the
// records they sum.
func pruneTotals(b *bbolt.Bucket, cut uint32) error {
	var dead [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) != 13 {
			continue
		}
		n := binary.BigEndian.Uint32(k[9:])
		if (k[8] == totalsDay && n < cut) || (k[8] == totalsMonth && n < cut/100) {
			dead = append(dead, append([]byte(nil), k...))
		}
	}
	for _, k := range dead {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// migrateUsageTotals builds the totals from the usage records already
// stored (schema 1 → 2).
func migrateUsageTotals(tx *bbolt.Tx) error {
	b, err := tx.CreateBucketIfNotExists(bUsageTotals)
	if err != nil {
		return err
	}
	m := map[totalsID]totalsDelta{}
	usage := tx.Bucket(bUsage)
	err = usage.ForEachBucket(func(name []byte) error {
		base, err := time.Parse("20060102", string(name))
		if err != nil {
			return nil // not a day bucket
		}
		return usage.Bucket(name).ForEach(func(k, v []byte) error {
			if len(k) != 16 {
				return nil
			}
			// Only the tokens and time are read: names need not resolve.
			r, err := decodeUsage(v, 0, base, func(uint32) (string, error) { return "", nil })
			if err != nil {
				return err
			}
			addTotals(m, int64(binary.BigEndian.Uint64(k)), r.Time, r.TotalTokens)
			return nil
		})
	})
	if err != nil {
		return err
	}
	return applyTotals(b, m)
}
