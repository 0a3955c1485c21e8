package storetest

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// RollupsOf sums records as the store's rollups of period p must.
func RollupsOf(recs []storage.UsageRecord, p storage.RollupPeriod) []storage.UsageRollup {
	type id struct {
		start     time.Time
		user, key int64
		model     string
		outcome   storage.Outcome
	}
	m := map[id]*storage.UsageRollup{}
	for i := range recs {
		r := &recs[i]
		k := id{p.Truncate(r.Time), r.UserID, r.KeyID, r.Model, r.Outcome()}
		u := m[k]
		if u == nil {
			u = &storage.UsageRollup{Start: k.start, UserID: k.user, KeyID: k.key, Model: k.model, Outcome: k.outcome}
			m[k] = u
		}
		u.Add(r)
	}
	out := make([]storage.UsageRollup, 0, len(m))
	for _, u := range m {
		out = append(out, *u)
	}
	slices.SortFunc(out, compareRollups)
	return out
}

func compareRollups(a, b storage.UsageRollup) int {
	return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.KeyID, b.KeyID),
		cmp.Compare(a.Model, b.Model), cmp.Compare(a.Outcome, b.Outcome))
}

func mustRollups(t *testing.T, s storage.Store, f storage.RollupFilter) []storage.UsageRollup {
	t.Helper()
	got, err := s.UsageRollups(context.Background(), f)
	if err != nil {
		t.Fatalf("UsageRollups(%+v): %v", f, err)
	}
	for i := range got {
		got[i].Start = got[i].Start.UTC()
	}
	return got
}

