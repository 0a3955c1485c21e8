package postgres

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// batcher is the group commit of one kind of call (reservations, or
// durable settlements): the calls of concurrent requests of this node
// share one transaction (one round trip, one commit, one WAL flush, and
// one turn on each row they lock) instead of one each.
//
// A call that arrives while fewer than maxFlushes flushes run starts one
// at once (after the commit window, if one is set); those that arrive
// while flushes run join the next one. Each caller waits until the
// transaction holding its call committed, so a settlement is durable when
// Settle returns. The batcher adds no state of its own: a call does in a
// batch exactly what it does alone (exactly once is still the database's:
// a settlement deletes its hold row, and a second one finds nothing), in
// the order of the batch.
type batcher struct {
	pool    *pgxpool.Pool
	timeout time.Duration // bounds a flush
	window  time.Duration // extra wait before a flush, to gather more (0: none)

	// set, when given, turns a batch's calls into one statement answering
	// their rows in order, instead of one statement per call ("" when it
	// cannot).
	set func(calls []*batchCall) (string, []any)
	// setLocks: set's statement locks the batch's key rows, then its
	// account rows, in id order itself (gw_settle_batch and
	// gw_reserve_batch), so send does not lock them first in statements
	// of their own.
	setLocks bool

	mu       sync.Mutex
	idle     sync.Cond // signalled when a flush loop ends
	queue    []*batchCall
	flushing int // flush loops running (at most maxFlushes)
	closed   bool
}

// maxFlushes is how many batches may be on their way at once: while one
// commits, the next is sent, so the database is not idle during the
// round trips. Two batches lock their rows in the same order.
const maxFlushes = 2

// batchCall is one call of a database function answering one row, waiting
// for its batch.
type batchCall struct {
	userID, keyID int64 // the rows it locks: locked first, in order, in a batch
	sql           string
	args          []any
	dest          []any         // where its row is scanned
	done          chan struct{} // closed once err (and dest) are set
	err           error         // mapped (mapErr)
}

func newBatcher(pool *pgxpool.Pool, timeout, window time.Duration) *batcher {
	b := &batcher{pool: pool, timeout: timeout, window: window}
	b.idle.L = &b.mu
	return b
}

// do queues a call and waits until the transaction that carries it has
// committed (its row scanned into dest) or failed (err).
func (b *batcher) do(userID, keyID int64, sql string, args, dest []any) error {
	c := &batchCall{userID: userID, keyID: keyID, sql: sql, args: args, dest: dest, done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return storage.ErrClosed
	}
	b.queue = append(b.queue, c)
	if b.flushing < maxFlushes {
		b.flushing++
		go b.loop()
	}
	b.mu.Unlock()
	<-c.done
	return c.err
}

// loop flushes the queue until it is empty.
func (b *batcher) loop() {
	for {
		if b.window > 0 {
			time.Sleep(b.window)
		}
		b.mu.Lock()
		calls := b.queue
		b.queue = nil
		if len(calls) == 0 {
			b.flushing--
			b.idle.Broadcast()
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.flush(calls)
	}
}

// close refuses new calls and waits for the running flushes, so that Close
// releases no hold whose settlement is on its way.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	for b.flushing > 0 {
		b.idle.Wait()
	}
	b.mu.Unlock()
}

// flush applies calls in one transaction: one pgx.Batch, which the server
// runs as one implicit transaction committed at its end. The answers are
// handed out only after that commit. When the server answers a statement
// with an error (a bad call, a deadlock, a full disk), the transaction is
// rolled back (so nothing of it happened) and each call is tried alone, so
// that one bad call does not fail the others. When the database cannot be
// reached, whether the batch committed is unknown: every call reports
// ErrUnavailable, as a call alone would (a settlement is then kept for a
// retry, which finds its hold gone if the batch did commit; a reservation
// that did commit is an orphan, refunded by releaseOrphans).
func (b *batcher) flush(calls []*batchCall) {
	defer func() {
		for _, c := range calls {
			close(c.done)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	if len(calls) == 1 {
		calls[0].alone(ctx, b.pool)
		return
	}
	err := b.send(ctx, calls)
	if err == nil {
		return
	}
	var answered *pgconn.PgError
	rolledBack := errors.As(err, &answered) && !connectionLost(err)
	err = mapErr(err)
	for _, c := range calls {
		if !rolledBack && (errors.Is(err, storage.ErrUnavailable) || errors.Is(err, storage.ErrClosed)) {
			c.err = err
			continue
		}
		c.alone(ctx, b.pool)
	}
}

// send runs calls as one pgx.Batch and reads every answer before the batch
// is closed, which waits for the commit.
//
// The batch first locks the key rows, then the account rows of all its
// calls, each in id order (in statements of their own, or, with setLocks,
// in the set statement): the order in which a reservation locks its key
// and account, and every other batch locks its rows. Run one after
// another, two calls of one user with different keys would lock a key
// after the account, against that order, and could deadlock with a
// reservation or another batch.
func (b *batcher) send(ctx context.Context, calls []*batchCall) error {
	var keys, users []int64
	for _, c := range calls {
		if c.keyID != 0 {
			keys = append(keys, c.keyID)
		}
		users = append(users, c.userID)
	}
	var setSQL string
	var setArgs []any
	if b.set != nil {
		setSQL, setArgs = b.set(calls)
	}
	batch := &pgx.Batch{}
	locks := 0
	if setSQL == "" || !b.setLocks {
		batch.Queue(`SELECT 1 FROM gw_keys WHERE id = ANY($1) ORDER BY id FOR UPDATE`, keys)
		batch.Queue(`SELECT 1 FROM gw_accounts WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE`, users)
		locks = 2
	}
	if setSQL != "" {
		batch.Queue(setSQL, setArgs...)
	} else {
		for _, c := range calls {
			batch.Queue(c.sql, c.args...)
		}
	}
	br := b.pool.SendBatch(ctx, batch)
	for range locks {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return err
		}
	}
	if setSQL != "" {
		rows, err := br.Query()
		if err != nil {
			br.Close()
			return err
		}
		i := 0
		for rows.Next() {
			if i < len(calls) {
				if err := rows.Scan(calls[i].dest...); err != nil {
					rows.Close()
					br.Close()
					return err
				}
			}
			i++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			br.Close()
			return err
		}
		if i != len(calls) {
			br.Close()
			return errors.New("storage: a batch answered a different number of rows than it had calls")
		}
		return br.Close()
	}
	for _, c := range calls {
		if err := br.QueryRow().Scan(c.dest...); err != nil {
			br.Close()
			return err
		}
	}
	return br.Close()
}

// alone runs the call in a transaction of its own.
func (c *batchCall) alone(ctx context.Context, q querier) {
	c.err = mapErr(q.QueryRow(ctx, c.sql, c.args...).Scan(c.dest...))
}
