// Package postgres is the PostgreSQL backend of caddy-gatewayz's store:
// storage.Store on a database that several gateway nodes share.
//
// Money stays exact with many writers because every credit movement is one
// guarded statement or one function call in the database (migrations/):
// a reservation is an UPDATE that only succeeds while the balance covers it,
// plus a hold row; a settlement deletes its hold row (so it happens once),
// charges at most what is available and writes the ledger entry, the usage
// record and the totals in the same transaction; a top-up's idempotency key
// is unique per user.
//
// Holds belong to the node that made them. Every node heartbeats; any node
// releases the holds of a node silent for longer than the lease, and a node
// that starts under a name releases what its previous run under that name
// held. A settlement that arrives after its hold was released charges at
// most what is available, once.
//
// The change feed is a table (gw_changes) plus pg_notify: changes made
// through this handle reach its subscribers at once, after commit; changes
// of other nodes arrive through a LISTEN connection, with polling by id as
// the fallback, so a missed notification is caught up.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Options configure Open.
type Options struct {
	// Node names this gateway node. A node that starts under the name of a
	// previous run releases that run's holds at once; names must differ
	// between nodes running at the same time. Default: the host name.
	Node string
	// PoolSize is the most connections the node opens. Default 16.
	PoolSize int
	// StatementTimeout bounds every statement. Default 10s.
	StatementTimeout time.Duration
	// ConnectTimeout bounds each connection attempt. Default 5s.
	ConnectTimeout time.Duration
	// Lease is how long a node may stay silent before other nodes release
	// its holds. Nodes heartbeat every third of it. Default 5s.
	Lease time.Duration
	// FeedBound is how far behind the change feed may fall before the
	// node stops trusting what it cached (FeedBehind): the longest a change
	// made on another node can go unseen here. Default 1s.
	FeedBound time.Duration
	// CommitWindow is how long a settlement waits for others to share its
	// transaction (one commit, one WAL flush for all). Settlements that
	// arrive while a commit runs always share the next one; a window adds
	// a wait before each commit, trading latency for fewer commits.
	// Default 0: no added wait.
	CommitWindow time.Duration
	// AsyncReserve commits reservations without waiting for the WAL flush
	// (synchronous_commit off for gw_reserve's transaction; settlements stay
	// durable). A reservation is then cheaper, but a database crash can
	// lose the last ones (those of about the last 3 x wal_writer_delay):
	// their requests, if served, go unbilled (their settlement finds no
	// hold, charges nothing and records no usage), and the rate counts they
	// made are lost with them. Nothing is ever charged twice or beyond the
	// balance. Default false: every reservation is durable.
	AsyncReserve bool
	// PollInterval is how often the change feed is read when no
	// notification arrives (the fallback for missed ones). Default a
	// quarter of FeedBound; at most half of it.
	PollInterval time.Duration
}

func (o *Options) setDefaults() {
	if o.Node == "" {
		o.Node, _ = os.Hostname()
	}
	if o.PoolSize <= 0 {
		o.PoolSize = 16
	}
	if o.StatementTimeout <= 0 {
		o.StatementTimeout = 10 * time.Second
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.Lease <= 0 {
		o.Lease = 5 * time.Second
	}
	if o.FeedBound <= 0 {
		o.FeedBound = time.Second
	}
	if o.CommitWindow < 0 {
		o.CommitWindow = 0
	}
	if o.PollInterval <= 0 || o.PollInterval > o.FeedBound/2 {
		o.PollInterval = o.FeedBound / 4
	}
}

// Store is storage.Store on PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
	opts Options
	node int64 // this handle's row in gw_nodes

	openN atomic.Int64 // holds this handle made and has not settled or refunded
	holds sync.Map     // their ids (int64)

	// Concurrent reservations, and concurrent settlements, of this node are
	// each committed together (batch.go).
	reserves, settles *batcher

	retryMu sync.Mutex
	retries []heldCall // settlements and refunds to apply once the database is back

	subMu  sync.Mutex
	subs   map[int]func(storage.Change)
	subSeq int

	opened time.Time // the monotonic origin of feed times
	feed   feedState

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	now func() time.Time
}

