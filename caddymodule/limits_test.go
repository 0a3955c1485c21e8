package caddymodule

import (
	"context"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func TestPeriodBounds(t *testing.T) {
	at := time.Date(2026, 2, 28, 23, 59, 30, 500, time.UTC)
	tests := []struct {
		p          period
		start, end time.Time
	}{
		{perMinute, time.Date(2026, 2, 28, 23, 59, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{perHour, time.Date(2026, 2, 28, 23, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{perDay, time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{perMonth, time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		if got := tt.p.start(at); !got.Equal(tt.start) {
			t.Errorf("%s start = %v, want %v", periodNames[tt.p], got, tt.start)
		}
		if got := tt.p.end(at); got != tt.end.UnixNano() {
			t.Errorf("%s end = %v, want %v", periodNames[tt.p], time.Unix(0, got).UTC(), tt.end)
		}
	}
	// A non-UTC clock gives the same UTC windows.
	local := at.In(time.FixedZone("X", 5*3600+1800))
	if perDay.end(local) != perDay.end(at) || perMonth.end(local) != perMonth.end(at) {
		t.Error("windows must be UTC-aligned whatever the clock's zone")
	}
	// December rolls into the next year.
	dec := time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)
	if got := perMonth.end(dec); got != time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano() {
		t.Errorf("December end = %v", time.Unix(0, got).UTC())
	}
}

// fakeClock is a settable clock for window arithmetic.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time              { return c.t }
func (c *fakeClock) add(d time.Duration)         { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock                   { return &fakeClock{t: time.Date(2026, 5, 10, 12, 0, 0, 0, time.UTC)} }
func limitsOf(l storage.RateLimits) periodLimits { return rateLimits(l) }

func TestLimiterRequestWindows(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter()
	in := &admitInput{userID: 1, keyID: 10, keyLimits: limitsOf(storage.RateLimits{RequestsPerMinute: 3, RequestsPerHour: 5})}
	for i := range 3 {
		if res := l.admit(in, clk.now()); res.refused {
			t.Fatalf("request %d refused", i+1)
		}
		clk.add(time.Second)
	}
	res := l.admit(in, clk.now())
	if !res.refused || !res.keyBreach || res.breach.period != perMinute || res.breach.tokens || res.breach.limit != 3 {
		t.Fatalf("4th request in the minute: %+v", res)
	}
	if ra := res.refusal("live", clk.now()).RetryAfter; ra != 57 {
		t.Errorf("Retry-After = %d, want 57 (until the minute ends)", ra)
	}
	// The refused request was not counted: the next minute admits 2 more,
	// then the hour limit (5) refuses.
	clk.add(57 * time.Second)
	for i := range 2 {
		if res := l.admit(in, clk.now()); res.refused {
			t.Fatalf("request %d of the second minute refused: %+v", i+1, res)
		}
	}
	res = l.admit(in, clk.now())
	if !res.refused || res.breach.period != perHour {
		t.Fatalf("hour limit: %+v", res)
	}
	clk.add(time.Hour)
	if res := l.admit(in, clk.now()); res.refused {
		t.Fatalf("next hour: %+v", res)
	}
}

func TestLimiterTokensCrossingRequestRefused(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter()
	in := &admitInput{userID: 1, keyID: 10, userLimits: limitsOf(storage.RateLimits{TokensPerMinute: 100})}
	in.est = 60
	if res := l.admit(in, clk.now()); res.refused {
		t.Fatal("first 60 tokens refused")
	}
	in.est = 41
	res := l.admit(in, clk.now())
	if !res.refused || !res.breach.tokens || res.keyBreach {
		t.Fatalf("60+41 > 100 must be refused as the user's token limit: %+v", res)
	}
	in.est = 40
	res = l.admit(in, clk.now())
	if res.refused {
		t.Fatal("60+40 = 100 must pass")
	}
	if res.tokens.limit != 100 || res.tokens.remaining != 0 {
		t.Errorf("token quota = %+v", res.tokens)
	}
	// Settlement: the second request actually used 10 tokens; 30 free again.
	l.correct(1, 10, false, false, &res.ends, 40, 10)
	in.est = 30
	if res := l.admit(in, clk.now()); res.refused {
		t.Fatalf("after correction 70+30 must pass: %+v", res)
	}
	// A correction for a window that has ended changes nothing in the new one.
	ends := res.ends
	clk.add(time.Minute)
	in.est = 0
	res2 := l.admit(in, clk.now())
	l.correct(1, 10, false, false, &ends, 30, 1000)
	in.est = 100
	if res := l.admit(in, clk.now()); res.refused {
		t.Fatalf("stale correction leaked into the new window: %+v (earlier %+v)", res, res2)
	}
}

// markSeeded marks a user's plan counters as loaded (as if from an empty
// usage history).
func markSeeded(l *limiter, userID int64) {
	l.mu.Lock()
	l.userLocked(userID).seeded = true
	l.mu.Unlock()
}

func TestLimiterNeedsSeedFirst(t *testing.T) {
	l := newLimiter()
	plan := periodLimits{}
	in := &admitInput{userID: 1, keyID: 10, plan: &plan, countPlan: true}
	if res := l.admit(in, newFakeClock().now()); !res.needSeed || res.refused {
		t.Fatalf("unseeded user: %+v", res)
	}
	if got := l.users[1].plan[perDay].requests + l.users[1].rate[perMinute].requests; got != 0 {
		t.Fatal("a request was counted before seeding")
	}
}

func TestLimiterAllOrNothing(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter()
	markSeeded(l, 1)
	plan := periodLimits{}
	plan.requests[perDay] = 2
	in := &admitInput{userID: 1, keyID: 10, plan: &plan, countPlan: true,
		userLimits: limitsOf(storage.RateLimits{RequestsPerMinute: 10}),
		keyLimits:  limitsOf(storage.RateLimits{RequestsPerMinute: 1})}
	if res := l.admit(in, clk.now()); res.refused {
		t.Fatal("first refused")
	}
	res := l.admit(in, clk.now())
	if !res.refused || !res.keyBreach {
		t.Fatalf("key minute limit: %+v", res)
	}
	// Nothing was counted for the refused request: the user's counters and
	// the plan still show one request.
	if got := l.users[1].rate[perMinute].requests; got != 1 {
		t.Errorf("user minute requests = %d, want 1", got)
	}
	if got := l.users[1].plan[perDay].requests; got != 1 {
		t.Errorf("plan day requests = %d, want 1", got)
	}
	// Another key of the same user shares the user's and the plan's counters.
	in2 := *in
	in2.keyID = 11
	if res := l.admit(&in2, clk.now()); res.refused {
		t.Fatalf("second key: %+v", res)
	}
	res = l.admit(&in2, clk.now())
	if !res.refused || !res.planBreach || res.breach.period != perDay {
		t.Fatalf("plan day limit: %+v", res)
	}
	msg := res.refusal("live", clk.now()).Message
	if want := "Plan limit exceeded: Daily request limit exceeded (2) for live environment"; msg != want {
		t.Errorf("message = %q, want %q", msg, want)
	}
	// Free routes do not count toward the plan.
	in3 := in2
	in3.countPlan = false
	in3.keyID = 12
	if res := l.admit(&in3, clk.now()); res.refused {
		t.Fatalf("free route refused by the plan: %+v", res)
	}
}

func TestLimiterEvictIdle(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter()
	in := &admitInput{userID: 1, keyID: 10}
	l.admit(in, clk.now())
	if n := l.evictIdle(clk.now().Add(11 * time.Hour)); n != 0 {
		t.Fatalf("evicted %d entries still in their day window", n)
	}
	if n := l.evictIdle(clk.now().Add(12 * time.Hour)); n != 2 {
		t.Fatalf("evicted %d, want the user and the key once the UTC day ended", n)
	}
	if u, k := l.size(); u != 0 || k != 0 {
		t.Fatalf("size after eviction: %d users, %d keys", u, k)
	}
}

func TestTightestQuotaHeaders(t *testing.T) {
	clk := newFakeClock()
	clk.add(20 * time.Second)
	l := newLimiter()
	markSeeded(l, 1)
	plan := periodLimits{}
	plan.requests[perDay] = 100
	plan.tokens[perDay] = 10000
	in := &admitInput{userID: 1, keyID: 10, plan: &plan, countPlan: true, est: 500,
		keyLimits: limitsOf(storage.RateLimits{RequestsPerMinute: 60, RequestsPerHour: 1000, TokensPerHour: 100000})}
	res := l.admit(in, clk.now())
	h := http.Header{}
	setRateLimitHeaders(h, res.requests, res.tokens, clk.now(), nil)
	want := map[string]string{
		"X-Ratelimit-Limit-Requests":     "60",
		"X-Ratelimit-Remaining-Requests": "59",
		"X-Ratelimit-Reset-Requests":     "40s",
		"X-Ratelimit-Limit-Tokens":       "10000",
		"X-Ratelimit-Remaining-Tokens":   "9500",
		"X-Ratelimit-Reset-Tokens":       "11h59m40s",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	// No limit at all: no headers.
	h = http.Header{}
	setRateLimitHeaders(h, quota{}, quota{}, clk.now(), nil)
	if len(h) != 0 {
		t.Errorf("headers without limits: %v", h)
	}
}

func TestMergeLimits(t *testing.T) {
	admin := storage.RateLimits{RequestsPerMinute: 5}
	key := storage.RateLimits{RequestsPerMinute: 50, TokensPerDay: 7}
	site := storage.RateLimits{RequestsPerHour: 300, TokensPerDay: 9}
	app := storage.RateLimits{RequestsPerMinute: 1, RequestsPerHour: 2, RequestsPerDay: 3, TokensPerMinute: 4}
	got := mergeLimits(admin, key, site, app)
	want := storage.RateLimits{RequestsPerMinute: 5, RequestsPerHour: 300, RequestsPerDay: 3, TokensPerMinute: 4, TokensPerDay: 7}
	if got != want {
		t.Errorf("mergeLimits = %+v, want %+v", got, want)
	}
	if mergeLimits(storage.RateLimits{}, storage.RateLimits{}, storage.RateLimits{}, storage.RateLimits{}) != (storage.RateLimits{}) {
		t.Error("all zero must stay unlimited")
	}
}

func TestResetString(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{0, "0s"}, {-time.Second, "0s"}, {time.Millisecond, "1s"}, {59*time.Second + 1, "1m0s"}, {6 * time.Minute, "6m0s"}} {
		if got := resetString(now.Add(tt.d).UnixNano(), now); got != tt.want {
			t.Errorf("resetString(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestLimiterConcurrentAdmissionsExact(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter()
	in := admitInput{userID: 1, userLimits: limitsOf(storage.RateLimits{RequestsPerMinute: 100})}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			my := in
			my.keyID = int64(w)
			for range 50 {
				if res := l.admit(&my, clk.now()); !res.refused {
					admitted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if got := admitted.Load(); got != 100 {
		t.Fatalf("admitted %d of 400 concurrent requests, want exactly the limit 100", got)
	}
}

// totalsStore is the real store, counting UsageTotals calls; the first call
// waits until every caller has started, so they all arrive while it runs.
type totalsStore struct {
	storage.Store
	calls   atomic.Int64
	started *sync.WaitGroup
}

func (s *totalsStore) UsageTotals(ctx context.Context, userID int64, day, month time.Time) (int64, int64, int64, int64, error) {
	if s.calls.Add(1) == 1 {
		s.started.Wait()
		for range 100 {
			runtime.Gosched() // let the callers reach the limiter
		}
	}
	return s.Store.UsageTotals(ctx, userID, day, month)
}

func TestLimiterSeedsOncePerUser(t *testing.T) {
	e := newTestEnv(t, nil)
	_, k := e.newKey(t, "", nil)
	ctx := context.Background()
	now := time.Now()
	for i := range 7 {
		r, err := e.st.Reserve(ctx, storage.ReserveRequest{UserID: k.UserID, KeyID: k.ID, Credits: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.st.Settle(ctx, r, 1, storage.UsageRecord{Model: "m", TotalTokens: int64(10 + i), Time: now}); err != nil {
			t.Fatal(err)
		}
	}
	const callers = 32
	var started, done sync.WaitGroup
	started.Add(callers)
	st := &totalsStore{Store: e.st, started: &started}
	l := newLimiter()
	errs := make(chan error, callers)
	for range callers {
		done.Add(1)
		go func() {
			defer done.Done()
			started.Done()
			errs <- l.seed(ctx, st, k.UserID, now)
		}()
	}
	done.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := st.calls.Load(); n != 1 {
		t.Fatalf("%d concurrent first requests loaded the plan counters %d times, want once", callers, n)
	}
	u := l.users[k.UserID]
	want := int64(10 + 11 + 12 + 13 + 14 + 15 + 16)
	if !u.seeded || u.plan[perDay].requests != 7 || u.plan[perDay].tokens != want ||
		u.plan[perMonth].requests != 7 || u.plan[perMonth].tokens != want {
		t.Fatalf("seeded counters: %+v", u.plan)
	}
	if len(l.seeding) != 0 {
		t.Fatalf("seed calls left behind: %d", len(l.seeding))
	}
	// Seeded users are not loaded again.
	if err := l.seed(ctx, st, k.UserID, now); err != nil || st.calls.Load() != 1 {
		t.Fatalf("second seed: %v, %d calls", err, st.calls.Load())
	}
}

// Merged limits are cached per key version, policy snapshot and handler,
// and re-resolved when the policy changes.
func TestResolveLimitsCache(t *testing.T) {
	e := newTestEnv(t, func(a *App, g *Gateway) {
		a.DefaultLimits = storage.RateLimits{RequestsPerMinute: 100, TokensPerDay: 7}
	})
	_, k := e.newKey(t, "", func(k *storage.APIKey) { k.RateLimits.RequestsPerHour = 50 })
	en := newKeyEntry(k, &storage.User{ID: k.UserID})
	pol := &userPolicy{adminLimits: storage.RateLimits{RequestsPerMinute: 10}}
	rl := e.g.resolveLimits(en, pol)
	if rl.key.requests[perMinute] != 10 || rl.key.requests[perHour] != 50 || rl.key.tokens[perDay] != 7 ||
		rl.user.requests[perMinute] != 10 || rl.user.requests[perHour] != 0 || rl.user.tokens[perDay] != 7 {
		t.Fatalf("resolved: %+v", rl)
	}
	if again := e.g.resolveLimits(en, pol); again != rl {
		t.Fatal("same policy: not served from the cache")
	}
	pol2 := &userPolicy{adminLimits: storage.RateLimits{RequestsPerMinute: 20}}
	if rl2 := e.g.resolveLimits(en, pol2); rl2.key.requests[perMinute] != 20 || rl2.user.requests[perMinute] != 20 {
		t.Fatalf("new policy not applied: %+v", rl2)
	}
	if rl3 := e.g.resolveLimits(en, nil); rl3.key.requests[perMinute] != 100 || rl3.user.requests[perMinute] != 100 {
		t.Fatalf("no policy: %+v", rl3)
	}
}

// Requests refused after admission (here 402) or refunded cost nothing and
// do not use up the plan's daily request quota (100 for a trial user), which
// counts charged requests only, as the usage records it is re-seeded from.
func TestPlanQuotaCountsChargedRequestsOnly(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "live", nil)
	setBalance(t, e, k.UserID, 5)
	for i := range 101 {
		wantError(t, e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)), 402, "insufficient_credits", "")
		if t.Failed() {
			t.Fatalf("request %d", i+1)
		}
	}
	setBalance(t, e, k.UserID, 1_000_000)
	if rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)); rec.Code != 200 {
		t.Fatalf("first affordable request: %d %s", rec.Code, rec.Body)
	}
	if got := e.upstream.Load(); got != 1 {
		t.Errorf("upstream calls = %d, want 1", got)
	}
}

// size returns the number of users and keys with counters (for tests).
func (l *limiter) size() (users, keys int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.users), len(l.keys)
}

// resetString formats the time until end like OpenAI does ("1s", "6m0s"),
// rounded up to whole seconds.
func resetString(end int64, now time.Time) string {
	return string(appendReset(nil, end, now))
}
