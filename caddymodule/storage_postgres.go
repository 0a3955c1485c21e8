package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/postgres"
)

func init() {
	caddy.RegisterModule(new(PostgresStorage))
}

// PostgresStorage is the storage backend `gatewayz.storage.postgres`: the
// store in a PostgreSQL database, which several gateway nodes may share
// (every node with the same explicit secret: it keeps no secret file, so the
// app refuses to start without one). Reservations are holds of this node
// in the database: they come back to the user when it stops, and within
// Lease when it dies.
type PostgresStorage struct {
	// DSN is the database: a URL
	// (postgres://user:password@host:5432/gatewayz?sslmode=require) or a
	// key=value string, usually "{env.GATEWAYZ_DATABASE_URL}". Resolved at
	// run time, so the password never reaches the autosaved config.
	DSN string `json:"dsn,omitempty"`

	// PoolSize is the most connections this node opens. Default 16.
	PoolSize int `json:"pool_size,omitempty"`

	// StatementTimeout bounds every statement. Default 10s.
	StatementTimeout caddy.Duration `json:"statement_timeout,omitempty"`

	// Lease is how long this node may stay silent before the other nodes
	// release its holds (it heartbeats every third of it). Default 5s.
	Lease caddy.Duration `json:"lease,omitempty"`

	// FeedBound is the most a change made on another node (a key revoked,
	// a plan or limit changed) may take to reach this node. Changes come
	// through LISTEN/NOTIFY at once, and by polling the change log four
	// times per bound when a notification is lost. Past the bound without
	// a complete read of the log (the database unreachable), this node
	// stops trusting what it cached: every request reads the key and its
	// policy from the database, and is refused with 503 when that fails;
	// GET /health answers 503 so a load balancer drains the node. Default 1s.
	FeedBound caddy.Duration `json:"feed_bound,omitempty"`

	// CommitWindow is how long a settlement waits for others of this node
	// to share its transaction. Settlements that arrive while one commits
	// always share the next commit (one round trip, one WAL flush for all);
	// a window adds that much latency to each for fewer, larger commits.
	// Each settlement is durable when the request's Settle returns, either
	// way. Default 0: no added wait.
	CommitWindow caddy.Duration `json:"commit_window,omitempty"`

	// AsyncReserve commits reservations without waiting for the WAL flush
	// (synchronous_commit off for that one transaction; settlements stay
	// durable). A database crash can then lose the reservations of about
	// the last 3 x wal_writer_delay: their requests, if served, go unbilled,
	// and the rate counts they made are lost. Nothing is charged twice or
	// beyond a balance. Default false: every reservation is durable.
	AsyncReserve bool `json:"async_reserve,omitempty"`

	// Node names this node among those sharing the database; a node that
	// starts under a name releases what its previous run under it held.
	// Names must differ between nodes running at the same time. Default:
	// the host name and a digest of Caddy's data directory.
	Node string `json:"node,omitempty"`

	dsn string // resolved
}

// CaddyModule returns the Caddy module information.
func (*PostgresStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "gatewayz.storage.postgres",
		New: func() caddy.Module { return new(PostgresStorage) },
	}
}

// postgresOpenTimeout bounds connecting and migrating at start.
const postgresOpenTimeout = time.Minute

// Provision resolves the DSN and the node name. It connects to nothing.
func (p *PostgresStorage) Provision(caddy.Context) error {
	p.dsn = strings.TrimSpace(caddy.NewReplacer().ReplaceAll(p.DSN, ""))
	if p.dsn == "" {
		return errors.New("postgres storage: dsn is empty (set dsn, e.g. {env.GATEWAYZ_DATABASE_URL})")
	}
	if p.Node == "" {
		p.Node = defaultNodeName()
	}
	return nil
}

// StoreKey is the resolved DSN: configs on the same database share one
// pool, its holds and caches. It stays in memory (it holds the password).
func (p *PostgresStorage) StoreKey() string { return "postgres " + p.dsn }

// Describe names the server and database (never the password).
func (p *PostgresStorage) Describe() (backend, location string) {
	return "postgres", postgres.Location(p.dsn)
}

// OpenStore connects to the database (creating or upgrading its schema)
// and registers this node. A wrong DSN or a server that is down is an
// error here, which stops the start.
func (p *PostgresStorage) OpenStore(caddy.Context, *zap.Logger) (storage.Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), postgresOpenTimeout)
	defer cancel()
	return postgres.Open(ctx, p.dsn, postgres.Options{
		Node:             p.Node,
		PoolSize:         p.PoolSize,
		StatementTimeout: time.Duration(p.StatementTimeout),
		Lease:            time.Duration(p.Lease),
		FeedBound:        time.Duration(p.FeedBound),
		CommitWindow:     time.Duration(p.CommitWindow),
		AsyncReserve:     p.AsyncReserve,
	})
}

// defaultNodeName is the host name and a digest of Caddy's data directory:
// the same across restarts of one installation, different for two
// installations on one host.
func defaultNodeName() string {
	host, _ := os.Hostname()
	sum := sha256.Sum256([]byte(caddy.AppDataDir()))
	return host + "-" + hex.EncodeToString(sum[:4])
}

// UnmarshalCaddyfile sets up the backend from
//
//	postgres [<dsn>] {
//	    dsn               <dsn>        # e.g. {env.GATEWAYZ_DATABASE_URL}
//	    pool_size         <n>
//	    statement_timeout <duration>
//	    lease             <duration>
//	    feed_bound        <duration>
//	    commit_window     <duration>
//	    async_reserve
//	    node              <name>
//	}
func (p *PostgresStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // backend name
	if d.NextArg() {
		p.DSN = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for d.NextBlock(0) {
		name := d.Val()
		if name == "async_reserve" {
			if d.NextArg() {
				return d.ArgErr()
			}
			p.AsyncReserve = true
			continue
		}
		var s string
		if !d.AllArgs(&s) {
			return d.ArgErr()
		}
		switch name {
		case "dsn":
			p.DSN = s
		case "node":
			p.Node = s
		case "pool_size":
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return d.Errf("pool_size must be a positive integer, got %q", s)
			}
			p.PoolSize = n
		case "commit_window":
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur < 0 {
				return d.Errf("bad %s %q", name, s)
			}
			p.CommitWindow = caddy.Duration(dur)
		case "statement_timeout", "lease", "feed_bound":
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur <= 0 {
				return d.Errf("bad %s %q", name, s)
			}
			switch name {
			case "lease":
				p.Lease = caddy.Duration(dur)
			case "feed_bound":
				p.FeedBound = caddy.Duration(dur)
			default:
				p.StatementTimeout = caddy.Duration(dur)
			}
		default:
			return d.Errf("unknown postgres storage option %q", name)
		}
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Module          = (*PostgresStorage)(nil)
	_ caddy.Provisioner     = (*PostgresStorage)(nil)
	_ StorageBackend        = (*PostgresStorage)(nil)
	_ caddyfile.Unmarshaler = (*PostgresStorage)(nil)
)
