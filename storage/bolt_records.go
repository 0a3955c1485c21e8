package storage

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

func normEmail(email string) string { return strings.ToLower(strings.TrimSpace(email)) }

// Register creates a user, their primary key and the signup grant in one
// transaction.
func (s *BoltStore) Register(ctx context.Context, u *User, key *APIKey, credits int64) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	if u == nil || normEmail(u.Email) == "" || credits < 0 {
		return fmt.Errorf("storage: register needs a user with an email and non-negative credits: %w", ErrInvalid)
	}
	if key != nil && len(key.Hash) == 0 {
		return fmt.Errorf("storage: key without hash: %w", ErrInvalid)
	}
	now := s.now().UTC()
	nu := *u
	var nk APIKey
	if key != nil {
		nk = *key
	}
	var entryID uint64
	err := s.update(func(tx *bbolt.Tx) error {
		if err := s.putNewUser(tx, &nu, now); err != nil {
			return err
		}
		if key != nil {
			nk.UserID = nu.ID
			if err := putNewKey(tx, &nk, now); err != nil {
				return err
			}
		}
		var bal int64
		if credits > 0 {
			entryID = s.ledgerID.Add(1)
			e := LedgerEntry{ID: int64(entryID), UserID: nu.ID, Kind: LedgerGrant, Amount: credits, BalanceAfter: credits, Note: "signup", Time: now}
			if err := putLedger(tx, &e); err != nil {
				return err
			}
			bal = credits
		}
		return tx.Bucket(bAccounts).Put(id8(nu.ID), encodeBalance(bal))
	})
	if err != nil {
		return err
	}
	*u = nu
	changes := []Change{{Kind: ChangeUser, UserID: nu.ID}}
	if key != nil {
		*key = nk
		changes = append(changes, Change{Kind: ChangeKey, UserID: nu.ID, KeyID: nk.ID})
	}
	s.notify(changes...)
	return nil
}

// CreateUser stores a user without key or credits (an addition to Store for
// tools and tests).
func (s *BoltStore) CreateUser(ctx context.Context, u *User) error {
	return s.Register(ctx, u, nil, 0)
}

func (s *BoltStore) putNewUser(tx *bbolt.Tx, u *User, now time.Time) error {
	email := normEmail(u.Email)
	byEmail := tx.Bucket(bUsersByEmail)
	if byEmail.Get([]byte(email)) != nil {
		return fmt.Errorf("storage: email already registered: %w", ErrDuplicate)
	}
	users := tx.Bucket(bUsers)
	id, err := nextID(users)
	if err != nil {
		return err
	}
	u.ID = id
	u.CreatedAt, u.UpdatedAt = now, now
	if u.RegistrationDate.IsZero() {
		u.RegistrationDate = now
	}
	if err := putJSON(users, id8(id), u); err != nil {
		return err
	}
	return byEmail.Put([]byte(email), id8(id))
}

func (s *BoltStore) GetUser(ctx context.Context, id int64) (*User, error) {
	var u User
	err := s.view(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bUsers), id8(id), &u) })
	if err != nil {
		return nil, err
	}
	return &u, nil
}

func (s *BoltStore) UserByEmail(ctx context.Context, email string) (*User, error) {
	var u User
	err := s.view(func(tx *bbolt.Tx) error {
		id := tx.Bucket(bUsersByEmail).Get([]byte(normEmail(email)))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bUsers), id, &u)
	})
	if err != nil {
		return nil, err
	}
	return &u, nil
}

func (s *BoltStore) UpdateUser(ctx context.Context, id int64, fn func(*User) error) (*User, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	var u User
	err := s.update(func(tx *bbolt.Tx) error {
		users := tx.Bucket(bUsers)
		if err := getJSON(users, id8(id), &u); err != nil {
			return err
		}
		oldEmail := normEmail(u.Email)
		created := u.CreatedAt
		if err := fn(&u); err != nil {
			return err
		}
		u.ID, u.CreatedAt, u.UpdatedAt = id, created, s.now().UTC()
		newEmail := normEmail(u.Email)
		if newEmail == "" {
			return fmt.Errorf("storage: user email cannot be empty: %w", ErrInvalid)
		}
		if newEmail != oldEmail {
			byEmail := tx.Bucket(bUsersByEmail)
			if byEmail.Get([]byte(newEmail)) != nil {
				return fmt.Errorf("storage: email already registered: %w", ErrDuplicate)
			}
			if err := byEmail.Delete([]byte(oldEmail)); err != nil {
				return err
			}
			if err := byEmail.Put([]byte(newEmail), id8(id)); err != nil {
				return err
			}
		}
		return putJSON(users, id8(id), &u)
	})
	if err != nil {
		return nil, err
	}
	s.notify(Change{Kind: ChangeUser, UserID: id})
	return &u, nil
}

