package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// walOf builds a log body (the file after its header) of records with the
// given sequences, each holding one settlement.
func walOf(t testing.TB, seqs ...uint64) (body []byte, records [][]byte) {
	t.Helper()
	for _, seq := range seqs {
		op := pendingOp{kind: opSettle, userID: 7, keyID: 3, amount: -5, balance: int64(100 - seq), entryID: seq,
			entryKind: LedgerCharge, time: time.Unix(1700000000, 0).UTC(), day: time.Unix(1700000000, 0).UTC(),
			rec: UsageRecord{UserID: 7, KeyID: 3, Model: "m", TotalTokens: 5, Credits: 5, RequestID: "r", Time: time.Unix(1700000000, 0).UTC()}}
		start := len(body)
		var err error
		if body, _, err = appendWALRecord(body, seq, []pendingOp{op}); err != nil {
			t.Fatal(err)
		}
		records = append(records, body[start:])
	}
	return body, records
}

func TestScanWAL(t *testing.T) {
	body, recs := walOf(t, 1, 2, 3, 4)
	r0, r1, r2, r3 := recs[0], recs[1], recs[2], recs[3]
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	corrupt := func(r []byte) []byte {
		c := bytes.Clone(r)
		c[len(c)-1] ^= 0xff
		return c
	}
	tests := []struct {
		name      string
		body      []byte
		applied   uint64
		unapplied []byte
		end       int
		lastSeq   uint64
	}{
		{"empty", nil, 0, nil, 0, 0},
		{"all new", body, 0, body, len(body), 4},
		{"some applied", body, 2, cat(r2, r3), len(body), 4},
		{"all applied", body, 4, nil, len(body), 4},
		{"torn tail", cat(r0, r1, r2[:len(r2)-3]), 0, cat(r0, r1), len(r0) + len(r1), 2},
		{"bad checksum stops", cat(r0, corrupt(r1), r2), 0, r0, len(r0), 1},
		{"gap stops", cat(r0, r2, r3), 0, r0, len(r0), 1},
		{"gap after applied", cat(r0, r2), 0, r0, len(r0), 1},
		{"first unapplied missing", cat(r2, r3), 0, nil, 0, 0},
		// A truncation the crash undid: new records over old applied ones.
		{"stale applied tail", cat(r2, r3, r0, r1), 2, cat(r2, r3), len(r2) + len(r3), 4},
		{"stale applied head", cat(r0, r1, r2, r3), 2, cat(r2, r3), len(body), 4},
		{"stale record between", cat(r0, r1, r2, r0, r3), 1, cat(r1, r2), len(r0) + len(r1) + len(r2), 3},
		{"zero filled tail", cat(r0, make([]byte, 64)), 0, r0, len(r0), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			un, end, last := scanWAL(tc.body, tc.applied)
			if !bytes.Equal(un, tc.unapplied) || end != tc.end || last != tc.lastSeq {
				t.Fatalf("scanWAL = %d bytes, end %d, last %d; want %d bytes, end %d, last %d",
					len(un), end, last, len(tc.unapplied), tc.end, tc.lastSeq)
			}
		})
	}
}

func TestWALOpRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 25, 23, 59, 59, 123456789, time.UTC)
	ops := []pendingOp{
		{kind: opSettle, userID: 9, keyID: 4, amount: -12, balance: 88, entryID: 41, entryKind: LedgerCharge, time: now, day: now,
			keyWindow: 1767225600, userWindow: (time.Time{}).Unix(), keySpend: true,
			rec: UsageRecord{UserID: 9, KeyID: 4, Model: "gpt", PromptTokens: 5, CompletionTokens: 7, TotalTokens: 12, Credits: 12, RequestID: "req-1", Time: now, Status: 200}},
		{kind: opSettle, userID: 9, keyID: 0, balance: 88, time: now, day: now, rec: UsageRecord{UserID: 9, Model: "free", Time: now}},
		{kind: opMarker},
		{kind: opCredit, userID: 9, amount: 50, balance: 138, entryID: 42, entryKind: LedgerTopUp, idem: "idem-1", note: "top up", time: now},
		{kind: opCredit, userID: 9, amount: -8, balance: 130, entryID: 43, entryKind: LedgerAdjust, time: now},
	}
	log, n, err := appendWALRecord(nil, 1, ops)
	if err != nil || n != 4 {
		t.Fatalf("appendWALRecord: %d ops, %v", n, err)
	}
	var got []walOp
	err = walRecords(log, func(nops, settles int, r *walReader) error {
		if nops != 4 || settles != 2 {
			t.Fatalf("record holds %d ops, %d settlements", nops, settles)
		}
		for ; nops > 0; nops-- {
			var op walOp
			if err := r.op(&op); err != nil {
				return err
			}
			got = append(got, op)
		}
		if len(r.b) != 0 {
			t.Fatalf("%d bytes left", len(r.b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	charge := got[0]
	if charge.kind != opSettle || charge.userID != 9 || charge.keyID != 4 || charge.balance != 88 || charge.entryID != 41 ||
		charge.tokens != 12 || !charge.lastUsed.Equal(now) || string(dayKey(charge.day)) != "20261125" {
		t.Fatalf("settlement decoded as %+v", charge)
	}
	// A settlement's charge entry is made at the checkpoint, from its
	// usage record (see committer.apply).
	rec, err := decodeUsage(charge.usage, charge.userID, time.Unix(0, 0), noNames)
	if err != nil || len(charge.entry) != 0 || rec != ops[0].rec {
		t.Fatalf("settlement values: %q / %+v, %v", charge.entry, rec, err)
	}
	if !charge.spend || !charge.keySpend || charge.charged != 12 || charge.keyWindow != 1767225600 || charge.userWindow != (time.Time{}).Unix() {
		t.Fatalf("settlement's spend decoded as %+v", charge)
	}
	if free := got[1]; free.entryID != 0 || free.entry != nil || free.keyID != 0 || len(free.usage) == 0 {
		t.Fatalf("free settlement decoded as %+v", free)
	}
	if top := got[2]; top.kind != opCredit || !bytes.Equal(top.idemKey, idemKey(9, "idem-1")) ||
		!strings.Contains(string(top.idemVal), `"entry_id":42`) || !topUpEntry(top.entry) {
		t.Fatalf("credit decoded as %+v", top)
	}
	if adj := got[3]; adj.idemKey != nil || adj.entryID != 43 {
		t.Fatalf("adjustment decoded as %+v", adj)
	}
	// Every truncation of a payload fails to decode instead of panicking.
	for cut := walRecordHdr + walPayloadHd; cut < len(log); cut++ {
		r := walReader{b: log[walRecordHdr+walPayloadHd : cut]}
		var op walOp
		var err error
		for i := 0; i < 4 && err == nil; i++ {
			err = r.op(&op)
		}
		if err == nil {
			t.Fatalf("payload cut at %d decoded", cut)
		}
	}
}

// openLogOnly opens a store that applies its log only when a caller
// needs bbolt current (no checkpoint timer in practice).
func openLogOnly(t testing.TB, path string) *BoltStore {
	t.Helper()
	s, err := Open(path, Options{NoSync: true, CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// copyFile copies src to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestWALReplay builds the state a crash leaves (settlements in the log,
// not in the database file) from copies of both files, and checks that
// Open applies them once: a second replay of the same log (a truncation
// the crash undid) changes nothing.
func TestWALReplay(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "gw.db")
	s := openLogOnly(t, path)
	u, k := register(t, s, "wal@example.com", 1000)
	settleN(t, s, u.ID, k.ID, 10, 7)
	if err := s.c.sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The database file has none of the ten (no checkpoint since register's
	// AddCredits); the log has all of them.
	crash := filepath.Join(dir, "crash")
	os.Mkdir(crash, 0o700)
	copyFile(t, path, filepath.Join(crash, "gw.db"))
	copyFile(t, walPath(path), walPath(filepath.Join(crash, "gw.db")))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(walPath(path)); !os.IsNotExist(err) {
		t.Fatalf("log left after a clean close: %v", err)
	}
	logged, err := os.ReadFile(walPath(filepath.Join(crash, "gw.db")))
	if err != nil {
		t.Fatal(err)
	}

	check := func(t *testing.T, s *BoltStore) {
		t.Helper()
		if err := s.VerifyLedger(ctx); err != nil {
			t.Fatal(err)
		}
		if b := mustBalance(t, s, u.ID); b.Credits != 930 {
			t.Fatalf("balance %d, want 930", b.Credits)
		}
		key, err := s.GetKey(ctx, k.ID)
		if err != nil || key.RequestsUsed != 10 || key.Spend.Used != 70 {
			t.Fatalf("requests_used %d, spend %+v (%v)", key.RequestsUsed, key.Spend, err)
		}
		if _, sp, err := s.UserBudget(ctx, u.ID); err != nil || sp.Used != 70 {
			t.Fatalf("user spend %+v (%v)", sp, err)
		}
		usage, err := s.ListUsage(ctx, UsageFilter{UserID: u.ID})
		if err != nil || len(usage) != 10 {
			t.Fatalf("%d usage records (%v)", len(usage), err)
		}
		dReq, dTok, _, _, err := s.UsageTotals(ctx, u.ID, time.Now(), time.Now())
		if err != nil || dReq != 10 || dTok != 70 {
			t.Fatalf("totals %d requests, %d tokens (%v)", dReq, dTok, err)
		}
	}
	cpath := filepath.Join(crash, "gw.db")
	s = openTestStore(t, cpath)
	check(t, s)
	settleN(t, s, u.ID, k.ID, 1, 30) // sequences continue after the replayed ones
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The same log again, as if its truncation was lost: all applied.
	if err := os.WriteFile(walPath(cpath), logged, 0o600); err != nil {
		t.Fatal(err)
	}
	s = openTestStore(t, cpath)
	defer s.Close()
	if b := mustBalance(t, s, u.ID); b.Credits != 900 {
		t.Fatalf("balance %d after replaying an applied log, want 900", b.Credits)
	}
	if key, err := s.GetKey(ctx, k.ID); err != nil || key.Spend.Used != 100 {
		t.Fatalf("key spend %+v after replaying an applied log, want 100 (%v)", key.Spend, err)
	}
	if usage, err := s.ListUsage(ctx, UsageFilter{UserID: u.ID}); err != nil || len(usage) != 11 {
		t.Fatalf("%d usage records after replaying an applied log (%v)", len(usage), err)
	}
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestForeignWALRefused(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.db"), filepath.Join(dir, "b.db")
	s := openTestStore(t, a)
	s2 := openTestStore(t, b)
	copyFile(t, walPath(a), walPath(b)+".a")
	s.Close()
	s2.Close()
	if err := os.Rename(walPath(b)+".a", walPath(b)); err != nil {
		t.Fatal(err)
	}
	_, err := Open(b, Options{NoSync: true})
	if err == nil || !strings.Contains(err.Error(), "not the write-ahead log of this database") {
		t.Fatalf("Open with another database's log: %v", err)
	}
	// A log torn at creation (a prefix of its header) is started afresh.
	os.WriteFile(walPath(b), []byte(walMagic[:3]), 0o600)
	s2, err = Open(b, Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open with a torn header: %v", err)
	}
	s2.Close()
}

func FuzzScanWAL(f *testing.F) {
	body, _ := walOf(f, 1, 2)
	f.Add(body, uint64(0))
	f.Add(body[:len(body)-5], uint64(1))
	f.Fuzz(func(t *testing.T, b []byte, applied uint64) {
		un, end, last := scanWAL(b, applied)
		if end > len(b) || last < applied || len(un) > end {
			t.Fatalf("scanWAL: %d unapplied, end %d, last %d", len(un), end, last)
		}
		// Whatever scanWAL accepts decodes without panicking.
		_ = walRecords(un, func(n, _ int, r *walReader) error {
			var op walOp
			for ; n > 0; n-- {
				if err := r.op(&op); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// TestIdleLogIsApplied checks that logged settlements reach the database
// file without any read asking for them (the checkpoint timer).
func TestIdleLogIsApplied(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "gw.db"), Options{NoSync: true, CheckpointInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, k := register(t, s, "idle@example.com", 100)
	settleN(t, s, u.ID, k.ID, 3, 1)
	if err := s.c.sync(ctx); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		var n int
		s.db.View(func(tx *bbolt.Tx) error {
			return tx.Bucket(bUsage).ForEachBucket(func(day []byte) error {
				n += tx.Bucket(bUsage).Bucket(day).Stats().KeyN
				return nil
			})
		})
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 3 usage records applied after 10s", n)
		}
	}
}

// TestLogWriteFailureStopsWrites checks that a failed log append is
// reported to waiters, to Ping and to every later write.
func TestLogWriteFailureStopsWrites(t *testing.T) {
	ctx := context.Background()
	s := openLogOnly(t, filepath.Join(t.TempDir(), "gw.db"))
	u, k := register(t, s, "fail@example.com", 100)
	s.c.wal.f.Close() // every append now fails
	settleN(t, s, u.ID, k.ID, 1, 1)
	if err := s.c.sync(ctx); err == nil {
		t.Fatal("sync after a failed append succeeded")
	}
	if err := s.Ping(ctx); err == nil {
		t.Fatal("Ping after a failed append succeeded")
	}
	// Reserving is in memory; settling must refuse.
	if r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1}); err == nil {
		if _, _, err := s.Settle(ctx, r, 1, UsageRecord{Model: "m"}); err == nil {
			t.Fatal("Settle after a failed append succeeded")
		}
	}
	if err := s.Close(); err == nil {
		t.Fatal("Close after a failed append reported no error")
	}
}

// TestWALOverwritesAppliedRecords checks replay when new records overwrite
// applied ones in place (the log is not truncated after a checkpoint):
// only the new ones are applied, whether they are shorter than, longer
// than or as long as the records they overwrite.
func TestWALOverwritesAppliedRecords(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ before, after []int }{
		{[]int{5}, []int{2}},
		{[]int{2}, []int{5}},
		{[]int{2, 2}, []int{2}},       // same length: an applied record follows
		{[]int{1, 1, 1}, []int{1, 1}}, // (entry ids and balances keep their digits)
		{[]int{1, 1, 1}, []int{1, 4}},
	} {
		t.Run(fmt.Sprint(tc.before, tc.after), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "gw.db")
			s, err := Open(path, Options{CheckpointInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			// One instant for all: records of as many ops are as long, so
			// a new one can end exactly where an applied one begins.
			at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
			s.now = func() time.Time { return at }
			u, k := register(t, s, "over@example.com", 1000)
			total := 0
			for _, n := range tc.before {
				settleN(t, s, u.ID, k.ID, n, 1)
				if err := s.c.sync(ctx); err != nil {
					t.Fatal(err)
				}
				total += n
			}
			if err := s.Flush(ctx); err != nil { // applied; the log starts over
				t.Fatal(err)
			}
			for _, n := range tc.after {
				settleN(t, s, u.ID, k.ID, n, 1)
				if err := s.c.sync(ctx); err != nil {
					t.Fatal(err)
				}
				total += n
			}
			crash := filepath.Join(dir, "crash.db")
			copyFile(t, path, crash)
			copyFile(t, walPath(path), walPath(crash))
			s.Close()

			s = openTestStore(t, crash)
			defer s.Close()
			if b := mustBalance(t, s, u.ID); b.Credits != int64(1000-total) {
				t.Fatalf("balance %d, want %d", b.Credits, 1000-total)
			}
			if usage, err := s.ListUsage(ctx, UsageFilter{UserID: u.ID}); err != nil || len(usage) != total {
				t.Fatalf("%d usage records, want %d (%v)", len(usage), total, err)
			}
			if err := s.VerifyLedger(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestWALReaderVarints(t *testing.T) {
	vals := []int64{0, 1, -1, 63, -64, 64, -65, 1 << 40, -(1 << 40), 1<<63 - 1, -1 << 63}
	var b []byte
	for _, v := range vals {
		b = binary.AppendVarint(b, v)
		b = binary.AppendUvarint(b, uint64(v))
	}
	r := walReader{b: b}
	for _, v := range vals {
		if got := r.varint(); got != v {
			t.Fatalf("varint: %d, want %d", got, v)
		}
		if got := r.uvarint(); got != uint64(v) {
			t.Fatalf("uvarint: %d, want %d", got, uint64(v))
		}
	}
	if r.err != nil || len(r.b) != 0 {
		t.Fatalf("err %v, %d bytes left", r.err, len(r.b))
	}
	if r.varint(); r.err == nil {
		t.Fatal("reading past the end did not fail")
	}
}

// TestBackupRotatesLogID checks that a backup restored beside a log left
// by a later crash refuses that log (its records do not continue the
// backup: the live database went on under a new log id), and opens once
// the log is moved away, with the backup's state.
func TestBackupRotatesLogID(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "gw.db")
	s := openLogOnly(t, path)
	u, k := register(t, s, "bk@example.com", 1000)
	settleN(t, s, u.ID, k.ID, 3, 10)
	backup := filepath.Join(dir, "backup.db")
	f, err := os.Create(backup)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(ctx, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	settleN(t, s, u.ID, k.ID, 2, 10) // logged under the new id only
	if err := s.c.sync(ctx); err != nil {
		t.Fatal(err)
	}
	copyFile(t, walPath(path), walPath(backup)) // as a crash would leave it
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if _, err := Open(backup, Options{NoSync: true}); err == nil || !strings.Contains(err.Error(), "not the write-ahead log of this database") {
		t.Fatalf("Open of a backup beside a later log: %v", err)
	}
	if err := os.Remove(walPath(backup)); err != nil {
		t.Fatal(err)
	}
	b := openTestStore(t, backup)
	defer b.Close()
	if bal := mustBalance(t, b, u.ID); bal.Credits != 970 {
		t.Fatalf("restored balance %d, want 970", bal.Credits)
	}
	if err := b.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
	// The original database still opens with its own log.
	s = openTestStore(t, path)
	defer s.Close()
	if bal := mustBalance(t, s, u.ID); bal.Credits != 950 {
		t.Fatalf("balance %d, want 950", bal.Credits)
	}
}

// TestLogUnderPreviousIDAccepted covers a crash between a backup's id
// change and the rewrite of the log's header: the log (all applied) is
// taken, and its header brought up to date.
func TestLogUnderPreviousIDAccepted(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s := openTestStore(t, path)
	u, k := register(t, s, "prev@example.com", 100)
	settleN(t, s, u.ID, k.ID, 2, 1)
	if _, err := s.Backup(ctx, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil { // the id change follows the copy
		t.Fatal(err)
	}
	var prev []byte
	s.db.View(func(tx *bbolt.Tx) error {
		prev = bytes.Clone(tx.Bucket(bMeta).Get(kWALPrevID))
		return nil
	})
	if len(prev) != 8 {
		t.Fatalf("previous log id %x", prev)
	}
	stale, err := os.ReadFile(walPath(path))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	copy(stale[len(walMagic):], prev)
	if err := os.WriteFile(walPath(path), stale, 0o600); err != nil {
		t.Fatal(err)
	}
	s = openTestStore(t, path)
	defer s.Close()
	if bal := mustBalance(t, s, u.ID); bal.Credits != 98 {
		t.Fatalf("balance %d, want 98", bal.Credits)
	}
	head, _ := os.ReadFile(walPath(path))
	var id []byte
	s.db.View(func(tx *bbolt.Tx) error {
		id = bytes.Clone(tx.Bucket(bMeta).Get(kWALID))
		return nil
	})
	if !bytes.Equal(head[len(walMagic):walHeaderLen], id) {
		t.Fatal("log header not rewritten to the current id")
	}
}

// sync waits until every op queued before the call is durable (in the
// log at least).
func (c *committer) sync(ctx context.Context) error { return c.wait(ctx, true) }

// TestWALSettleWithoutSpend: a settlement logged before schema 6 (kind
// opSettle, without spend windows) still replays, charging no window.
func TestWALSettleWithoutSpend(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	op := pendingOp{kind: opSettle, userID: 3, keyID: 2, amount: -5, balance: 10, entryID: 7, entryKind: LedgerCharge, time: now, day: now,
		rec: UsageRecord{Model: "m", Time: now}, keyWindow: 99, userWindow: 98, keySpend: true}
	b, err := appendWALOp(nil, &op)
	if err != nil {
		t.Fatal(err)
	}
	suffix := binary.AppendVarint(nil, 5)
	suffix = binary.AppendVarint(suffix, 98)
	suffix = append(suffix, 1)
	suffix = binary.AppendVarint(suffix, 99)
	if b[0] != walSettleSpend || !bytes.HasSuffix(b, suffix) {
		t.Fatalf("settlement encoded as %x", b)
	}
	legacy := append([]byte{byte(opSettle)}, b[1:len(b)-len(suffix)]...)
	r := walReader{b: legacy}
	var got walOp
	if err := r.op(&got); err != nil || len(r.b) != 0 {
		t.Fatalf("legacy settlement: %v, %d bytes left", err, len(r.b))
	}
	if got.kind != opSettle || got.spend || got.userID != 3 || got.keyID != 2 || got.entryID != 7 {
		t.Fatalf("legacy settlement decoded as %+v", got)
	}
}

func topUpEntry(v []byte) bool {
	e, err := decodeLedger(v, 42, 9)
	return err == nil && e.Note == "top up" && e.Amount == 50 && e.BalanceAfter == 138 && e.IdempotencyKey == "idem-1"
}
