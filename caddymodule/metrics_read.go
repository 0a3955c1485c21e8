package caddymodule

import (
	"math"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Read access to the metering metrics for the management API's system view:
// the same counters Prometheus scrapes, since this process started.

// LatencySummary is the upstream latency of one endpoint since start, in
// seconds, with percentiles estimated from the histogram's buckets.
type LatencySummary struct {
	Endpoint string  `json:"endpoint"`
	Count    uint64  `json:"count"`
	P50      float64 `json:"p50_seconds"`
	P90      float64 `json:"p90_seconds"`
	P99      float64 `json:"p99_seconds"`
}

// collected returns the metrics of c with their protobuf form.
func collected(c prometheus.Collector) []*dto.Metric {
	ch := make(chan prometheus.Metric, 64)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	var out []*dto.Metric
	for m := range ch {
		pb := new(dto.Metric)
		if m.Write(pb) == nil {
			out = append(out, pb)
		}
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// UpstreamLatency summarizes the upstream latency histogram per endpoint,
// sorted by endpoint; endpoints without observations are left out.
func UpstreamLatency() []LatencySummary {
	var out []LatencySummary
	for _, m := range collected(metricUpstreamLatency) {
		h := m.GetHistogram()
		if h == nil || h.GetSampleCount() == 0 {
			continue
		}
		bounds := make([]float64, 0, len(h.GetBucket()))
		counts := make([]uint64, 0, len(h.GetBucket()))
		for _, b := range h.GetBucket() {
			bounds = append(bounds, b.GetUpperBound())
			counts = append(counts, b.GetCumulativeCount())
		}
		n := h.GetSampleCount()
		out = append(out, LatencySummary{
			Endpoint: label(m, "endpoint"),
			Count:    n,
			P50:      bucketQuantile(0.5, bounds, counts, n),
			P90:      bucketQuantile(0.9, bounds, counts, n),
			P99:      bucketQuantile(0.99, bounds, counts, n),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Endpoint < out[j].Endpoint })
	return out
}

// bucketQuantile estimates the q-quantile of a histogram from its upper
// bounds and cumulative counts (total observations in all), interpolating
// linearly inside the bucket, as Prometheus' histogram_quantile does. An
// observation above the last bound is reported as that bound.
func bucketQuantile(q float64, bounds []float64, cumulative []uint64, total uint64) float64 {
	if total == 0 || len(bounds) == 0 {
		return 0
	}
	rank := q * float64(total)
	lower, below := 0.0, uint64(0)
	for i, upper := range bounds {
		if float64(cumulative[i]) >= rank {
			inBucket := cumulative[i] - below
			if inBucket == 0 || math.IsInf(upper, 1) {
				return lower
			}
			return lower + (upper-lower)*(rank-float64(below))/float64(inBucket)
		}
		lower, below = upper, cumulative[i]
	}
	return bounds[len(bounds)-1]
}

// OutcomeCounts returns the metered requests since start by outcome ("ok",
// "estimated", "upstream_error", "insufficient_credits", ...), summed over
// endpoints; every outcome is present.
func OutcomeCounts() map[string]uint64 {
	out := make(map[string]uint64, numOutcomes)
	for _, l := range outcomeLabels {
		out[l] = 0
	}
	for _, m := range collected(metricRequests) {
		out[label(m, "outcome")] += uint64(m.GetCounter().GetValue())
	}
	return out
}
