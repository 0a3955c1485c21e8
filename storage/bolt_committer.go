package storage

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

type opKind uint8

const (
	opSettle opKind = iota + 1 // charge entry (if any), usage record, key counters
	opCredit                   // credit entry and idempotency record
	opMarker                   // nothing: Flush waits for it
)

// pendingOp is one queued durable write. Its in-memory effect was already
// applied; entryID and balance were fixed under the account lock, so the
// queue holds each user's writes in ledger order.
type pendingOp struct {
	kind    opKind
	userID  int64
	keyID   int64
	amount  int64 // signed ledger amount
	balance int64 // balance after this op
	entryID uint64
	// entryKind, when set, says the op writes a ledger entry of that kind
	// (built from the op's fields; a charge's request id is rec's). The
	// committer encodes it and rec (settlements), off the request path.
	entryKind LedgerKind
	note      string
	rec       UsageRecord
	day       time.Time
	idem      string
	time      time.Time
	acct      *account   // its pending count drops once committed
	done      chan error // nil for settlements
}

// committer writes queued ops in group commits: one bbolt transaction (and
// fsync) for everything queued within CommitWindow, or MaxBatch ops.
type committer struct {
	s        *BoltStore
	window   time.Duration
	maxBatch int

	mu       sync.Mutex
	queue    []pendingOp
	spare    []pendingOp
	arena    []byte      // encoded values of the batch being committed (committer goroutine only)
	st       commitState // scratch maps of the commit (committer goroutine only)
	urgent   bool
	stopping bool
	err      error // sticky: a failed commit stops all later writes

	wake    chan struct{}
	stopped chan struct{}
}

func newCommitter(s *BoltStore) *committer {
	c := &committer{
		s:        s,
		window:   s.opts.CommitWindow,
		maxBatch: s.opts.MaxBatch,
		wake:     make(chan struct{}, 1),
		stopped:  make(chan struct{}),
	}
	go c.run()
	return c
}

func (c *committer) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *committer) enqueue(op *pendingOp) error {
	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.queue = append(c.queue, *op)
	n := len(c.queue)
	if op.done != nil {
		c.urgent = true
	}
	urgent := c.urgent
	c.mu.Unlock()
	if n == 1 || urgent || n >= c.maxBatch {
		c.signal()
	}
	return nil
}

