package storage

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
)

// account is a user's credit position in memory. credits equals the sum of
// the user's ledger entries, including entries still queued in the
// committer; reserved is held by open reservations (memory only).
type account struct {
	mu       sync.Mutex
	credits  int64
	reserved int64
	holds    int64      // open reservations
	spend    spendState // the user's spend budget window
	// pending counts this user's ops queued but not yet committed; it is
	// incremented under mu and decremented by the committer.
	pending atomic.Int64
}

// keyCounter tracks a key's requests: used (committed or queued) and in
// flight (reservations holding a request slot).
type keyCounter struct {
	mu       sync.Mutex
	used     int64
	inflight int64
	spend    spendState // the key's spend budget window
}

// spendState is a budget's spend in memory: the start of its window (Unix
// seconds), what was charged in it (committed or queued) and what open
// reservations made in it hold.
type spendState struct {
	window   int64
	used     int64
	reserved int64
}

// roll makes the window starting at start current when it began after the
// one counted (a request whose clock is behind keeps the later window).
func (s *spendState) roll(start int64) {
	if start > s.window {
		*s = spendState{window: start}
	}
}

// heldBudget is a reservation's budget window: where its hold counts and
// its charge goes, and the limit it was admitted under (negative: none).
type heldBudget struct {
	window int64
	limit  int64
}

// heldWindow is the heldBudget of a reservation's budget window.
func heldWindow(w BudgetWindow) heldBudget {
	h := heldBudget{window: w.Start.Unix(), limit: -1}
	if w.Limited {
		h.limit = w.Limit
	}
	return h
}

func (h heldBudget) limited() bool { return h.limit >= 0 }

// room is what the window lets a charge take beyond what st counts
// (unlimited: maxRoom).
func (h heldBudget) room(st *spendState) int64 {
	return budgetRoom(BudgetWindow{Limit: h.limit, Limited: h.limited()}, st.used, st.reserved)
}

// release ends hold's part of st and, with charge >= 0, charges it there:
// the limit caps the charge, which it returns with what it did. A window
// that ended since the hold was made no longer counts in memory: its charge
// is capped by the hold itself (what that window let it take).
func (h heldBudget) release(st *spendState, amount, charge int64) (int64, SpendChange) {
	if h.window != st.window {
		if h.limited() {
			charge = min(charge, amount)
		}
		return charge, SpendChange{}
	}
	st.reserved -= amount
	if charge < 0 {
		return 0, SpendChange{}
	}
	charge = min(charge, max(h.room(st), 0))
	ch := SpendChange{Valid: true, Window: spendTime(h.window), Before: st.used, Limit: max(h.limit, 0), Limited: h.limited()}
	st.used += charge
	ch.After = st.used
	return charge, ch
}

// openRes is the store's own copy of an open reservation.
type openRes struct {
	userID int64
	keyID  int64
	amount int64
	slot   bool
	acct   *account
	kc     *keyCounter
	kb, ub heldBudget
}

// account returns the in-memory account of a user, loading it from the
// accounts bucket on first use. Unknown users give ErrNotFound.
func (s *BoltStore) account(userID int64) (*account, error) {
	if a, ok := s.accounts.Load(userID); ok {
		return a.(*account), nil
	}
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if a, ok := s.accounts.Load(userID); ok {
		return a.(*account), nil
	}
	var bal int64
	var sp Spend
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		if sp, err = readSpend(tx.Bucket(bUserSpend), id8(userID)); err != nil {
			return err
		}
		v := tx.Bucket(bAccounts).Get(id8(userID))
		if v == nil {
			if tx.Bucket(bUsers).Get(id8(userID)) == nil {
				return fmt.Errorf("storage: unknown user %d: %w", userID, ErrNotFound)
			}
			return nil
		}
		bal, err = decodeBalance(v)
		return err
	})
	if err != nil {
		return nil, err
	}
	a := &account{credits: bal, spend: spendState{window: sp.Window.Unix(), used: sp.Used}}
	s.accounts.Store(userID, a)
	return a, nil
}

