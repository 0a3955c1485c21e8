package storage

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"
)

// Usage rollups: the sums of the usage records per user, key,
// model and outcome over each UTC hour and day, updated in the same
// checkpoint transaction as the records they sum. Records are kept for the
// usage detail retention only; rollups for the long one, so reports over
// long periods and the database's size do not depend on how many requests
// were made.
//
// Key: period kind ('h' or 'd'), period number (4 bytes: hours or days
// since the Unix epoch, plus 2^31 so that the years before 1970 sort
// first), user id (8), key id (8), model name id (4, see
// bolt_names.go), outcome (1). Value: varints of requests, prompt,
// completion, total, cached and cache-write tokens, and credits.

var bRollups = []byte("usage_rollups")

const rollupKeyLen = 26

var outcomeCodes = [...]Outcome{OutcomeSuccess, OutcomeEstimated, OutcomeError}

func outcomeCode(o Outcome) byte {
	for i, c := range outcomeCodes {
		if c == o {
			return byte(i)
		}
	}
	return 0
}

func periodKind(p RollupPeriod) byte {
	if p == RollupDay {
		return 'd'
	}
	return 'h'
}

// periodNum numbers the hour or day (UTC) holding t: hours or days since
// the Unix epoch (negative before it).
func periodNum(kind byte, t time.Time) int64 {
	h := floorDiv(t.Unix(), 3600)
	if kind == 'd' {
		return floorDiv(h, 24)
	}
	return h
}

const periodBias = 1 << 31

func periodKey(n int64) uint32 { return uint32(n + periodBias) }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func periodStart(kind byte, n int64) time.Time {
	if kind == 'd' {
		return time.Unix(n*86400, 0).UTC()
	}
	return time.Unix(n*3600, 0).UTC()
}

// rollupID is the key of one rollup.
type rollupID struct {
	kind    byte
	period  int64
	user    int64
	key     int64
	model   uint32
	outcome byte
}

func (id rollupID) appendKey(b []byte) []byte {
	b = append(b, id.kind)
	b = binary.BigEndian.AppendUint32(b, periodKey(id.period))
	b = binary.BigEndian.AppendUint64(b, uint64(id.user))
	b = binary.BigEndian.AppendUint64(b, uint64(id.key))
	b = binary.BigEndian.AppendUint32(b, id.model)
	return append(b, id.outcome)
}

func parseRollupKey(k []byte) (rollupID, bool) {
	if len(k) != rollupKeyLen {
		return rollupID{}, false
	}
	return rollupID{
		kind: k[0], period: int64(binary.BigEndian.Uint32(k[1:])) - periodBias, user: int64(binary.BigEndian.Uint64(k[5:])),
		key: int64(binary.BigEndian.Uint64(k[13:])), model: binary.BigEndian.Uint32(k[21:]), outcome: k[25],
	}, true
}

func appendRollupValue(b []byte, r *UsageRollup) []byte {
	for _, v := range [...]int64{r.Requests, r.PromptTokens, r.CompletionTokens, r.TotalTokens, r.CachedTokens, r.CacheWriteTokens, r.Credits} {
		b = binary.AppendVarint(b, v)
	}
	return b
}

func decodeRollupValue(v []byte, r *UsageRollup) error {
	rd := walReader{b: v}
	for _, f := range [...]*int64{&r.Requests, &r.PromptTokens, &r.CompletionTokens, &r.TotalTokens, &r.CachedTokens, &r.CacheWriteTokens, &r.Credits} {
		*f = rd.varint()
	}
	if rd.err != nil || len(rd.b) != 0 {
		return fmt.Errorf("storage: corrupt usage rollup")
	}
	return nil
}

// rollupDeltas accumulates a checkpoint's additions to the rollups.
type rollupDeltas map[rollupID]*UsageRollup

// add counts rec (of model name id model) in its hour and its day.
func (m rollupDeltas) add(rec *UsageRecord, model uint32) {
	oc := outcomeCode(rec.Outcome())
	for _, kind := range [2]byte{'h', 'd'} {
		id := rollupID{kind, periodNum(kind, rec.Time), rec.UserID, rec.KeyID, model, oc}
		d := m[id]
		if d == nil {
			d = new(UsageRollup)
			m[id] = d
		}
		d.Add(rec)
	}
}

// apply adds the deltas to the rollups of b, in key order. New rollups
// mostly come after every other (keys start with the period), so pages
// are filled as the ledger's and the records' are.
func (m rollupDeltas) apply(b *bbolt.Bucket) error {
	b.FillPercent = 0.95
	ids := make([]rollupID, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b rollupID) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.period, b.period), cmp.Compare(a.user, b.user),
			cmp.Compare(a.key, b.key), cmp.Compare(a.model, b.model), cmp.Compare(a.outcome, b.outcome))
	})
	var kbuf [rollupKeyLen]byte
	for _, id := range ids {
		k := id.appendKey(kbuf[:0])
		var cur UsageRollup
		if v := b.Get(k); v != nil {
			if err := decodeRollupValue(v, &cur); err != nil {
				return err
			}
		}
		cur.Merge(m[id])
		if err := b.Put(k, appendRollupValue(nil, &cur)); err != nil {
			return err
		}
	}
	return nil
}

