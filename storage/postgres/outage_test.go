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
	mustBeSettled(t, s, map[int64]int64{u1.ID: 97, u2.ID: 96})
}

// mustBeSettled checks that each user holds the credits given, nothing
// reserved, no reservation of s is open, and the ledger verifies.
func mustBeSettled(t *testing.T, s *Store, credits map[int64]int64) {
	t.Helper()
	for user, want := range credits {
		if b := storetest.MustBalance(t, s, user); b.Credits != want || b.Reserved != 0 {
			t.Fatalf("user %d: %+v, want %d credits and nothing reserved", user, b, want)
		}
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

// TestFailureKinds: which failures keep a settlement or refund for a retry
// (tryAgain: nothing the database answered for good), and which of those
// empty the pool of its idle connections (connectionLost: the connection
// is gone, not the server answering or a timeout passing).
func TestFailureKinds(t *testing.T) {
	for _, c := range []struct {
		name           string
		err            error
		tryAgain, lost bool
	}{
		{"connection lost", io.ErrUnexpectedEOF, true, true},
		{"server shutting down", &pgconn.PgError{Code: "57P01"}, true, true},
		{"server crashed", &pgconn.PgError{Code: "57P02"}, true, true},
		{"connection failure", &pgconn.PgError{Code: "08006"}, true, true},
		{"statement timeout", &pgconn.PgError{Code: "57014"}, true, false},
		{"canceled", context.Canceled, true, false},
		{"deadline", fmt.Errorf("settling: %w", context.DeadlineExceeded), true, false},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, true, false},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, true, false},
		{"disk full", &pgconn.PgError{Code: "53100"}, true, false},
		{"out of memory", &pgconn.PgError{Code: "53200"}, true, false},
		{"too many connections", &pgconn.PgError{Code: "53300"}, true, false},
		{"lock not available", &pgconn.PgError{Code: "55P03"}, true, false},
		{"I/O error", &pgconn.PgError{Code: "58030"}, true, false},
		{"a standby", &pgconn.PgError{Code: "25006"}, true, false},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false, false},
		{"check violation", &pgconn.PgError{Code: "23514"}, false, false},
		{"numeric overflow", &pgconn.PgError{Code: "22003"}, false, false},
		{"raised by a function", &pgconn.PgError{Code: "P0001"}, false, false},
		{"empty code", &pgconn.PgError{}, false, false},
		{"other", errors.New("storage: unexpected settlement status"), false, false},
	} {
		if got := tryAgain(c.err); got != c.tryAgain {
			t.Errorf("%s: tryAgain = %v, want %v", c.name, got, c.tryAgain)
		}
		if got := connectionLost(c.err); got != c.lost {
			t.Errorf("%s: connectionLost = %v, want %v", c.name, got, c.lost)
		}
		// What the database answered and a retry may clear is a 503 to a
		// client (ErrUnavailable), never a 500.
		var pgErr *pgconn.PgError
		if errors.As(c.err, &pgErr) && c.tryAgain && !errors.Is(mapErr(c.err), storage.ErrUnavailable) {
			t.Errorf("%s: mapErr = %v, want ErrUnavailable", c.name, mapErr(c.err))
		}
	}
}

// failNext makes the next n statements that write the ledger fail with
// SQLSTATE code, as a deadlock, a full disk or a failover would fail a
// settlement: the database answers, and the transaction is rolled back.
func failNext(t *testing.T, s *Store, n int, code string) {
	t.Helper()
	ctx := context.Background()
	for _, q := range []string{
		`DROP TRIGGER IF EXISTS test_fault ON gw_ledger`,
		`DROP SEQUENCE IF EXISTS test_fault_n`,
		`CREATE SEQUENCE test_fault_n`,
		fmt.Sprintf(`CREATE OR REPLACE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF nextval('test_fault_n') <= %d THEN
				RAISE EXCEPTION 'injected failure' USING ERRCODE = '%s';
			END IF;
			RETURN NULL;
		END $$`, n, code),
		`CREATE TRIGGER test_fault BEFORE INSERT ON gw_ledger FOR EACH STATEMENT EXECUTE FUNCTION test_fault()`,
	} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestSettlementSurvivesPassingFailure: a settlement the database refuses
// for now (a deadlock, a full disk, a standby after a failover: it answers,
// and rolls back) is kept and applied once the database can, exactly once:
// not dropped with its charge. Alone and in a batch, whose calls are then
// tried alone at once.
func TestSettlementSurvivesPassingFailure(t *testing.T) {
	for _, code := range []string{"40P01", "53100", "25006"} {
		t.Run(code, func(t *testing.T) {
			ctx := context.Background()
			s := openNode(t, pgtest.DatabaseURL(t), "passing")
			s.cancel() // the kept settlements are applied below, by hand
			s.wg.Wait()
			u, k := storetest.Register(t, s, "alone@example.com", 100)
			res := mustReserve(t, s, u.ID, k.ID, 10)
			failNext(t, s, 1, code)
			if _, _, err := s.Settle(ctx, res, 7, storage.UsageRecord{Model: "m", RequestID: "alone"}); !errors.Is(err, storage.ErrUnavailable) {
				t.Fatalf("Settle refused with %s: %v, want ErrUnavailable", code, err)
			}
			if kept := s.retryHeld(ctx); kept {
				t.Fatal("the kept settlement was not applied once the database could")
			}
			s.retryHeld(ctx)
			mustBeSettled(t, s, map[int64]int64{u.ID: 93})

			// A batch: refused as a whole, then each call alone, and once
			// more the first of them: that one is kept, the other applied.
			u1, k1 := storetest.Register(t, s, "b1@example.com", 100)
			u2, k2 := storetest.Register(t, s, "b2@example.com", 100)
			r1, r2 := mustReserve(t, s, u1.ID, k1.ID, 10), mustReserve(t, s, u2.ID, k2.ID, 10)
			c1, _ := settleBatchCall(t, s, r1, 3)
			c2, res2 := settleBatchCall(t, s, r2, 4)
			failNext(t, s, 2, code)
			s.settles.flush([]*batchCall{c1, c2})
			if !errors.Is(c1.err, storage.ErrUnavailable) {
				t.Fatalf("first call, refused twice: %v, want ErrUnavailable", c1.err)
			}
			if c2.err != nil || res2.status != "ok" || res2.charged != 4 {
				t.Fatalf("second call, alone after the batch was refused: %v %+v", c2.err, res2)
			}
			s.done(int64(r2.ID)) // as Settle does with an applied call
			s.retryLater(heldCall{settleSQL, c1.args}, c1.err)
			s.retryHeld(ctx)
			s.retryHeld(ctx)
			mustBeSettled(t, s, map[int64]int64{u.ID: 93, u1.ID: 97, u2.ID: 96})
		})
	}
}