// keyCounter returns the in-memory request counter of a key, loading it
// from the key record on first use. Unknown keys give ErrNotFound.
func (s *BoltStore) keyCounter(keyID int64) (*keyCounter, error) {
	if kc, ok := s.keyState.Load(keyID); ok {
		return kc.(*keyCounter), nil
	}
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if kc, ok := s.keyState.Load(keyID); ok {
		return kc.(*keyCounter), nil
	}
	var k APIKey
	err := s.view(func(tx *bbolt.Tx) error { return getKey(tx, id8(keyID), &k) })
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("storage: unknown key %d: %w", keyID, ErrNotFound)
		}
		return nil, err
	}
	kc := &keyCounter{used: k.RequestsUsed, spend: spendState{window: k.Spend.Window.Unix(), used: k.Spend.Used}}
	s.keyState.Store(keyID, kc)
	return kc, nil
}

// overlayKey replaces a key record's requests_used with the in-memory count,
// which includes settlements not yet committed.
func (s *BoltStore) overlayKey(k *APIKey) {
	if v, ok := s.keyState.Load(k.ID); ok {
		kc := v.(*keyCounter)
		kc.mu.Lock()
		k.RequestsUsed = kc.used
		k.Spend = Spend{Window: spendTime(kc.spend.window), Used: kc.spend.used}
		kc.mu.Unlock()
	}
}

// Reserve holds credit (and a request slot) in memory.
func (s *BoltStore) Reserve(ctx context.Context, req ReserveRequest) (*Reservation, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if req.Credits < 0 || req.MinCredits < 0 || req.Waiting < 0 || req.MaxRequests < 0 {
		return nil, fmt.Errorf("storage: negative reservation: %w", ErrInvalid)
	}
	a, err := s.account(req.UserID)
	if err != nil {
		return nil, err
	}
	var kc *keyCounter
	if req.KeyID != 0 {
		// A key deleted a moment ago (still in a caller's index) is not
		// an error: the request is billed to the user without key counters.
		if kc, err = s.keyCounter(req.KeyID); err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
	}
	if (req.KeyBudget.Limited && req.KeyBudget.Limit < 0) || (req.UserBudget.Limited && req.UserBudget.Limit < 0) {
		return nil, fmt.Errorf("storage: negative spend limit: %w", ErrInvalid)
	}
	// The key's counter, then the account: one atomic step over the
	// request slot, both budgets and the balance.
	if kc != nil {
		kc.mu.Lock()
		defer kc.mu.Unlock()
	}
	slot := req.MaxRequests > 0 && kc != nil
	if slot && kc.used+kc.inflight >= req.MaxRequests {
		return nil, ErrRequestLimit
	}
	kb, ub := heldWindow(req.KeyBudget), heldWindow(req.UserBudget)
	a.mu.Lock()
	keyRoom := maxRoom
	if kc != nil {
		kc.spend.roll(kb.window)
		kb.window = kc.spend.window
		keyRoom = kb.room(&kc.spend)
	}
	a.spend.roll(ub.window)
	ub.window = a.spend.window
	userRoom := ub.room(&a.spend)
	balance := a.credits - a.reserved
	amount := ReserveAmount(min(balance, keyRoom, userRoom), a.holds, req.Waiting, req.MinCredits, req.Credits)
	var refusal error
	switch {
	case keyRoom < amount:
		refusal = &BudgetExceeded{Key: true, Limit: kb.limit, Used: kc.spend.used, Reserved: kc.spend.reserved, Needed: amount}
	case userRoom < amount:
		refusal = &BudgetExceeded{Limit: ub.limit, Used: a.spend.used, Reserved: a.spend.reserved, Needed: amount}
	case balance < amount:
		refusal = &CreditShortage{Needed: amount, Credits: a.credits, Reserved: a.reserved, Holds: a.holds}
	}
	if refusal != nil {
		a.mu.Unlock()
		return nil, refusal
	}
	if slot {
		kc.inflight++
	}
	if kc != nil {
		kc.spend.reserved += amount
	}
	a.spend.reserved += amount
	a.reserved += amount
	a.holds++
	available := a.credits - a.reserved
	a.mu.Unlock()
	id := s.resSeq.Add(1)
	// One allocation for the caller's handle and the store's copy.
	box := &reservationBox{
		pub: Reservation{ID: id, UserID: req.UserID, KeyID: req.KeyID, Amount: amount, Available: available},
		r:   openRes{userID: req.UserID, keyID: req.KeyID, amount: amount, slot: slot, acct: a, kc: kc, kb: kb, ub: ub},
	}
	sh := &s.open[id%resShards]
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = make(map[uint64]*openRes)
	}
	sh.m[id] = &box.r
	sh.mu.Unlock()
	s.openN.Add(1)
	return &box.pub, nil
}

