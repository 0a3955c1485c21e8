package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Options configure Open.
type Options struct {
	// LockTimeout bounds the wait for the database file lock. Another
	// process (or Caddy instance) holding the file makes Open fail after
	// it instead of hanging. Default 1s.
	LockTimeout time.Duration
	// CommitWindow is the longest a settlement waits in memory before the
	// group committer writes it (one append and fdatasync of the
	// write-ahead log for many settlements), which bounds what a crash can
	// lose. A window that fills MaxBatch commits at once. Default 10ms.
	CommitWindow time.Duration
	// CheckpointInterval is how often the logged settlements are applied
	// to the database file (one bbolt transaction for all of them), which
	// bounds the log's length and what Open replays. Reads that need them
	// (usage, ledger, backups) apply them first. Default 1s.
	CheckpointInterval time.Duration
	// MaxBatch commits early once that many writes are queued. Default 1024.
	MaxBatch int
	// NoSync skips fsync. Only for tests: a crash may lose data.
	NoSync bool
	// InitialMmapSize is the initial size of the read-only memory map
	// (address space, not disk). A map large enough for the file avoids
	// remapping as it grows, which would wait for readers. Default 64 MiB.
	// With a map above 16 MiB bbolt grows the file in 16 MiB steps (sparse
	// on Linux); backups hold only the used pages.
	InitialMmapSize int
}

func (o *Options) setDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	if o.CommitWindow <= 0 {
		o.CommitWindow = 10 * time.Millisecond
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1024
	}
	if o.InitialMmapSize <= 0 {
		o.InitialMmapSize = 64 << 20
	}
}

// Bucket names.
var (
	bMeta         = []byte("meta")
	bUsers        = []byte("users")
	bUsersByEmail = []byte("users_by_email")
	bKeys         = []byte("keys")
	bKeysByHash   = []byte("keys_by_hash")
	bKeysByUser   = []byte("keys_by_user")
	bPlans        = []byte("plans")
	bUserPlans    = []byte("user_plans")
	bUserLimits   = []byte("user_limits")
	bAccounts     = []byte("accounts")
	bLedger       = []byte("ledger")
	bIdempotency  = []byte("idempotency")
	bUsage        = []byte("usage")
	bAudit        = []byte("audit")
	bUsageTotals  = []byte("usage_totals")
	bKeyUsage     = []byte("key_usage")

	kSchemaVersion = []byte("schema_version")
)

// SchemaVersion is the on-disk schema version this binary writes.
const SchemaVersion = 8

// migrations[i] upgrades a database from schema version i to i+1. Open runs
// the ones above the stored version, in order, each in its own transaction.
var migrations = []func(tx *bbolt.Tx) error{
	// 0 → 1: create every bucket.
	func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bMeta, bUsers, bUsersByEmail, bKeys, bKeysByHash, bKeysByUser,
			bPlans, bUserPlans, bUserLimits, bAccounts, bLedger, bIdempotency, bUsage, bAudit} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	},
	// 1 → 2: per-user day and month usage totals (see bolt_totals.go).
	migrateUsageTotals,
	// 2 → 3: per-key request counters (see bolt_keyusage.go).
	migrateKeyUsage,
	// 3 → 4: the write-ahead log (see bolt_wal.go). An older build, which
	// would not replay the log, refuses the upgraded file.
	migrateWAL,
	// 4 → 5: keys stored with an empty scope get the full scope they had
	// (see bolt_scope.go).
	migrateEmptyScopes,
	// 5 → 6: spend budgets (see bolt_spend.go).
	migrateBudgets,
	// 6 → 7: the alert outbox and users' webhooks (see bolt_outbox.go).
	migrateOutbox,
	// 7 → 8: the name dictionary and the usage rollups (see
	// bolt_rollups.go); records written from now on are binary (see
	// bolt_codec.go).
	migrateRollups,
}

