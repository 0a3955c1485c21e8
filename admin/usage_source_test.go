package admin

import (
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// usageSince sums to what the records from since on add up to, for since
// on a whole day, a whole hour or neither, with and without a user or key
// filter; and after the records are pruned the whole-day and whole-hour
// windows still read the same from the rollups.
func TestUsageSince(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	key, uid := registerUser(t, h, "since@example.com")
	other, otherID := registerUser(t, h, "since2@example.com")
	kid, otherKid := keyIDOf(t, h, key), keyIDOf(t, h, other)
	st := app.Store()
	for _, u := range []int64{uid, otherID} {
		if _, _, err := st.AddCredits(t.Context(), u, 1_000_000, storage.LedgerTopUp, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Date(2026, 6, 10, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 120; i++ {
		at := base.Add(time.Duration(i) * 47 * time.Minute)
		if i%4 == 3 {
			settle(t, app, otherID, otherKid, "m2", int64(i), 1, at)
		} else {
			settle(t, app, uid, kid, []string{"m1", "m2"}[i%2], int64(i), 2, at)
		}
	}
	recs, err := st.ListUsage(t.Context(), storage.UsageFilter{})
	if err != nil || len(recs) != 120 {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	want := func(user, key int64, since time.Time) usageTotals {
		var sum usageTotals
		for i := range recs {
			r := &recs[i]
			if (user == 0 || r.UserID == user) && (key == 0 || r.KeyID == key) && !r.Time.Before(since) {
				row := recordRow(r)
				sum.add(&row)
			}
		}
		return sum
	}
	got := func(user, key int64, since time.Time) usageTotals {
		rows, err := usageSince(t.Context(), st, user, key, since)
		if err != nil {
			t.Fatal(err)
		}
		var sum usageTotals
		for i := range rows {
			sum.add(&rows[i])
		}
		return sum
	}
	type window struct {
		name      string
		user, key int64
		since     time.Time
		aligned   bool
	}
	windows := []window{
		{"everything", 0, 0, time.Time{}, true},
		{"a whole day", 0, 0, base.AddDate(0, 0, 1), true},
		{"a whole hour", uid, 0, base.Add(29 * time.Hour), true},
		{"mid-hour", 0, 0, base.Add(29*time.Hour + 13*time.Minute), false},
		{"mid-hour, one key", 0, otherKid, base.Add(50*time.Hour + 59*time.Minute), false},
		{"mid-hour, one user", uid, 0, base.Add(7*time.Hour + time.Minute), false},
		{"after the last", 0, 0, base.AddDate(0, 0, 30), true},
	}
	for _, w := range windows {
		if g, want := got(w.user, w.key, w.since), want(w.user, w.key, w.since); g != want {
			t.Errorf("%s: %+v, records sum to %+v", w.name, g, want)
		}
	}
	if _, err := st.PruneUsage(t.Context(), time.Now().Add(time.Hour), time.Time{}); err != nil {
		t.Fatal(err)
	}
	for _, w := range windows {
		if !w.aligned {
			continue
		}
		if g, want := got(w.user, w.key, w.since), want(w.user, w.key, w.since); g != want {
			t.Errorf("%s after pruning the records: %+v, records summed to %+v", w.name, g, want)
		}
	}
}