// DeleteUser removes the user, their keys, plan subscriptions and limits.
// Ledger, account balance, usage and audit history stay.
func (s *BoltStore) DeleteUser(ctx context.Context, id int64) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	var old [][]byte
	err := s.update(func(tx *bbolt.Tx) error {
		users := tx.Bucket(bUsers)
		var u User
		if err := getJSON(users, id8(id), &u); err != nil {
			return err
		}
		keys, err := userKeys(tx, id)
		if err != nil {
			return err
		}
		for _, k := range keys {
			old = append(old, allHashes(k)...)
			if err := deleteKeyTx(tx, k); err != nil {
				return err
			}
		}
		if err := deletePrefix(tx.Bucket(bUserPlans), id8(id)); err != nil {
			return err
		}
		if err := tx.Bucket(bUserLimits).Delete(id8(id)); err != nil {
			return err
		}
		if err := tx.Bucket(bUserBudgets).Delete(id8(id)); err != nil {
			return err
		}
		if err := deleteUserWebhooks(tx, id); err != nil {
			return err
		}
		if err := tx.Bucket(bUsersByEmail).Delete([]byte(normEmail(u.Email))); err != nil {
			return err
		}
		return users.Delete(id8(id))
	})
	if err != nil {
		return err
	}
	s.notify(Change{Kind: ChangeUser, UserID: id, OldHashes: old})
	return nil
}

func deletePrefix(b *bbolt.Bucket, prefix []byte) error {
	var ks [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		ks = append(ks, append([]byte(nil), k...))
	}
	for _, k := range ks {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (s *BoltStore) ListUsers(ctx context.Context, offset, limit int) ([]*User, int, error) {
	var out []*User
	total := 0
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bUsers).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			total++
			if total <= offset || (limit > 0 && len(out) >= limit) {
				continue
			}
			var u User
			if err := jsonUnmarshal(v, &u); err != nil {
				return err
			}
			out = append(out, &u)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

// Keys

// indexedHashes returns the hashes the key must be found by at now: its
// hash, and its previous hash while the rotation grace lasts.
func indexedHashes(k *APIKey, now time.Time) [][]byte {
	var hs [][]byte
	if len(k.Hash) > 0 {
		hs = append(hs, k.Hash)
	}
	if len(k.PrevHash) > 0 && now.Before(k.PrevHashExpiresAt) {
		hs = append(hs, k.PrevHash)
	}
	return hs
}

// allHashes returns every hash the key may be indexed under.
func allHashes(k *APIKey) [][]byte {
	var hs [][]byte
	if len(k.Hash) > 0 {
		hs = append(hs, k.Hash)
	}
	if len(k.PrevHash) > 0 {
		hs = append(hs, k.PrevHash)
	}
	return hs
}

func userKeys(tx *bbolt.Tx, userID int64) ([]*APIKey, error) {
	var out []*APIKey
	prefix := id8(userID)
	c := tx.Bucket(bKeysByUser).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		var ak APIKey
		if err := getKey(tx, k[8:16], &ak); err != nil {
			if err == ErrNotFound {
				continue
			}
			return nil, err
		}
		out = append(out, &ak)
	}
	return out, nil
}

func putNewKey(tx *bbolt.Tx, k *APIKey, now time.Time) error {
	if len(k.Hash) == 0 {
		return fmt.Errorf("storage: key without hash: %w", ErrInvalid)
	}
	if tx.Bucket(bUsers).Get(id8(k.UserID)) == nil {
		return fmt.Errorf("storage: key for unknown user %d: %w", k.UserID, ErrNotFound)
	}
	existing, err := userKeys(tx, k.UserID)
	if err != nil {
		return err
	}
	for _, e := range existing {
		if e.KeyName == k.KeyName {
			return fmt.Errorf("storage: key name %q already used: %w", k.KeyName, ErrDuplicate)
		}
	}
	byHash := tx.Bucket(bKeysByHash)
	for _, h := range indexedHashes(k, now) {
		if byHash.Get(h) != nil {
			return fmt.Errorf("storage: key hash already indexed: %w", ErrDuplicate)
		}
	}
	id, err := nextID(tx.Bucket(bKeys))
	if err != nil {
		return err
	}
	k.ID = id
	k.CreatedAt, k.UpdatedAt = now, now
	if err := putKey(tx, k); err != nil {
		return err
	}
	for _, h := range indexedHashes(k, now) {
		if err := byHash.Put(h, id8(id)); err != nil {
			return err
		}
	}
	return tx.Bucket(bKeysByUser).Put(pair(k.UserID, id), nil)
}

func deleteKeyTx(tx *bbolt.Tx, k *APIKey) error {
	byHash := tx.Bucket(bKeysByHash)
	for _, h := range allHashes(k) {
		if v := byHash.Get(h); v != nil && bytes.Equal(v, id8(k.ID)) {
			if err := byHash.Delete(h); err != nil {
				return err
			}
		}
	}
	if err := tx.Bucket(bKeysByUser).Delete(pair(k.UserID, k.ID)); err != nil {
		return err
	}
	if err := tx.Bucket(bKeyUsage).Delete(id8(k.ID)); err != nil {
		return err
	}
	if err := tx.Bucket(bKeySpend).Delete(id8(k.ID)); err != nil {
		return err
	}
	return tx.Bucket(bKeys).Delete(id8(k.ID))
}

func (s *BoltStore) CreateKey(ctx context.Context, k *APIKey) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	nk := *k
	err := s.update(func(tx *bbolt.Tx) error { return putNewKey(tx, &nk, s.now().UTC()) })
	if err != nil {
		return err
	}
	*k = nk
	s.notify(Change{Kind: ChangeKey, UserID: nk.UserID, KeyID: nk.ID})
	return nil
}