// BoltStore is the embedded Store, backed by a bbolt file.
//
// Crash semantics: reservations live only in memory, so a restart releases
// them all (nothing was charged for them). Settlements update the in-memory
// balance at once and are written by a group committer, one write-ahead
// log append and fdatasync per batch, and applied to the database file
// about once a second (Open replays what was logged and not applied); a
// crash loses at most the settlements accepted in the last CommitWindow
// (those not yet covered by a Flush), never part of one: the charge,
// balance snapshot, usage record, rollups and key counters of a settlement
// are logged and applied together. Every other mutation (AddCredits included)
// is durable when it returns. The stored balance always equals the sum of
// the ledger (VerifyLedger checks it). After a failed commit (disk full, I/O
// error) the store refuses further writes and Ping reports the error.
type BoltStore struct {
	db   *bbolt.DB
	path string
	opts Options

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	// Credit state (see credits.go).
	accounts sync.Map // int64 user id → *account
	keyState sync.Map // int64 key id → *keyCounter
	loadMu   sync.Mutex
	open     [resShards]resShard // open reservations by id
	resSeq   atomic.Uint64
	openN    atomic.Int64
	ledgerID atomic.Uint64 // last ledger entry id handed out
	creditMu sync.Mutex    // serializes AddCredits (idempotency check)

	c *committer

	auditMu sync.Mutex

	names nameCache // model and endpoint names by id (see bolt_names.go)

	subMu  sync.Mutex
	subs   map[int]func(Change)
	subSeq int

	now func() time.Time
}

// Open opens (creating if needed) the database at path.
func Open(path string, opts Options) (*BoltStore, error) {
	opts.setDefaults()
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("storage: creating directory for %s: %w", path, err)
		}
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: opts.LockTimeout,
		NoSync:  opts.NoSync,
		// The freelist is written with every commit (one page, no
		// measurable cost) so that Open reads it instead of walking every
		// page of the file: without it, opening a multi-GiB database takes
		// seconds and maps the whole file into the process's RSS.
		NoFreelistSync:  false,
		FreelistType:    bbolt.FreelistMapType,
		InitialMmapSize: opts.InitialMmapSize,
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("storage: database %s is locked: another process or Caddy instance holds it (waited %s): %w",
				path, opts.LockTimeout, err)
		}
		return nil, fmt.Errorf("storage: opening database %s: %w", path, err)
	}
	s := &BoltStore{db: db, path: path, opts: opts, subs: map[int]func(Change){}, now: time.Now}
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.recover(); err != nil {
		db.Close()
		return nil, err
	}
	if err := db.View(func(tx *bbolt.Tx) error {
		s.ledgerID.Store(tx.Bucket(bLedger).Sequence())
		return nil
	}); err != nil {
		s.c.wal.close(false)
		db.Close()
		return nil, fmt.Errorf("storage: reading %s: %w", path, err)
	}
	s.c.start()
	return s, nil
}

