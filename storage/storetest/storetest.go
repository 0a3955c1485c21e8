// Package storetest is the conformance suite of storage.Store, in the
// manner of testing/fstest: a backend's tests call Run with a function that
// opens a fresh, empty store, and RunShared with one that opens two handles
// on one fresh database.
//
// The suite holds only to the Store contract: it does not expect change
// notifications to arrive before the mutating call returns (it waits for
// them, within a bound), and it uses optional abilities (storage.Flusher,
// storage.HotBackuper, a VerifyLedger method) only where a store has them.
package storetest

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Run runs the single-handle conformance suite, one subtest per behaviour.
// open returns a fresh, empty store for each subtest; the suite closes it.
func Run(t *testing.T, open func(t *testing.T) storage.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"Users", confUsers},
		{"Keys", confKeys},
		{"Scopes", confScopes},
		{"KeyRotationGrace", confKeyRotation},
		{"DeleteUserDropsKeys", confDeleteUser},
		{"Plans", confPlans},
		{"Limits", confLimits},
		{"ReserveSettleRefund", confReserveSettle},
		{"SettleCapsAtBalance", confSettleCap},
		{"ConcurrentSettlements", confConcurrent},
		{"MaxRequestsSlots", confMaxRequests},
		{"FlexibleReservation", confFlexibleReserve},
		{"AddCredits", confAddCredits},
		{"Usage", confUsage},
		{"UsageTotals", confUsageTotals},
		{"Audit", confAudit},
		{"Subscribe", confSubscribe},
		{"Backup", confBackup},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			defer s.Close()
			tc.fn(t, s)
		})
	}
}

// Keyring is the keyring the suite derives key hashes and encrypted keys
// with. A backend that checks the secret its data was written with should
// be opened with this one's secret (32 bytes of 'k').
var Keyring = func() *storage.Keyring {
	kr, err := storage.NewKeyring(bytes.Repeat([]byte("k"), 32))
	if err != nil {
		panic(err)
	}
	return kr
}()

// NewKey returns the record of a fresh random key named name (not yet
// stored: the caller sets UserID) and the plaintext key.
func NewKey(t testing.TB, name string) (*storage.APIKey, string) {
	t.Helper()
	plain, err := Keyring.Generate("live")
	if err != nil {
		t.Fatal(err)
	}
	enc, err := Keyring.Encrypt(plain)
	if err != nil {
		t.Fatal(err)
	}
	return &storage.APIKey{
		KeyName: name, Hash: Keyring.Hash(plain), Encrypted: enc,
		Prefix: storage.KeyDisplayPrefix(plain), EnvironmentTag: "live", Scopes: storage.FullScopes(), IsActive: true,
	}, plain
}

// Register creates a user with a primary key and credits.
func Register(t testing.TB, s storage.Store, email string, credits int64) (*storage.User, *storage.APIKey) {
	t.Helper()
	u := &storage.User{Username: strings.Split(email, "@")[0], Email: email, AuthMethod: "email", IsActive: true, SubscriptionStatus: "trial"}
	k, _ := NewKey(t, "primary")
	k.IsPrimary = true
	if err := s.Register(context.Background(), u, k, credits); err != nil {
		t.Fatalf("Register(%s): %v", email, err)
	}
	return u, k
}

// MustBalance returns the user's balance, failing the test on an error.
func MustBalance(t testing.TB, s storage.Store, uid int64) storage.Balance {
	t.Helper()
	b, err := s.Balance(context.Background(), uid)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// flush makes accepted settlements durable where the store defers that.
func flush(t testing.TB, s storage.Store) {
	t.Helper()
	if f, ok := s.(storage.Flusher); ok {
		if err := f.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// ledger returns the user's ledger entries after a flush.
func ledger(t testing.TB, s storage.Store, uid int64) []storage.LedgerEntry {
	t.Helper()
	flush(t, s)
	entries, err := s.Ledger(context.Background(), uid)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

func ledgerSum(t testing.TB, s storage.Store, uid int64) int64 {
	t.Helper()
	var sum int64
	for _, e := range ledger(t, s, uid) {
		sum += e.Amount
	}
	return sum
}

// verifyLedger runs the store's own ledger check when it has one.
func verifyLedger(t testing.TB, s storage.Store) {
	t.Helper()
	if v, ok := s.(interface{ VerifyLedger(context.Context) error }); ok {
		if err := v.VerifyLedger(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// feedBound is how long a change may take to reach a subscriber. Delivery
// may be asynchronous (another process's change arrives through the
// database); the bound only ends a test whose change never comes.
const feedBound = 30 * time.Second

// changeLog records the changes delivered to one subscription.
type changeLog struct {
	mu      sync.Mutex
	changes []storage.Change
	arrived chan struct{} // signalled (without blocking) on each change
}

// subscribe records s's changes until the test ends or unsubscribe is called.
func subscribe(t testing.TB, s storage.Store) (*changeLog, func()) {
	l := &changeLog{arrived: make(chan struct{}, 1)}
	unsub := s.Subscribe(func(c storage.Change) {
		l.mu.Lock()
		l.changes = append(l.changes, c)
		l.mu.Unlock()
		select {
		case l.arrived <- struct{}{}:
		default:
		}
	})
	t.Cleanup(unsub)
	return l, unsub
}

func (l *changeLog) snapshot() []storage.Change {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]storage.Change(nil), l.changes...)
}

func (l *changeLog) hasAfter(from int, pred func(storage.Change) bool) bool {
	for _, c := range l.snapshot()[from:] {
		if pred(c) {
			return true
		}
	}
	return false
}

// waitFor waits until a recorded change satisfies pred, failing the test
// (with what) when none has within feedBound.
func (l *changeLog) waitFor(t testing.TB, what string, pred func(storage.Change) bool) {
	t.Helper()
	l.waitForAfter(t, what, 0, pred)
}

// waitForAfter is waitFor for the changes recorded after the first from.
func (l *changeLog) waitForAfter(t testing.TB, what string, from int, pred func(storage.Change) bool) {
	t.Helper()
	deadline := time.NewTimer(feedBound)
	defer deadline.Stop()
	for !l.hasAfter(from, pred) {
		select {
		case <-l.arrived:
		case <-deadline.C:
			t.Fatalf("no %s change delivered: got %+v", what, l.snapshot())
		}
	}
}
