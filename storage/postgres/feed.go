package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// feedChannel is the NOTIFY channel of the change feed.
const feedChannel = "gatewayz_changes"

// feedLock is the transaction-level advisory lock under which a change's
// id is taken, so that ids commit in order (see gw_changes).
const feedLock = 0x67770001

// changeRetention is how long the change log keeps rows: far longer than
// any node can be behind without having re-read everything.
const changeRetention = time.Hour

// update runs fn in a transaction and records the changes it returns in
// the change log, in the same transaction. After the commit this handle's
// subscribers get them at once; other nodes get them from the feed.
func (s *Store) update(ctx context.Context, fn func(tx pgx.Tx) ([]storage.Change, error)) error {
	if s.closed.Load() {
		return storage.ErrClosed
	}
	var changes []storage.Change
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if changes, err = fn(tx); err != nil || len(changes) == 0 {
			return err
		}
		docs := make([]string, len(changes))
		for i, c := range changes {
			b, err := json.Marshal(c)
			if err != nil {
				return err
			}
			docs[i] = string(b)
		}
		batch := &pgx.Batch{}
		batch.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(feedLock))
		batch.Queue(`INSERT INTO gw_changes (node_id, doc) SELECT $1, d::json FROM unnest($2::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n`,
			s.node, docs)
		batch.Queue(`SELECT pg_notify($1, '')`, feedChannel)
		return tx.SendBatch(ctx, batch).Close()
	})
	if err != nil {
		return mapErr(err)
	}
	s.notify(changes...)
	return nil
}

// Subscribe registers fn to be called after each committed change, of this
// node (at once) and of the others (through the feed).
func (s *Store) Subscribe(fn func(storage.Change)) (unsubscribe func()) {
	s.subMu.Lock()
	s.subSeq++
	id := s.subSeq
	s.subs[id] = fn
	s.subMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.subMu.Lock()
			delete(s.subs, id)
			s.subMu.Unlock()
		})
	}
}

func (s *Store) notify(changes ...storage.Change) {
	if len(changes) == 0 {
		return
	}
	s.subMu.Lock()
	fns := make([]func(storage.Change), 0, len(s.subs))
	for _, fn := range s.subs {
		fns = append(fns, fn)
	}
	s.subMu.Unlock()
	for _, c := range changes {
		for _, fn := range fns {
			fn(c)
		}
	}
}

// feedState is how current this node's feed is. Times are nanoseconds
// on the monotonic clock since the store opened (Store.since), so a wall
// clock step cannot make a stale feed look current.
type feedState struct {
	listening   atomic.Bool
	lastID      atomic.Int64
	lastEventAt atomic.Int64 // unix nanoseconds of the last change's time (0: none)
	caughtUp    atomic.Int64 // since-start of the last complete read
	reconnects  atomic.Int64
}

// since is the time elapsed on the monotonic clock since the store opened.
func (s *Store) since() time.Duration { return time.Since(s.opened) }

// FeedStatus reports how current the change feed is.
func (s *Store) FeedStatus() storage.FeedStatus {
	now := s.since()
	caughtUp := time.Duration(s.feed.caughtUp.Load())
	st := storage.FeedStatus{
		Node:       s.node,
		Listening:  s.feed.listening.Load(),
		LastID:     s.feed.lastID.Load(),
		CaughtUpAt: time.Now().Add(caughtUp - now).UTC(),
		Lag:        now - caughtUp,
		Bound:      s.opts.FeedBound,
		Reconnects: s.feed.reconnects.Load(),
	}
	if ns := s.feed.lastEventAt.Load(); ns != 0 {
		st.LastEventAt = time.Unix(0, ns).UTC()
	}
	st.Behind = st.Lag > st.Bound
	return st
}

// FeedBehind reports whether the feed last caught up longer than the feed
// bound ago.
func (s *Store) FeedBehind() bool {
	return s.since()-time.Duration(s.feed.caughtUp.Load()) > s.opts.FeedBound
}