// recover opens the write-ahead log, applies what it holds that the
// database file lacks, and sets up the committer.
func (s *BoltStore) recover() error {
	var ws walState
	err := s.db.View(func(tx *bbolt.Tx) error {
		m := tx.Bucket(bMeta)
		ws.id = bytes.Clone(m.Get(kWALID))
		ws.prevID = bytes.Clone(m.Get(kWALPrevID))
		if v := m.Get(kWALApplied); len(v) == 8 {
			ws.applied = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storage: reading the write-ahead log state of %s: %w", s.path, err)
	}
	if len(ws.id) != 8 {
		return fmt.Errorf("storage: %s has no write-ahead log id", s.path)
	}
	w, unapplied, seq, err := openWAL(walPath(s.path), ws, s.opts.NoSync)
	if err != nil {
		return fmt.Errorf("storage: opening the write-ahead log of %s: %w", s.path, err)
	}
	s.c = newCommitter(s, w, seq)
	s.c.log = unapplied
	if err := s.c.checkpoint(); err != nil {
		w.close(false)
		return fmt.Errorf("storage: replaying the write-ahead log of %s: %w", s.path, err)
	}
	return nil
}

func (s *BoltStore) migrate() error {
	var stored uint64
	err := s.db.View(func(tx *bbolt.Tx) error {
		if m := tx.Bucket(bMeta); m != nil {
			if v := m.Get(kSchemaVersion); len(v) == 8 {
				stored = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storage: reading schema version of %s: %w", s.path, err)
	}
	if stored > uint64(len(migrations)) {
		return fmt.Errorf("storage: database %s has schema version %d, newer than this build supports (%d); use a newer build",
			s.path, stored, len(migrations))
	}
	for v := stored; v < uint64(len(migrations)); v++ {
		err := s.db.Update(func(tx *bbolt.Tx) error {
			if err := migrations[v](tx); err != nil {
				return err
			}
			m, err := tx.CreateBucketIfNotExists(bMeta)
			if err != nil {
				return err
			}
			return m.Put(kSchemaVersion, u64(v+1))
		})
		if err != nil {
			return fmt.Errorf("storage: migrating %s to schema version %d: %w", s.path, v+1, err)
		}
	}
	return nil
}

// Path returns the database file path.
func (s *BoltStore) Path() string { return s.path }

// Close flushes pending settlements and closes the database. Later calls
// return the first call's result; every other method then gives ErrClosed.
func (s *BoltStore) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		cerr := s.c.stop()
		err := s.db.Close()
		s.closeErr = errors.Join(cerr, err)
	})
	return s.closeErr
}

// Ping reports whether the store can serve.
func (s *BoltStore) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := s.c.failure(); err != nil {
		return err
	}
	return s.view(func(tx *bbolt.Tx) error { return nil })
}

// Backup writes a consistent hot copy of the database to w, in one read
// transaction. Settlements keep being accepted meanwhile; a write that must
// grow the file's memory map past InitialMmapSize waits for the copy to
// end, so the copy stops as soon as ctx is cancelled.
func (s *BoltStore) Backup(ctx context.Context, w io.Writer) (int64, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	// The copy is of the database file alone: from a transaction that
	// sees the log applied (and after which the log goes on under a new
	// id, see committer.snapshot).
	tx, err := s.c.snapshotTx()
	if err != nil {
		return 0, mapErr(err)
	}
	n, err := tx.WriteTo(ctxWriter{ctx, w})
	if rerr := tx.Rollback(); err == nil {
		err = mapErr(rerr)
	}
	if err != nil && ctx != nil && ctx.Err() != nil {
		err = fmt.Errorf("storage: backup stopped: %w", ctx.Err()) // bbolt does not wrap it
	}
	return n, err
}

// ctxWriter fails writes once ctx is done.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if c.ctx != nil {
		if err := c.ctx.Err(); err != nil {
			return 0, err
		}
	}
	return c.w.Write(p)
}

// Subscribe registers fn to be called after each committed change.
func (s *BoltStore) Subscribe(fn func(Change)) (unsubscribe func()) {
	s.subMu.Lock()
	s.subSeq++
	id := s.subSeq
	s.subs[id] = fn
	s.subMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.subMu.Lock()
			delete(s.subs, id)
			s.subMu.Unlock()
		})
	}
}

func (s *BoltStore) notify(changes ...Change) {
	if len(changes) == 0 {
		return
	}
	s.subMu.Lock()
	fns := make([]func(Change), 0, len(s.subs))
	for _, fn := range s.subs {
		fns = append(fns, fn)
	}
	s.subMu.Unlock()
	for _, c := range changes {
		for _, fn := range fns {
			fn(c)
		}
	}
}

// view and update run a transaction, mapping a closed database to
// ErrClosed.
func (s *BoltStore) view(fn func(tx *bbolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return mapErr(s.db.View(fn))
}

func (s *BoltStore) update(fn func(tx *bbolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := s.c.failure(); err != nil {
		return err
	}
	return mapErr(s.db.Update(fn))
}

func mapErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) || errors.Is(err, bolterrors.ErrTxClosed) {
		return ErrClosed
	}
	return err
}

// Encoding helpers.

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func id8(id int64) []byte { return u64(uint64(id)) }

func pair(a, b int64) []byte {
	k := make([]byte, 16)
	binary.BigEndian.PutUint64(k, uint64(a))
	binary.BigEndian.PutUint64(k[8:], uint64(b))
	return k
}

func getJSON(b *bbolt.Bucket, key []byte, v any) error {
	data := b.Get(key)
	if data == nil {
		return ErrNotFound
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("storage: corrupt record in %s: %w", key, err)
	}
	return nil
}

func putJSON(b *bbolt.Bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, data)
}

func nextID(b *bbolt.Bucket) (int64, error) {
	seq, err := b.NextSequence()
	return int64(seq), err
}

func ctxErr(ctx context.Context) error {
	if ctx == nil {
		return nil
	}
	return ctx.Err()
}

// Interface guards
var (
	_ Store       = (*BoltStore)(nil)
	_ Flusher     = (*BoltStore)(nil)
	_ HotBackuper = (*BoltStore)(nil)
)