func (s *BoltStore) GetKey(ctx context.Context, id int64) (*APIKey, error) {
	var k APIKey
	err := s.view(func(tx *bbolt.Tx) error { return getKey(tx, id8(id), &k) })
	if err != nil {
		return nil, err
	}
	s.overlayKey(&k)
	return &k, nil
}

func (s *BoltStore) KeyByHash(ctx context.Context, hash []byte) (*APIKey, error) {
	if len(hash) == 0 {
		return nil, ErrNotFound
	}
	var k APIKey
	err := s.view(func(tx *bbolt.Tx) error {
		id := tx.Bucket(bKeysByHash).Get(hash)
		if id == nil {
			return ErrNotFound
		}
		return getKey(tx, id, &k)
	})
	if err != nil {
		return nil, err
	}
	switch {
	case bytes.Equal(k.Hash, hash):
	case bytes.Equal(k.PrevHash, hash) && s.now().Before(k.PrevHashExpiresAt):
	default:
		return nil, ErrNotFound
	}
	s.overlayKey(&k)
	return &k, nil
}

func (s *BoltStore) ListKeys(ctx context.Context, userID int64) ([]*APIKey, error) {
	var out []*APIKey
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		out, err = userKeys(tx, userID)
		return err
	})
	if err != nil {
		return nil, err
	}
	// newest first
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	for _, k := range out {
		s.overlayKey(k)
	}
	return out, nil
}

