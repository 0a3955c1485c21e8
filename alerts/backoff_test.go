package alerts

import (
	"testing"
	"time"
)

func TestRetryDelay(t *testing.T) {
	base, ceiling := 30*time.Second, time.Hour
	tests := []struct {
		n      int
		jitter float64
		want   time.Duration
	}{
		{1, 0, 30 * time.Second},
		{2, 0, time.Minute},
		{3, 0, 2 * time.Minute},
		{8, 0, time.Hour}, // 30s·2^7 = 64m, capped
		{0, 0, 30 * time.Second},
		{1, 0.5, 22500 * time.Millisecond},
		{1, 0.999999, 15*time.Second + 15*time.Microsecond},
		{100, 0, time.Hour},
		{100, 1, 30 * time.Minute},
	}
	for _, tc := range tests {
		got := RetryDelay(tc.n, base, ceiling, tc.jitter)
		if d := got - tc.want; d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("RetryDelay(%d, jitter %v) = %v, want %v", tc.n, tc.jitter, got, tc.want)
		}
	}
}

func TestNextAttemptGivesUp(t *testing.T) {
	created := time.Unix(1_800_000_000, 0)
	if next := NextAttempt(created, created.Add(time.Minute), 1, 30*time.Second, time.Hour, 24*time.Hour, 0); !next.Equal(created.Add(90 * time.Second)) {
		t.Fatalf("next = %v", next)
	}
	if next := NextAttempt(created, created.Add(23*time.Hour+30*time.Minute), 20, 30*time.Second, time.Hour, 24*time.Hour, 0); !next.IsZero() {
		t.Fatalf("retry past a day: %v", next)
	}
	// A day of failures is a bounded number of attempts.
	at, n := created, 0
	for {
		n++
		next := NextAttempt(created, at, n, 30*time.Second, time.Hour, 24*time.Hour, 0)
		if next.IsZero() {
			break
		}
		at = next
	}
	if n < 20 || n > 40 {
		t.Fatalf("%d attempts in a day", n)
	}
}
