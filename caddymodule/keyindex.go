package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// keyEntry is an API key as the hot path needs it: snapshots of the key and
// its user, plus everything derived from them once per key version (parsed
// allowlist, normalized referrer rules, formatted ids).
type keyEntry struct {
	id Identity

	// ipRestricted is true when the key has an IP allowlist; allow holds
	// its parsed entries (an unparsable entry matches nothing).
	ipRestricted bool
	allow        []netip.Prefix
	// referrers are normalized referrer rules ("example.com",
	// "*.example.com"); nil means unrestricted.
	referrers []string

	keyID  string
	userID string
	env    string
	// masked is the key's display form (storage.APIKey.Masked), which
	// every buffered answer's gateway_usage shows.
	masked string
	// admitted counts metered requests admitted with this snapshot, so the
	// max_requests check does not wait for settlements to reach the store
	// (the exact check is store.Reserve's MaxRequests).
	admitted atomic.Int64

	// The same, boxed once for placeholders and vars (no allocation per
	// request).
	keyIDVal, userIDVal, envVal any

	// limits caches the rate limits resolved for this key under one user
	// policy snapshot and gateway (see Gateway.resolveLimits).
	limits atomic.Pointer[resolvedLimits]
}

// newKeyEntry derives a keyEntry from a key and its user.
func newKeyEntry(k *storage.APIKey, u *storage.User) *keyEntry {
	e := &keyEntry{
		id:     Identity{Key: k, User: u},
		keyID:  strconv.FormatInt(k.ID, 10),
		userID: strconv.FormatInt(k.UserID, 10),
		env:    k.EnvironmentTag,
		masked: k.Masked(),
	}
	if e.env == "" {
		e.env = "live"
	}
	e.keyIDVal, e.userIDVal, e.envVal = e.keyID, e.userID, e.env
	e.allow, e.ipRestricted = parseAllowlist(k.IPAllowlist)
	e.referrers = normalizeReferrerRules(k.DomainReferrers)
	return e
}

// MarshalLogObject adds the caller's ids (never the key) to a log entry.
func (e *keyEntry) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("gatewayz_user_id", e.userID)
	enc.AddString("gatewayz_key_id", e.keyID)
	enc.AddString("gatewayz_env", e.env)
	return nil
}

// usable reports whether the key may be used at now: active and not
// expired.
func (e *keyEntry) usable(now time.Time) error {
	if !e.id.Key.IsActive {
		return ErrInactiveKey
	}
	if e.id.Key.Expired(now) {
		return ErrExpiredKey
	}
	return nil
}

// hashRef points a hash at its entry; prev marks a rotated-away secret that
// works only until the key's PrevHashExpiresAt.
type hashRef struct {
	e    *keyEntry
	prev bool
}

// keyIndex maps key hashes to keys and their users, in memory. It fills
// lazily (one store read the first time a key is seen) and is kept current
// by the store's change feed: a change drops the affected entries, so the
// next request re-reads them. Unknown hashes go to a bounded negative cache
// so a flood of made-up keys reads the store once per distinct key at most.
type keyIndex struct {
	store storage.KeyLookup
	// behind, when set, reports that the store's change feed is behind its
	// bound (storage.SharedFeed): cached entries may be stale, so lookups
	// read the store instead, caching nothing, until it has caught up.
	behind func() bool

	mu      sync.RWMutex
	gen     uint64 // bumped by every invalidation; loads started before it are discarded
	byHash  map[string]hashRef
	byKeyID map[int64]*keyEntry
	neg     map[string]struct{}
	negMax  int
}

func newKeyIndex(st storage.KeyLookup, negMax int) *keyIndex {
	if negMax <= 0 {
		negMax = defaultNegativeCacheSize
	}
	return &keyIndex{
		store:   st,
		byHash:  make(map[string]hashRef),
		byKeyID: make(map[int64]*keyEntry),
		neg:     make(map[string]struct{}),
		negMax:  negMax,
	}
}

// errStoreUnavailable wraps store failures met while loading a key.
var errStoreUnavailable = errors.New("key store unavailable")

// ErrFeedBehind wraps the store failure of a lookup made while the change
// feed was behind its bound: the cached entry could not be confirmed, and
// is not trusted (fail closed).
var ErrFeedBehind = errors.New("the change feed is behind its bound and the database cannot be read to confirm the key")

// lookup returns the entry of a key hash at now, or ErrUnknownKey.
func (ix *keyIndex) lookup(ctx context.Context, hash []byte, now time.Time) (*keyEntry, error) {
	if ix.behind != nil && ix.behind() {
		return ix.lookupBehind(ctx, hash, now)
	}
	ix.mu.RLock()
	ref, ok := ix.byHash[string(hash)]
	_, negative := ix.neg[string(hash)]
	gen := ix.gen
	ix.mu.RUnlock()
	if ok {
		return ref.resolve(now)
	}
	if negative {
		return nil, ErrUnknownKey
	}
	// A copy: hash stays the caller's (on its stack) on the hit path.
	return ix.load(ctx, bytes.Clone(hash), gen, now)
}

