package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// BenchmarkReserveSettle measures one request's store work (a reservation
// and its settlement, each one call and one commit) from parallel
// goroutines, spread over users (1: one hot user).
func BenchmarkReserveSettle(b *testing.B) {
	// With limits: every level limited (far out of reach), as the gateway
	// asks when rate limits and a plan are in force.
	var lim [storage.NumLevels]storage.WindowCounts
	for l := range lim {
		for w := range storage.NumWindows {
			lim[l].Requests[w], lim[l].Tokens[w] = 1<<50, 1<<50
		}
	}
	for _, limits := range []bool{false, true} {
		for _, users := range []int{1, 100} {
			benchReserveSettle(b, users, limits, lim)
		}
	}
}

func benchReserveSettle(b *testing.B, users int, limits bool, lim [storage.NumLevels]storage.WindowCounts) {
	b.Run(fmt.Sprintf("users=%d/limits=%v", users, limits), func(b *testing.B) {
		s := open(b, pgtest.DatabaseURL(b), testOptions)
		ids, keys := make([]int64, users), make([]int64, users)
		for i := range ids {
			u, k := storetest.Register(b, s, fmt.Sprintf("b%d@example.com", i), 1<<40)
			ids[i], keys[i] = u.ID, k.ID
		}
		ctx := context.Background()
		b.SetParallelism(8)
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
	})
}
