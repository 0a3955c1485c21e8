package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// The long run with a short retention: requests settled through the store
// (no HTTP) day after simulated day, with the usage detail pruned after
// each day as the gateway's hourly pruner would, the rollups kept (the
// default). It shows what the file holds once the retention is full: the
// pages in use per request kept, and a file that stops growing.

// retentionPlan is the shape of a run.
type retentionPlan struct {
	days, perDay, detailDays, users int
}

// defaultRetentionPlan is what make bench runs: 10 days of 20,000
// requests from 8 users, usage records kept 2 days.
var defaultRetentionPlan = retentionPlan{days: 10, perDay: 20000, detailDays: 2, users: 8}

// retentionMaxFill is the target of bytes on disk per request kept.
const retentionMaxFill = 150

// retentionDay is the database after one simulated day and its pruning.
type retentionDay struct {
	inUse, fileSize int64
}

// retentionResult is the run.
type retentionResult struct {
	perDay, detailDays int
	baseline           int64 // in use before the first request
	days               []retentionDay
}

// perKeptRequest is what the last day's pages in use (less the baseline)
// come to per usage record kept.
func (r *retentionResult) perKeptRequest() float64 {
	if len(r.days) == 0 || r.perDay == 0 {
		return 0
	}
	return float64(r.days[len(r.days)-1].inUse-r.baseline) / float64(r.perDay*r.detailDays)
}

// steadyGrowth is how much the pages in use and the file grew from the
// first day the retention was full to the last.
func (r *retentionResult) steadyGrowth() (inUse, file int64) {
	if len(r.days) <= r.detailDays {
		return 0, 0
	}
	first, last := r.days[r.detailDays], r.days[len(r.days)-1]
	return last.inUse - first.inUse, last.fileSize - first.fileSize
}

// retentionRun runs plan in a temporary directory.
func retentionRun(ctx context.Context, plan retentionPlan) (*retentionResult, error) {
	dir, err := os.MkdirTemp("", "gatewayz-retention-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	return runRetention(ctx, dir, plan)
}

// runRetention runs plan in dir.
func runRetention(ctx context.Context, dir string, plan retentionPlan) (*retentionResult, error) {
	path := filepath.Join(dir, "retention.db")
	open := func() (*storage.BoltStore, error) { return storage.Open(path, storage.Options{NoSync: true}) }
	s, err := open()
	if err != nil {
		return nil, err
	}
	type who struct{ user, key int64 }
	var ws []who
	for i := range plan.users {
		hash := make([]byte, 32)
		rand.Read(hash)
		u := &storage.User{Username: fmt.Sprintf("r%d", i), Email: fmt.Sprintf("r%d@example.com", i), IsActive: true}
		k := &storage.APIKey{KeyName: "primary", Hash: hash, Scopes: storage.FullScopes(), IsActive: true, IsPrimary: true}
		if err := s.Register(ctx, u, k, 1<<50); err != nil {
			s.Close()
			return nil, err
		}
		ws = append(ws, who{u.ID, k.ID})
	}
	res := &retentionResult{perDay: plan.perDay, detailDays: plan.detailDays}
	if s, res.baseline, _, err = reopenMeasured(s, open, path); err != nil {
		return nil, err
	}
	defer func() { s.Close() }()
	start := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -plan.days)
	models := []string{"gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5"}
	n := 0
	for day := range plan.days {
		for i := range plan.perDay {
			w := ws[n%len(ws)]
			r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: w.user, KeyID: w.key, Credits: 5000})
			if err != nil {
				return nil, err
			}
			prompt, completion := int64(200+n%1800), int64(20+n%700)
			rec := storage.UsageRecord{Model: models[n%len(models)], PromptTokens: prompt, CompletionTokens: completion,
				TotalTokens: prompt + completion, CachedTokens: int64(n%4) * 128, Status: 200, RequestID: fakeUUID(n),
				Endpoint: "/v1/chat/completions", Time: start.AddDate(0, 0, day).Add(time.Duration(i) * 24 * time.Hour / time.Duration(plan.perDay))}
			if _, _, err := s.Settle(ctx, r, prompt+completion, rec); err != nil {
				return nil, err
			}
			n++
		}
		end := start.AddDate(0, 0, day+1)
		if _, err := s.PruneUsage(ctx, end.AddDate(0, 0, -plan.detailDays), time.Time{}); err != nil {
			return nil, err
		}
		var d retentionDay
		if s, d.inUse, d.fileSize, err = reopenMeasured(s, open, path); err != nil {
			return nil, err
		}
		res.days = append(res.days, d)
	}
	return res, nil
}

// reopenMeasured closes s, measures the file's pages in use (its pages
// less the free ones) and its size, and opens it again.
func reopenMeasured(s *storage.BoltStore, open func() (*storage.BoltStore, error), path string) (*storage.BoltStore, int64, int64, error) {
	if err := s.Close(); err != nil {
		return nil, 0, 0, err
	}
	// Not read-only: a read-only handle does not load the freelist.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, 0, 0, err
	}
	var inUse int64
	err = db.View(func(tx *bbolt.Tx) error {
		st := db.Stats()
		inUse = tx.Size() - int64(st.FreePageN+st.PendingPageN)*int64(db.Info().PageSize)
		return nil
	})
	db.Close()
	if err != nil {
		return nil, 0, 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, 0, err
	}
	s, err = open()
	return s, inUse, fi.Size(), err
}

func fakeUUID(n int) string {
	return fmt.Sprintf("%08x-7d3e-4c1a-9b2f-%012x", n, n*7919)
}

// retentionSection is the report's table of the run.
func (r *retentionResult) section() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### Database after a long run with a short retention (%d requests a day through the store, usage records kept %d days, rollups kept)\n\n",
		r.perDay, r.detailDays)
	b.WriteString("| day | pages in use | file size |\n|---:|---:|---:|\n")
	for i, d := range r.days {
		fmt.Fprintf(&b, "| %d | %s | %s |\n", i+1, mib(d.inUse), mib(d.fileSize))
	}
	inUse, file := r.steadyGrowth()
	fmt.Fprintf(&b, "\n%.0f B in use per usage record kept; from day %d on, the pages in use grew by %d B and the file by %d B.\n",
		r.perKeptRequest(), r.detailDays+1, inUse, file)
	return b.String()
}
