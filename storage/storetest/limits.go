package storetest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// RunLimits runs the suite of a storage.LimitCounter: rate limits and plan
// quotas counted by the store for every node sharing it. open returns two
// handles on a fresh, empty database (two gateway nodes).
func RunLimits(t *testing.T, open func(t *testing.T) (a, b storage.LimitStore)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b storage.LimitStore)
	}{
		{"RequestRateAcrossHandles", limitsRequestRate},
		{"KeyRate", limitsKeyRate},
		{"TokensReplacedBySettlement", limitsTokens},
		{"PlanCountsHoldsAndTotals", limitsPlan},
		{"WindowsRoll", limitsWindowsRoll},
		{"RefusedForCreditsCountsOnce", limitsCreditRefusal},
		{"FreeRoutes", limitsFree},
		{"MaxRequestsAcrossHandles", limitsMaxRequests},
		{"WithSpendBudgets", limitsWithBudgets},
	}
	runPairs(t, tests, open)
}

// limitsAt is a fixed time in the middle of a UTC minute, hour and day.
var limitsAt = time.Date(2026, 12, 5, 10, 30, 30, 0, time.UTC)

// rate returns limits with the given user-level and key-level
// requests-per-minute (0: none).
func rate(userRPM, keyRPM int64) [storage.NumLevels]storage.WindowCounts {
	var l [storage.NumLevels]storage.WindowCounts
	l[storage.LevelUser].Requests[storage.WindowMinute] = userRPM
	l[storage.LevelKey].Requests[storage.WindowMinute] = keyRPM
	return l
}

// reserveLimited reserves credits under lim and returns the reservation or
// the *storage.LimitExceeded refusal.
func reserveLimited(s storage.Store, u, k int64, credits int64, lim storage.LimitRequest) (*storage.Reservation, *storage.LimitExceeded, error) {
	r, err := s.Reserve(context.Background(), storage.ReserveRequest{UserID: u, KeyID: k, Credits: credits, Limits: &lim})
	var ex *storage.LimitExceeded
	if errors.As(err, &ex) {
		return nil, ex, nil
	}
	return r, nil, err
}

// burst reserves n at once, spread over the handles, and returns the
// reservations and the refusals.
func burst(t *testing.T, stores []storage.LimitStore, n int, u, k int64, lim storage.LimitRequest) ([]*storage.Reservation, []*storage.LimitExceeded) {
	t.Helper()
	var mu sync.Mutex
	var held []*storage.Reservation
	var refused []*storage.LimitExceeded
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(s storage.Store) {
			defer wg.Done()
			r, ex, err := reserveLimited(s, u, k, 1, lim)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Error(err)
			case ex != nil:
				refused = append(refused, ex)
			default:
				held = append(held, r)
			}
		}(stores[i%len(stores)])
	}
	wg.Wait()
	return held, refused
}

// limitsRequestRate: concurrent reservations through both handles admit
// exactly the user's requests per minute.
func limitsRequestRate(t *testing.T, a, b storage.LimitStore) {
	u, k := Register(t, a, "rate@example.com", 1_000_000)
	const rpm = 7
	held, refused := burst(t, []storage.LimitStore{a, b}, 40, u.ID, k.ID, storage.LimitRequest{Now: limitsAt, Limits: rate(rpm, 0)})
	if len(held) != rpm || len(refused) != 40-rpm {
		t.Fatalf("admitted %d, refused %d; want %d, %d", len(held), len(refused), rpm, 40-rpm)
	}
	for _, ex := range refused {
		if ex.Level != storage.LevelUser || ex.Window != storage.WindowMinute || ex.Tokens || ex.Limit != rpm ||
			ex.State[storage.LevelUser].Requests[storage.WindowMinute] != rpm {
			t.Fatalf("refusal %+v", ex)
		}
	}
	for _, r := range held {
		if r.Limits == nil || r.Limits[storage.LevelUser].Requests[storage.WindowMinute] < 1 {
			t.Fatalf("reservation counts %+v", r.Limits)
		}
	}
	// Nothing was reserved for the refused ones.
	if bal := MustBalance(t, b, u.ID); bal.Reserved != rpm {
		t.Fatalf("reserved %d, want %d", bal.Reserved, rpm)
	}
}

