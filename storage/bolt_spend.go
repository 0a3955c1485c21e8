package storage

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Spend budgets on bbolt (schema 6). A key's spend lives in bKeySpend and a
// user's in bUserSpend, small fixed-size records the group committer
// updates with each settlement (like the key usage records beside them);
// a user's budget, set by an admin, is JSON in bUserBudgets. A key's budget
// is part of its JSON. In memory the store keeps each key's and user's
// spend window with what open reservations hold in it (see spendState).
//
// Spend record: the window's start as Unix seconds, then the credits
// charged in it, 8 bytes each, big-endian.

var (
	bKeySpend    = []byte("key_spend")
	bUserSpend   = []byte("user_spend")
	bUserBudgets = []byte("user_budgets")
)

const spendRecordLen = 16

func appendSpend(b []byte, window, used int64) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(window))
	return binary.BigEndian.AppendUint64(b, uint64(used))
}

// readSpend reads the spend record of id; none is nothing spent in the
// never-ending window.
func readSpend(b *bbolt.Bucket, id []byte) (Spend, error) {
	v := b.Get(id)
	if v == nil {
		return Spend{}, nil
	}
	if len(v) != spendRecordLen {
		return Spend{}, fmt.Errorf("storage: corrupt spend record")
	}
	return Spend{Window: spendTime(int64(binary.BigEndian.Uint64(v))), Used: int64(binary.BigEndian.Uint64(v[8:]))}, nil
}

// spendTime is the window start of Unix seconds w: the zero time for the
// never-ending window.
func spendTime(w int64) time.Time {
	if w == (time.Time{}).Unix() {
		return time.Time{}
	}
	return time.Unix(w, 0).UTC()
}

// mergeSpend adds a charge of c to window w after what s counts: a later
// window starts from it, an earlier one (already ended) takes nothing.
func mergeSpend(s Spend, w, c int64) Spend {
	switch cur := s.Window.Unix(); {
	case w > cur:
		return Spend{Window: spendTime(w), Used: c}
	case w == cur:
		s.Used += c
	}
	return s
}

// addSpend accumulates one settlement's charge in a checkpoint's deltas.
func addSpend(m map[int64]Spend, id, window, charged int64) {
	s, ok := m[id]
	if !ok {
		m[id] = Spend{Window: spendTime(window), Used: charged}
		return
	}
	m[id] = mergeSpend(s, window, charged)
}

// applySpend merges a checkpoint's deltas into the stored records of the
// ids that exist.
func applySpend(b *bbolt.Bucket, deltas map[int64]Spend, exists func(id []byte) bool) error {
	for id, d := range deltas {
		k := id8(id)
		if !exists(k) {
			continue // deleted meanwhile
		}
		cur, err := readSpend(b, k)
		if err != nil {
			return err
		}
		var next Spend
		switch {
		case b.Get(k) == nil || d.Window.After(cur.Window):
			next = d
		case d.Window.Equal(cur.Window):
			next = Spend{Window: cur.Window, Used: cur.Used + d.Used}
		default:
			continue
		}
		if err := b.Put(k, appendSpend(make([]byte, 0, spendRecordLen), next.Window.Unix(), next.Used)); err != nil {
			return err
		}
	}
	return nil
}

// overlayKeySpend sets k.Spend from its stored record.
func overlayKeySpend(tx *bbolt.Tx, k *APIKey) error {
	sp, err := readSpend(tx.Bucket(bKeySpend), id8(k.ID))
	if err != nil {
		return fmt.Errorf("%w of key %d", err, k.ID)
	}
	k.Spend = sp
	return nil
}

// migrateBudgets (schema 5 → 6) creates the spend and budget buckets:
// existing keys and users have no limit and have spent nothing.
func migrateBudgets(tx *bbolt.Tx) error {
	for _, name := range [][]byte{bKeySpend, bUserSpend, bUserBudgets} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// SetUserBudget sets a user's budget (a nil Limit and the never period
// remove the record).
func (s *BoltStore) SetUserBudget(ctx context.Context, userID int64, b Budget) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	if _, err := ParseBudgetReset(string(b.Reset)); err != nil || (b.Limit != nil && *b.Limit < 0) {
		return fmt.Errorf("storage: invalid budget: %w", ErrInvalid)
	}
	err := s.update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bUsers).Get(id8(userID)) == nil {
			return fmt.Errorf("storage: unknown user %d: %w", userID, ErrNotFound)
		}
		if b.Limit == nil && (b.Reset == "" || b.Reset == ResetNever) {
			return tx.Bucket(bUserBudgets).Delete(id8(userID))
		}
		return putJSON(tx.Bucket(bUserBudgets), id8(userID), &b)
	})
	if err != nil {
		return err
	}
	s.notify(Change{Kind: ChangeLimits, UserID: userID})
	return nil
}

// UserBudget returns the user's budget and spend (the in-memory count,
// which includes settlements not yet committed).
func (s *BoltStore) UserBudget(ctx context.Context, userID int64) (Budget, Spend, error) {
	var b Budget
	err := s.view(func(tx *bbolt.Tx) error {
		if tx.Bucket(bUsers).Get(id8(userID)) == nil {
			return fmt.Errorf("storage: unknown user %d: %w", userID, ErrNotFound)
		}
		if err := getJSON(tx.Bucket(bUserBudgets), id8(userID), &b); err != nil && err != ErrNotFound {
			return err
		}
		return nil
	})
	if err != nil {
		return Budget{}, Spend{}, err
	}
	if b.Reset == "" {
		b.Reset = ResetNever
	}
	a, err := s.account(userID)
	if err != nil {
		return Budget{}, Spend{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return b, Spend{Window: spendTime(a.spend.window), Used: a.spend.used}, nil
}
