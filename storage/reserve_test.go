package storage

import "testing"

// TestReserveAmount is the share rule of flexible reservations.
func TestReserveAmount(t *testing.T) {
	tests := []struct {
		name                                string
		available, holds, waiting, min, max int64
		want                                int64
	}{
		{"fixed takes its cost", 1000, 3, 2, 0, 400, 400},
		{"fixed even when unaffordable", 10, 0, 0, 0, 400, 400},
		{"min not below max is fixed", 1000, 0, 0, 400, 400, 400},
		{"alone: all the balance affords", 1000, 0, 0, 10, 4106, 1000},
		{"alone: capped at the worst case", 1000, 0, 0, 10, 300, 300},
		{"one in flight: half", 1000, 1, 0, 10, 4106, 500},
		{"19 waiting behind: a twentieth", 1000, 0, 19, 10, 4106, 50},
		{"holds and waiting add up", 900, 2, 6, 10, 4106, 100},
		{"share rounds down", 100, 2, 0, 10, 4106, 33},
		{"share below the minimum: the minimum", 100, 10, 10, 20, 4106, 20},
		{"minimum beyond available: still the minimum (refused)", 5, 1, 0, 20, 4106, 20},
		{"nothing available", 0, 4, 0, 20, 4106, 20},
		{"negative available counts as none", -50, 1, 0, 20, 4106, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReserveAmount(tt.available, tt.holds, tt.waiting, tt.min, tt.max); got != tt.want {
				t.Fatalf("ReserveAmount(%d, %d, %d, %d, %d) = %d, want %d", tt.available, tt.holds, tt.waiting, tt.min, tt.max, got, tt.want)
			}
		})
	}
}
