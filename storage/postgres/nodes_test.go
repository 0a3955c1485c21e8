package postgres

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

func openNode(t *testing.T, dsn, name string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn, Options{Node: name, Lease: time.Second, PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// freeze stops a node's heartbeat and feed as if its process were stopped,
// and dates its last heartbeat past the lease.
func freeze(t *testing.T, s *Store) {
	t.Helper()
	s.cancel()
	s.wg.Wait()
	if _, err := s.pool.Exec(context.Background(), `UPDATE gw_nodes SET heartbeat_at = now() - interval '1 hour' WHERE id = $1`, s.node); err != nil {
		t.Fatal(err)
	}
}

func mustVerify(t *testing.T, s *Store) {
	t.Helper()
	if err := s.VerifyLedger(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A node silent past the lease loses its holds to the others; its late
// settlement charges at most what is available then, once.
func TestDeadNodeHoldsReleased(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	a, b := openNode(t, dsn, "a"), openNode(t, dsn, "b")
	u, k := storetest.Register(t, a, "dead@example.com", 100)
	r1, err := a.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 60, MaxRequests: 5})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := a.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 30})
	if err != nil {
		t.Fatal(err)
	}
	// A live node's holds stay.
	if n, err := b.releaseDead(ctx); err != nil || n != 0 {
		t.Fatalf("released %d holds of a live node: %v", n, err)
	}
	// Only the call below reaps: b's own heartbeat would race it.
	b.cancel()
	b.wg.Wait()
	freeze(t, a)
	log := record(t, b)
	if n, err := b.releaseDead(ctx); err != nil || n != 2 {
		t.Fatalf("releaseDead = %d, %v; want the dead node's 2 holds", n, err)
	}
	// Requests of the user waiting for credits on any node retry.
	log.wait(t, "credits released", 0, func(c storage.Change) bool { return c.Kind == storage.ChangeCredits && c.UserID == u.ID })
	if bal := storetest.MustBalance(t, b, u.ID); bal.Credits != 100 || bal.Reserved != 0 {
		t.Fatalf("after release: %+v", bal)
	}
	mustVerify(t, b)
	// Meanwhile b spends 80 of the 100.
	r3, err := b.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 80})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Settle(ctx, r3, 80, storage.UsageRecord{Model: "m"}); err != nil {
		t.Fatal(err)
	}
	// a's late settlement of 60 finds 20: it charges 20, once.
	charged, after, err := a.Settle(ctx, r1, 60, storage.UsageRecord{Model: "m"})
	if err != nil || charged != 20 || after != 0 {
		t.Fatalf("late settle = %d, %d, %v; want 20, 0", charged, after, err)
	}
	if _, _, err := a.Settle(ctx, r1, 60, storage.UsageRecord{}); !errors.Is(err, storage.ErrAlreadySettled) {
		t.Fatalf("second late settle: %v", err)
	}
	// A late refund releases nothing twice.
	if err := a.Refund(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if bal := storetest.MustBalance(t, b, u.ID); bal.Credits != 0 || bal.Reserved != 0 {
		t.Fatalf("final balance %+v", bal)
	}
	key, err := b.GetKey(ctx, k.ID)
	if err != nil || key.RequestsUsed != 2 {
		t.Fatalf("requests_used = %+v, %v", key, err)
	}
	var inflight int64
	if err := b.pool.QueryRow(ctx, `SELECT inflight FROM gw_keys WHERE id = $1`, k.ID).Scan(&inflight); err != nil || inflight != 0 {
		t.Fatalf("inflight = %d, %v", inflight, err)
	}
	mustVerify(t, b)
}

// A node that starts under a previous run's name releases its holds at once.
func TestRestartReleasesOwnHolds(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	first := openNode(t, dsn, "n1")
	other := openNode(t, dsn, "n2")
	u, _ := storetest.Register(t, first, "restart@example.com", 50)
	if _, err := first.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, Credits: 40}); err != nil {
		t.Fatal(err)
	}
	kept, err := other.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, Credits: 5})
	if err != nil {
		t.Fatal(err)
	}
	first.cancel() // killed: no Close, no release, heartbeat still fresh
	first.wg.Wait()
	again := openNode(t, dsn, "n1")
	if bal := storetest.MustBalance(t, again, u.ID); bal.Reserved != kept.Amount {
		t.Fatalf("after restart reserved = %d, want only the other node's %d", bal.Reserved, kept.Amount)
	}
	mustVerify(t, again)
}

