package storage

import (
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// The ledger is append-only, and settlements are its bulk: even grouped by
// checkpoint (see committer.apply) a steadily used account adds an entry a
// second. Once their usage records are pruned, the charges of a run of
// settlements are grouped further: compactLedger replaces each user's run
// of consecutive charge entries older than the usage detail retention by
// one charge entry, their sum, with the last one's id, time and
// balance_after and the number of requests they covered. Every other entry
// (grants, top-ups, adjustments) is kept as it is, so every balance_after
// is still the running sum of the entries up to it (VerifyLedger), and the
// per-hour and per-day rollups keep what each request was charged.

// compactLedger groups the old charge runs of every user's ledger.
func compactLedger(lb *bbolt.Bucket, before time.Time) error {
	var users [][]byte
	if err := lb.ForEachBucket(func(k []byte) error {
		users = append(users, append([]byte(nil), k...))
		return nil
	}); err != nil {
		return err
	}
	for _, uk := range users {
		if err := compactUserLedger(lb.Bucket(uk), int64(binary.BigEndian.Uint64(uk)), before); err != nil {
			return err
		}
	}
	return nil
}

// compactUserLedger groups the runs of charge entries before before in
// one user's ledger bucket.
func compactUserLedger(b *bbolt.Bucket, userID int64, before time.Time) error {
	type grouped struct {
		keys  [][]byte
		entry LedgerEntry
	}
	var runs []grouped
	var run []LedgerEntry
	var keys [][]byte
	end := func() {
		if len(run) >= 2 {
			runs = append(runs, grouped{keys, groupCharges(run)})
		}
		run, keys = nil, nil
	}
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		e, err := decodeLedger(v, int64(binary.BigEndian.Uint64(k)), userID)
		if err != nil {
			return err
		}
		if !e.Time.Before(before) {
			break
		}
		if e.Kind != LedgerCharge || e.IdempotencyKey != "" {
			end()
			continue
		}
		run = append(run, e)
		keys = append(keys, append([]byte(nil), k...))
	}
	end()
	for _, g := range runs {
		for _, k := range g.keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		if err := b.Put(id8(g.entry.ID), appendLedgerBinary(nil, &g.entry)); err != nil {
			return err
		}
	}
	return nil
}

// groupCharges is the one charge entry standing for run (in ledger order).
func groupCharges(run []LedgerEntry) LedgerEntry {
	last := run[len(run)-1]
	g := LedgerEntry{ID: last.ID, UserID: last.UserID, Kind: LedgerCharge, BalanceAfter: last.BalanceAfter,
		KeyID: run[0].KeyID, Time: last.Time}
	for _, e := range run {
		g.Amount += e.Amount
		g.Requests += max(e.Requests, 1) // entries before grouping covered one request
		if e.KeyID != g.KeyID {
			g.KeyID = 0
		}
	}
	g.Note = fmt.Sprintf("%d requests settled from %s", g.Requests, run[0].Time.Format(time.RFC3339))
	return g
}
