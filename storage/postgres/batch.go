package postgres

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// settleBatcher is the group commit of durable settlements: the
// settlements of concurrent requests of this node share one transaction
// (one round trip, one commit, one WAL flush) instead of one each.
//
// A settlement that arrives while fewer than maxFlushes flushes run starts
// one at once (after the commit window, if one is set); those that arrive
// while flushes run join the next one. Each caller waits until the
// transaction holding its settlement committed, so Settle stays durable.
// Exactly once is still the database's: the settlement deletes its hold
// row, and a second one finds nothing; the batcher adds no state of its
// own.
type settleBatcher struct {
	s      *Store
	window time.Duration // extra wait before a flush, to gather more (0: none)

	mu       sync.Mutex
	idle     sync.Cond // signalled when a flush loop ends
	queue    []*settleItem
	flushing int // flush loops running (at most maxFlushes)
	closed   bool
}

// maxFlushes is how many batches may be on their way at once: while one
// commits, the next is sent, so the database is not idle during the
// round trips. Two batches of one node lock their rows in the same order.
const maxFlushes = 2

// settleItem is one settlement waiting for its batch.
type settleItem struct {
	userID int64 // the hold's user and key: locked first, in order
	keyID  int64
	call   heldCall
	done   chan struct{} // closed once the fields below are set

	charged, balance int64
	status           string
	spend            spendRow
	err              error // mapped (mapErr)
}

func newSettleBatcher(s *Store, window time.Duration) *settleBatcher {
	b := &settleBatcher{s: s, window: window}
	b.idle.L = &b.mu
	return b
}

// settle queues a call of gw_settle_held and waits until the transaction
// that carries it has committed or failed.
func (b *settleBatcher) settle(userID, keyID int64, call heldCall) *settleItem {
	it := &settleItem{userID: userID, keyID: keyID, call: call, done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		it.err = storage.ErrClosed
		return it
	}
	b.queue = append(b.queue, it)
	if b.flushing < maxFlushes {
		b.flushing++
		go b.loop()
	}
	b.mu.Unlock()
	<-it.done
	return it
}

// loop flushes the queue until it is empty.
func (b *settleBatcher) loop() {
	for {
		if b.window > 0 {
			time.Sleep(b.window)
		}
		b.mu.Lock()
		items := b.queue
		b.queue = nil
		if len(items) == 0 {
			b.flushing--
			b.idle.Broadcast()
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.flush(items)
	}
}

// close refuses new settlements and waits for the running flush, so that
// Close releases no hold whose settlement is on its way.
func (b *settleBatcher) close() {
	b.mu.Lock()
	b.closed = true
	for b.flushing > 0 {
		b.idle.Wait()
	}
	b.mu.Unlock()
}

// flush applies items in one transaction: one pgx.Batch, which the server
// runs as one implicit transaction committed at its end. The results are
// handed out only after that commit. When a statement fails for a reason
// other than an unreachable database, the transaction is rolled back and
// each settlement is tried alone, so that one bad item does not fail the
// others. When the database cannot be reached, whether the batch committed
// is unknown: every item reports ErrUnavailable and is kept for a retry
// (retryLater), which finds its hold gone if the batch did commit.
func (b *settleBatcher) flush(items []*settleItem) {
	defer func() {
		for _, it := range items {
			close(it.done)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), b.s.opts.StatementTimeout)
	defer cancel()
	if len(items) == 1 {
		items[0].apply(ctx, b.s.pool)
		return
	}
	err := b.send(ctx, items)
	if err == nil {
		return
	}
	err = mapErr(err)
	for _, it := range items {
		if errors.Is(err, storage.ErrUnavailable) || errors.Is(err, storage.ErrClosed) {
			it.err = err
			continue
		}
		it.apply(ctx, b.s.pool)
	}
}

// send runs items as one pgx.Batch and reads every answer before the batch
// is closed, which waits for the commit.
//
// The batch first locks the key rows, then the account rows of all its
// settlements, each in id order: the order in which a reservation locks
// its key and account, and every other batch locks its rows. Settled one
// after another, two settlements of one user with different keys would
// lock a key after the account, against that order, and could deadlock
// with a reservation.
func (b *settleBatcher) send(ctx context.Context, items []*settleItem) error {
	var keys, users []int64
	for _, it := range items {
		if it.keyID != 0 {
			keys = append(keys, it.keyID)
		}
		users = append(users, it.userID)
	}
	batch := &pgx.Batch{}
	batch.Queue(`SELECT 1 FROM gw_keys WHERE id = ANY($1) ORDER BY id FOR UPDATE`, keys)
	batch.Queue(`SELECT 1 FROM gw_accounts WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE`, users)
	for _, it := range items {
		batch.Queue(settleSpendSQL, it.call.args...)
	}
	br := b.s.pool.SendBatch(ctx, batch)
	for range 2 {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return err
		}
	}
	for _, it := range items {
		if err := it.scan(br.QueryRow()); err != nil {
			br.Close()
			return err
		}
	}
	return br.Close()
}

// apply runs the item's settlement alone, in a transaction of its own.
func (it *settleItem) apply(ctx context.Context, q querier) {
	it.err = mapErr(it.scan(q.QueryRow(ctx, settleSpendSQL, it.call.args...)))
}

// scan reads gw_settle_spend's answer into the item.
func (it *settleItem) scan(row pgx.Row) error {
	sp := &it.spend
	return row.Scan(&it.charged, &it.balance, &it.status,
		&sp.keyTracked, &sp.keyWindow, &sp.keyBefore, &sp.keyAfter, &sp.keyLimit,
		&sp.userTracked, &sp.userWindow, &sp.userBefore, &sp.userAfter, &sp.userLimit)
}
