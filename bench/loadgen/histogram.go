package loadgen

import (
	"math/bits"
	"time"
)

// Histogram is a log-linear latency histogram in the style of HDR
// histograms: values below 256 ns are exact, larger ones fall into 128
// sub-buckets per power of two (under 0.8% relative error). Recording is a
// few instructions and never allocates. It is not safe for concurrent use:
// give each worker its own and Merge them.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    uint64
	min    uint64
	max    uint64
}

const (
	subBits     = 7
	subCount    = 1 << subBits // 128
	histBuckets = 2*subCount + 40*subCount
)

func bucketOf(v uint64) int {
	if v < 2*subCount {
		return int(v)
	}
	e := bits.Len64(v) - (subBits + 1) // >= 1
	m := v >> uint(e)                  // in [128, 256)
	i := 2*subCount + (e-1)*subCount + int(m-subCount)
	if i >= histBuckets {
		i = histBuckets - 1
	}
	return i
}

// bucketValue is the middle of bucket i.
func bucketValue(i int) uint64 {
	if i < 2*subCount {
		return uint64(i)
	}
	j := i - 2*subCount
	e := j/subCount + 1
	m := uint64(j%subCount + subCount)
	return m<<uint(e) + (uint64(1)<<uint(e))/2
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += v
}

// Merge adds o's samples to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Mean is the average sample.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}

// Max is the largest sample.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Quantile returns the q-quantile (0 <= q <= 1), accurate to the bucket
// width, clamped to the observed min and max.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := bucketValue(i)
			if v < h.min {
				v = h.min
			}
			if v > h.max {
				v = h.max
			}
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}