// resShards is the number of shards of the open reservation map.
const resShards = 16

// resShard is one shard of the open reservations, padded to its own cache
// line.
type resShard struct {
	mu sync.Mutex
	m  map[uint64]*openRes
	_  [48]byte
}

type reservationBox struct {
	pub Reservation
	r   openRes
}

// OpenReservations counts reservations not yet settled or refunded.
func (s *BoltStore) OpenReservations() int64 { return s.openN.Load() }

func (s *BoltStore) take(res *Reservation) (*openRes, error) {
	if res == nil {
		return nil, fmt.Errorf("storage: nil reservation: %w", ErrInvalid)
	}
	sh := &s.open[res.ID%resShards]
	sh.mu.Lock()
	r, ok := sh.m[res.ID]
	if ok {
		delete(sh.m, res.ID)
	}
	sh.mu.Unlock()
	if !ok {
		return nil, ErrAlreadySettled
	}
	s.openN.Add(-1)
	return r, nil
}

// Settle charges min(cost, what the user has beyond other reservations),
// exactly once, and queues the durable write.
func (s *BoltStore) Settle(ctx context.Context, res *Reservation, cost int64, rec UsageRecord) (charged, balanceAfter int64, err error) {
	if s.closed.Load() {
		return 0, 0, ErrClosed
	}
	if cost < 0 {
		return 0, 0, fmt.Errorf("storage: negative cost: %w", ErrInvalid)
	}
	if !rec.Time.IsZero() && !timeEncodable(rec.Time.UTC()) {
		return 0, 0, fmt.Errorf("storage: usage record time %v out of range: %w", rec.Time, ErrInvalid)
	}
	r, err := s.take(res)
	if err != nil {
		return 0, 0, err
	}
	now := s.now().UTC()
	if rec.Time.IsZero() {
		rec.Time = now
	} else {
		rec.Time = rec.Time.UTC()
	}
	rec.UserID, rec.KeyID = r.userID, r.keyID
	// The key's counter, then the account, as Reserve takes them.
	kc := r.kc
	var keySpend spendState
	if kc != nil {
		kc.mu.Lock()
		defer kc.mu.Unlock()
		if r.slot {
			kc.inflight--
		}
		kc.used++
		keySpend = kc.spend
	}
	a := r.acct
	a.mu.Lock()
	userSpend := a.spend
	a.reserved -= r.amount
	a.holds--
	charged = max(min(cost, a.credits-a.reserved), 0)
	var spent SettleSpend
	if kc != nil {
		charged, spent.Key = r.kb.release(&kc.spend, r.amount, charged)
	}
	charged, spent.User = r.ub.release(&a.spend, r.amount, charged)
	if kc != nil && spent.Key.Valid {
		// The user's cap may have lowered the charge after the key's.
		kc.spend.used = spent.Key.Before + charged
		spent.Key.After = kc.spend.used
	}
	a.credits -= charged
	balanceAfter = a.credits
	rec.Credits = charged
	// The committer encodes the entry and record; the op is queued under
	// a.mu because the entry carries this user's running balance.
	op := pendingOp{kind: opSettle, userID: r.userID, keyID: r.keyID, amount: -charged, balance: balanceAfter, time: now, day: rec.Time, rec: rec, acct: a,
		keyWindow: r.kb.window, userWindow: r.ub.window, keySpend: kc != nil}
	if charged > 0 {
		op.entryID = s.ledgerID.Add(1)
		op.entryKind = LedgerCharge
	}
	a.pending.Add(1)
	if err = s.c.enqueue(&op); err != nil { // under a.mu: the queue keeps this user's order
		// Not queued (store closed or failed): undo the charge.
		a.pending.Add(-1)
		a.credits += charged
		a.spend = userSpend
		if kc != nil {
			kc.used--
			kc.spend = keySpend
		}
	}
	a.mu.Unlock()
	if err != nil {
		return 0, 0, err
	}
	res.Spent = &spent
	return charged, balanceAfter, nil
}

