package alerts

import "testing"

func TestLowBalanceCrossed(t *testing.T) {
	tests := []struct {
		before, after, threshold int64
		want                     bool
	}{
		{100, 40, 50, true},   // crosses
		{50, 49, 50, true},    // from exactly the threshold
		{49, 10, 50, false},   // already below: no second alert
		{60, 50, 50, false},   // lands on it: not below
		{40, 60, 50, false},   // upward (a top-up): recovers, no alert
		{100, 40, 0, false},   // off
		{100, 40, -5, false},  // off
		{100, 100, 50, false}, // no change
		{60, 0, 50, true},     // straight to empty
	}
	for _, tc := range tests {
		if got := LowBalanceCrossed(tc.before, tc.after, tc.threshold); got != tc.want {
			t.Errorf("LowBalanceCrossed(%d, %d, %d) = %v, want %v", tc.before, tc.after, tc.threshold, got, tc.want)
		}
	}
}

// A sequence of settlements and a top-up fires once per crossing.
func TestLowBalanceFiresOncePerCrossing(t *testing.T) {
	balances := []int64{100, 80, 55, 45, 30, 10, 200, 150, 49, 20}
	fired := 0
	for i := 1; i < len(balances); i++ {
		if LowBalanceCrossed(balances[i-1], balances[i], 50) {
			fired++
		}
	}
	if fired != 2 {
		t.Fatalf("fired %d times, want 2 (once, then again after recovering)", fired)
	}
}

func TestDepleted(t *testing.T) {
	tests := []struct {
		before, after int64
		want          bool
	}{
		{10, 0, true},
		{1, 0, true},
		{0, 0, false},
		{10, 1, false},
		{0, 10, false},
		{5, -1, true},
	}
	for _, tc := range tests {
		if got := Depleted(tc.before, tc.after); got != tc.want {
			t.Errorf("Depleted(%d, %d) = %v, want %v", tc.before, tc.after, got, tc.want)
		}
	}
}

func TestBudgetCrossings(t *testing.T) {
	tests := []struct {
		before, after, limit int64
		warn, reached        bool
	}{
		{0, 79, 100, false, false},
		{79, 80, 100, true, false},    // exactly 80 %
		{80, 90, 100, false, false},   // already warned
		{90, 100, 100, false, true},   // reached
		{100, 120, 100, false, false}, // already reached
		{0, 100, 100, false, true},    // straight to the limit: reached only
		{50, 85, 100, true, false},
		{0, 4, 5, true, false}, // 4*100 >= 5*80
		{3, 4, 5, true, false},
		{0, 50, 0, false, false}, // no budget
		{0, 1, 1, false, true},
		{0, 7, 9, false, false}, // 700 < 720
		{0, 8, 9, true, false},  // 800 >= 720
	}
	for _, tc := range tests {
		if got := BudgetWarningCrossed(tc.before, tc.after, tc.limit); got != tc.warn {
			t.Errorf("BudgetWarningCrossed(%d, %d, %d) = %v, want %v", tc.before, tc.after, tc.limit, got, tc.warn)
		}
		if got := BudgetReached(tc.before, tc.after, tc.limit); got != tc.reached {
			t.Errorf("BudgetReached(%d, %d, %d) = %v, want %v", tc.before, tc.after, tc.limit, got, tc.reached)
		}
	}
}