// limitsKeyRate: a key's limit refuses its requests only; another key of
// the same user keeps going.
func limitsKeyRate(t *testing.T, a, b storage.LimitStore) {
	ctx := context.Background()
	u, k := Register(t, a, "keyrate@example.com", 1_000_000)
	k2, _ := NewKey(t, "second")
	k2.UserID = u.ID
	if err := a.CreateKey(ctx, k2); err != nil {
		t.Fatal(err)
	}
	lim := storage.LimitRequest{Now: limitsAt, Limits: rate(0, 3)}
	held, refused := burst(t, []storage.LimitStore{a, b}, 10, u.ID, k.ID, lim)
	if len(held) != 3 || len(refused) != 7 || refused[0].Level != storage.LevelKey {
		t.Fatalf("admitted %d, refused %d (%+v)", len(held), len(refused), refused)
	}
	if _, ex, err := reserveLimited(b, u.ID, k2.ID, 1, lim); err != nil || ex != nil {
		t.Fatalf("other key: %v %+v", err, ex)
	}
}

// limitsTokens: estimates count at once; the settlement replaces them by
// the actual tokens, a refund takes them back, on either handle.
func limitsTokens(t *testing.T, a, b storage.LimitStore) {
	ctx := context.Background()
	u, k := Register(t, a, "tokens@example.com", 1_000_000)
	var l [storage.NumLevels]storage.WindowCounts
	l[storage.LevelUser].Tokens[storage.WindowMinute] = 100
	lim := storage.LimitRequest{Now: limitsAt, Limits: l, Tokens: 40}
	r1, _, err := reserveLimited(a, u.ID, k.ID, 1, lim)
	if err != nil {
		t.Fatal(err)
	}
	r2, _, err := reserveLimited(b, u.ID, k.ID, 1, lim)
	if err != nil {
		t.Fatal(err)
	}
	if _, ex, err := reserveLimited(a, u.ID, k.ID, 1, lim); err != nil || ex == nil || !ex.Tokens || ex.State[storage.LevelUser].Tokens[storage.WindowMinute] != 80 {
		t.Fatalf("third estimate: %v %+v", err, ex)
	}
	// 40 estimated, 10 used: 50 counted, room for another 40.
	if _, _, err := b.Settle(ctx, r1, 1, storage.UsageRecord{Model: "m", TotalTokens: 10, Time: limitsAt}); err != nil {
		t.Fatal(err)
	}
	r3, ex, err := reserveLimited(a, u.ID, k.ID, 1, lim)
	if err != nil || ex != nil || r3.Limits[storage.LevelUser].Tokens[storage.WindowMinute] != 90 {
		t.Fatalf("after a settlement: %v %+v %+v", err, ex, r3)
	}
	if err := a.Refund(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if err := b.Refund(ctx, r3); err != nil {
		t.Fatal(err)
	}
	st, err := a.CountLimits(ctx, u.ID, k.ID, &storage.LimitRequest{Now: limitsAt, Limits: l})
	if err != nil || st[storage.LevelUser].Tokens[storage.WindowMinute] != 10 {
		t.Fatalf("after refunds: %v %+v", err, st)
	}
}

// limitsPlan: the plan counts charged requests (the usage totals) plus the
// ones in flight, whichever handle reserved or settled them; a refund gives
// its request back.
func limitsPlan(t *testing.T, a, b storage.LimitStore) {
	ctx := context.Background()
	u, k := Register(t, a, "plan@example.com", 1_000_000)
	// Two requests charged earlier today, one of them through each handle.
	for _, s := range []storage.Store{a, b} {
		r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Settle(ctx, r, 1, storage.UsageRecord{Model: "m", TotalTokens: 5, Time: limitsAt.Add(-time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	var l [storage.NumLevels]storage.WindowCounts
	l[storage.LevelPlan].Requests[storage.WindowDay] = 5
	l[storage.LevelPlan].Tokens[storage.WindowMonth] = 1000
	lim := storage.LimitRequest{Now: limitsAt, Limits: l, Tokens: 7}
	held, refused := burst(t, []storage.LimitStore{a, b}, 10, u.ID, k.ID, lim)
	if len(held) != 3 || len(refused) != 7 {
		t.Fatalf("admitted %d, refused %d; want 3, 7", len(held), len(refused))
	}
	ex := refused[0]
	if ex.Level != storage.LevelPlan || ex.Window != storage.WindowDay || ex.Tokens || ex.Limit != 5 ||
		ex.State[storage.LevelPlan].Requests[storage.WindowDay] != 5 || ex.State[storage.LevelPlan].Tokens[storage.WindowMonth] != 10+21 {
		t.Fatalf("plan refusal %+v", ex)
	}
	// A refund gives a request back; a settlement keeps it.
	if err := b.Refund(ctx, held[0]); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Settle(ctx, held[1], 1, storage.UsageRecord{Model: "m", TotalTokens: 3, Time: limitsAt}); err != nil {
		t.Fatal(err)
	}
	r, ex, err := reserveLimited(b, u.ID, k.ID, 1, lim)
	if err != nil || ex != nil {
		t.Fatalf("after a refund: %v %+v", err, ex)
	}
	if got := r.Limits[storage.LevelPlan]; got.Requests[storage.WindowDay] != 5 || got.Tokens[storage.WindowMonth] != 10+3+7+7 {
		t.Fatalf("plan counts %+v", got)
	}
	if _, ex, _ := reserveLimited(a, u.ID, k.ID, 1, lim); ex == nil || ex.Level != storage.LevelPlan {
		t.Fatalf("over the plan: %+v", ex)
	}
	// The next day starts from zero; the month keeps counting.
	next := lim
	next.Now = limitsAt.Add(24 * time.Hour)
	if r, ex, err := reserveLimited(a, u.ID, k.ID, 1, next); err != nil || ex != nil ||
		r.Limits[storage.LevelPlan].Requests[storage.WindowDay] != 3 {
		t.Fatalf("next day: %v %+v %+v", err, ex, r)
	}
}

// limitsWindowsRoll: a window that ended starts again from zero, and one
// of a clock that runs behind is not rolled back.
func limitsWindowsRoll(t *testing.T, a, b storage.LimitStore) {
	u, k := Register(t, a, "roll@example.com", 1_000_000)
	var l [storage.NumLevels]storage.WindowCounts
	l[storage.LevelUser].Requests = [storage.NumWindows]int64{2, 3, 0, 0}
	lim := storage.LimitRequest{Now: limitsAt, Limits: l}
	if held, _ := burst(t, []storage.LimitStore{a, b}, 5, u.ID, k.ID, lim); len(held) != 2 {
		t.Fatalf("first minute admitted %d", len(held))
	}
	lim.Now = limitsAt.Add(time.Minute)
	held, refused := burst(t, []storage.LimitStore{a, b}, 5, u.ID, k.ID, lim)
	if len(held) != 1 || refused[0].Window != storage.WindowHour {
		t.Fatalf("next minute admitted %d (%+v)", len(held), refused)
	}
	lim.Now = limitsAt // a node whose clock is a minute behind
	if _, ex, _ := reserveLimited(b, u.ID, k.ID, 1, lim); ex == nil || ex.Window != storage.WindowHour {
		t.Fatalf("late clock: %+v", ex)
	}
}

// limitsCreditRefusal: a request refused for credits counts against the
// request rate once, not against the plan or the tokens; its retry
// (Counted) is not counted again.
func limitsCreditRefusal(t *testing.T, a, b storage.LimitStore) {
	ctx := context.Background()
	u, k := Register(t, a, "poor@example.com", 10)
	var l [storage.NumLevels]storage.WindowCounts
	l[storage.LevelUser].Requests[storage.WindowMinute] = 3
	l[storage.LevelUser].Tokens[storage.WindowMinute] = 1000
	l[storage.LevelPlan].Requests[storage.WindowDay] = 100
	lim := &storage.LimitRequest{Now: limitsAt, Limits: l, Tokens: 50}
	_, err := a.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 11, Limits: lim})
	var short *storage.CreditShortage
	if !errors.As(err, &short) || short.Limits == nil {
		t.Fatalf("over the balance: %v", err)
	}
	if got := short.Limits[storage.LevelUser]; got.Requests[storage.WindowMinute] != 1 || got.Tokens[storage.WindowMinute] != 0 {
		t.Fatalf("counted for a credit refusal: %+v", got)
	}
	lim.Counted = true
	for range 4 {
		if _, err := b.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 11, Limits: lim}); !errors.As(err, &short) {
			t.Fatalf("retry: %v", err)
		}
	}
	r, err := b.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10, Limits: lim})
	if err != nil {
		t.Fatalf("retry that fits: %v", err)
	}
	if got := r.Limits[storage.LevelUser]; got.Requests[storage.WindowMinute] != 1 || got.Tokens[storage.WindowMinute] != 50 {
		t.Fatalf("retries counted again: %+v", got)
	}
	if got := r.Limits[storage.LevelPlan].Requests[storage.WindowDay]; got != 1 {
		t.Fatalf("plan counts %d, want 1", got)
	}
}

