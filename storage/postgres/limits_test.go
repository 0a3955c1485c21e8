package postgres

import (
	"testing"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// The database's flat layout and LimitState convert both ways, and a
// breach index names its level, window and kind.
func TestLimitLayout(t *testing.T) {
	var st storage.LimitState
	n := int64(1)
	for l := range st {
		for w := range storage.NumWindows {
			st[l].Requests[w], st[l].Tokens[w] = n, n+100
			n++
		}
	}
	v := flatten(&st)
	if got := unflatten(v[:]); *got != st {
		t.Fatalf("round trip: %+v", got)
	}
	if got := unflatten(nil); *got != (storage.LimitState{}) {
		t.Fatalf("no counts: %+v", got)
	}
	lim := &storage.LimitRequest{Limits: st}
	tests := []struct {
		breach int32
		level  storage.LimitLevel
		window int
		tokens bool
	}{
		{3, storage.LevelPlan, storage.WindowDay, false},
		{8, storage.LevelPlan, storage.WindowMonth, true},
		{9, storage.LevelUser, storage.WindowMinute, false},
		{14, storage.LevelUser, storage.WindowHour, true},
		{19, storage.LevelKey, storage.WindowDay, false},
		{21, storage.LevelKey, storage.WindowMinute, true},
	}
	for _, tt := range tests {
		e := exceeded(lim, tt.breach, v[:])
		want := st[tt.level].Requests[tt.window]
		if tt.tokens {
			want = st[tt.level].Tokens[tt.window]
		}
		if e.Level != tt.level || e.Window != tt.window || e.Tokens != tt.tokens || e.Limit != want || e.State != st {
			t.Errorf("breach %d: %+v", tt.breach, e)
		}
	}
}
