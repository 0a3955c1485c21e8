package caddymodule

import (
	"math"
	"testing"
)

func TestBucketQuantile(t *testing.T) {
	bounds := []float64{0.1, 0.5, 1, math.Inf(1)}
	for _, tc := range []struct {
		name       string
		q          float64
		cumulative []uint64
		total      uint64
		want       float64
	}{
		{"no observations", 0.5, []uint64{0, 0, 0, 0}, 0, 0},
		{"all in the first bucket", 0.5, []uint64{10, 10, 10, 10}, 10, 0.05},
		{"interpolated in the second", 0.5, []uint64{2, 6, 10, 10}, 10, 0.1 + 0.4*(5-2)/4},
		{"upper edge of a bucket", 0.6, []uint64{2, 6, 10, 10}, 10, 0.5},
		{"p99 in the third", 0.99, []uint64{2, 6, 10, 10}, 10, 0.5 + 0.5*(9.9-6)/4},
		{"beyond the last finite bound", 0.99, []uint64{0, 0, 1, 10}, 10, 1},
	} {
		if got := bucketQuantile(tc.q, bounds, tc.cumulative, tc.total); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestOutcomeCountsListsEveryOutcome(t *testing.T) {
	before := OutcomeCounts()
	seriesChat.requests[outcomeInsufficient].Inc()
	after := OutcomeCounts()
	if len(after) != int(numOutcomes) {
		t.Errorf("%d outcomes, want %d", len(after), numOutcomes)
	}
	if after["insufficient_credits"] != before["insufficient_credits"]+1 {
		t.Errorf("insufficient_credits went from %d to %d after one", before["insufficient_credits"], after["insufficient_credits"])
	}
	seriesEmbeddings.latency.Observe(0.2)
	var found bool
	for _, l := range UpstreamLatency() {
		if l.Endpoint == endpointEmbeddings {
			found = l.Count >= 1 && l.P50 > 0.1 && l.P50 <= 0.25
		}
	}
	if !found {
		t.Errorf("embeddings latency not summarized: %+v", UpstreamLatency())
	}
}
