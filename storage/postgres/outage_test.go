package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// A server that is down gives ErrUnavailable, never a panic; the store
// recovers by itself, and a settlement that failed during the outage is
// applied once, afterwards.
func TestDatabaseOutage(t *testing.T) {
	srv, err := pgtest.Start()
	if err != nil {
		pgtest.Unavailable(t, err)
	}
	defer srv.Close()
	ctx := context.Background()
	s := openNode(t, srv.URL("postgres"), "outage")
	u, k := storetest.Register(t, s, "outage@example.com", 100)
	res, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	// The kept settlement is applied below, by hand, not by the heartbeat.
	s.cancel()
	s.wg.Wait()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.Ping(short); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Ping with the server down: %v", err)
	}
	if _, err := s.Reserve(short, storage.ReserveRequest{UserID: u.ID, Credits: 1}); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Reserve with the server down: %v", err)
	}
	if _, err := s.GetUser(short, u.ID); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("GetUser with the server down: %v", err)
	}
	if _, _, err := s.Settle(short, res, 7, storage.UsageRecord{Model: "m", RequestID: "during-outage"}); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Settle with the server down: %v", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping after the restart: %v", err)
	}
	// The kept settlement is applied once, however often it is retried.
	s.retryHeld(ctx)
	s.retryHeld(ctx)
	if bal := storetest.MustBalance(t, s, u.ID); bal.Credits != 93 || bal.Reserved != 0 {
		t.Fatalf("after recovery: %+v, want 93 credits and nothing reserved", bal)
	}
	if n := s.OpenReservations(); n != 0 {
		t.Fatalf("open reservations = %d", n)
	}
	usage, err := s.ListUsage(ctx, storage.UsageFilter{UserID: u.ID})
	if err != nil || len(usage) != 1 || usage[0].RequestID != "during-outage" {
		t.Fatalf("usage = %+v, %v", usage, err)
	}
	mustVerify(t, s)
}

// TestOpenErrors: a DSN that does not parse or a server that is not there
// is a clear error at start.
func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, "postgres://u:secret-pw@127.0.0.1:bad/db", Options{}); !errors.Is(err, storage.ErrInvalid) ||
		containsSecret(err) {
		t.Fatalf("bad DSN: %v", err)
	}
	_, err := Open(ctx, "postgres://u:secret-pw@127.0.0.1:1/db?sslmode=disable", Options{ConnectTimeout: 2 * time.Second})
	if !errors.Is(err, storage.ErrUnavailable) || containsSecret(err) {
		t.Fatalf("no server: %v", err)
	}
}

// containsSecret reports whether err quotes the test DSNs' password.
func containsSecret(err error) bool { return strings.Contains(err.Error(), "secret-pw") }

// TestCloseAppliesKeptSettlements: a settlement kept because the database
// was down is applied when the node closes (before its holds are
// released), not forgotten with them.
func TestCloseAppliesKeptSettlements(t *testing.T) {
	srv, s, userID := keptSettlement(t, "closing")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	other := openNode(t, srv.URL("postgres"), "reader")
	if bal := storetest.MustBalance(t, other, userID); bal.Credits != 93 || bal.Reserved != 0 {
		t.Fatalf("after close: %+v, want 93 credits and nothing reserved", bal)
	}
}

// keptSettlement is a node named name on a private server, with a user of
// 100 credits whose reservation of 10 was settled at 7 while the server
// was down (so the settlement is kept), and the server back up. The node's
// background work is stopped: only the test applies the kept settlement.
func keptSettlement(t *testing.T, name string) (*pgtest.Server, *Store, int64) {
	t.Helper()
	srv, err := pgtest.Start()
	if err != nil {
		pgtest.Unavailable(t, err)
	}
	t.Cleanup(func() { srv.Close() })
	s := openNode(t, srv.URL("postgres"), name)
	u, k := storetest.Register(t, s, name+"@example.com", 100)
	res := mustReserve(t, s, u.ID, k.ID, 10)
	s.cancel()
	s.wg.Wait()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := s.Settle(short, res, 7, storage.UsageRecord{Model: "m", RequestID: name}); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Settle with the server down: %v", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	return srv, s, u.ID
}