// follow delivers the other nodes' changes. It LISTENs on a connection of
// its own and reads the change log past the last id seen on every
// notification and at least every PollInterval, through the pool, so a
// notification lost with a broken connection is caught up by the next
// read. A lost connection is opened again after FeedBound (reads go on
// meanwhile). When the feed resumes after a break (a lost connection, or
// reads failing past the bound) subscribers get ChangeAll and drop their
// caches. It runs until ctx ends.
func (s *Store) follow(ctx context.Context, cfg *pgx.ConnConfig, last int64) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	var retryListen time.Duration // since-start time of the next LISTEN attempt
	broken := false               // the feed had a break: drop caches once it reads again
	for ctx.Err() == nil {
		if conn == nil && s.since() >= retryListen {
			if c, err := s.listen(ctx, cfg); err == nil {
				conn = c
				s.feed.listening.Store(true)
			} else {
				retryListen = s.since() + s.opts.FeedBound
			}
		}
		if conn != nil {
			wait, cancel := context.WithTimeout(ctx, s.opts.PollInterval)
			_, err := conn.WaitForNotification(wait)
			cancel()
			if err != nil && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				conn.Close(context.Background())
				conn = nil
				s.feed.listening.Store(false)
				s.feed.reconnects.Add(1)
				retryListen = s.since() + s.opts.FeedBound
				broken = true
			}
		} else {
			select {
			case <-ctx.Done():
			case <-time.After(s.opts.PollInterval):
			}
		}
		if ctx.Err() != nil {
			return
		}
		behind := s.FeedBehind()
		n, start, err := s.readChanges(ctx, last)
		last = n
		if err != nil {
			// After an outage the feed would otherwise catch up only once
			// it had used up each dead idle connection, one poll each.
			s.dropDeadConnections(err)
			continue
		}
		if broken || behind {
			// What was cached may have changed unseen; the changes read
			// by id say which, unless the log was pruned meanwhile.
			// Cheaper to re-read every record than to be wrong; and
			// before the caches are trusted again.
			s.notify(storage.Change{Kind: storage.ChangeAll})
			broken = false
		}
		s.feed.caughtUp.Store(int64(start))
	}
}

// listen opens the feed's connection, named so that an operator (or a
// test) can tell it in pg_stat_activity, and LISTENs on it.
func (s *Store) listen(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(ctx, "LISTEN "+feedChannel); err != nil {
		c.Close(context.Background())
		return nil, err
	}
	return c, nil
}

// FeedApplicationName is the application_name of a node's feed connection
// in pg_stat_activity (the pool's connections are "gatewayz").
func FeedApplicationName(node int64) string {
	return fmt.Sprintf("gatewayz feed %d", node)
}

// feedPage bounds one read of the change log.
const feedPage = 10000

// readChanges delivers the other nodes' changes after id last, page by
// page until the log is exhausted, and returns the last id read and when
// the last page's read started: every change committed before then has
// been delivered.
func (s *Store) readChanges(ctx context.Context, last int64) (int64, time.Duration, error) {
	for {
		start := s.since()
		ctx, cancel := context.WithTimeout(ctx, s.opts.StatementTimeout)
		n, rows, err := s.readPage(ctx, last)
		cancel()
		if err != nil {
			return last, 0, err
		}
		last = n
		s.feed.lastID.Store(last)
		if rows < feedPage {
			return last, start, nil
		}
	}
}

// readPage delivers one page of the change log after id last and returns
// the last id and the number of rows read.
// On error nothing is delivered and last is returned unchanged.
func (s *Store) readPage(ctx context.Context, from int64) (int64, int, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, node_id, time, doc::text FROM gw_changes WHERE id > $1 ORDER BY id LIMIT $2`, from, feedPage)
	if err != nil {
		return from, 0, err
	}
	defer rows.Close()
	var changes []storage.Change
	var at time.Time
	last, n := from, 0
	for rows.Next() {
		var node int64
		var doc string
		if err := rows.Scan(&last, &node, &at, &doc); err != nil {
			return from, 0, err
		}
		n++
		if node == s.node {
			continue // delivered at commit
		}
		var c storage.Change
		if json.Unmarshal([]byte(doc), &c) == nil {
			changes = append(changes, c)
		}
	}
	if err := rows.Err(); err != nil {
		return from, 0, err
	}
	if n > 0 {
		s.feed.lastEventAt.Store(at.UnixNano())
	}
	s.notify(changes...)
	return last, n, nil
}
