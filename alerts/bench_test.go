package alerts

import (
	"testing"

	"go.uber.org/zap"
)

// The request path's cost when nothing crosses: what every settlement
// pays for alerts.
func BenchmarkBalanceChangedNoCrossing(b *testing.B) {
	h := NewHub(nil, zap.NewNop())
	h.Configure(Config{LowBalanceThreshold: 100})
	b.ReportAllocs()
	for i := range b.N {
		h.BalanceChanged(1, int64(10_000-i%1000), int64(9_990-i%1000), nil)
	}
}

// A crossing queues one event (the batcher is not running: the queue
// fills, then events are counted as dropped; neither blocks).
func BenchmarkBalanceChangedCrossing(b *testing.B) {
	h := NewHub(nil, zap.NewNop())
	b.ReportAllocs()
	t := int64(100)
	for range b.N {
		h.BalanceChanged(1, 150, 50, &t)
	}
}
