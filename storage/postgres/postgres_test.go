package postgres_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/postgres"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// Every test database starts with the schema (migrated once, in the template).
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, postgres.Migrate)) }

// testOptions are short intervals, so that feed and lease tests end soon.
var testOptions = postgres.Options{Node: "test", PollInterval: 100 * time.Millisecond, Lease: time.Second}

// open opens a store on dsn, closed when the test ends.
func open(t testing.TB, dsn string, opts postgres.Options) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// named returns testOptions under another node name.
func named(name string) postgres.Options {
	o := testOptions
	o.Node = name
	return o
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storage.Store { return open(t, pgtest.DatabaseURL(t), testOptions) })
}

// Two nodes on one database.
func TestConformanceShared(t *testing.T) {
	storetest.RunShared(t, func(t *testing.T) (storage.Store, storage.Store) {
		dsn := pgtest.DatabaseURL(t)
		return open(t, dsn, named("a")), open(t, dsn, named("b"))
	})
}

// Rate limits and plan quotas counted in the database, two nodes. The
// lease is long: a node whose heartbeat is late under the bursts of the
// suite on a loaded machine would be taken for dead, and its holds (and
// request slots) released, which is the one case the limits do not cover.
func TestLimitsShared(t *testing.T) {
	storetest.RunLimits(t, func(t *testing.T) (storage.LimitStore, storage.LimitStore) {
		dsn := pgtest.DatabaseURL(t)
		a, b := named("a"), named("b")
		a.Lease, b.Lease = time.Minute, time.Minute
		return open(t, dsn, a), open(t, dsn, b)
	})
}

// asyncNamed is named(name) with reservations committed without waiting
// for the WAL flush and settlements gathered in a commit window.
func asyncNamed(name string) postgres.Options {
	o := named(name)
	o.AsyncReserve, o.CommitWindow = true, time.Millisecond
	return o
}

// The same suites with asynchronous reservations and a commit window: one
// handle, and two nodes whose settlement batches touch the same rows.
func TestConformanceAsyncReserve(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storage.Store { return open(t, pgtest.DatabaseURL(t), asyncNamed("test")) })
}

func TestConformanceSharedAsyncReserve(t *testing.T) {
	storetest.RunShared(t, func(t *testing.T) (storage.Store, storage.Store) {
		dsn := pgtest.DatabaseURL(t)
		return open(t, dsn, asyncNamed("a")), open(t, dsn, asyncNamed("b"))
	})
}
