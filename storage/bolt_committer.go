package storage

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"slices"
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
	// keyWindow and userWindow are the spend windows (Unix seconds of
	// their start) a settlement charges; keySpend says the key's counts.
	keyWindow, userWindow int64
	keySpend              bool
	acct                  *account   // its pending count drops once applied to bbolt
	done                  chan error // nil for settlements
	// logOnly, on a marker, says its waiter needs the batch durable in
	// the log, not applied to bbolt.
	logOnly bool
	// snapshot, on a marker, receives a read transaction that sees
	// everything queued before it applied (see snapshot).
	snapshot chan *bbolt.Tx
}

// committer writes queued ops in group commits: everything queued within
// CommitWindow (or MaxBatch ops) is one record appended to the write-ahead
// log and one fdatasync (see bolt_wal.go). The logged batches are applied
// to bbolt in one transaction (a checkpoint) about once per
// CheckpointInterval, and at once when a waiter needs bbolt current.
type committer struct {
	s        *BoltStore
	window   time.Duration
	maxBatch int
	every    time.Duration // checkpoint interval
	wal      *walFile

	mu       sync.Mutex
	queue    []pendingOp
	spare    []pendingOp
	urgent   bool
	stopping bool
	err      error // sticky: a failed write stops all later writes

	wake    chan struct{}
	stopped chan struct{}

	// The committer goroutine's own state (Open's, before it starts).
	log      []byte     // records not yet applied to bbolt, oldest first
	held     []*account // accounts of the ops in log
	seq      uint64     // sequence of the last batch in log (or applied)
	lastCkpt time.Time
	arena    []byte      // small values written by a checkpoint
	st       commitState // scratch maps of a checkpoint
}

// maxLog bounds the log held between checkpoints: a fuller one is applied
// at once. A batch of directBatch ops or more is applied at once too: a
// bbolt transaction's fixed cost is small next to its work then, and
// logging it first would only add a second write. maxArena bounds the
// buffers kept between checkpoints.
const (
	maxLog      = 4 << 20
	directBatch = 256
	maxArena    = 4 << 20
)

func newCommitter(s *BoltStore, wal *walFile, seq uint64) *committer {
	return &committer{
		s:        s,
		window:   s.opts.CommitWindow,
		maxBatch: s.opts.MaxBatch,
		every:    s.opts.CheckpointInterval,
		wal:      wal,
		seq:      seq,
		lastCkpt: time.Now(),
		wake:     make(chan struct{}, 1),
		stopped:  make(chan struct{}),
	}
}

func (c *committer) start() { go c.run() }

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

func (c *committer) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("storage: writing to %s: %w", c.s.path, err)
	}
	c.mu.Unlock()
}

// flush waits until every op queued before the call is applied to bbolt.
func (c *committer) flush(ctx context.Context) error { return c.wait(ctx, false) }

// snapshotTx returns a read transaction that sees every op queued before
// the call applied; the caller rolls it back. It returns as soon as the
// transaction is made, without waiting for the id change that follows
// (which may wait for the transaction to end). It does not honour a
// cancelled context: the transaction must reach the caller to be closed.
func (c *committer) snapshotTx() (*bbolt.Tx, error) {
	out := make(chan *bbolt.Tx, 1)
	op := pendingOp{kind: opMarker, done: make(chan error, 1), snapshot: out}
	if err := c.enqueue(&op); err != nil {
		return nil, err
	}
	select {
	case tx := <-out:
		return tx, nil
	case err := <-op.done:
		select {
		case tx := <-out: // made, then the id change failed
			if err == nil {
				return tx, nil
			}
			tx.Rollback()
		default:
			if err == nil {
				err = ErrClosed
			}
		}
		return nil, err
	}
}