// limitsFree: a free route's request counts against the rate limits of
// both handles, not against the plan.
func limitsFree(t *testing.T, a, b storage.LimitStore) {
	ctx := context.Background()
	u, k := Register(t, a, "free@example.com", 100)
	l := rate(4, 0)
	l[storage.LevelPlan].Requests[storage.WindowDay] = 1
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(s storage.LimitStore) {
			defer wg.Done()
			_, err := s.CountLimits(ctx, u.ID, k.ID, &storage.LimitRequest{Now: limitsAt, Limits: l})
			var ex *storage.LimitExceeded
			switch {
			case errors.As(err, &ex) && ex.Level == storage.LevelUser:
				refused.Add(1)
			case err != nil:
				t.Error(err)
			default:
				ok.Add(1)
			}
		}([]storage.LimitStore{a, b}[i%2])
	}
	wg.Wait()
	if ok.Load() != 4 || refused.Load() != 6 {
		t.Fatalf("free route: %d admitted, %d refused", ok.Load(), refused.Load())
	}
	// Metered requests share the count.
	if _, ex, err := reserveLimited(a, u.ID, k.ID, 1, storage.LimitRequest{Now: limitsAt, Limits: l}); err != nil || ex == nil || ex.Level != storage.LevelUser {
		t.Fatalf("metered after free: %v %+v", err, ex)
	}
}