func sameRollups(t *testing.T, what string, got, want []storage.UsageRollup) {
	t.Helper()
	if !slices.EqualFunc(got, want, func(a, b storage.UsageRollup) bool { return compareRollups(a, b) == 0 && a == b }) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// confRollups: the hourly and daily rollups are the sums of the records,
// also after the records are pruned; pruning the detail groups the old
// charge entries of the ledger without changing the balance or breaking
// its running sum; pruning the rollups drops the old ones.
func confRollups(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, k := Register(t, s, "rollups@example.com", 1_000_000)
	u2, k2 := Register(t, s, "rollups2@example.com", 1_000_000)
	k3, _ := NewKey(t, "second")
	k3.UserID = u.ID
	if err := s.CreateKey(ctx, k3); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 2, 27, 22, 0, 0, 0, time.UTC)
	models := []string{"gpt-4o-mini", "claude-sonnet", "m"}
	for i := 0; i < 90; i++ {
		uid, kid := u.ID, k.ID
		switch i % 3 {
		case 1:
			uid, kid = u2.ID, k2.ID
		case 2:
			kid = k3.ID
		}
		r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: uid, KeyID: kid, Credits: 100})
		if err != nil {
			t.Fatal(err)
		}
		rec := storage.UsageRecord{Model: models[i%len(models)], PromptTokens: int64(i), CompletionTokens: int64(2 * i),
			TotalTokens: int64(3*i + i%2), CachedTokens: int64(i % 5), CacheWriteTokens: int64(i % 7),
			RequestID: fmt.Sprintf("%08d-0000-4000-8000-000000000000", i), Status: 200, Estimated: i%4 == 0,
			Endpoint: "/v1/chat/completions", Time: base.Add(time.Duration(i) * 37 * time.Minute)}
		if i%9 == 0 {
			rec.Status = 429
		}
		if _, _, err := s.Settle(ctx, r, int64(i%11), rec); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.ListUsage(ctx, storage.UsageFilter{})
	if err != nil || len(recs) != 90 {
		t.Fatalf("ListUsage: %d records, %v", len(recs), err)
	}
	hours, days := RollupsOf(recs, storage.RollupHour), RollupsOf(recs, storage.RollupDay)
	sameRollups(t, "hourly", mustRollups(t, s, storage.RollupFilter{Period: storage.RollupHour}), hours)
	sameRollups(t, "daily", mustRollups(t, s, storage.RollupFilter{Period: storage.RollupDay}), days)
	// Filters: a user, a key, a window of whole periods.
	var mine []storage.UsageRecord
	for _, r := range recs {
		if r.KeyID == k3.ID && !r.Time.Before(base.Add(24*time.Hour)) {
			mine = append(mine, r)
		}
	}
	sameRollups(t, "key since", mustRollups(t, s, storage.RollupFilter{Period: storage.RollupHour, KeyID: k3.ID, Since: base.Add(24 * time.Hour)}),
		RollupsOf(mine, storage.RollupHour))
	var u2Day []storage.UsageRecord
	day2 := storage.RollupDay.Truncate(base.Add(24 * time.Hour))
	for _, r := range recs {
		if r.UserID == u2.ID && !r.Time.Before(day2) && r.Time.Before(day2.AddDate(0, 0, 1)) {
			u2Day = append(u2Day, r)
		}
	}
	sameRollups(t, "user's day", mustRollups(t, s, storage.RollupFilter{Period: storage.RollupDay, UserID: u2.ID, Since: day2, Until: day2.AddDate(0, 0, 1)}),
		RollupsOf(u2Day, storage.RollupDay))
	if _, err := s.UsageRollups(ctx, storage.RollupFilter{Period: "week"}); err == nil {
		t.Fatal("a rollup period of a week accepted")
	}

	// Prune all the detail, and group every charge entry so far.
	balances := []int64{MustBalance(t, s, u.ID).Credits, MustBalance(t, s, u2.ID).Credits}
	if _, _, err := s.AddCredits(ctx, u.ID, 5, storage.LedgerTopUp, "", "between charges"); err != nil {
		t.Fatal(err)
	}
	r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Settle(ctx, r, 3, storage.UsageRecord{Model: "m", Time: base, Status: 200}); err != nil {
		t.Fatal(err)
	}
	r, err = s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Settle(ctx, r, 4, storage.UsageRecord{Model: "m", Time: base, Status: 200}); err != nil {
		t.Fatal(err)
	}
	balances[0] += 5 - 3 - 4
	flush(t, s)
	extra := []storage.UsageRecord{
		{UserID: u.ID, KeyID: k.ID, Model: "m", Time: base, Status: 200, Credits: 3},
		{UserID: u.ID, KeyID: k.ID, Model: "m", Time: base, Status: 200, Credits: 4},
	}
	hours = RollupsOf(append(recs, extra...), storage.RollupHour)
	days = RollupsOf(append(recs, extra...), storage.RollupDay)
	charges := map[int64]int64{}
	for _, rec := range append(recs, extra...) {
		if rec.Credits > 0 {
			charges[rec.UserID]++
		}
	}
	n, err := s.PruneUsage(ctx, time.Now().Add(time.Minute), time.Time{})
	if err != nil || n != 92 {
		t.Fatalf("PruneUsage = %d, %v", n, err)
	}
	if got, err := s.ListUsage(ctx, storage.UsageFilter{}); err != nil || len(got) != 0 {
		t.Fatalf("records left after pruning: %d, %v", len(got), err)
	}
	sameRollups(t, "hourly after pruning the records", mustRollups(t, s, storage.RollupFilter{Period: storage.RollupHour}), hours)
	sameRollups(t, "daily after pruning the records", mustRollups(t, s, storage.RollupFilter{Period: storage.RollupDay}), days)
	for i, uid := range []int64{u.ID, u2.ID} {
		entries := ledger(t, s, uid)
		if bal := MustBalance(t, s, uid).Credits; bal != balances[i] || ledgerSum(t, s, uid) != bal {
			t.Fatalf("user %d: balance %d, ledger sum %d, want %d", uid, bal, ledgerSum(t, s, uid), balances[i])
		}
		var sum, covered int64
		var kinds []string
		for _, e := range entries {
			sum += e.Amount
			if e.BalanceAfter != sum {
				t.Fatalf("user %d entry %d: balance_after %d, running sum %d", uid, e.ID, e.BalanceAfter, sum)
			}
			if e.Kind == storage.LedgerCharge {
				covered += e.Requests
			}
			kinds = append(kinds, string(e.Kind))
		}
		if covered != charges[uid] {
			t.Fatalf("user %d: charge entries cover %d requests, want %d", uid, covered, charges[uid])
		}
		want := []string{"grant", "charge"}
		if i == 0 {
			want = []string{"grant", "charge", "top_up", "charge"}
		}
		if !slices.Equal(kinds, want) {
			t.Fatalf("user %d: ledger after grouping %v, want %v", uid, kinds, want)
		}
	}
	verifyLedger(t, s)

	// Pruning the rollups drops the days before the cut, and keeps the rest.
	cut := storage.RollupDay.Truncate(base.Add(48 * time.Hour))
	if _, err := s.PruneUsage(ctx, time.Now().Add(time.Minute), cut); err != nil {
		t.Fatal(err)
	}
	var keptH, keptD []storage.UsageRollup
	for _, r := range hours {
		if !r.Start.Before(cut) {
			keptH = append(keptH, r)
		}
	}
	for _, r := range days {
		if !r.Start.Before(cut) {
			keptD = append(keptD, r)
		}
	}
	sameRollups(t, "hourly after pruning rollups", mustRollups(t, s, storage.RollupFilter{Period: storage.RollupHour}), keptH)
	sameRollups(t, "daily after pruning rollups", mustRollups(t, s, storage.RollupFilter{Period: storage.RollupDay}), keptD)
}

// RollupPeriods are the periods of the rollups a store keeps.
var RollupPeriods = []storage.RollupPeriod{storage.RollupHour, storage.RollupDay}

// CheckRollups fails t unless s's hourly and daily rollups are what want
// holds (all of each period), and returns them.
func CheckRollups(t testing.TB, s storage.Store, what string, want map[storage.RollupPeriod][]storage.UsageRollup) {
	t.Helper()
	for _, p := range RollupPeriods {
		got, err := s.UsageRollups(context.Background(), storage.RollupFilter{Period: p})
		if err != nil || !slices.Equal(got, want[p]) {
			t.Fatalf("%s: %s rollups %v\n got %+v\nwant %+v", what, p, err, got, want[p])
		}
	}
}

// RollupsOfAll is RollupsOf for each of RollupPeriods.
func RollupsOfAll(recs []storage.UsageRecord) map[storage.RollupPeriod][]storage.UsageRollup {
	out := map[storage.RollupPeriod][]storage.UsageRollup{}
	for _, p := range RollupPeriods {
		out[p] = RollupsOf(recs, p)
	}
	return out
}
