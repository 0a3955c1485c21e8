package storage

import (
	"errors"
	"testing"
	"time"
)

func TestBudgetWindows(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		reset      BudgetReset
		now        string
		start, end string // "" for the zero time
	}{
		{ResetNever, "2026-03-04T15:00:00Z", "", ""},
		{"", "2026-03-04T15:00:00Z", "", ""},
		{ResetDaily, "2026-03-04T15:00:00Z", "2026-03-04T00:00:00Z", "2026-03-05T00:00:00Z"},
		{ResetDaily, "2026-03-04T00:00:00Z", "2026-03-04T00:00:00Z", "2026-03-05T00:00:00Z"},
		{ResetDaily, "2026-03-04T23:59:59.999999999Z", "2026-03-04T00:00:00Z", "2026-03-05T00:00:00Z"},
		{ResetDaily, "2026-12-31T23:00:00Z", "2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"},
		// UTC boundaries whatever the caller's zone: 01:30+02:00 is the
		// previous UTC day.
		{ResetDaily, "2026-03-05T01:30:00+02:00", "2026-03-04T00:00:00Z", "2026-03-05T00:00:00Z"},
		// Weeks start on Monday: 2026-03-02 is a Monday.
		{ResetWeekly, "2026-03-02T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"},
		{ResetWeekly, "2026-03-04T15:00:00Z", "2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"},
		{ResetWeekly, "2026-03-08T23:59:59Z", "2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"}, // Sunday
		{ResetWeekly, "2026-03-09T00:00:00Z", "2026-03-09T00:00:00Z", "2026-03-16T00:00:00Z"},
		{ResetWeekly, "2027-01-01T12:00:00Z", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"}, // across a year
		{ResetWeekly, "2028-03-01T12:00:00Z", "2028-02-28T00:00:00Z", "2028-03-06T00:00:00Z"}, // across a leap day
		{ResetMonthly, "2026-03-04T15:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"},
		{ResetMonthly, "2026-01-31T23:59:59Z", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"}, // 31 days
		{ResetMonthly, "2026-02-15T00:00:00Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"}, // 28 days
		{ResetMonthly, "2028-02-29T12:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"}, // leap day
		{ResetMonthly, "2026-04-30T23:59:59Z", "2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"}, // 30 days
		{ResetMonthly, "2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
	} {
		now := at(tc.now)
		var start, end time.Time
		if tc.start != "" {
			start, end = at(tc.start), at(tc.end)
		}
		if got := tc.reset.WindowStart(now); !got.Equal(start) || got.Location() != time.UTC {
			t.Errorf("%s at %s: start %v, want %v", tc.reset, tc.now, got, start)
		}
		if got := tc.reset.WindowEnd(now); !got.Equal(end) {
			t.Errorf("%s at %s: end %v, want %v", tc.reset, tc.now, got, end)
		}
	}
}

func TestParseBudgetReset(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want BudgetReset
		ok   bool
	}{
		{"", ResetNever, true}, {"never", ResetNever, true}, {"daily", ResetDaily, true},
		{"weekly", ResetWeekly, true}, {"monthly", ResetMonthly, true},
		{"Daily", "", false}, {"hourly", "", false}, {"yearly", "", false}, {" daily", "", false},
	} {
		got, err := ParseBudgetReset(tc.in)
		if tc.ok != (err == nil) || got != tc.want || (!tc.ok && !errors.Is(err, ErrInvalid)) {
			t.Errorf("ParseBudgetReset(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestSpendIn(t *testing.T) {
	d1 := time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC)
	d2 := d1.AddDate(0, 0, 1)
	for _, tc := range []struct {
		spend Spend
		start time.Time
		want  int64
	}{
		{Spend{Window: d1, Used: 40}, d1, 40},
		{Spend{Window: d1, Used: 40}, d2, 0},           // the window reset
		{Spend{Window: d2, Used: 40}, d1, 40},          // a clock behind sees the later window
		{Spend{Used: 40}, time.Time{}, 40},             // never resets
		{Spend{Window: d1, Used: 40}, time.Time{}, 40}, // daily, then never: counts on
		{Spend{Used: 40}, d1, 0},                       // never, then daily: a new window
	} {
		if got := tc.spend.SpendIn(tc.start); got != tc.want {
			t.Errorf("%+v in %v = %d, want %d", tc.spend, tc.start, got, tc.want)
		}
	}
}

func TestMergeSpend(t *testing.T) {
	for _, tc := range []struct {
		s    Spend
		w, c int64
		want Spend
	}{
		{Spend{Window: time.Unix(100, 0).UTC(), Used: 5}, 100, 3, Spend{Window: time.Unix(100, 0).UTC(), Used: 8}},
		{Spend{Window: time.Unix(100, 0).UTC(), Used: 5}, 200, 3, Spend{Window: time.Unix(200, 0).UTC(), Used: 3}},
		{Spend{Window: time.Unix(100, 0).UTC(), Used: 5}, 50, 3, Spend{Window: time.Unix(100, 0).UTC(), Used: 5}},
		{Spend{}, (time.Time{}).Unix(), 3, Spend{Used: 3}},
	} {
		if got := mergeSpend(tc.s, tc.w, tc.c); !got.Window.Equal(tc.want.Window) || got.Used != tc.want.Used {
			t.Errorf("mergeSpend(%+v, %d, %d) = %+v, want %+v", tc.s, tc.w, tc.c, got, tc.want)
		}
	}
}

func TestSpendCrossed(t *testing.T) {
	for _, tc := range []struct {
		c       SpendChange
		percent int64
		want    bool
	}{
		{SpendChange{Valid: true, Limited: true, Limit: 100, Before: 79, After: 80}, 80, true},
		{SpendChange{Valid: true, Limited: true, Limit: 100, Before: 80, After: 90}, 80, false}, // crossed before
		{SpendChange{Valid: true, Limited: true, Limit: 100, Before: 10, After: 79}, 80, false},
		{SpendChange{Valid: true, Limited: true, Limit: 100, Before: 10, After: 100}, 80, true},
		{SpendChange{Valid: true, Limited: true, Limit: 100, Before: 99, After: 100}, 100, true},
		{SpendChange{Valid: true, Limited: true, Limit: 100, Before: 100, After: 100}, 100, false},
		{SpendChange{Valid: true, Limited: true, Limit: 7, Before: 5, After: 6}, 80, true}, // 5.6 rounds up
		{SpendChange{Valid: true, Limited: true, Limit: 0, Before: 0, After: 0}, 100, false},
		{SpendChange{Valid: true, Limit: 100, Before: 0, After: 100}, 80, false},   // no limit
		{SpendChange{Limited: true, Limit: 100, Before: 0, After: 100}, 80, false}, // not counted
	} {
		if got := tc.c.Crossed(tc.percent); got != tc.want {
			t.Errorf("%+v crossed %d%% = %v, want %v", tc.c, tc.percent, got, tc.want)
		}
	}
}