func (c *committer) wait(ctx context.Context, logOnly bool) error {
	op := pendingOp{kind: opMarker, done: make(chan error, 1), logOnly: logOnly}
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

// stop applies what is queued and logged, and ends the committer.
func (c *committer) stop() error {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	c.signal()
	<-c.stopped
	err := c.failure()
	if cerr := c.wal.close(err == nil); err == nil && cerr != nil {
		err = fmt.Errorf("storage: closing the write-ahead log of %s: %w", c.s.path, cerr)
	}
	return err
}

func (c *committer) run() {
	defer close(c.stopped)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		if len(c.log) > 0 && c.failure() == nil {
			// Logged batches are applied on time even if no more come.
			timer.Reset(time.Until(c.lastCkpt.Add(c.every)))
			select {
			case <-c.wake:
				timer.Stop()
			case <-timer.C:
				if err := c.checkpoint(); err != nil {
					c.fail(err)
				}
				continue
			}
		} else {
			<-c.wake
		}
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
			c.process(batch, false)
			clear(batch)
			c.mu.Lock()
			c.spare = batch[:0]
			c.mu.Unlock()
		}
		if stopping {
			c.mu.Lock()
			rest := c.queue // enqueued between our swap and stopping
			c.queue = nil
			c.mu.Unlock()
			c.process(rest, true)
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

// process logs a batch, or applies it with everything logged before it
// when a waiter needs bbolt current, the checkpoint is due or force is
// set, then reports the outcome to the batch's waiters.
func (c *committer) process(batch []pendingOp, force bool) {
	err := c.failure()
	if err == nil {
		err = c.write(batch, force)
		if err != nil {
			c.fail(err)
			err = c.failure()
		}
	}
	for i := range batch {
		op := &batch[i]
		if op.snapshot != nil && err == nil {
			if serr := c.snapshot(op.snapshot); serr != nil {
				c.fail(serr)
				err = c.failure()
			}
		}
		if op.done != nil {
			op.done <- err
		}
	}
}

// snapshot hands a read transaction over the just-applied state to out,
// then gives the database a new log id (keeping the old one as the
// previous id) and writes it into the log's header. A copy made from the
// transaction thus carries an id no later log record is written under, so
// a backup restored beside a log left by a later crash refuses that log
// instead of replaying records that do not continue it.
//
// The transaction goes out before the id changes: should the change have
// to grow bbolt's memory map, it waits for the copy to end, on this
// goroutine only.
func (c *committer) snapshot(out chan<- *bbolt.Tx) error {
	tx, err := c.s.db.Begin(false)
	if err != nil {
		return err
	}
	out <- tx
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	err = c.s.db.Update(func(tx *bbolt.Tx) error {
		m := tx.Bucket(bMeta)
		if err := m.Put(kWALPrevID, bytes.Clone(m.Get(kWALID))); err != nil {
			return err
		}
		return m.Put(kWALID, id)
	})
	if err != nil {
		return err
	}
	return c.wal.setID(id)
}

func (c *committer) write(batch []pendingOp, force bool) error {
	ckpt := force || len(c.log) >= maxLog || time.Since(c.lastCkpt) >= c.every
	for i := range batch {
		if batch[i].done != nil && !batch[i].logOnly {
			ckpt = true
		}
	}
	start := len(c.log)
	log, n, err := appendWALRecord(c.log, c.seq+1, batch)
	c.log = log
	if err != nil {
		return err
	}
	if n >= directBatch {
		ckpt = true
	}
	if n > 0 {
		c.seq++
		for i := range batch {
			if a := batch[i].acct; a != nil {
				c.held = append(c.held, a)
			}
		}
	}
	if ckpt {
		return c.checkpoint()
	}
	if n == 0 {
		return nil
	}
	return c.wal.append(c.log[start:])
}

// checkpoint applies the log to bbolt and empties it.
func (c *committer) checkpoint() error {
	c.lastCkpt = time.Now()
	if len(c.log) > 0 {
		if err := c.apply(c.log, c.seq); err != nil {
			return err
		}
	}
	for _, a := range c.held {
		a.pending.Add(-1)
	}
	clear(c.held)
	c.held = c.held[:0]
	if cap(c.log) > 2*maxLog {
		c.log = nil
	}
	c.log = c.log[:0]
	return c.wal.reset()
}

type keyDelta struct {
	count int64
	last  time.Time
}

// commitState is the scratch state of one checkpoint, kept by the
// committer and cleared (not freed) between checkpoints.
type commitState struct {
	userLedgers map[int64]*bbolt.Bucket
	days        map[uint32]*bbolt.Bucket
	balances    map[int64]int64
	keys        map[int64]keyDelta
	keySpend    map[int64]Spend // charges per key, in the latest window seen
	userSpend   map[int64]Spend
	totals      map[totalsID]totalsDelta
	rollups     rollupDeltas
	charges     map[int64]*chargeRun
	names       map[string]uint32 // names given ids in this checkpoint
	usage       []usagePut
}

// usagePut is a usage record a checkpoint writes.
type usagePut struct {
	day       uint32
	b         *bbolt.Bucket
	user, seq uint64
	v         []byte
}

// chargeRun is a user's settlements in a checkpoint since their last
// other ledger entry: they become one charge entry.
type chargeRun struct {
	n         int64
	amount    int64
	lastID    uint64
	balance   int64
	keyID     int64 // -1: several keys
	requestID string
	time      time.Time
}

func (r *chargeRun) add(op *walOp, rec *UsageRecord) {
	if r.n == 0 {
		r.keyID, r.requestID = op.keyID, rec.RequestID
	} else if r.keyID != op.keyID {
		r.keyID = -1
	}
	r.n++
	r.amount -= rec.Credits
	r.lastID, r.balance, r.time = op.entryID, op.balance, op.lastUsed // the settlement's time
}

// entry is the charge entry of the run.
func (r *chargeRun) entry(userID int64) LedgerEntry {
	e := LedgerEntry{ID: int64(r.lastID), UserID: userID, Kind: LedgerCharge, Amount: r.amount,
		BalanceAfter: r.balance, KeyID: max(r.keyID, 0), Requests: r.n, Time: r.time}
	if r.n == 1 {
		e.RequestID = r.requestID
	}
	return e
}

func (st *commitState) reset() {
	if st.userLedgers == nil {
		st.userLedgers = map[int64]*bbolt.Bucket{}
		st.days = map[uint32]*bbolt.Bucket{}
		st.balances = map[int64]int64{}
		st.keys = map[int64]keyDelta{}
		st.keySpend = map[int64]Spend{}
		st.userSpend = map[int64]Spend{}
		st.totals = map[totalsID]totalsDelta{}
		st.rollups = rollupDeltas{}
		st.charges = map[int64]*chargeRun{}
		st.names = map[string]uint32{}
		return
	}
	clear(st.userLedgers)
	clear(st.days)
	clear(st.balances)
	clear(st.keys)
	clear(st.keySpend)
	clear(st.userSpend)
	clear(st.totals)
	clear(st.rollups)
	clear(st.charges)
	clear(st.names)
	clear(st.usage)
	st.usage = st.usage[:0]
	if cap(st.usage) > 1<<16 {
		st.usage = nil
	}
}

// apply writes the logged ops in log to bbolt in one transaction, with
// seq as the last applied batch. The values put point into log or the
// arena, which must not change until the transaction ends (bbolt copies
// keys, not values).
//
// A user's settlements between two of their other ledger entries become
// one charge entry (the sum, the balance after the last, and the id the
// last was given, so entries stay in ledger order): the usage records
// keep each request's charge, and the ledger stays a running sum.
func (c *committer) apply(log []byte, seq uint64) error {
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
	epoch := time.Unix(0, 0)
	err := c.s.db.Update(func(tx *bbolt.Tx) error {
		ledger := tx.Bucket(bLedger)
		usage := tx.Bucket(bUsage)
		names := tx.Bucket(bNames)
		var maxEntry uint64

		// One usage sequence range for all: the records get the numbers
		// NextSequence would have given them one by one.
		var settles uint64
		if err := walRecords(log, func(_, n int, _ *walReader) error {
			settles += uint64(n)
			return nil
		}); err != nil {
			return err
		}
		useq := usage.Sequence()
		if settles > 0 {
			if err := usage.SetSequence(useq + settles); err != nil {
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
		putEntry := func(uid int64, id uint64, v []byte) error {
			b, err := ledgerBucket(uid)
			if err != nil {
				return err
			}
			binary.BigEndian.PutUint64(kbuf[:8], id)
			maxEntry = max(maxEntry, id)
			return b.Put(kbuf[:8], v)
		}
		endRun := func(uid int64) error {
			r := st.charges[uid]
			if r == nil || r.n == 0 {
				return nil
			}
			e := r.entry(uid)
			start := len(arena)
			arena = appendLedgerBinary(arena, &e)
			*r = chargeRun{}
			return putEntry(uid, uint64(e.ID), arena[start:len(arena):len(arena)])
		}
		var op walOp
		err := walRecords(log, func(n, _ int, r *walReader) error {
			for ; n > 0; n-- {
				if err := r.op(&op); err != nil {
					return err
				}
				if op.entryID != 0 {
					st.balances[op.userID] = op.balance
				}
				switch op.kind {
				case opSettle:
					rec, err := decodeUsage(op.usage, op.userID, epoch, noNames)
					if err != nil {
						return err
					}
					rec.UserID, rec.KeyID = op.userID, op.keyID
					if op.entryID != 0 {
						run := st.charges[op.userID]
						if run == nil {
							run = new(chargeRun)
							st.charges[op.userID] = run
						}
						run.add(&op, &rec)
					}
					var un usageNames
					if un.model, err = c.s.names.nameID(names, rec.Model, st.names); err != nil {
						return err
					}
					if un.endpoint, err = c.s.names.nameID(names, rec.Endpoint, st.names); err != nil {
						return err
					}
					dayStart := RollupDay.Truncate(op.day)
					day := dayNum(op.day)
					db := st.days[day]
					if db == nil {
						if db, err = usage.CreateBucketIfNotExists(dayKey(op.day)); err != nil {
							return err
						}
						db.FillPercent = 0.95
						st.days[day] = db
					}
					start := len(arena)
					arena = appendUsageBinary(arena, &rec, dayStart, &un)
					useq++
					st.usage = append(st.usage, usagePut{day: day, b: db, user: uint64(op.userID), seq: useq, v: arena[start:len(arena):len(arena)]})
					addTotals(st.totals, op.userID, op.day, op.tokens)
					if op.spend {
						addSpend(st.userSpend, op.userID, op.userWindow, op.charged)
						if op.keyID != 0 && op.keySpend {
							addSpend(st.keySpend, op.keyID, op.keyWindow, op.charged)
						}
					}
					st.rollups.add(&rec, un.model)
					if op.keyID != 0 {
						d := st.keys[op.keyID]
						d.count++
						if op.lastUsed.After(d.last) {
							d.last = op.lastUsed
						}
						st.keys[op.keyID] = d
					}
				case opCredit:
					if op.entryID != 0 {
						if err := endRun(op.userID); err != nil {
							return err
						}
						if err := putEntry(op.userID, op.entryID, op.entry); err != nil {
							return err
						}
					}
					if op.idemKey != nil {
						if err := tx.Bucket(bIdempotency).Put(op.idemKey, op.idemVal); err != nil {
							return err
						}
					}
				}
			}
			if len(r.b) != 0 {
				return errWALCorrupt
			}
			return nil
		})
		if err != nil {
			return err
		}
		for uid := range st.charges {
			if err := endRun(uid); err != nil {
				return err
			}
		}
		// In key order: bbolt splits nodes only when it commits, so puts in
		// the middle of a node that a large checkpoint keeps growing would
		// each move the rest of it.
		slices.SortFunc(st.usage, func(a, b usagePut) int {
			return cmp.Or(cmp.Compare(a.day, b.day), cmp.Compare(a.user, b.user), cmp.Compare(a.seq, b.seq))
		})
		for i := range st.usage {
			p := &st.usage[i]
			binary.BigEndian.PutUint64(kbuf[:8], p.user)
			binary.BigEndian.PutUint64(kbuf[8:], p.seq)
			if err := p.b.Put(kbuf[:16], p.v); err != nil {
				return err
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
		if err := st.rollups.apply(tx.Bucket(bRollups)); err != nil {
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
		if err := applySpend(tx.Bucket(bKeySpend), st.keySpend, func(id []byte) bool { return ku.Get(id) != nil }); err != nil {
			return err
		}
		if err := applySpend(tx.Bucket(bUserSpend), st.userSpend, func([]byte) bool { return true }); err != nil {
			return err
		}
		return tx.Bucket(bMeta).Put(kWALApplied, u64(seq))
	})
	if err == nil {
		c.s.names.add(st.names)
	}
	return err
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

func dayKey(t time.Time) []byte { return []byte(t.UTC().Format("20060102")) }
