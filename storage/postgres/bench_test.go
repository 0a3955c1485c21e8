package postgres_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/postgres"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// BenchmarkReserveSettle measures one request's store work (a reservation
// and its settlement) from parallel goroutines, spread over users (1: one
// hot user), on the test server (fsync off).
func BenchmarkReserveSettle(b *testing.B) {
	for _, limits := range []bool{false, true} {
		for _, users := range []int{1, 100} {
			b.Run(fmt.Sprintf("users=%d/limits=%v", users, limits), func(b *testing.B) {
				benchReserveSettle(b, pgtest.DatabaseURL(b), testOptions, users, limits, 8)
			})
		}
	}
}

// BenchmarkReserveSettleDurable is the same on a server of its own with
// the durability of a production one (fsync and full_page_writes on,
// synchronous_commit on): every settlement is on disk when Settle returns.
// Concurrent settlements share commits (the store's group commit); with
// async, reservations do not wait for the WAL flush (Options.AsyncReserve).
// 32 goroutines, as the gateway's 32 connections of make bench.
func BenchmarkReserveSettleDurable(b *testing.B) {
	srv, err := pgtest.Start("fsync = on", "full_page_writes = on")
	if err != nil {
		pgtest.Unavailable(b, err)
	}
	defer srv.Close()
	for _, async := range []bool{false, true} {
		for _, users := range []int{1, 1000} {
			b.Run(fmt.Sprintf("users=%d/async=%v", users, async), func(b *testing.B) {
				o := postgres.Options{Node: "bench", AsyncReserve: async, PoolSize: 32}
				benchReserveSettle(b, srv.URL("postgres"), o, users, true, max(1, 32/runtime.GOMAXPROCS(0)))
			})
		}
	}
	// The settlements alone: b.N reservations made first (not timed),
	// then settled from 32 goroutines.
	for _, users := range []int{1, 1000} {
		b.Run(fmt.Sprintf("settle-only/users=%d", users), func(b *testing.B) {
			s := open(b, srv.URL("postgres"), postgres.Options{Node: "bench", PoolSize: 32})
			ids, keys := register(b, s, users)
			ctx := context.Background()
			res := make(chan *storage.Reservation, b.N)
			for i := range b.N {
				r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: ids[i%users], KeyID: keys[i%users], Credits: 100})
				if err != nil {
					b.Fatal(err)
				}
				res <- r
			}
			close(res)
			b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, _, err := s.Settle(ctx, <-res, 42, storage.UsageRecord{Model: "m", TotalTokens: 42, RequestID: "bench"}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "settlements/s")
		})
	}
}

// register adds users with a key each and a large balance (unique emails:
// a benchmark function runs more than once on one database).
func register(b *testing.B, s storage.Store, users int) (ids, keys []int64) {
	ids, keys = make([]int64, users), make([]int64, users)
	for i := range ids {
		u, k := storetest.Register(b, s, fmt.Sprintf("b%d-%d@example.com", i, time.Now().UnixNano()), 1<<40)
		ids[i], keys[i] = u.ID, k.ID
	}
	return ids, keys
}

func benchReserveSettle(b *testing.B, dsn string, opts postgres.Options, users int, limits bool, parallelism int) {
	// With limits: every level limited (far out of reach), as the gateway
	// asks when rate limits and a plan are in force.
	var lim [storage.NumLevels]storage.WindowCounts
	for l := range lim {
		for w := range storage.NumWindows {
			lim[l].Requests[w], lim[l].Tokens[w] = 1<<50, 1<<50
		}
	}
	s := open(b, dsn, opts)
	ids, keys := register(b, s, users)
	ctx := context.Background()
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			req := storage.ReserveRequest{UserID: ids[i%users], KeyID: keys[i%users], Credits: 100}
			if limits {
				req.Limits = &storage.LimitRequest{Now: time.Now(), Limits: lim, Tokens: 50}
			}
			r, err := s.Reserve(ctx, req)
			if err != nil {
				b.Error(err)
				return
			}
			if _, _, err := s.Settle(ctx, r, 42, storage.UsageRecord{Model: "m", TotalTokens: 42, RequestID: "bench"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "settlements/s")
}
