package postgres

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// feedLog records the changes a store delivers, with whether the feed was
// listening when each arrived.
type feedLog struct {
	mu        sync.Mutex
	changes   []storage.Change
	listening []bool
}

func record(t *testing.T, s *Store) *feedLog {
	l := new(feedLog)
	t.Cleanup(s.Subscribe(func(c storage.Change) {
		l.mu.Lock()
		l.changes = append(l.changes, c)
		l.listening = append(l.listening, s.feed.listening.Load())
		l.mu.Unlock()
	}))
	return l
}

// wait returns the index of the first change after from that satisfies
// pred, failing the test after a generous bound.
func (l *feedLog) wait(t *testing.T, what string, from int, pred func(storage.Change) bool) int {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		l.mu.Lock()
		for i := from; i < len(l.changes); i++ {
			if pred(l.changes[i]) {
				l.mu.Unlock()
				return i
			}
		}
		l.mu.Unlock()
	}
	t.Fatalf("no %s change delivered", what)
	return -1
}

func (l *feedLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.changes)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestFeedConnectionLost: with a node's LISTEN connection killed (found
// by its application_name), the other node's changes still reach it by
// polling the change log, it tells subscribers to drop their caches, and
// it listens again after the bound.
func TestFeedConnectionLost(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DatabaseURL(t)
	opts := Options{Node: "b", Lease: time.Second, FeedBound: 2 * time.Second, PollInterval: 100 * time.Millisecond}
	a, b := openNode(t, dsn, "a"), mustOpen(t, dsn, opts)
	log := record(t, b)
	waitUntil(t, "b listening", func() bool { return b.FeedStatus().Listening })
	u, _ := storetest.Register(t, a, "lost@example.com", 0)
	log.wait(t, "registration (notified)", 0, func(c storage.Change) bool { return c.Kind == storage.ChangeUser && c.UserID == u.ID })

	beforeKill := log.len()
	var killed int
	if err := a.pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`,
		FeedApplicationName(b.Node())).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d feed connections of node b: %v", killed, err)
	}
	waitUntil(t, "b noticing the lost connection", func() bool { st := b.FeedStatus(); return !st.Listening && st.Reconnects == 1 })
	from := log.len()
	if _, err := a.UpdateUser(ctx, u.ID, func(x *storage.User) error { x.IsActive = false; return nil }); err != nil {
		t.Fatal(err)
	}
	i := log.wait(t, "user update (polled)", from, func(c storage.Change) bool { return c.Kind == storage.ChangeUser && c.UserID == u.ID })
	log.mu.Lock()
	polled := !log.listening[i]
	log.mu.Unlock()
	if !polled {
		t.Error("the change came after the connection was back: the test proved nothing about polling")
	}
	log.wait(t, "cache drop after the break", beforeKill, func(c storage.Change) bool { return c.Kind == storage.ChangeAll })
	waitUntil(t, "b listening again", func() bool { return b.FeedStatus().Listening })
	if st := b.FeedStatus(); st.Behind || st.LastID == 0 || st.LastEventAt.IsZero() || st.Node != b.Node() {
		t.Fatalf("status after recovery: %+v", st)
	}
}

// TestFeedBehindDuringOutage: with the database down, the feed falls
// behind its bound (the gateway then trusts no cached record); back up, it
// catches up by itself and tells subscribers to drop their caches.
func TestFeedBehindDuringOutage(t *testing.T) {
	srv, err := pgtest.Start()
	if err != nil {
		pgtest.Unavailable(t, err)
	}
	defer srv.Close()
	s := mustOpen(t, srv.URL("postgres"), Options{Node: "behind", Lease: time.Second, FeedBound: 500 * time.Millisecond,
		ConnectTimeout: time.Second, StatementTimeout: time.Second})
	log := record(t, s)
	if s.FeedBehind() {
		t.Fatal("behind right after opening")
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the feed behind", s.FeedBehind)
	if st := s.FeedStatus(); !st.Behind || st.Lag <= st.Bound || st.Listening {
		t.Fatalf("status with the database down: %+v", st)
	}
	from := log.len()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the feed caught up", func() bool { return !s.FeedBehind() })
	log.wait(t, "cache drop after the outage", from, func(c storage.Change) bool { return c.Kind == storage.ChangeAll })
}

func mustOpen(t *testing.T, dsn string, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
