package alerts

import (
	"testing"
	"time"
)

func TestBurst(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	b := NewBurst(3, time.Minute)
	fires := func(key int64, at time.Duration) bool {
		f, _ := b.Hit(key, t0.Add(at))
		return f
	}
	steps := []struct {
		key  int64
		at   time.Duration
		want bool
	}{
		{1, 0, false},
		{1, time.Second, false},
		{1, 2 * time.Second, true}, // third in the window: a burst
		{1, 3 * time.Second, false},
		{2, 3 * time.Second, false},  // other keys count apart
		{1, 61 * time.Second, false}, // the burst goes on in the next window
		{1, 62 * time.Second, false},
		{1, 63 * time.Second, false},  // still the same burst
		{1, 124 * time.Second, false}, // a quiet window (one refusal)
		{1, 190 * time.Second, false}, // new window after a quiet one
		{1, 191 * time.Second, false},
		{1, 192 * time.Second, true}, // a new burst fires again
	}
	for i, s := range steps {
		if got := fires(s.key, s.at); got != s.want {
			t.Fatalf("step %d (key %d at %v): fired %v, want %v", i, s.key, s.at, got, s.want)
		}
	}
}

func TestBurstBounded(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	b := NewBurst(1, time.Minute)
	for i := range maxBurstKeys + 10 {
		b.Hit(int64(i), t0)
	}
	if len(b.keys) > maxBurstKeys {
		t.Fatalf("%d keys tracked", len(b.keys))
	}
	// Old keys make room after their window.
	if f, _ := b.Hit(-1, t0.Add(3*time.Minute)); !f {
		t.Fatal("a new key was not tracked after old ones expired")
	}
}