// limitsMaxRequests: a key's request cap holds exactly across handles.
func limitsMaxRequests(t *testing.T, a, b storage.LimitStore) {
	ctx := context.Background()
	u, k := Register(t, a, "cap@example.com", 1_000_000)
	const limit = 50
	var ok, capped atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 3*limit; i++ {
		wg.Add(1)
		go func(s storage.LimitStore) {
			defer wg.Done()
			r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: limit,
				Limits: &storage.LimitRequest{Now: limitsAt, Limits: rate(1000, 0)}})
			switch {
			case errors.Is(err, storage.ErrRequestLimit):
				capped.Add(1)
			case err != nil:
				t.Error(err)
			default:
				ok.Add(1)
				if _, _, err := s.Settle(ctx, r, 1, storage.UsageRecord{Model: "m"}); err != nil {
					t.Error(err)
				}
			}
		}([]storage.LimitStore{a, b}[i%2])
	}
	wg.Wait()
	if ok.Load() != limit || capped.Load() != 2*limit {
		t.Fatalf("%d charged, %d capped; want %d, %d", ok.Load(), capped.Load(), limit, 2*limit)
	}
	if got, err := b.GetKey(ctx, k.ID); err != nil || got.RequestsUsed != limit {
		t.Fatalf("requests_used = %+v, %v", got, err)
	}
	// Capped requests still counted against the rate.
	st, err := a.CountLimits(ctx, u.ID, k.ID, &storage.LimitRequest{Now: limitsAt, Limits: rate(1000, 0)})
	if err != nil || st[storage.LevelUser].Requests[storage.WindowMinute] != 3*limit+1 {
		t.Fatalf("rate counts %+v, %v", st, err)
	}
}