// Refund releases a reservation without charging.
func (s *BoltStore) Refund(ctx context.Context, res *Reservation) error {
	if s.closed.Load() {
		return ErrClosed
	}
	r, err := s.take(res)
	if err != nil {
		return err
	}
	if r.kc != nil {
		r.kc.mu.Lock()
		defer r.kc.mu.Unlock()
		if r.slot {
			r.kc.inflight--
		}
		r.kb.release(&r.kc.spend, r.amount, -1)
	}
	r.acct.mu.Lock()
	r.acct.reserved -= r.amount
	r.acct.holds--
	r.ub.release(&r.acct.spend, r.amount, -1)
	r.acct.mu.Unlock()
	return nil
}

// AddCredits appends a ledger entry durably (through the committer, which
// keeps it ordered with this user's settlements).
func (s *BoltStore) AddCredits(ctx context.Context, userID, amount int64, kind LedgerKind, idempotencyKey, note string) (int64, bool, error) {
	if s.closed.Load() {
		return 0, false, ErrClosed
	}
	switch {
	case kind != LedgerGrant && kind != LedgerTopUp && kind != LedgerAdjust:
		return 0, false, fmt.Errorf("storage: ledger kind %q cannot be added directly: %w", kind, ErrInvalid)
	case amount == 0:
		return 0, false, fmt.Errorf("storage: zero credit amount: %w", ErrInvalid)
	case amount < 0 && kind != LedgerAdjust:
		return 0, false, fmt.Errorf("storage: negative amount needs kind %s: %w", LedgerAdjust, ErrInvalid)
	}
	s.creditMu.Lock()
	defer s.creditMu.Unlock()
	if idempotencyKey != "" {
		var prev idemRecord
		err := s.view(func(tx *bbolt.Tx) error {
			return getJSON(tx.Bucket(bIdempotency), idemKey(userID, idempotencyKey), &prev)
		})
		if err == nil {
			return prev.Balance, true, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return 0, false, err
		}
	}
	a, err := s.account(userID)
	if err != nil {
		return 0, false, err
	}
	a.mu.Lock()
	if a.credits+amount < 0 {
		a.mu.Unlock()
		return 0, false, ErrInsufficientCredits
	}
	a.credits += amount
	bal := a.credits
	op := pendingOp{kind: opCredit, userID: userID, amount: amount, balance: bal,
		idem: idempotencyKey, time: s.now().UTC(), entryID: s.ledgerID.Add(1), done: make(chan error, 1), acct: a,
		entryKind: kind, note: note}
	if err == nil {
		a.pending.Add(1)
		if err = s.c.enqueue(&op); err != nil {
			a.pending.Add(-1)
		}
	}
	if err != nil {
		a.credits -= amount
	}
	a.mu.Unlock()
	if err != nil {
		return 0, false, err
	}
	// Wait without honouring ctx: the entry is queued and will be
	// committed; returning early would misreport it as not done.
	if err := <-op.done; err != nil {
		return 0, false, err
	}
	if amount > 0 {
		s.notify(Change{Kind: ChangeCredits, UserID: userID})
	}
	return bal, false, nil
}

type idemRecord struct {
	UserID  int64     `json:"user_id"`
	Amount  int64     `json:"amount"`
	Balance int64     `json:"balance"`
	EntryID int64     `json:"entry_id"`
	Time    time.Time `json:"time"`
}

func idemKey(userID int64, key string) []byte {
	b := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint64(b, uint64(userID))
	return append(b, key...)
}