// lookupBehind is lookup while the feed is behind: unknown hashes still
// come from the negative cache (a stale one refuses, never admits), known
// ones from the store, without caching.
func (ix *keyIndex) lookupBehind(ctx context.Context, hash []byte, now time.Time) (*keyEntry, error) {
	ix.mu.RLock()
	_, negative := ix.neg[string(hash)]
	ix.mu.RUnlock()
	if negative {
		return nil, ErrUnknownKey
	}
	// A copy, as in lookup: hash stays the caller's (on its stack).
	e, err := ix.read(ctx, bytes.Clone(hash), now)
	if errors.Is(err, errStoreUnavailable) {
		return nil, fmt.Errorf("%w: %w", ErrFeedBehind, err)
	}
	return e, err
}

func (r hashRef) resolve(now time.Time) (*keyEntry, error) {
	if r.prev && !now.Before(r.e.id.Key.PrevHashExpiresAt) {
		return nil, ErrUnknownKey
	}
	return r.e, nil
}

// load reads a key and its user from the store and indexes them, unless an
// invalidation happened meanwhile (then the result is still returned, but
// not cached).
func (ix *keyIndex) load(ctx context.Context, hash []byte, gen uint64, now time.Time) (*keyEntry, error) {
	k, u, err := ix.fetch(ctx, hash)
	if errors.Is(err, storage.ErrNotFound) {
		ix.mu.Lock()
		if gen == ix.gen {
			if len(ix.neg) >= ix.negMax {
				for h := range ix.neg { // evict an arbitrary entry
					delete(ix.neg, h)
					break
				}
			}
			ix.neg[string(hash)] = struct{}{}
		}
		ix.mu.Unlock()
		return nil, ErrUnknownKey
	}
	if err != nil {
		return nil, err
	}
	e := newKeyEntry(k, u)
	ix.mu.Lock()
	if gen == ix.gen {
		ix.removeLocked(k.ID)
		ix.byKeyID[k.ID] = e
		ix.byHash[string(k.Hash)] = hashRef{e: e}
		if len(k.PrevHash) > 0 && now.Before(k.PrevHashExpiresAt) {
			ix.byHash[string(k.PrevHash)] = hashRef{e: e, prev: true}
		}
	}
	ix.mu.Unlock()
	return hashRef{e: e, prev: len(k.Hash) != len(hash) || string(k.Hash) != string(hash)}.resolve(now)
}

// read resolves a hash from the store alone, caching nothing.
func (ix *keyIndex) read(ctx context.Context, hash []byte, now time.Time) (*keyEntry, error) {
	k, u, err := ix.fetch(ctx, hash)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrUnknownKey
	}
	if err != nil {
		return nil, err
	}
	return hashRef{e: newKeyEntry(k, u), prev: !bytes.Equal(k.Hash, hash)}.resolve(now)
}

// fetch reads a key by hash and its user. A missing key gives
// storage.ErrNotFound, a missing user ErrUnknownKey, a store failure
// errStoreUnavailable.
func (ix *keyIndex) fetch(ctx context.Context, hash []byte) (*storage.APIKey, *storage.User, error) {
	k, err := ix.store.KeyByHash(ctx, hash)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errStoreUnavailable, err)
	}
	u, err := ix.store.GetUser(ctx, k.UserID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, ErrUnknownKey
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errStoreUnavailable, err)
	}
	return k, u, nil
}

// entryFor returns the index entry of an identity returned by lookup (and
// so Authenticate), with its pre-parsed rules; when that entry has since
// been replaced or dropped, an entry derived from the identity's own
// snapshot.
func (ix *keyIndex) entryFor(id *Identity) *keyEntry {
	ix.mu.RLock()
	e := ix.byKeyID[id.Key.ID]
	ix.mu.RUnlock()
	if e != nil && e.id.Key == id.Key {
		return e
	}
	return newKeyEntry(id.Key, id.User)
}

// removeLocked drops a key's entry and its hashes. ix.mu must be held.
func (ix *keyIndex) removeLocked(keyID int64) {
	e, ok := ix.byKeyID[keyID]
	if !ok {
		return
	}
	delete(ix.byKeyID, keyID)
	for _, h := range [][]byte{e.id.Key.Hash, e.id.Key.PrevHash} {
		if ref, ok := ix.byHash[string(h)]; ok && ref.e == e {
			delete(ix.byHash, string(h))
		}
	}
}

// invalidate applies a change from the store's feed: the entries of the
// changed key (or of every key of the changed user, or every entry for
// ChangeAll) and the hashes that
// must stop resolving are dropped, and the negative cache is cleared (a new
// key may have been created). It never blocks on I/O.
func (ix *keyIndex) invalidate(c storage.Change) {
	if c.Kind != storage.ChangeKey && c.Kind != storage.ChangeUser && c.Kind != storage.ChangeAll {
		return
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.gen++
	switch c.Kind {
	case storage.ChangeAll:
		clear(ix.byKeyID)
		clear(ix.byHash)
	case storage.ChangeKey:
		ix.removeLocked(c.KeyID)
	case storage.ChangeUser:
		for id, e := range ix.byKeyID {
			if e.id.Key.UserID == c.UserID {
				ix.removeLocked(id)
			}
		}
	}
	for _, h := range c.OldHashes {
		delete(ix.byHash, string(h))
	}
	clear(ix.neg)
}