// decodeBucket decodes every JSON value of the named bucket, in key order.
// On a decode error it returns the records decoded so far with the error.
func decodeBucket[T any](tx *bbolt.Tx, bucket []byte) ([]*T, error) {
	var out []*T
	err := tx.Bucket(bucket).ForEach(func(k, v []byte) error {
		rec := new(T)
		if err := jsonUnmarshal(v, rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}

func (s *BoltStore) AllKeys(ctx context.Context) ([]*APIKey, error) {
	var out []*APIKey
	err := s.view(func(tx *bbolt.Tx) (err error) {
		if out, err = decodeBucket[APIKey](tx, bKeys); err != nil {
			return err
		}
		for _, k := range out {
			if err := overlayKeyUsage(tx, k); err != nil {
				return err
			}
			if err := overlayKeySpend(tx, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range out {
		s.overlayKey(k)
	}
	return out, nil
}

func (s *BoltStore) UpdateKey(ctx context.Context, id int64, fn func(*APIKey) error) (*APIKey, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	var k APIKey
	var gone [][]byte
	var usedDelta int64
	err := s.update(func(tx *bbolt.Tx) error {
		if err := getKey(tx, id8(id), &k); err != nil {
			return err
		}
		old := k
		old.Hash = append([]byte(nil), k.Hash...)
		old.PrevHash = append([]byte(nil), k.PrevHash...)
		if err := fn(&k); err != nil {
			return err
		}
		now := s.now().UTC()
		k.ID, k.UserID, k.CreatedAt, k.UpdatedAt = id, old.UserID, old.CreatedAt, now
		if len(k.Hash) == 0 {
			return fmt.Errorf("storage: key without hash: %w", ErrInvalid)
		}
		if k.KeyName != old.KeyName {
			others, err := userKeys(tx, k.UserID)
			if err != nil {
				return err
			}
			for _, e := range others {
				if e.ID != id && e.KeyName == k.KeyName {
					return fmt.Errorf("storage: key name %q already used: %w", k.KeyName, ErrDuplicate)
				}
			}
		}
		byHash := tx.Bucket(bKeysByHash)
		newSet := indexedHashes(&k, now)
		for _, h := range newSet {
			if v := byHash.Get(h); v != nil && !bytes.Equal(v, id8(id)) {
				return fmt.Errorf("storage: key hash already indexed: %w", ErrDuplicate)
			}
		}
		for _, h := range allHashes(&old) {
			if containsHash(newSet, h) {
				continue
			}
			if v := byHash.Get(h); v != nil && bytes.Equal(v, id8(id)) {
				if err := byHash.Delete(h); err != nil {
					return err
				}
			}
			gone = append(gone, h)
		}
		for _, h := range newSet {
			if err := byHash.Put(h, id8(id)); err != nil {
				return err
			}
		}
		usedDelta = k.RequestsUsed - old.RequestsUsed
		return putKey(tx, &k)
	})
	if err != nil {
		return nil, err
	}
	if usedDelta != 0 {
		if kc, ok := s.keyState.Load(id); ok {
			kc := kc.(*keyCounter)
			kc.mu.Lock()
			kc.used += usedDelta
			kc.mu.Unlock()
		}
	}
	s.overlayKey(&k)
	s.notify(Change{Kind: ChangeKey, UserID: k.UserID, KeyID: id, OldHashes: gone})
	return &k, nil
}

func containsHash(set [][]byte, h []byte) bool {
	for _, x := range set {
		if bytes.Equal(x, h) {
			return true
		}
	}
	return false
}

func (s *BoltStore) DeleteKey(ctx context.Context, id int64) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	var k APIKey
	err := s.update(func(tx *bbolt.Tx) error {
		if err := getKey(tx, id8(id), &k); err != nil {
			return err
		}
		return deleteKeyTx(tx, &k)
	})
	if err != nil {
		return err
	}
	s.notify(Change{Kind: ChangeKey, UserID: k.UserID, KeyID: id, OldHashes: allHashes(&k)})
	return nil
}

// Plans

func (s *BoltStore) CreatePlan(ctx context.Context, p *Plan) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	if p == nil || strings.TrimSpace(p.Name) == "" {
		return fmt.Errorf("storage: plan needs a name: %w", ErrInvalid)
	}
	np := *p
	err := s.update(func(tx *bbolt.Tx) error {
		plans := tx.Bucket(bPlans)
		id, err := nextID(plans)
		if err != nil {
			return err
		}
		now := s.now().UTC()
		np.ID, np.CreatedAt, np.UpdatedAt = id, now, now
		return putJSON(plans, id8(id), &np)
	})
	if err != nil {
		return err
	}
	*p = np
	s.notify(Change{Kind: ChangePlan, PlanID: np.ID})
	return nil
}

func (s *BoltStore) GetPlan(ctx context.Context, id int64) (*Plan, error) {
	var p Plan
	err := s.view(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bPlans), id8(id), &p) })
	if err != nil {
		return nil, err
	}
	return &p, nil
}

func (s *BoltStore) ListPlans(ctx context.Context) ([]*Plan, error) {
	var out []*Plan
	err := s.view(func(tx *bbolt.Tx) (err error) {
		out, err = decodeBucket[Plan](tx, bPlans)
		return err
	})
	return out, err
}

func (s *BoltStore) UpdatePlan(ctx context.Context, id int64, fn func(*Plan) error) (*Plan, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	var p Plan
	err := s.update(func(tx *bbolt.Tx) error {
		plans := tx.Bucket(bPlans)
		if err := getJSON(plans, id8(id), &p); err != nil {
			return err
		}
		created := p.CreatedAt
		if err := fn(&p); err != nil {
			return err
		}
		if strings.TrimSpace(p.Name) == "" {
			return fmt.Errorf("storage: plan needs a name: %w", ErrInvalid)
		}
		p.ID, p.CreatedAt, p.UpdatedAt = id, created, s.now().UTC()
		return putJSON(plans, id8(id), &p)
	})
	if err != nil {
		return nil, err
	}
	s.notify(Change{Kind: ChangePlan, PlanID: id})
	return &p, nil
}

func (s *BoltStore) AssignPlan(ctx context.Context, userID, planID int64, start, end time.Time) (*UserPlan, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	if !end.After(start) {
		return nil, fmt.Errorf("storage: plan end must be after its start: %w", ErrInvalid)
	}
	up := UserPlan{UserID: userID, PlanID: planID, StartDate: start.UTC(), EndDate: end.UTC(), IsActive: true}
	err := s.update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bUsers).Get(id8(userID)) == nil {
			return fmt.Errorf("storage: unknown user %d: %w", userID, ErrNotFound)
		}
		if tx.Bucket(bPlans).Get(id8(planID)) == nil {
			return fmt.Errorf("storage: unknown plan %d: %w", planID, ErrNotFound)
		}
		b := tx.Bucket(bUserPlans)
		prefix := id8(userID)
		type kv struct {
			k []byte
			v UserPlan
		}
		var deact []kv
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var o UserPlan
			if err := jsonUnmarshal(v, &o); err != nil {
				return err
			}
			if o.IsActive {
				o.IsActive = false
				deact = append(deact, kv{append([]byte(nil), k...), o})
			}
		}
		for _, d := range deact {
			if err := putJSON(b, d.k, &d.v); err != nil {
				return err
			}
		}
		id, err := nextID(b)
		if err != nil {
			return err
		}
		up.ID = id
		return putJSON(b, pair(userID, id), &up)
	})
	if err != nil {
		return nil, err
	}
	s.notify(Change{Kind: ChangeLimits, UserID: userID, PlanID: planID})
	return &up, nil
}

