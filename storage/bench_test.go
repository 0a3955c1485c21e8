package storage

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchStore opens a store with real fsync and registers users, each with
// plenty of credit.
func benchStore(b *testing.B, users int) (*BoltStore, []*User, []*APIKey) {
	b.Helper()
	s, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	var us []*User
	var ks []*APIKey
	for i := 0; i < users; i++ {
		u, k := register(b, s, fmt.Sprintf("bench%d@example.com", i), 1<<50)
		us = append(us, u)
		ks = append(ks, k)
	}
	return s, us, ks
}

// BenchmarkSettleDurable measures reserve+settle throughput including the
// final Flush (every settlement durable with fsync).
func BenchmarkSettleDurable(b *testing.B) { benchSettleDurable(b, 64) }

// BenchmarkSettleDurableOneUser is the worst case for the per-account lock:
// every settlement is for the same user.
func BenchmarkSettleDurableOneUser(b *testing.B) { benchSettleDurable(b, 1) }

func benchSettleDurable(b *testing.B, users int) {
	ctx := context.Background()
	s, us, ks := benchStore(b, users)
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1))
		for pb.Next() {
			i++
			u, k := us[i%len(us)], ks[i%len(ks)]
			r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 100, MaxRequests: 1 << 40})
			if err != nil {
				b.Error(err)
				return
			}
			rec := UsageRecord{Model: "gpt-4o-mini", PromptTokens: 20, CompletionTokens: 40, TotalTokens: 60, RequestID: "chatcmpl-0123456789", Status: 200}
			if _, _, err := s.Settle(ctx, r, 60, rec); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if err := s.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "settlements/s")
	if err := s.VerifyLedger(ctx); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReserve measures an in-memory reserve plus refund.
func BenchmarkReserve(b *testing.B) {
	ctx := context.Background()
	s, us, ks := benchStore(b, 64)
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1))
		for pb.Next() {
			i++
			u, k := us[i%len(us)], ks[i%len(ks)]
			r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 100, MaxRequests: 1 << 40})
			if err != nil {
				b.Error(err)
				return
			}
			if err := s.Refund(ctx, r); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkKeyringHash(b *testing.B) {
	key, _ := testKeyring.Generate("live")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			testKeyring.Hash(key)
		}
	})
}

func BenchmarkParseKey(b *testing.B) {
	key, _ := testKeyring.Generate("live")
	b.ReportAllocs()
	for b.Loop() {
		ParseKey(key)
	}
}

// BenchmarkSettlePaced is the low-concurrency case: one settlement every
// 500 µs from one goroutine (about what one connection sends), with real
// fsync. It reports the process CPU (user+system) per settlement, which is
// mostly the group commits: each window's transaction and fsync is shared
// by the settlements that arrived in it.
func BenchmarkSettlePaced(b *testing.B) {
	for _, w := range []time.Duration{2 * time.Millisecond, 10 * time.Millisecond} {
		b.Run("window="+w.String(), func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{CommitWindow: w})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			u, k := register(b, s, "paced@example.com", 1<<50)
			rec := UsageRecord{Model: "gpt-4o-mini", PromptTokens: 20, CompletionTokens: 40, TotalTokens: 60, RequestID: "chatcmpl-0123456789", Status: 200}
			cpu0 := processCPU()
			b.ResetTimer()
			next := time.Now()
			for b.Loop() {
				next = next.Add(500 * time.Microsecond)
				time.Sleep(time.Until(next))
				r, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 100})
				if err != nil {
					b.Fatal(err)
				}
				if _, _, err := s.Settle(ctx, r, 60, rec); err != nil {
					b.Fatal(err)
				}
			}
			if err := s.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/settlement")
		})
	}
}

// processCPU returns the user+system CPU time of the process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCommitBatch measures the group commit alone, with real fsync:
// each iteration queues per settlements (spread over users) and waits for
// them as one batch: appended to the write-ahead log ("logged", what a
// commit window costs; the checkpoint every second is not in it), or
// applied to bbolt ("applied", what a checkpoint of one batch costs). It
// reports the process CPU per settlement, like BenchmarkSettlePaced,
// without the pacing.
func BenchmarkCommitBatch(b *testing.B) {
	for _, c := range []struct {
		users, per int
		logged     bool
	}{{1, 20, true}, {1, 20, false}, {1, 50, false}, {64, 50, true}, {64, 50, false}} {
		mode := "applied"
		if c.logged {
			mode = "logged"
		}
		b.Run(fmt.Sprintf("%s/users=%d/per=%d", mode, c.users, c.per), func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{CommitWindow: time.Hour, CheckpointInterval: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			wait := s.Flush
			if c.logged {
				wait = s.c.sync
			}
			var us []*User
			var ks []*APIKey
			for i := 0; i < c.users; i++ {
				u, k := register(b, s, fmt.Sprintf("p%d@example.com", i), 1<<50)
				us, ks = append(us, u), append(ks, k)
			}
			rec := UsageRecord{Model: "gpt-4o-mini", PromptTokens: 20, CompletionTokens: 40, TotalTokens: 60, RequestID: "chatcmpl-0123456789", Status: 200}
			batch := func(n int) {
				for i := 0; i < c.per; i++ {
					j := (n*c.per + i) % c.users
					r, _ := s.Reserve(ctx, ReserveRequest{UserID: us[j].ID, KeyID: ks[j].ID, Credits: 100})
					if _, _, err := s.Settle(ctx, r, 60, rec); err != nil {
						b.Fatal(err)
					}
				}
				if err := wait(ctx); err != nil {
					b.Fatal(err)
				}
			}
			for n := 0; n < 300; n++ { // a ledger of some depth
				batch(n)
			}
			if err := s.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			cpu0 := processCPU()
			b.ResetTimer()
			n := 0
			for b.Loop() {
				batch(n)
				n++
			}
			b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N*c.per), "cpu-µs/settlement")
		})
	}
}