// Open connects to the database at dsn (a postgres:// URL or keyword/value
// string), creates or upgrades its schema, registers this node and starts
// its heartbeat, the release of dead nodes' holds and the change feed. A
// wrong DSN or a server that is down gives an error here.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	opts.setDefaults()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message can quote the DSN, password included.
		return nil, fmt.Errorf("storage: the PostgreSQL DSN does not parse (expected postgres://user:password@host:port/db or key=value pairs): %w", storage.ErrInvalid)
	}
	cfg.MaxConns = int32(opts.PoolSize)
	cfg.ConnConfig.ConnectTimeout = opts.ConnectTimeout
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(opts.StatementTimeout.Milliseconds())
	cfg.ConnConfig.RuntimeParams["application_name"] = "gatewayz"
	// A node stopped in the middle of a transaction (a frozen process)
	// must not hold the rows it locked past the lease: the server ends
	// the connection, and the other nodes carry on.
	cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = fmt.Sprint(opts.Lease.Milliseconds())
	cfg.ConnConfig.RuntimeParams["timezone"] = "UTC"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("storage: connecting to PostgreSQL: %w", mapErr(err))
	}
	s := &Store{pool: pool, opts: opts, subs: map[int]func(storage.Change){}, now: time.Now, opened: time.Now()}
	s.reserves = newBatcher(pool, opts.StatementTimeout, 0)
	s.reserves.set, s.reserves.setLocks = reserveSet, true
	s.settles = newBatcher(pool, opts.StatementTimeout, opts.CommitWindow)
	s.settles.set, s.settles.setLocks = settleSet, true
	if err := s.start(ctx, cfg.ConnConfig); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) start(ctx context.Context, connCfg *pgx.ConnConfig) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("storage: connecting to PostgreSQL at %s: %w", where(connCfg), mapErr(err))
	}
	if err := migrate(ctx, s.pool); err != nil {
		return err
	}
	if err := s.pool.QueryRow(ctx, `INSERT INTO gw_nodes (name) VALUES ($1) RETURNING id`, s.opts.Node).Scan(&s.node); err != nil {
		return fmt.Errorf("storage: registering node %q: %w", s.opts.Node, mapErr(err))
	}
	// What this node's previous runs held is nobody's now.
	if _, err := s.pool.Exec(ctx, `SELECT gw_release(ARRAY(SELECT id FROM gw_nodes WHERE name = $1 AND id <> $2))`,
		s.opts.Node, s.node); err != nil {
		return fmt.Errorf("storage: releasing the holds of node %q's previous run: %w", s.opts.Node, mapErr(err))
	}
	var last int64
	if err := s.pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM gw_changes`).Scan(&last); err != nil {
		return mapErr(err)
	}
	// Nothing is cached yet: the feed is current as of now.
	s.opened = time.Now()
	s.feed.lastID.Store(last)
	feedCfg := connCfg.Copy()
	feedCfg.RuntimeParams["application_name"] = FeedApplicationName(s.node)
	// No statement runs long on it; waiting for a notification is no statement.
	delete(feedCfg.RuntimeParams, "statement_timeout")
	bg, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	beatCfg := connCfg.Copy()
	beatCfg.RuntimeParams["application_name"] = HeartbeatApplicationName(s.node)
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.heartbeat(bg, beatCfg) }()
	go func() { defer s.wg.Done(); s.keepAlive(bg) }()
	go func() { defer s.wg.Done(); s.follow(bg, feedCfg, last) }()
	return nil
}

// Location names the server and database of dsn for logs, never the
// password ("" when dsn does not parse).
func Location(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return ""
	}
	return where(cfg)
}

// where names the server of a connection config, for errors (never the
// password).
func where(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s:%d (database %q, user %q)", c.Host, c.Port, c.Database, c.User)
}

// Node returns this handle's node id.
func (s *Store) Node() int64 { return s.node }

// Close stops the background work, applies the settlements and refunds
// kept while the database was unreachable, releases this node's open holds
// (their requests can no longer settle through it) and closes the pool.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.wg.Wait()
		// Reservations and settlements on their way commit before the holds go.
		s.reserves.close()
		s.settles.close()
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.StatementTimeout)
		defer cancel()
		// Settlements kept while the database was unreachable go first:
		// releasing their holds would forget what they charge. They are
		// retried (on fresh connections once one is found dead) until they
		// are applied or the close's time is up.
		err := s.applyKept(ctx)
		if err == nil {
			_, err = s.pool.Exec(ctx, `SELECT gw_release(ARRAY[$1::bigint])`, s.node)
		}
		if err == nil {
			_, err = s.pool.Exec(ctx, `UPDATE gw_nodes SET heartbeat_at = '-infinity' WHERE id = $1`, s.node)
		}
		s.pool.Close()
		if err != nil {
			s.closeErr = fmt.Errorf("storage: releasing this node's holds at close: %w", mapErr(err))
		}
	})
	return s.closeErr
}

// applyKept applies the settlements and refunds kept during an outage,
// retrying while the database is unreachable until ctx is done. What is
// still kept then is lost with the process: its holds go as a dead node's
// (released at the lease expiry or this node's next start), and Close
// reports it.
func (s *Store) applyKept(ctx context.Context) error {
	for s.retryHeld(ctx) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("settlements kept during an outage not applied: %w", storage.ErrUnavailable)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return storage.ErrClosed
	}
	return mapErr(s.pool.Ping(ctx))
}

// mapErr translates driver errors: a database that cannot be reached wraps
// storage.ErrUnavailable, a unique violation storage.ErrDuplicate, a closed
// pool storage.ErrClosed.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505": // unique_violation
			return fmt.Errorf("%s: %w", pgErr.Message, storage.ErrDuplicate)
		case passing(pgErr.Code):
			return fmt.Errorf("storage: %s: %w", pgErr.Message, storage.ErrUnavailable)
		}
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, storage.ErrClosed) {
		return err
	}
	if errors.Is(err, puddle.ErrClosedPool) {
		return storage.ErrClosed
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	if errors.As(err, &connectErr) || errors.As(err, &netErr) || pgconn.Timeout(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) ||
		pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed") {
		return fmt.Errorf("storage: %v: %w", err, storage.ErrUnavailable)
	}
	return err
}

// passing reports whether an error the server answered with says the
// database cannot do the work right now, though the same statement may
// succeed later: it lost or refuses the connection, the transaction was
// rolled back for a conflict (a deadlock, a serialization failure), it is
// out of disk, memory or connections, a lock could not be had, a
// statement ran past statement_timeout, an I/O error, or it is a standby
// (after a failover, until the connection finds the new primary). Such a
// failure is a 503 to a client and keeps a settlement for a retry
// (tryAgain); any other error is an answer.
func passing(code string) bool {
	switch code[:min(2, len(code))] {
	case "08", // connection exception
		"40", // transaction rollback: serialization failure, deadlock
		"53", // insufficient resources: disk full, out of memory, too many connections
		"58": // system error: I/O error
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03", "57P05", // shutdown, crash, cannot connect now, idle session timeout
		"57014", // query canceled: statement_timeout under load
		"55P03", // lock not available
		"25006": // read-only transaction: a standby
		return true
	}
	return false
}

// Interface guard. A PostgreSQL database is backed up with pg_dump, not
// through the gateway: Store is no storage.HotBackuper, and with every
// settlement committed before Settle returns, no storage.Flusher.
var (
	_ storage.Store      = (*Store)(nil)
	_ storage.SharedFeed = (*Store)(nil)
)