// A batch of settlements sent while the server is down: each reports
// ErrUnavailable and is kept; once the server is back each is applied
// once, however often the kept settlements are retried.
func TestBatchDuringOutage(t *testing.T) {
	srv, err := pgtest.Start()
	if err != nil {
		pgtest.Unavailable(t, err)
	}
	defer srv.Close()
	ctx := context.Background()
	s := openNode(t, srv.URL("postgres"), "batch-outage")
	u1, k1 := storetest.Register(t, s, "o1@example.com", 100)
	u2, k2 := storetest.Register(t, s, "o2@example.com", 100)
	r1, r2 := mustReserve(t, s, u1.ID, k1.ID, 10), mustReserve(t, s, u2.ID, k2.ID, 10)
	s.cancel() // the kept settlements are applied below, by hand
	s.wg.Wait()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	c1, _ := settleBatchCall(t, s, r1, 3)
	c2, _ := settleBatchCall(t, s, r2, 4)
	s.settles.flush([]*batchCall{c1, c2})
	for _, c := range []*batchCall{c1, c2} {
		if !errors.Is(c.err, storage.ErrUnavailable) {
			t.Fatalf("settlement with the server down: %v", c.err)
		}
		s.retryLater(heldCall{settleSQL, c.args}, c.err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	s.retryHeld(ctx)
	s.retryHeld(ctx)
	if b := storetest.MustBalance(t, s, u1.ID); b.Credits != 97 || b.Reserved != 0 {
		t.Fatalf("user 1 after recovery: %+v, want 97 credits and nothing reserved", b)
	}
	if b := storetest.MustBalance(t, s, u2.ID); b.Credits != 96 || b.Reserved != 0 {
		t.Fatalf("user 2 after recovery: %+v, want 96 credits and nothing reserved", b)
	}
	if n := s.OpenReservations(); n != 0 {
		t.Fatalf("open reservations = %d", n)
	}
	mustVerify(t, s)
}

// TestKeptSettlementSurvivesCanceledRetry: a retry of a kept settlement
// cut short before the database answered (the node closing cancels its
// background work mid-retry) keeps the settlement: it is applied by the
// next retry, not dropped and its charge lost.
func TestKeptSettlementSurvivesCanceledRetry(t *testing.T) {
	_, s, userID := keptSettlement(t, "canceled-retry")
	ctx := context.Background()
	canceled, cancelNow := context.WithCancel(ctx)
	cancelNow()
	if kept := s.retryHeld(canceled); !kept {
		t.Fatal("a retry canceled before the database answered dropped the kept settlement")
	}
	deadline, cancelDeadline := context.WithTimeout(ctx, time.Nanosecond)
	defer cancelDeadline()
	<-deadline.Done()
	if kept := s.retryHeld(deadline); !kept {
		t.Fatal("a retry past its deadline dropped the kept settlement")
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.applyKept(short); err != nil {
		t.Fatal(err)
	}
	if bal := storetest.MustBalance(t, s, userID); bal.Credits != 93 || bal.Reserved != 0 {
		t.Fatalf("after the retries: %+v, want 93 credits and nothing reserved", bal)
	}
	mustVerify(t, s)
}

// TestTryAgain: which failures keep a settlement or refund for a retry
// (nothing the database answered), and which end it.
func TestTryAgain(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection lost", io.ErrUnexpectedEOF, true},
		{"server shutting down", &pgconn.PgError{Code: "57P01"}, true},
		{"statement timeout", &pgconn.PgError{Code: "57014"}, true},
		{"canceled", context.Canceled, true},
		{"deadline", fmt.Errorf("settling: %w", context.DeadlineExceeded), true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"check violation", &pgconn.PgError{Code: "23514"}, false},
		{"other", errors.New("storage: unexpected settlement status"), false},
	} {
		if got := tryAgain(c.err); got != c.want {
			t.Errorf("%s: tryAgain = %v, want %v", c.name, got, c.want)
		}
	}
}
