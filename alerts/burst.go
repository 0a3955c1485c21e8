package alerts

import (
	"sync"
	"time"
)

// maxBurstKeys bounds the keys tracked at once; beyond it, keys not seen
// for a window are dropped first, and new keys are not tracked until
// there is room.
const maxBurstKeys = 10_000

// Burst detects bursts of refused requests per key, in memory: Hit reports
// true once when a key's refusals in one window reach threshold, and not
// again while they keep reaching it window after window; a window with
// fewer ends the burst, so the next one fires again.
type Burst struct {
	threshold int
	window    time.Duration

	mu   sync.Mutex
	keys map[int64]*burstState
}

type burstState struct {
	start  time.Time
	count  int
	firing bool
}

// NewBurst returns a detector; threshold < 1 counts as 1.
func NewBurst(threshold int, window time.Duration) *Burst {
	return &Burst{threshold: max(threshold, 1), window: window, keys: map[int64]*burstState{}}
}

// Hit counts a refusal of key at now and reports whether it starts a burst.
func (b *Burst) Hit(key int64, now time.Time) (fire bool, count int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.keys[key]
	if !ok {
		if len(b.keys) >= maxBurstKeys {
			b.sweepLocked(now)
			if len(b.keys) >= maxBurstKeys {
				return false, 0
			}
		}
		st = &burstState{start: now}
		b.keys[key] = st
	}
	if now.Sub(st.start) >= b.window {
		// A new window: the burst goes on only if the last one reached the
		// threshold and this one follows it directly.
		if st.count < b.threshold || now.Sub(st.start) >= 2*b.window {
			st.firing = false
		}
		st.start, st.count = now, 0
	}
	st.count++
	if st.count >= b.threshold && !st.firing {
		st.firing = true
		return true, st.count
	}
	return false, st.count
}

func (b *Burst) sweepLocked(now time.Time) {
	for k, st := range b.keys {
		if now.Sub(st.start) >= 2*b.window {
			delete(b.keys, k)
		}
	}
}
