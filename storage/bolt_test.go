package storage

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

func openTestStore(t testing.TB, path string) *BoltStore {
	t.Helper()
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// settleN settles n requests of cost each for the user's key.
func settleN(t *testing.T, s *BoltStore, uid, kid int64, n int, cost int64) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < n; i++ {
		r, err := s.Reserve(ctx, ReserveRequest{UserID: uid, KeyID: kid, Credits: cost})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Settle(ctx, r, cost, UsageRecord{Model: "m", TotalTokens: cost, RequestID: "r"}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "gw.db")
	s := openTestStore(t, path)
	u, k := register(t, s, "re@example.com", 500)
	for i := 0; i < 50; i++ {
		r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 5})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Settle(ctx, r, 3, UsageRecord{Model: "m"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.AddCredits(ctx, u.ID, 20, LedgerTopUp, "once", ""); err != nil {
		t.Fatal(err)
	}
	// An open reservation is released by the restart.
	if _, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 100}); err != nil {
		t.Fatal(err)
	}
	// Settlements still queued are committed by Close.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	s = openTestStore(t, path)
	defer s.Close()
	if b := mustBalance(t, s, u.ID); b.Credits != 500-150+20 || b.Reserved != 0 {
		t.Fatalf("balance after reopen: %+v", b)
	}
	if got, err := s.GetKey(ctx, k.ID); err != nil || got.RequestsUsed != 50 || got.LastUsedAt == nil {
		t.Fatalf("key after reopen: %+v %v", got, err)
	}
	if got, err := s.KeyByHash(ctx, k.Hash); err != nil || got.ID != k.ID {
		t.Fatalf("KeyByHash after reopen: %v %v", got, err)
	}
	if usage, _ := s.ListUsage(ctx, UsageFilter{UserID: u.ID}); len(usage) != 50 {
		t.Fatalf("usage after reopen: %d", len(usage))
	}
	if now := time.Now(); true {
		if dr, _, mr, _, err := s.UsageTotals(ctx, u.ID, now, now); err != nil || dr != 50 || mr != 50 {
			t.Fatalf("usage totals after reopen: %d %d %v", dr, mr, err)
		}
	}
	if bal, replayed, err := s.AddCredits(ctx, u.ID, 20, LedgerTopUp, "once", ""); err != nil || !replayed || bal != 370 {
		t.Fatalf("idempotency across restart = %d %v %v", bal, replayed, err)
	}
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
	// New ledger ids continue after the old ones.
	if _, _, err := s.AddCredits(ctx, u.ID, 1, LedgerTopUp, "", ""); err != nil {
		t.Fatal(err)
	}
	entries, _ := s.Ledger(ctx, u.ID)
	for i := 1; i < len(entries); i++ {
		if entries[i].ID <= entries[i-1].ID {
			t.Fatalf("ledger ids not increasing: %d then %d", entries[i-1].ID, entries[i].ID)
		}
	}
}

