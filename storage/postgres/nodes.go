package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// releasedRetention is how long a hold released by its node's death waits
// for a late settlement before it is forgotten.
const releasedRetention = 24 * time.Hour

// heartbeat marks this node alive every third of the lease on a
// connection of its own. Not on the pool: with every pooled connection
// busy (a burst of requests on one hot row, a slow batch) the beat would
// wait its turn, and a live node could be taken for dead and lose its
// holds. Nor on keepAlive's beat, which also reaps and applies kept
// settlements and can take longer than a lease while the database is
// slow. A failed beat drops the connection; the next one reconnects.
func (s *Store) heartbeat(ctx context.Context, cfg *pgx.ConnConfig) {
	beat := time.NewTicker(s.opts.Lease / 3)
	defer beat.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
		}
		tick, cancel := context.WithTimeout(ctx, s.opts.Lease/3)
		// A connection from before an outage fails its first use: the beat
		// is tried again at once on a new one, or the node would miss a
		// whole beat after every outage and could be taken for dead.
		for try := 0; try < 2; try++ {
			if conn == nil {
				c, err := pgx.ConnectConfig(tick, cfg)
				if err != nil {
					break
				}
				conn = c
			}
			if _, err := conn.Exec(tick, `UPDATE gw_nodes SET heartbeat_at = now() WHERE id = $1`, s.node); err == nil {
				break
			}
			conn.Close(context.Background())
			conn = nil
		}
		cancel()
	}
}

// HeartbeatApplicationName is the application_name of a node's heartbeat
// connection (as FeedApplicationName is its feed's).
func HeartbeatApplicationName(node int64) string {
	return fmt.Sprintf("gatewayz heartbeat %d", node)
}

// keepAlive, every third of the lease, releases the holds of nodes silent
// for longer than the lease (any node may; the rows are locked with SKIP
// LOCKED, so two nodes reaping at once split the work) and applies the
// settlements and refunds that failed while the database was unreachable.
// Once a minute it refunds its own orphaned holds and drops old change log
// rows, forgotten released holds and long-dead nodes. (The heartbeat itself
// has its own connection: heartbeat.)
func (s *Store) keepAlive(ctx context.Context) {
	beat := time.NewTicker(s.opts.Lease / 3)
	defer beat.Stop()
	lastTidy := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
		}
		tick, cancel := context.WithTimeout(ctx, s.opts.Lease)
		s.releaseDead(tick)
		s.retryHeld(tick)
		if time.Since(lastTidy) > time.Minute {
			lastTidy = time.Now()
			s.releaseOrphans(tick)
			s.tidy(tick)
		}
		cancel()
	}
}

// releaseDead releases the open holds of nodes whose heartbeat is older
// than the lease, and returns how many. The credits come back to their
// users as a ChangeCredits change each, so that requests of theirs waiting
// for credits on any node retry.
func (s *Store) releaseDead(ctx context.Context) (int64, error) {
	var n int64
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		n = 0
		rows, err := tx.Query(ctx, `SELECT DISTINCT user_id FROM gw_holds WHERE state = 'open' AND node_id IN (
			SELECT id FROM gw_nodes WHERE heartbeat_at < now() - $1 * interval '1 microsecond' AND id <> $2)`,
			s.opts.Lease.Microseconds(), s.node)
		if err != nil {
			return nil, err
		}
		users, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(users) == 0 {
			return nil, err
		}
		if err := tx.QueryRow(ctx, `SELECT gw_release(ARRAY(
			SELECT id FROM gw_nodes WHERE heartbeat_at < now() - $1 * interval '1 microsecond' AND id <> $2))`,
			s.opts.Lease.Microseconds(), s.node).Scan(&n); err != nil || n == 0 {
			return nil, err
		}
		changes := make([]storage.Change, len(users))
		for i, u := range users {
			changes[i] = storage.Change{Kind: storage.ChangeCredits, UserID: u}
		}
		return changes, nil
	})
	return n, err
}

func (s *Store) tidy(ctx context.Context) {
	s.pool.Exec(ctx, `DELETE FROM gw_changes WHERE time < now() - $1 * interval '1 microsecond'`, changeRetention.Microseconds())
	s.pool.Exec(ctx, `DELETE FROM gw_holds WHERE state = 'released' AND created_at < now() - $1 * interval '1 microsecond'`, releasedRetention.Microseconds())
	s.pool.Exec(ctx, `DELETE FROM gw_nodes n WHERE heartbeat_at < now() - $1 * interval '1 microsecond'
		AND NOT EXISTS (SELECT 1 FROM gw_holds h WHERE h.node_id = n.id)`, releasedRetention.Microseconds())
}