// limitsWithBudgets: the limits and a key's spend budget in the same
// reservation. A budget refusal counts the request against the rates and
// holds nothing; a limit refusal leaves the budget as it was; the
// settlement charges the budget and replaces the estimated tokens.
func limitsWithBudgets(t *testing.T, a, b storage.LimitStore) {
	ctx := context.Background()
	u, k := Register(t, a, "budgeted@example.com", 1000)
	var l [storage.NumLevels]storage.WindowCounts
	l[storage.LevelUser].Requests[storage.WindowMinute] = 5
	l[storage.LevelUser].Tokens[storage.WindowMinute] = 100
	budget := storage.BudgetWindow{Start: limitsAt.Truncate(24 * time.Hour), Limit: 10, Limited: true}
	reserve := func(s storage.LimitStore, credits, tokens int64) (*storage.Reservation, error) {
		return s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: credits, MinCredits: credits,
			KeyBudget: budget, Limits: &storage.LimitRequest{Now: limitsAt, Limits: l, Tokens: tokens}})
	}
	first, err := reserve(a, 6, 40)
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Limits[storage.LevelUser]; got.Requests[storage.WindowMinute] != 1 || got.Tokens[storage.WindowMinute] != 40 {
		t.Fatalf("first counts %+v", got)
	}
	_, err = reserve(b, 6, 40) // 4 left in the budget
	var be *storage.BudgetExceeded
	if !errors.As(err, &be) || !be.Key || be.Reserved != 6 || be.Limits == nil {
		t.Fatalf("over the budget: %v", err)
	}
	if got := be.Limits[storage.LevelUser]; got.Requests[storage.WindowMinute] != 2 || got.Tokens[storage.WindowMinute] != 40 {
		t.Fatalf("counted for a budget refusal: %+v", got)
	}
	_, err = reserve(b, 4, 70) // fits the budget, not the tokens
	var ex *storage.LimitExceeded
	if !errors.As(err, &ex) || !ex.Tokens {
		t.Fatalf("over the tokens: %v", err)
	}
	if bal := MustBalance(t, b, u.ID); bal.Reserved != 6 || bal.Credits != 1000 {
		t.Fatalf("after two refusals: %+v", bal)
	}
	if _, _, err := a.Settle(ctx, first, 5, storage.UsageRecord{TotalTokens: 10}); err != nil {
		t.Fatal(err)
	}
	if sp := first.Spent; sp == nil || !sp.Key.Valid || sp.Key.After != 5 {
		t.Fatalf("spend after the settlement: %+v", sp)
	}
	second, err := reserve(b, 5, 60) // the budget's rest; 10 + 60 tokens; the limit refusal counted nothing
	if err != nil {
		t.Fatal(err)
	}
	if got := second.Limits[storage.LevelUser]; got.Requests[storage.WindowMinute] != 3 || got.Tokens[storage.WindowMinute] != 70 {
		t.Fatalf("counts after the settlement %+v", got)
	}
	if err := b.Refund(ctx, second); err != nil {
		t.Fatal(err)
	}
	if bal := MustBalance(t, a, u.ID); bal.Reserved != 0 || bal.Credits != 995 {
		t.Fatalf("at the end: %+v", bal)
	}
}