func TestSecondOpenFailsWithClearError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gw.db")
	s := openTestStore(t, path)
	defer s.Close()
	s2, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a held database succeeded")
	}
	if !errors.Is(err, bolterrors.ErrTimeout) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("unclear error: %v", err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gw.db")
	openTestStore(t, path).Close()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bMeta).Put(kSchemaVersion, u64(SchemaVersion+1))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestNoPlaintextKeyAtRest(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var plains []string
	u := &User{Email: "secret@example.com"}
	k, plain := newKey(t, "primary")
	plains = append(plains, plain)
	if err := s.Register(ctx, u, k, 100); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b", "c"} {
		k, plain := newKey(t, name)
		k.UserID = u.ID
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		plains = append(plains, plain)
		if err := s.AppendAudit(ctx, &AuditEntry{Action: "key.create", KeyID: k.ID, Details: map[string]any{"api_key": plain}}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Settle(ctx, r, 1, UsageRecord{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range plains {
		secret := p[len(KeyDisplayPrefix(p))-4:]
		raw, _ := base64.RawURLEncoding.DecodeString(secret)
		for _, needle := range [][]byte{[]byte(p), []byte(secret), []byte(secret[4:20]), raw} {
			if bytes.Contains(data, needle) {
				t.Fatalf("database file contains key material %q", needle)
			}
		}
	}
	// The keys are still recoverable through the keyring.
	s = openTestStore(t, path)
	defer s.Close()
	keys, _ := s.ListKeys(ctx, u.ID)
	found := 0
	for _, k := range keys {
		dec, err := testKeyring.Decrypt(k.Encrypted)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range plains {
			if dec == p {
				found++
			}
		}
	}
	if found != len(plains) {
		t.Fatalf("decrypted %d of %d keys", found, len(plains))
	}
}

func TestAuditTamperDetected(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s := openTestStore(t, path)
	for i := 0; i < 4; i++ {
		if err := s.AppendAudit(ctx, &AuditEntry{Action: "user.update", UserID: 7, Details: map[string]any{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.VerifyAudit(ctx); err != nil || n != 4 {
		t.Fatalf("VerifyAudit = %d %v", n, err)
	}
	s.Close()

	edit := func(fn func(b *bbolt.Bucket, meta *bbolt.Bucket) error) {
		t.Helper()
		db, err := bbolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(func(tx *bbolt.Tx) error { return fn(tx.Bucket(bAudit), tx.Bucket(bMeta)) }); err != nil {
			t.Fatal(err)
		}
	}
	verify := func() (int, error) {
		s := openTestStore(t, path)
		defer s.Close()
		return s.VerifyAudit(ctx)
	}

	// Change one stored entry's content.
	var orig []byte
	edit(func(b, _ *bbolt.Bucket) error {
		orig = append([]byte(nil), b.Get(id8(2))...)
		return b.Put(id8(2), bytes.Replace(orig, []byte(`"user_id":7`), []byte(`"user_id":8`), 1))
	})
	if n, err := verify(); !errors.Is(err, ErrAuditChainBroken) || n != 1 || !strings.Contains(err.Error(), "entry 2") {
		t.Fatalf("tampered content: %d %v", n, err)
	}
	edit(func(b, _ *bbolt.Bucket) error { return b.Put(id8(2), orig) })
	if n, err := verify(); err != nil || n != 4 {
		t.Fatalf("restored: %d %v", n, err)
	}
	// Remove an entry in the middle.
	edit(func(b, _ *bbolt.Bucket) error { return b.Delete(id8(3)) })
	if _, err := verify(); !errors.Is(err, ErrAuditChainBroken) {
		t.Fatalf("removed entry: %v", err)
	}
	edit(func(b, _ *bbolt.Bucket) error { return b.Put(id8(3), orig) })
	// Remove the newest entry.
	edit(func(b, _ *bbolt.Bucket) error { return b.Delete(id8(4)) })
	if _, err := verify(); !errors.Is(err, ErrAuditChainBroken) {
		t.Fatalf("removed newest entry: %v", err)
	}
}

func TestClosedStoreReturnsErrClosed(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, filepath.Join(t.TempDir(), "gw.db"))
	u, k := register(t, s, "closed@example.com", 100)
	res, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	_, _, err = s.Settle(ctx, res, 5, UsageRecord{})
	check("Settle", err)
	check("Refund", s.Refund(ctx, res))
	_, err = s.Reserve(ctx, ReserveRequest{UserID: u.ID, Credits: 1})
	check("Reserve", err)
	_, _, err = s.AddCredits(ctx, u.ID, 1, LedgerTopUp, "", "")
	check("AddCredits", err)
	_, err = s.Balance(ctx, u.ID)
	check("Balance", err)
	_, err = s.Ledger(ctx, u.ID)
	check("Ledger", err)
	_, err = s.GetUser(ctx, u.ID)
	check("GetUser", err)
	_, err = s.UserByEmail(ctx, "closed@example.com")
	check("UserByEmail", err)
	check("Register", s.Register(ctx, &User{Email: "x@example.com"}, nil, 0))
	_, err = s.UpdateUser(ctx, u.ID, func(*User) error { return nil })
	check("UpdateUser", err)
	check("DeleteUser", s.DeleteUser(ctx, u.ID))
	_, _, err = s.ListUsers(ctx, 0, 0)
	check("ListUsers", err)
	k2, _ := newKey(t, "x")
	k2.UserID = u.ID
	check("CreateKey", s.CreateKey(ctx, k2))
	_, err = s.GetKey(ctx, k.ID)
	check("GetKey", err)
	_, err = s.KeyByHash(ctx, k.Hash)
	check("KeyByHash", err)
	_, err = s.ListKeys(ctx, u.ID)
	check("ListKeys", err)
	_, err = s.AllKeys(ctx)
	check("AllKeys", err)
	_, err = s.UpdateKey(ctx, k.ID, func(*APIKey) error { return nil })
	check("UpdateKey", err)
	check("DeleteKey", s.DeleteKey(ctx, k.ID))
	check("CreatePlan", s.CreatePlan(ctx, &Plan{Name: "p"}))
	_, err = s.GetPlan(ctx, 1)
	check("GetPlan", err)
	_, err = s.ListPlans(ctx)
	check("ListPlans", err)
	_, err = s.UpdatePlan(ctx, 1, func(*Plan) error { return nil })
	check("UpdatePlan", err)
	_, err = s.AssignPlan(ctx, u.ID, 1, time.Now(), time.Now().Add(time.Hour))
	check("AssignPlan", err)
	_, err = s.ActiveUserPlan(ctx, u.ID)
	check("ActiveUserPlan", err)
	check("SetUserLimits", s.SetUserLimits(ctx, u.ID, RateLimits{}))
	_, err = s.UserLimits(ctx, u.ID)
	check("UserLimits", err)
	_, err = s.ListUsage(ctx, UsageFilter{})
	check("ListUsage", err)
	_, err = s.PruneUsage(ctx, time.Now(), time.Now())
	check("PruneUsage", err)
	_, err = s.UsageRollups(ctx, RollupFilter{Period: RollupDay})
	check("UsageRollups", err)
	check("AppendAudit", s.AppendAudit(ctx, &AuditEntry{Action: "x"}))
	_, err = s.ListAudit(ctx, AuditFilter{})
	check("ListAudit", err)
	_, err = s.VerifyAudit(ctx)
	check("VerifyAudit", err)
	check("ExportAudit", s.ExportAudit(ctx, io.Discard))
	check("Flush", s.Flush(ctx))
	_, err = s.Backup(ctx, io.Discard)
	check("Backup", err)
	check("Ping", s.Ping(ctx))
	check("VerifyLedger", s.VerifyLedger(ctx))
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Settling concurrently with Close never panics: each settlement either
// lands (and is durable) or reports ErrClosed.
func TestSettleRacingClose(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s := openTestStore(t, path)
	u, k := register(t, s, "race@example.com", 1_000_000)
	var res []*Reservation
	for i := 0; i < 200; i++ {
		r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 2})
		if err != nil {
			t.Fatal(err)
		}
		res = append(res, r)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var charged int64
	for _, r := range res {
		wg.Add(1)
		go func(r *Reservation) {
			defer wg.Done()
			c, _, err := s.Settle(ctx, r, 1, UsageRecord{})
			if err != nil && !errors.Is(err, ErrClosed) {
				t.Error(err)
			}
			mu.Lock()
			charged += c
			mu.Unlock()
		}(r)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	s = openTestStore(t, path)
	defer s.Close()
	if b := mustBalance(t, s, u.ID); b.Credits != 1_000_000-charged {
		t.Fatalf("balance %d, charged %d", b.Credits, charged)
	}
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestPrevHashExpiresWhileIndexed(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, filepath.Join(t.TempDir(), "gw.db"))
	defer s.Close()
	clock := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	_, k := register(t, s, "grace@example.com", 0)
	_, plainNew := newKey(t, "")
	if _, err := s.UpdateKey(ctx, k.ID, func(x *APIKey) error {
		x.PrevHash, x.PrevHashExpiresAt, x.Hash = x.Hash, clock.Add(time.Minute), testKeyring.Hash(plainNew)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.KeyByHash(ctx, k.Hash); err != nil || got.ID != k.ID {
		t.Fatalf("in grace: %v %v", got, err)
	}
	clock = clock.Add(time.Minute)
	if _, err := s.KeyByHash(ctx, k.Hash); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after grace: %v", err)
	}
	if got, err := s.KeyByHash(ctx, testKeyring.Hash(plainNew)); err != nil || got.ID != k.ID {
		t.Fatalf("new hash: %v %v", got, err)
	}
}

// A key's requests_used set by UpdateKey (an admin reset) is honoured by
// later reservations, including settlements still queued.
func TestUpdateKeyRequestsUsed(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, filepath.Join(t.TempDir(), "gw.db"))
	defer s.Close()
	u, k := register(t, s, "reset@example.com", 100)
	for i := 0; i < 3; i++ {
		r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: 3})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Settle(ctx, r, 1, UsageRecord{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: 3}); !errors.Is(err, ErrRequestLimit) {
		t.Fatalf("at cap: %v", err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateKey(ctx, k.ID, func(x *APIKey) error { x.RequestsUsed = 0; return nil }); err != nil {
		t.Fatal(err)
	}
	r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: 3})
	if err != nil {
		t.Fatalf("after reset: %v", err)
	}
	if _, _, err := s.Settle(ctx, r, 1, UsageRecord{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetKey(ctx, k.ID); got.RequestsUsed != 1 {
		t.Fatalf("requests_used = %d", got.RequestsUsed)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var onDisk APIKey
	if err := s.view(func(tx *bbolt.Tx) error { return getKey(tx, id8(k.ID), &onDisk) }); err != nil || onDisk.RequestsUsed != 1 {
		t.Fatalf("on disk requests_used = %d, %v", onDisk.RequestsUsed, err)
	}
}

func TestFlushHonoursContext(t *testing.T) {
	s := openTestStore(t, filepath.Join(t.TempDir(), "gw.db"))
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Either it was already durable (nil) or the context ended; it never hangs.
	if err := s.Flush(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestExportAuditInChunks(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, filepath.Join(t.TempDir(), "gw.db"))
	defer s.Close()
	defer func(n int) { auditExportChunk = n }(auditExportChunk)
	auditExportChunk = 2
	for i := 0; i < 7; i++ {
		if err := s.AppendAudit(ctx, &AuditEntry{Action: "x", Details: map[string]any{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := s.ExportAudit(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 7 {
		t.Fatalf("exported %d lines", len(lines))
	}
	for i, l := range lines {
		if !strings.Contains(l, `"id":`+string(rune('1'+i))+`,`) {
			t.Fatalf("line %d out of order: %s", i, l)
		}
	}
}

// VerifyLedger runs cleanly while settlements are in flight, and detects a
// ledger entry changed on disk.
func TestVerifyLedger(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s := openTestStore(t, path)
	u, k := register(t, s, "v@example.com", 1_000_000)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 2})
				if err != nil {
					t.Error(err)
					return
				}
				if _, _, err := s.Settle(ctx, r, 1, UsageRecord{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		if err := s.VerifyLedger(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if b := mustBalance(t, s, u.ID); b.Credits != 1_000_000-1200 {
		t.Fatalf("balance %+v", b)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bLedger).Bucket(id8(u.ID))
		k, v := b.Cursor().Last()
		e, err := decodeLedger(v, 0, u.ID)
		if err != nil {
			return err
		}
		e.Amount--
		return b.Put(k, appendLedgerBinary(nil, &e))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s = openTestStore(t, path)
	defer s.Close()
	if err := s.VerifyLedger(ctx); err == nil || !strings.Contains(err.Error(), "ledger sum") {
		t.Fatalf("corrupted ledger not detected: %v", err)
	}
}

// A migration added above the stored version runs once, in order, and the
// stored version follows.
func TestMigrationsRunAboveStoredVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gw.db")
	openTestStore(t, path).Close()
	orig := migrations
	defer func() { migrations = orig }()
	runs := 0
	migrations = append(append([]func(*bbolt.Tx) error(nil), orig...), func(tx *bbolt.Tx) error {
		runs++
		_, err := tx.CreateBucket([]byte("v2_bucket"))
		return err
	})
	for i := 0; i < 2; i++ {
		s := openTestStore(t, path)
		var version uint64
		var hasBucket bool
		s.view(func(tx *bbolt.Tx) error {
			version = binary.BigEndian.Uint64(tx.Bucket(bMeta).Get(kSchemaVersion))
			hasBucket = tx.Bucket([]byte("v2_bucket")) != nil
			return nil
		})
		s.Close()
		if version != uint64(len(orig)+1) || !hasBucket || runs != 1 {
			t.Fatalf("open %d: version %d, bucket %v, runs %d", i, version, hasBucket, runs)
		}
	}
	// A failing migration leaves the store closed and the version unchanged.
	migrations = append(migrations, func(*bbolt.Tx) error { return errors.New("boom") })
	if _, err := Open(path, Options{NoSync: true}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("schema version %d", len(orig)+2)) {
		t.Fatalf("failing migration: %v", err)
	}
	migrations = orig
	if _, err := Open(path, Options{NoSync: true}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("older binary on a newer file: %v", err)
	}
}

// A schema 1 database (usage records, no totals) gets its totals built
// from the records on open.
func TestMigrationBuildsUsageTotals(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s := openTestStore(t, path)
	u, k := register(t, s, "mig@example.com", 10_000)
	days := []time.Time{time.Date(2026, 4, 30, 8, 0, 0, 0, time.UTC), time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)}
	for i := 0; i < 30; i++ {
		r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 5})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Settle(ctx, r, 1, UsageRecord{Model: "m", TotalTokens: int64(i), Time: days[i%2]}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		if err := tx.DeleteBucket(bUsageTotals); err != nil {
			return err
		}
		return tx.Bucket(bMeta).Put(kSchemaVersion, u64(1))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s = openTestStore(t, path)
	defer s.Close()
	// Even i settled on April 30 (tokens 0+2+...+28), odd i on May 1
	// (1+3+...+29): each day is its month's only day.
	for _, want := range []struct {
		day       time.Time
		req, toks int64
	}{{days[0], 15, 210}, {days[1], 15, 225}} {
		dr, dt, mr, mt, err := s.UsageTotals(ctx, u.ID, want.day, want.day)
		if err != nil || dr != want.req || mr != want.req || dt != want.toks || mt != want.toks {
			t.Fatalf("%s totals %d/%d day, %d/%d month, %v", want.day.Format(time.DateOnly), dr, dt, mr, mt, err)
		}
	}
}

// Reserving for a key deleted a moment ago still bills the user.
func TestReserveForDeletedKey(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, filepath.Join(t.TempDir(), "gw.db"))
	defer s.Close()
	u, k := register(t, s, "gone@example.com", 10)
	if err := s.DeleteKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 5, MaxRequests: 1})
	if err != nil {
		t.Fatal(err)
	}
	if c, bal, err := s.Settle(ctx, r, 4, UsageRecord{}); err != nil || c != 4 || bal != 6 {
		t.Fatalf("Settle = %d %d %v", c, bal, err)
	}
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

// A backup is a valid database that opens with the same data; a cancelled
// context stops it.
func TestBackupRestores(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTestStore(t, filepath.Join(dir, "gw.db"))
	u, k := register(t, s, "backup@example.com", 40)
	r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Settle(ctx, r, 7, UsageRecord{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := s.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Backup(cctx, io.Discard); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
	s.Close()
	copyPath := filepath.Join(dir, "copy.db")
	if err := os.WriteFile(copyPath, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c := openTestStore(t, copyPath)
	defer c.Close()
	if b := mustBalance(t, c, u.ID); b.Credits != 33 {
		t.Fatalf("restored balance %+v", b)
	}
	if got, err := c.KeyByHash(ctx, k.Hash); err != nil || got.RequestsUsed != 1 {
		t.Fatalf("restored key %+v %v", got, err)
	}
	if err := c.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

// A window that fills MaxBatch commits at once instead of waiting for the
// window to end (an hour here: the test would hang otherwise).
func TestFullBatchCommitsEarly(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "gw.db"), Options{NoSync: true, CommitWindow: time.Hour, MaxBatch: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, k := register(t, s, "batch@example.com", 100)
	for range 4 {
		r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Settle(ctx, r, 1, UsageRecord{Model: "m"}); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.account(u.ID)
	if err != nil {
		t.Fatal(err)
	}
	for a.pending.Load() != 0 {
		time.Sleep(time.Millisecond)
	}
	var n int
	s.view(func(tx *bbolt.Tx) error {
		n = tx.Bucket(bUsage).Bucket(dayKey(time.Now())).Stats().KeyN
		return nil
	})
	if n != 4 {
		t.Fatalf("%d usage records committed, want 4", n)
	}
}