func (s *BoltStore) ActiveUserPlan(ctx context.Context, userID int64) (*UserPlan, error) {
	var found *UserPlan
	err := s.view(func(tx *bbolt.Tx) error {
		prefix := id8(userID)
		c := tx.Bucket(bUserPlans).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var o UserPlan
			if err := jsonUnmarshal(v, &o); err != nil {
				return err
			}
			if o.IsActive {
				found = &o
			}
		}
		if found == nil {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// UserPlans returns every subscription row of a user, oldest first (an
// addition to Store).
func (s *BoltStore) UserPlans(ctx context.Context, userID int64) ([]UserPlan, error) {
	var out []UserPlan
	err := s.view(func(tx *bbolt.Tx) error {
		prefix := id8(userID)
		c := tx.Bucket(bUserPlans).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var o UserPlan
			if err := jsonUnmarshal(v, &o); err != nil {
				return err
			}
			out = append(out, o)
		}
		return nil
	})
	return out, err
}

// Limits

func (s *BoltStore) SetUserLimits(ctx context.Context, userID int64, l RateLimits) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	err := s.update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bUsers).Get(id8(userID)) == nil {
			return fmt.Errorf("storage: unknown user %d: %w", userID, ErrNotFound)
		}
		return putJSON(tx.Bucket(bUserLimits), id8(userID), &l)
	})
	if err != nil {
		return err
	}
	s.notify(Change{Kind: ChangeLimits, UserID: userID})
	return nil
}

func (s *BoltStore) UserLimits(ctx context.Context, userID int64) (RateLimits, error) {
	var l RateLimits
	err := s.view(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bUserLimits), id8(userID), &l) })
	return l, err
}