// Closing a node releases its open holds.
func TestCloseReleasesHolds(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	a, b := openNode(t, dsn, "a"), openNode(t, dsn, "b")
	u, _ := storetest.Register(t, a, "close@example.com", 50)
	if _, err := a.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, Credits: 40}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if bal := storetest.MustBalance(t, b, u.ID); bal.Reserved != 0 {
		t.Fatalf("after close: %+v", bal)
	}
}

// A hold whose Reserve committed but whose answer never reached a caller
// (the connection broke) is refunded once it is old; the holds callers
// have are kept.
func TestOrphanedHoldRefunded(t *testing.T) {
	ctx := context.Background()
	s := openNode(t, pgtest.DatabaseURL(t), "orphans")
	u, _ := storetest.Register(t, s, "orphan@example.com", 100)
	kept, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	lost, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, Credits: 30})
	if err != nil {
		t.Fatal(err)
	}
	s.holds.Delete(int64(lost.ID)) // as if the answer had been lost
	if _, err := s.pool.Exec(ctx, `UPDATE gw_holds SET created_at = now() - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	if err := s.releaseOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if b := storetest.MustBalance(t, s, u.ID); b.Reserved != kept.Amount {
		t.Fatalf("reserved %d, want only the kept hold's %d", b.Reserved, kept.Amount)
	}
	if _, _, err := s.Settle(ctx, kept, 5, storage.UsageRecord{}); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, s)
}

// TestFrozenTransactionEnds: a node frozen inside a transaction (its
// process stopped) holds the rows it locked only until the lease: the
// server then ends its connection, and another node's statement on the
// same row goes through.
func TestFrozenTransactionEnds(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	frozen, other := openNode(t, dsn, "frozen"), openNode(t, dsn, "other")
	u, _ := storetest.Register(t, frozen, "frozen@example.com", 10)
	tx, err := frozen.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM gw_accounts WHERE user_id = $1 FOR UPDATE`, u.ID); err != nil {
		t.Fatal(err)
	}
	waited, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := other.Reserve(waited, storage.ReserveRequest{UserID: u.ID, Credits: 1}); err != nil {
		t.Fatalf("reserving on the other node while a frozen node held the row: %v", err)
	}
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("the frozen transaction committed after the lease")
	}
}

// A node whose every pooled connection is busy for several leases is
// still alive: its heartbeat has a connection of its own, so another
// node's reaper leaves its holds alone.
func TestHeartbeatWhilePoolBusy(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	// A lease of 2 s (beats every 667 ms): a loaded test machine may delay
	// a beat, not three in a row.
	const lease = 2 * time.Second
	open := func(name string, pool int) *Store {
		s, err := Open(ctx, dsn, Options{Node: name, Lease: lease, PollInterval: 100 * time.Millisecond, PoolSize: pool})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := open("busy", 2), open("reaper", 0)
	u, k := storetest.Register(t, a, "busy@example.com", 100)
	r, err := a.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 60})
	if err != nil {
		t.Fatal(err)
	}
	// Every pooled connection of a taken for two and a half leases.
	var held []interface{ Release() }
	for range 2 {
		c, err := a.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(lease * 5 / 2)
	// b's reaper has run about seven times meanwhile; one more call now.
	if _, err := b.releaseDead(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range held {
		c.Release()
	}
	var stillOpen int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM gw_holds WHERE id = $1 AND state = 'open'`, int64(r.ID)).Scan(&stillOpen); err != nil {
		t.Fatal(err)
	}
	if stillOpen != 1 {
		t.Fatal("the busy node was taken for dead: its hold was released")
	}
	if bal := storetest.MustBalance(t, b, u.ID); bal.Reserved != 60 {
		t.Fatalf("balance while the hold is open: %+v", bal)
	}
	if _, _, err := a.Settle(ctx, r, 40, storage.UsageRecord{Model: "m"}); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, b)
}