// UsageRollups returns the rollups matching f, ordered by start, user,
// key, model and outcome. It flushes queued settlements first.
func (s *BoltStore) UsageRollups(ctx context.Context, f RollupFilter) ([]UsageRollup, error) {
	if f.Period != RollupHour && f.Period != RollupDay {
		return nil, fmt.Errorf("storage: rollup period %q: %w", f.Period, ErrInvalid)
	}
	if err := s.Flush(ctx); err != nil {
		return nil, err
	}
	kind := periodKind(f.Period)
	lo := []byte{kind}
	if !f.Since.IsZero() {
		// The first period starting at or after Since.
		n := periodNum(kind, f.Since)
		if periodStart(kind, n).Before(f.Since) {
			n++
		}
		lo = binary.BigEndian.AppendUint32(lo, periodKey(n))
	}
	var out []UsageRollup
	err := s.view(func(tx *bbolt.Tx) error {
		name := s.nameResolver(tx)
		c := tx.Bucket(bRollups).Cursor()
		for k, v := c.Seek(lo); k != nil && k[0] == kind; k, v = c.Next() {
			id, ok := parseRollupKey(k)
			if !ok {
				continue
			}
			start := periodStart(kind, id.period)
			if !f.Until.IsZero() && !start.Before(f.Until) {
				break
			}
			if (f.UserID != 0 && id.user != f.UserID) || (f.KeyID != 0 && id.key != f.KeyID) {
				continue
			}
			r := UsageRollup{Start: start, UserID: id.user, KeyID: id.key}
			if int(id.outcome) < len(outcomeCodes) {
				r.Outcome = outcomeCodes[id.outcome]
			}
			var err error
			if r.Model, err = name(id.model); err != nil {
				return err
			}
			if err := decodeRollupValue(v, &r); err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	// Keys order models by id and outcomes by code: by name instead, as
	// the interface says.
	slices.SortFunc(out, func(a, b UsageRollup) int {
		return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.KeyID, b.KeyID),
			cmp.Compare(a.Model, b.Model), cmp.Compare(a.Outcome, b.Outcome))
	})
	return out, err
}

// pruneRollups deletes the hourly and daily rollups of the days before
// the UTC day of before.
func pruneRollups(b *bbolt.Bucket, before time.Time) error {
	day := periodNum('d', before)
	for kind, cut := range map[byte]int64{'h': day * 24, 'd': day} {
		hi := binary.BigEndian.AppendUint32([]byte{kind}, periodKey(cut))
		var dead [][]byte
		c := b.Cursor()
		for k, _ := c.Seek([]byte{kind}); k != nil && bytes.Compare(k, hi) < 0; k, _ = c.Next() {
			dead = append(dead, bytes.Clone(k))
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// migrateRollups (the migration that added them) creates the name
// dictionary and the rollups, and sums every stored usage record into
// them. The records stay as they are (JSON: see bolt_codec.go). Rollups
// that exist already (a file that had them once) are complete and kept.
func migrateRollups(tx *bbolt.Tx) error {
	names, err := tx.CreateBucketIfNotExists(bNames)
	if err != nil {
		return err
	}
	if tx.Bucket(bRollups) != nil {
		return nil
	}
	rollups, err := tx.CreateBucket(bRollups)
	if err != nil {
		return err
	}
	var cache nameCache
	fresh := map[string]uint32{}
	deltas := rollupDeltas{}
	usage := tx.Bucket(bUsage)
	err = usage.ForEachBucket(func(day []byte) error {
		base, err := time.Parse("20060102", string(day))
		if err != nil {
			return nil // not a day bucket
		}
		return usage.Bucket(day).ForEach(func(k, v []byte) error {
			if len(k) != 16 {
				return nil
			}
			rec, err := decodeUsage(v, int64(binary.BigEndian.Uint64(k)), base, noNames)
			if err != nil {
				return err
			}
			model, err := cache.nameID(names, rec.Model, fresh)
			if err != nil {
				return err
			}
			deltas.add(&rec, model)
			return nil
		})
	})
	if err != nil {
		return err
	}
	return deltas.apply(rollups)
}

// noNames resolves no name id: records before the dictionary have none.
func noNames(id uint32) (string, error) {
	return "", fmt.Errorf("storage: corrupt record: name id %d before the name dictionary", id)
}