// Balance returns the user's credits and reserved amount.
func (s *BoltStore) Balance(ctx context.Context, userID int64) (Balance, error) {
	if s.closed.Load() {
		return Balance{}, ErrClosed
	}
	a, err := s.account(userID)
	if err != nil {
		return Balance{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return Balance{Credits: a.credits, Reserved: a.reserved}, nil
}

// Ledger returns the user's entries, oldest first, after flushing queued
// settlements so the entries add up to Balance.
func (s *BoltStore) Ledger(ctx context.Context, userID int64) ([]LedgerEntry, error) {
	if err := s.Flush(ctx); err != nil {
		return nil, err
	}
	var out []LedgerEntry
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bLedger).Bucket(id8(userID))
		if b == nil {
			if tx.Bucket(bUsers).Get(id8(userID)) == nil && tx.Bucket(bAccounts).Get(id8(userID)) == nil {
				return ErrNotFound
			}
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			e, err := decodeLedger(v, int64(binary.BigEndian.Uint64(k)), userID)
			if err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

// VerifyLedger flushes, then checks for every user that the stored balance
// snapshot equals the sum of their ledger entries, that each entry's
// balance_after is the running sum and never negative, and that the
// in-memory balance agrees with the stored one. It is safe to run while
// the store serves traffic (accounts with writes in flight are compared on
// disk only).
func (s *BoltStore) VerifyLedger(ctx context.Context) error {
	if err := s.Flush(ctx); err != nil {
		return err
	}
	var errs []error
	err := s.view(func(tx *bbolt.Tx) error {
		sums := map[int64]int64{}
		lb := tx.Bucket(bLedger)
		err := lb.ForEachBucket(func(uk []byte) error {
			uid := int64(binary.BigEndian.Uint64(uk))
			var sum int64
			err := lb.Bucket(uk).ForEach(func(k, v []byte) error {
				e, err := decodeLedger(v, int64(binary.BigEndian.Uint64(k)), uid)
				if err != nil {
					return err
				}
				sum += e.Amount
				if e.BalanceAfter != sum {
					errs = append(errs, fmt.Errorf("user %d entry %d: balance_after %d, running sum %d", uid, e.ID, e.BalanceAfter, sum))
				}
				if sum < 0 {
					errs = append(errs, fmt.Errorf("user %d entry %d: balance below zero (%d)", uid, e.ID, sum))
				}
				return nil
			})
			sums[uid] = sum
			return err
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bAccounts).ForEach(func(k, v []byte) error {
			uid := int64(binary.BigEndian.Uint64(k))
			bal, err := decodeBalance(v)
			if err != nil {
				return err
			}
			if bal != sums[uid] {
				errs = append(errs, fmt.Errorf("user %d: stored balance %d, ledger sum %d", uid, bal, sums[uid]))
			}
			delete(sums, uid)
			return nil
		})
		if err != nil {
			return err
		}
		for uid, sum := range sums {
			if sum != 0 {
				errs = append(errs, fmt.Errorf("user %d: ledger sum %d without a stored balance", uid, sum))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// In-memory balances: compared only for accounts with nothing queued,
	// holding the account lock so none can be queued meanwhile; the stored
	// snapshot is read after that, so it includes every committed op.
	s.accounts.Range(func(k, v any) bool {
		uid := k.(int64)
		a := v.(*account)
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.pending.Load() != 0 {
			return true
		}
		var disk int64
		if err := s.view(func(tx *bbolt.Tx) error {
			if raw := tx.Bucket(bAccounts).Get(id8(uid)); raw != nil {
				disk, _ = decodeBalance(raw)
			}
			return nil
		}); err != nil {
			errs = append(errs, err)
			return false
		}
		if a.credits != disk {
			errs = append(errs, fmt.Errorf("user %d: in-memory balance %d, stored %d", uid, a.credits, disk))
		}
		return true
	})
	if len(errs) > 0 {
		return fmt.Errorf("storage: ledger verification failed: %w", errors.Join(errs...))
	}
	return nil
}

// Flush blocks until every settlement accepted so far is durable.
func (s *BoltStore) Flush(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.c.flush(ctx)
}

func encodeBalance(v int64) []byte { return u64(uint64(v)) }

func decodeBalance(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("storage: corrupt balance record")
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

func putLedger(tx *bbolt.Tx, e *LedgerEntry) error {
	b, err := tx.Bucket(bLedger).CreateBucketIfNotExists(id8(e.UserID))
	if err != nil {
		return err
	}
	b.FillPercent = 0.95
	if err := b.Put(id8(e.ID), appendLedgerBinary(nil, e)); err != nil {
		return err
	}
	return bumpSequence(tx.Bucket(bLedger), uint64(e.ID))
}

func bumpSequence(b *bbolt.Bucket, v uint64) error {
	if b.Sequence() < v {
		return b.SetSequence(v)
	}
	return nil
}

func jsonUnmarshal(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("storage: corrupt record: %w", err)
	}
	return nil
}
