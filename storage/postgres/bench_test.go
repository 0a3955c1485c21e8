package postgres_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// BenchmarkReserveSettle measures one request's store work (a reservation
// and its settlement, each one call and one commit) from parallel
// goroutines, spread over users (1: one hot user).
func BenchmarkReserveSettle(b *testing.B) {
	for _, users := range []int{1, 100} {
		b.Run(fmt.Sprintf("users=%d", users), func(b *testing.B) {
			s := open(b, pgtest.DatabaseURL(b), testOptions)
			ids := make([]int64, users)
			for i := range ids {
				u, _ := storetest.Register(b, s, fmt.Sprintf("b%d@example.com", i), 1<<40)
				ids[i] = u.ID
			}
			ctx := context.Background()
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: ids[i%users], Credits: 100})
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
}