func (c *committer) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// flush waits until every op queued before the call is committed.
func (c *committer) flush(ctx context.Context) error {
	op := pendingOp{kind: opMarker, done: make(chan error, 1)}
	if err := c.enqueue(&op); err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	select {
	case err := <-op.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop commits what is queued and ends the committer.
func (c *committer) stop() error {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	c.signal()
	<-c.stopped
	return c.failure()
}

func (c *committer) run() {
	defer close(c.stopped)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		<-c.wake
		c.mu.Lock()
		if len(c.queue) > 0 && !c.urgent && !c.stopping && len(c.queue) < c.maxBatch {
			c.mu.Unlock()
			timer.Reset(c.window)
			select {
			case <-timer.C:
			case <-c.wake: // urgent, full or stopping
				timer.Stop()
			}
			c.mu.Lock()
		}
		var batch []pendingOp
		if len(c.queue) > 0 {
			// Swap in the spare array; the two never alias, since spare is
			// only ever the array of a batch that was fully processed.
			batch, c.queue, c.spare = c.queue, c.spare[:0], nil
		}
		c.urgent = false
		stopping := c.stopping
		c.mu.Unlock()

		if len(batch) > 0 {
			err := c.commit(batch)
			if err != nil {
				err = fmt.Errorf("storage: committing %d writes to %s: %w", len(batch), c.s.path, err)
				c.mu.Lock()
				if c.err == nil {
					c.err = err
				}
				c.mu.Unlock()
			}
			finish(batch, err)
			clear(batch)
			c.mu.Lock()
			c.spare = batch[:0]
			c.mu.Unlock()
		}
		if stopping {
			c.mu.Lock()
			rest := c.queue
			c.queue = nil
			c.mu.Unlock()
			if len(rest) > 0 { // enqueued between our swap and stopping
				finish(rest, c.commit(rest))
			}
			return
		}
		c.mu.Lock()
		more := len(c.queue) > 0
		c.mu.Unlock()
		if more {
			c.signal()
		}
	}
}

// finish reports a batch's outcome to its waiters.
func finish(batch []pendingOp, err error) {
	for i := range batch {
		op := &batch[i]
		if op.acct != nil {
			op.acct.pending.Add(-1)
		}
		if op.done != nil {
			op.done <- err
		}
	}
}

type keyDelta struct {
	count int64
	last  time.Time
}

// commitState is the scratch state of one commit, kept by the committer
// goroutine and cleared (not freed) between batches.
type commitState struct {
	userLedgers map[int64]*bbolt.Bucket
	days        map[int64]*bbolt.Bucket
	balances    map[int64]int64
	keys        map[int64]keyDelta
	totals      map[totalsID]totalsDelta
}

func (st *commitState) reset() {
	if st.userLedgers == nil {
		st.userLedgers = map[int64]*bbolt.Bucket{}
		st.days = map[int64]*bbolt.Bucket{}
		st.balances = map[int64]int64{}
		st.keys = map[int64]keyDelta{}
		st.totals = map[totalsID]totalsDelta{}
		return
	}
	clear(st.userLedgers)
	clear(st.days)
	clear(st.balances)
	clear(st.keys)
	clear(st.totals)
}

// maxArena bounds the encoding buffer kept between batches.
const maxArena = 4 << 20

func (c *committer) commit(batch []pendingOp) error {
	// bbolt keeps references to put values until the transaction ends, so
	// the arena is only reused by the next batch; a value's bytes never
	// change once appended (growing the arena copies, leaving old arrays).
	// Keys need no such care: bbolt copies them.
	arena := c.arena[:0]
	defer func() {
		if cap(arena) <= maxArena {
			c.arena = arena[:0]
		}
	}()
	st := &c.st
	st.reset()
	defer st.reset() // drop bucket references
	var kbuf [16]byte
	return c.s.db.Update(func(tx *bbolt.Tx) error {
		ledger := tx.Bucket(bLedger)
		usage := tx.Bucket(bUsage)
		var maxEntry uint64

		// One usage sequence range for the batch: the records get the
		// numbers NextSequence would have given them one by one.
		var settles uint64
		for i := range batch {
			if batch[i].kind == opSettle {
				settles++
			}
		}
		seq := usage.Sequence()
		if settles > 0 {
			if err := usage.SetSequence(seq + settles); err != nil {
				return err
			}
		}

		ledgerBucket := func(uid int64) (*bbolt.Bucket, error) {
			if b := st.userLedgers[uid]; b != nil {
				return b, nil
			}
			b, err := ledger.CreateBucketIfNotExists(id8(uid))
			if err != nil {
				return nil, err
			}
			b.FillPercent = 0.95
			st.userLedgers[uid] = b
			return b, nil
		}
		for i := range batch {
			op := &batch[i]
			if op.entryKind != "" {
				b, err := ledgerBucket(op.userID)
				if err != nil {
					return err
				}
				e := LedgerEntry{ID: int64(op.entryID), UserID: op.userID, Kind: op.entryKind, Amount: op.amount,
					BalanceAfter: op.balance, KeyID: op.keyID, IdempotencyKey: op.idem, Note: op.note, Time: op.time}
				if op.kind == opSettle {
					e.RequestID = op.rec.RequestID
				}
				start := len(arena)
				if arena, err = appendLedgerEntry(arena, &e); err != nil {
					return err
				}
				binary.BigEndian.PutUint64(kbuf[:8], op.entryID)
				if err := b.Put(kbuf[:8], arena[start:len(arena):len(arena)]); err != nil {
					return err
				}
				maxEntry = max(maxEntry, op.entryID)
				st.balances[op.userID] = op.balance
			}
			switch op.kind {
			case opSettle:
				day := dayNumber(op.day)
				db := st.days[day]
				if db == nil {
					var err error
					if db, err = usage.CreateBucketIfNotExists(dayKey(op.day)); err != nil {
						return err
					}
					db.FillPercent = 0.95
					st.days[day] = db
				}
				seq++
				start := len(arena)
				var err error
				if arena, err = appendUsageRecord(arena, &op.rec); err != nil {
					return err
				}
				binary.BigEndian.PutUint64(kbuf[:8], uint64(op.userID))
				binary.BigEndian.PutUint64(kbuf[8:], seq)
				if err := db.Put(kbuf[:16], arena[start:len(arena):len(arena)]); err != nil {
					return err
				}
				addTotals(st.totals, op.userID, op.day, op.rec.TotalTokens)
				if op.keyID != 0 {
					d := st.keys[op.keyID]
					d.count++
					if op.time.After(d.last) {
						d.last = op.time
					}
					st.keys[op.keyID] = d
				}
			case opCredit:
				if op.idem != "" {
					rec := idemRecord{UserID: op.userID, Amount: op.amount, Balance: op.balance, EntryID: int64(op.entryID), Time: op.time}
					if err := putJSON(tx.Bucket(bIdempotency), idemKey(op.userID, op.idem), &rec); err != nil {
						return err
					}
				}
			}
		}
		accounts := tx.Bucket(bAccounts)
		for uid, bal := range st.balances {
			start := len(arena)
			arena = binary.BigEndian.AppendUint64(arena, uint64(bal))
			binary.BigEndian.PutUint64(kbuf[:8], uint64(uid))
			if err := accounts.Put(kbuf[:8], arena[start:len(arena):len(arena)]); err != nil {
				return err
			}
		}
		if maxEntry > 0 {
			if err := bumpSequence(ledger, maxEntry); err != nil {
				return err
			}
		}
		if err := applyTotals(tx.Bucket(bUsageTotals), st.totals); err != nil {
			return err
		}
		ku := tx.Bucket(bKeyUsage)
		for kid, d := range st.keys {
			binary.BigEndian.PutUint64(kbuf[:8], uint64(kid))
			used, err := keyUsed(ku, kbuf[:8])
			if err != nil {
				if err == ErrNotFound {
					continue // deleted meanwhile
				}
				return err
			}
			start := len(arena)
			arena = appendKeyUsage(arena, used+d.count, &d.last)
			if err := ku.Put(kbuf[:8], arena[start:len(arena):len(arena)]); err != nil {
				return err
			}
		}
		return nil
	})
}

// keyUsed returns the committed requests_used of key id, from its key
// usage record (ErrNotFound if the key is gone).
func keyUsed(ku *bbolt.Bucket, id []byte) (int64, error) {
	v := ku.Get(id)
	if v == nil {
		return 0, ErrNotFound // putKey writes a record with every key; DeleteKey removes both
	}
	used, _, err := decodeKeyUsage(v)
	return used, err
}

func dayNumber(t time.Time) int64 {
	y, m, d := t.Date()
	return int64(y)*10000 + int64(m)*100 + int64(d)
}

func dayKey(t time.Time) []byte { return []byte(t.UTC().Format("20060102")) }
