package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// usedBytes is the part of the database file in use: its pages less the
// free ones (which later writes reuse).
func usedBytes(t *testing.T, s *BoltStore) int64 {
	t.Helper()
	var used int64
	if err := s.db.View(func(tx *bbolt.Tx) error {
		st := s.db.Stats()
		used = tx.Size() - int64(st.FreePageN+st.PendingPageN)*int64(s.db.Info().PageSize)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return used
}

// maxBytesPerRequest is the target of what a metered request keeps on disk.
const maxBytesPerRequest = 150

// TestBytesPerRequestSteadyState settles requests day after simulated day
// through the store with a usage detail retention of two days and a
// rollup retention of three, pruning after each day as the gateway's
// pruner does. Once the retentions are full the database stops growing:
// the pages in use and the file size stay the same from day to day, and
// what is in use, divided by the requests whose records are kept, is at
// most maxBytesPerRequest (a UUID request id, an OpenAI model and
// endpoint, realistic token counts). Without a rollup retention (the
// default) the rollups grow by their rows per hour, whatever the traffic.
func TestBytesPerRequestSteadyState(t *testing.T) {
	const (
		perDay    = 6000
		retention = 2 // days of records
		rollups   = 3 // days of rollups
		days      = 8
	)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var clock atomic.Int64
	clock.Store(start.UnixNano())
	s.now = func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	users := make([]*User, 4)
	keys := make([]*APIKey, 4)
	for i := range users {
		users[i], keys[i] = register(t, s, fmt.Sprintf("size%d@example.com", i), 1<<50)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	baseline := usedBytes(t, s)
	models := []string{"gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5"}
	var used, size []int64
	n := 0
	for day := 0; day < days; day++ {
		for i := 0; i < perDay; i++ {
			at := start.AddDate(0, 0, day).Add(time.Duration(i) * (24 * time.Hour / perDay))
			clock.Store(at.UnixNano())
			u := n % len(users)
			r, err := s.Reserve(ctx, ReserveRequest{UserID: users[u].ID, KeyID: keys[u].ID, Credits: 5000})
			if err != nil {
				t.Fatal(err)
			}
			prompt, completion := int64(200+n%1800), int64(20+n%700)
			rec := UsageRecord{Model: models[n%len(models)], PromptTokens: prompt, CompletionTokens: completion,
				TotalTokens: prompt + completion, CachedTokens: int64(n%4) * 128, Status: 200, Estimated: n%50 == 0,
				RequestID: fmt.Sprintf("%08x-7d3e-4c1a-9b2f-%012x", n, n*7919), Endpoint: "/v1/chat/completions", Time: at}
			if _, _, err := s.Settle(ctx, r, prompt+completion, rec); err != nil {
				t.Fatal(err)
			}
			n++
		}
		end := start.AddDate(0, 0, day+1)
		clock.Store(end.UnixNano())
		if _, err := s.PruneUsage(ctx, end.AddDate(0, 0, -retention), end.AddDate(0, 0, -rollups)); err != nil {
			t.Fatal(err)
		}
		used = append(used, usedBytes(t, s))
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		size = append(size, fi.Size())
	}
	kept := int64(perDay * retention)
	perRequest := float64(used[days-1]-baseline) / float64(kept)
	t.Logf("in use after each day: %v bytes; file %v bytes; %.1f bytes per kept request", used, size, perRequest)
	if perRequest > maxBytesPerRequest {
		t.Errorf("%.1f bytes on disk per request, want at most %d", perRequest, maxBytesPerRequest)
	}
	// Steady state: from the day both retentions are full, what is in use
	// moves by no more than a few pages (the ledger's grouped entries; the
	// tree's shape), and the file does not grow.
	for d := rollups + 1; d < days; d++ {
		if grow := used[d] - used[rollups]; grow > 32<<10 {
			t.Errorf("day %d: %d bytes in use, %d more than on day %d", d, used[d], grow, rollups)
		}
		if size[d] > size[rollups] {
			t.Errorf("day %d: file of %d bytes, grew from %d", d, size[d], size[rollups])
		}
	}
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
}
