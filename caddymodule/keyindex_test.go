package caddymodule

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// countingStore is the real store, counting key reads.
type countingStore struct {
	storage.Store
	keyReads atomic.Int64
	// afterRead, when set, runs inside KeyByHash after the read.
	afterRead func()
}

func (c *countingStore) KeyByHash(ctx context.Context, hash []byte) (*storage.APIKey, error) {
	c.keyReads.Add(1)
	k, err := c.Store.KeyByHash(ctx, hash)
	if c.afterRead != nil {
		c.afterRead()
	}
	return k, err
}

func TestKeyIndexNoStoreReadOnHit(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	cs := &countingStore{Store: e.st}
	ix := newKeyIndex(cs, 4)
	unsub := e.st.Subscribe(ix.invalidate)
	defer unsub()
	ctx := context.Background()
	hash := e.app.Keyring().Hash(key)
	for range 100 {
		en, err := ix.lookup(ctx, hash, time.Now())
		if err != nil || en.id.Key.ID != k.ID {
			t.Fatalf("lookup: %v", err)
		}
	}
	if n := cs.keyReads.Load(); n != 1 {
		t.Fatalf("%d store reads for 100 lookups of one key, want 1", n)
	}
	unknown := e.app.Keyring().Hash("gw_live_" + "0000000000000000000000000000000000000000000")
	for range 100 {
		if _, err := ix.lookup(ctx, unknown, time.Now()); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("unknown: %v", err)
		}
	}
	if n := cs.keyReads.Load(); n != 2 {
		t.Fatalf("%d store reads after 100 lookups of one unknown key, want 2 (negative cache)", n)
	}
	// A change of the key drops it: one more read, then cached again.
	if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error { k.KeyName = "renamed"; return nil }); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		en, err := ix.lookup(ctx, hash, time.Now())
		if err != nil || en.id.Key.KeyName != "renamed" {
			t.Fatalf("after update: %+v, %v", en, err)
		}
	}
	if n := cs.keyReads.Load(); n != 3 {
		t.Fatalf("%d store reads, want 3", n)
	}
}

func TestKeyIndexDiscardsLoadRacingAChange(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	cs := &countingStore{Store: e.st}
	ix := newKeyIndex(cs, 4)
	unsub := e.st.Subscribe(ix.invalidate)
	defer unsub()
	ctx := context.Background()
	hash := e.app.Keyring().Hash(key)
	// The key is deactivated while the index reads the old version: the
	// stale read may answer this request but must not be cached.
	cs.afterRead = func() {
		cs.afterRead = nil
		if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error { k.IsActive = false; return nil }); err != nil {
			t.Error(err)
		}
	}
	if en, err := ix.lookup(ctx, hash, time.Now()); err != nil || !en.id.Key.IsActive {
		t.Fatalf("the first lookup should see the version it read: %+v, %v", en, err)
	}
	en, err := ix.lookup(ctx, hash, time.Now())
	if err != nil || en.id.Key.IsActive {
		t.Fatalf("the index kept a version older than the change: %+v, %v", en, err)
	}
}

func TestKeyIndexUserDeletion(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	ctx := context.Background()
	if _, err := e.app.Authenticate(key); err != nil {
		t.Fatal(err)
	}
	if err := e.st.DeleteUser(ctx, k.UserID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.app.Authenticate(key); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("key of a deleted user: %v", err)
	}
	if keys, _ := e.g.state.index.size(); keys != 0 {
		t.Fatalf("%d keys left in the index", keys)
	}
}

// size returns the number of cached keys and negative entries (for tests).
func (ix *keyIndex) size() (keys, negative int) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.byKeyID), len(ix.neg)
}

// unreachableStore is the real store with its database gone: key and
// policy reads fail as a networked store's do.
type unreachableStore struct{ storage.Store }

func (unreachableStore) KeyByHash(context.Context, []byte) (*storage.APIKey, error) {
	return nil, storage.ErrUnavailable
}

func (unreachableStore) ActiveUserPlan(context.Context, int64) (*storage.UserPlan, error) {
	return nil, storage.ErrUnavailable
}

