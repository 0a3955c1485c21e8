package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
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

// follow delivers the other nodes' changes: it LISTENs on its own
// connection and reads the change log past the last id seen on every
// notification and every PollInterval, so a notification lost with a
// broken connection is caught up. It reconnects until ctx ends.
func (s *Store) follow(ctx context.Context, cfg *pgx.ConnConfig, last int64) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			c, err := pgx.ConnectConfig(ctx, cfg)
			if err == nil {
				if _, err = c.Exec(ctx, "LISTEN "+feedChannel); err != nil {
					c.Close(ctx)
				}
			}
			if err == nil {
				conn = c
			}
		}
		if conn != nil {
			wait, cancel := context.WithTimeout(ctx, s.opts.PollInterval)
			_, err := conn.WaitForNotification(wait)
			cancel()
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				conn.Close(context.Background())
				conn = nil
			}
		} else {
			select {
			case <-ctx.Done():
			case <-time.After(s.opts.PollInterval):
			}
		}
		// Read through the pool: the listening connection may be gone.
		if n, err := s.readChanges(ctx, last); err == nil {
			last = n
		}
	}
}

// readChanges delivers the other nodes' changes after id last and returns
// the last id read.
func (s *Store) readChanges(ctx context.Context, last int64) (int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, node_id, doc::text FROM gw_changes WHERE id > $1 ORDER BY id LIMIT 10000`, last)
	if err != nil {
		return last, err
	}
	defer rows.Close()
	var changes []storage.Change
	for rows.Next() {
		var node int64
		var doc string
		if err := rows.Scan(&last, &node, &doc); err != nil {
			return last, err
		}
		if node == s.node {
			continue // delivered at commit
		}
		var c storage.Change
		if json.Unmarshal([]byte(doc), &c) == nil {
			changes = append(changes, c)
		}
	}
	if err := rows.Err(); err != nil {
		return last, err
	}
	s.notify(changes...)
	return last, nil
}
