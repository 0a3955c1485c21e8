package storage_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

func openBolt(t *testing.T, opts storage.Options) storage.Store {
	t.Helper()
	s, err := storage.Open(filepath.Join(t.TempDir(), "gw.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storage.Store { return openBolt(t, storage.Options{NoSync: true}) })
}

// The suite also passes with real fsync and a committer tuned differently.
func TestBoltConformanceSynced(t *testing.T) {
	if testing.Short() {
		t.Skip("slow with fsync")
	}
	storetest.Run(t, func(t *testing.T) storage.Store {
		return openBolt(t, storage.Options{CommitWindow: 100 * time.Microsecond, MaxBatch: 3})
	})
}

// TestBoltConformanceLogOnly runs the suite with checkpoints only when a
// read needs one (as openLogOnly), so every read of logged data must apply it.
func TestBoltConformanceLogOnly(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storage.Store {
		return openBolt(t, storage.Options{NoSync: true, CheckpointInterval: time.Hour})
	})
}

// One process owns a bbolt file (a second open waits on its lock), so the
// two handles of the shared suite are the same store: this holds bbolt to
// the suite's cross-handle checks as they read in one process.
func TestBoltConformanceShared(t *testing.T) {
	storetest.RunShared(t, func(t *testing.T) (storage.Store, storage.Store) {
		s := openBolt(t, storage.Options{NoSync: true})
		return s, s
	})
}