// TestKeyIndexFeedBehind: while the change feed is behind its bound, a
// cached key is not trusted: every lookup reads the store (so a change the
// feed missed applies at once), caching nothing; when the store cannot be
// read the lookup fails closed with ErrFeedBehind; ChangeAll empties the
// index.
func TestKeyIndexFeedBehind(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	cs := &countingStore{Store: e.st}
	ix := newKeyIndex(cs, 4) // not subscribed: every change is "missed"
	var behind atomic.Bool
	ix.behind = behind.Load
	ctx := context.Background()
	hash := e.app.Keyring().Hash(key)
	if _, err := ix.lookup(ctx, hash, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.UpdateKey(ctx, k.ID, func(k *storage.APIKey) error { k.IsActive = false; return nil }); err != nil {
		t.Fatal(err)
	}
	en, err := ix.lookup(ctx, hash, time.Now())
	if err != nil || !en.id.Key.IsActive {
		t.Fatalf("the cached entry (the change was missed): %+v, %v", en, err)
	}
	behind.Store(true)
	for range 3 {
		en, err := ix.lookup(ctx, hash, time.Now())
		if err != nil || en.usable(time.Now()) != ErrInactiveKey {
			t.Fatalf("behind: %+v, %v; want the stored, inactive key", en, err)
		}
	}
	if n := cs.keyReads.Load(); n != 4 {
		t.Fatalf("%d store reads, want 4 (one per lookup while behind)", n)
	}
	down := newKeyIndex(unreachableStore{e.st}, 4)
	down.behind = behind.Load
	if _, err := down.lookup(ctx, hash, time.Now()); !errors.Is(err, ErrFeedBehind) {
		t.Fatalf("behind with the store unreachable: %v, want ErrFeedBehind", err)
	}
	behind.Store(false)
	ix.invalidate(storage.Change{Kind: storage.ChangeAll})
	if keys, neg := ix.size(); keys != 0 || neg != 0 {
		t.Fatalf("after ChangeAll: %d keys, %d negative entries", keys, neg)
	}
	if en, err := ix.lookup(ctx, hash, time.Now()); err != nil || en.usable(time.Now()) != ErrInactiveKey {
		t.Fatalf("after ChangeAll: %+v, %v; want the stored, inactive key", en, err)
	}
}

// TestPlanCacheFeedBehind: while the feed is behind, policies come from
// the store (a missed plan assignment applies), and a store that cannot be
// read is an error, never the cached policy.
func TestPlanCacheFeedBehind(t *testing.T) {
	e := newTestEnv(t, nil)
	_, k := e.newKey(t, "", nil)
	ctx := context.Background()
	c := newPlanCache(e.st) // not subscribed
	var behind atomic.Bool
	c.behind = behind.Load
	if p, err := c.get(ctx, k.UserID); err != nil || p.plan != nil {
		t.Fatalf("no plan: %+v, %v", p, err)
	}
	plan := &storage.Plan{Name: "missed", IsActive: true}
	if err := e.st.CreatePlan(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.AssignPlan(ctx, k.UserID, plan.ID, time.Now().Add(-time.Minute), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if p, _ := c.get(ctx, k.UserID); p.plan != nil {
		t.Fatal("the cache saw a change it was not told of")
	}
	behind.Store(true)
	if p, err := c.get(ctx, k.UserID); err != nil || p.plan == nil || p.plan.ID != plan.ID {
		t.Fatalf("behind: %+v, %v; want the assigned plan", p, err)
	}
	down := newPlanCache(unreachableStore{e.st})
	down.behind = behind.Load
	if _, err := down.get(ctx, k.UserID); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("behind with the store unreachable: %v", err)
	}
	c.invalidate(storage.Change{Kind: storage.ChangeAll})
	behind.Store(false)
	if p, _ := c.get(ctx, k.UserID); p.plan == nil {
		t.Fatal("ChangeAll kept the stale policy")
	}
}

// TestMaskedKeyCached checks that the display form kept in a key entry is
// the key's own, and that an admission whose key is not its entry's asks
// the key.
func TestMaskedKeyCached(t *testing.T) {
	k := &storage.APIKey{ID: 1, UserID: 2, Prefix: "gw_live_AbCd"}
	e := newKeyEntry(k, &storage.User{ID: 2})
	if e.masked != k.Masked() || e.masked != "gw_live_AbCd…" {
		t.Fatalf("masked %q, key %q", e.masked, k.Masked())
	}
	if got := (&admission{key: k, entry: e}).maskedKey(); got != k.Masked() {
		t.Fatalf("maskedKey %q", got)
	}
	other := &storage.APIKey{Prefix: "gw_test_XyZw"}
	if got := (&admission{key: other, entry: e}).maskedKey(); got != other.Masked() {
		t.Fatalf("maskedKey of another key %q", got)
	}
	if got := (&admission{}).maskedKey(); got != "" {
		t.Fatalf("maskedKey without a key %q", got)
	}
}
