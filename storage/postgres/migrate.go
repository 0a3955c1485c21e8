package postgres

import (
	"context"
	"embed"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// migrationFiles are the schema versions, migrations/NNNN_name.sql: file
// NNNN upgrades the schema from version NNNN-1 to NNNN.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLock is the advisory lock key under which migrations run, so
// that nodes starting at once upgrade the schema once.
const migrationLock = 0x67617465_7761797a // "gatewayz"

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in version order.
func migrations() ([]migration, error) {
	entries, err := migrationFiles.ReadDir("migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("storage: migration file %s is not named NNNN_name.sql", e.Name())
		}
		data, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(data)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("storage: migration %s out of sequence (want version %d)", m.name, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the schema version this build writes.
func SchemaVersion() int {
	ms, _ := migrations()
	return len(ms)
}

// Migrate creates or upgrades the schema of the database at dsn, as Open
// does, without registering a node.
func Migrate(ctx context.Context, dsn string) error {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return fmt.Errorf("storage: the PostgreSQL DSN does not parse: %w", storage.ErrInvalid)
	}
	defer pool.Close()
	return migrate(ctx, pool)
}

// migrate brings the schema to SchemaVersion.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	return migrateTo(ctx, pool, ms)
}

// migrateTo applies the migrations ms (the first len(ms) versions) that the
// database lacks, each version in its own transaction, holding a session
// advisory lock for the whole run.
func migrateTo(ctx context.Context, pool *pgxpool.Pool, ms []migration) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("storage: migrating the schema: %w", mapErr(err))
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("storage: migrating the schema: %w", mapErr(err))
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrationLock))
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS gw_schema (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("storage: migrating the schema: %w", mapErr(err))
	}
	var stored int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM gw_schema`).Scan(&stored); err != nil {
		return fmt.Errorf("storage: reading the schema version: %w", mapErr(err))
	}
	if stored > len(ms) {
		return fmt.Errorf("storage: the database has schema version %d, newer than this build supports (%d); use a newer build",
			stored, len(ms))
	}
	for _, m := range ms[stored:] {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("storage: migrating to schema version %d: %w", m.version, mapErr(err))
		}
		_, err = tx.Exec(ctx, m.sql)
		if err == nil {
			_, err = tx.Exec(ctx, `INSERT INTO gw_schema (version, name) VALUES ($1, $2)`, m.version, m.name)
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			tx.Rollback(context.WithoutCancel(ctx))
			return fmt.Errorf("storage: migrating to schema version %d (%s): %w", m.version, m.name, mapErr(err))
		}
	}
	return nil
}
