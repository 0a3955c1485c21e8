package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Rate limits and plan counters.
//
// Every limit is a fixed window aligned to UTC: minute, hour and day for the
// rate limits (per user and per key), day and calendar month for the plan
// limits (per user). A request is refused when counting it would cross a
// limit: requests+1 > limit, or tokens+estimate > limit, so the request that
// would cross a token limit is the one refused. Estimated tokens are
// replaced by the real usage afterwards (admission.recordTokens).

// period is the length of a window.
type period uint8

const (
	perMinute period = iota
	perHour
	perDay
	perMonth
	numPeriods
)

var periodNames = [numPeriods]string{"Minute", "Hour", "Daily", "Monthly"}

// end returns the end (unix nanoseconds) of the UTC window of p holding now.
func (p period) end(now time.Time) int64 {
	sec := now.Unix()
	switch p {
	case perMinute:
		return (sec/60 + 1) * 60 * int64(time.Second)
	case perHour:
		return (sec/3600 + 1) * 3600 * int64(time.Second)
	case perDay:
		return (sec/86400 + 1) * 86400 * int64(time.Second)
	default:
		u := now.UTC()
		return time.Date(u.Year(), u.Month()+1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	}
}

// start returns the start of the UTC window of p holding now.
func (p period) start(now time.Time) time.Time {
	u := now.UTC()
	switch p {
	case perMinute:
		return u.Truncate(time.Minute)
	case perHour:
		return u.Truncate(time.Hour)
	case perDay:
		return time.Date(u.Year(), u.Month(), u.Day(), 0, 0, 0, 0, time.UTC)
	default:
		return time.Date(u.Year(), u.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
}

// window counts requests and tokens in one fixed window.
type window struct {
	end      int64 // unix nanoseconds; 0 before first use
	requests int64
	tokens   int64
}

// roll starts a new window when now is past the current one.
func (w *window) roll(p period, now time.Time) {
	if now.UnixNano() >= w.end {
		*w = window{end: p.end(now)}
	}
}

// windows holds one window per period (the rate limits use minute, hour and
// day; the plan counters day and month).
type windows [numPeriods]window

func (ws *windows) roll(now time.Time) {
	for p := range ws {
		ws[p].roll(period(p), now)
	}
}

// periodLimits are the limits of one level for each period; zero means
// unlimited.
type periodLimits struct {
	requests [numPeriods]int64
	tokens   [numPeriods]int64
}

// rateLimits converts storage.RateLimits (minute/hour/day).
func rateLimits(l storage.RateLimits) periodLimits {
	return periodLimits{
		requests: [numPeriods]int64{l.RequestsPerMinute, l.RequestsPerHour, l.RequestsPerDay, 0},
		tokens:   [numPeriods]int64{l.TokensPerMinute, l.TokensPerHour, l.TokensPerDay, 0},
	}
}

// breach describes the first limit a request would cross.
type breach struct {
	period   period
	tokens   bool // a token limit, else a request limit
	limit    int64
	end      int64
	exceeded bool
}

// check reports the first limit of pl that counting one request of est
// tokens in ws would cross.
func (ws *windows) check(pl *periodLimits, est int64) breach {
	for p := range numPeriods {
		if l := pl.requests[p]; l > 0 && ws[p].requests+1 > l {
			return breach{period: p, limit: l, end: ws[p].end, exceeded: true}
		}
		if l := pl.tokens[p]; l > 0 && ws[p].tokens+est > l {
			return breach{period: p, tokens: true, limit: l, end: ws[p].end, exceeded: true}
		}
	}
	return breach{}
}

// add counts one request of est tokens in every window.
func (ws *windows) add(est int64) {
	for p := range ws {
		ws[p].requests++
		ws[p].tokens += est
	}
}

// correct replaces est by actual tokens in the windows that are still the
// ones the request was counted in (ends[p] is that window's end).
func (ws *windows) correct(ends *[numPeriods]int64, est, actual int64) {
	for p := range ws {
		if ws[p].end == ends[p] && ends[p] != 0 {
			ws[p].tokens += actual - est
			if ws[p].tokens < 0 {
				ws[p].tokens = 0
			}
		}
	}
}

// uncount takes back one request in the windows that are still the ones it
// was counted in.
func (ws *windows) uncount(ends *[numPeriods]int64) {
	for p := range ws {
		if ws[p].end == ends[p] && ends[p] != 0 && ws[p].requests > 0 {
			ws[p].requests--
		}
	}
}

// quota is one limit's state for the x-ratelimit-* headers.
type quota struct {
	limit, remaining int64
	end              int64 // unix nanoseconds
}

// tighter reports whether q leaves less room than o (ties: sooner reset).
func (q quota) tighter(o quota) bool {
	if o.limit == 0 {
		return true
	}
	if q.remaining != o.remaining {
		return q.remaining < o.remaining
	}
	return q.end < o.end
}

// tightest folds the limits of ws into req and tok.
func (ws *windows) tightest(pl *periodLimits, req, tok *quota) {
	for p := range numPeriods {
		if l := pl.requests[p]; l > 0 {
			q := quota{limit: l, remaining: max(l-ws[p].requests, 0), end: ws[p].end}
			if q.tighter(*req) {
				*req = q
			}
		}
		if l := pl.tokens[p]; l > 0 {
			q := quota{limit: l, remaining: max(l-ws[p].tokens, 0), end: ws[p].end}
			if q.tighter(*tok) {
				*tok = q
			}
		}
	}
}

// userCounters are a user's rate windows and plan windows.
type userCounters struct {
	rate     windows
	plan     windows
	seeded   bool  // plan windows loaded from the usage records
	lastUsed int64 // unix nanoseconds
}

// keyCounters are a key's rate windows.
type keyCounters struct {
	rate     windows
	lastUsed int64
}

// limiter holds every user's and key's counters. It is shared through the
// state pool, so counters survive config reloads; idle entries are swept.
type limiter struct {
	mu    sync.Mutex
	users map[int64]*userCounters
	keys  map[int64]*keyCounters
	// seeding holds the plan counter loads in progress, by user.
	seeding map[int64]*seedCall
	now     func() time.Time
}

func newLimiter() *limiter {
	return &limiter{
		users:   make(map[int64]*userCounters),
		keys:    make(map[int64]*keyCounters),
		seeding: make(map[int64]*seedCall),
		now:     time.Now,
	}
}

func (l *limiter) userLocked(id int64) *userCounters {
	u, ok := l.users[id]
	if !ok {
		u = new(userCounters)
		l.users[id] = u
	}
	return u
}

func (l *limiter) keyLocked(id int64) *keyCounters {
	k, ok := l.keys[id]
	if !ok {
		k = new(keyCounters)
		l.keys[id] = k
	}
	return k
}

// admitInput is one request to count.
type admitInput struct {
	userID, keyID int64
	userLimits    periodLimits
	keyLimits     periodLimits
	// plan are the plan limits (day and month), reported in the headers;
	// countPlan says whether the request counts toward them (free routes
	// do not).
	plan      *periodLimits
	countPlan bool
	est       int64 // estimated tokens
}

// admitResult is the outcome: the refusal (if any) and the header quotas.
type admitResult struct {
	needSeed   bool // the user's plan counters must be loaded first (nothing counted)
	refused    bool
	planBreach bool   // the refusal is a plan limit
	keyBreach  bool   // the refusal is the key's rate limit (else the user's)
	breach     breach // the limit crossed
	requests   quota  // tightest request limit (limit 0: none)
	tokens     quota  // tightest token limit
	ends       [numPeriods]int64
}

// admit checks every limit and, when none would be crossed, counts the
// request everywhere (all or nothing).
func (l *limiter) admit(in *admitInput, now time.Time) admitResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.userLocked(in.userID)
	if !u.seeded && in.plan != nil {
		return admitResult{needSeed: true}
	}
	k := l.keyLocked(in.keyID)
	ns := now.UnixNano()
	u.lastUsed, k.lastUsed = ns, ns
	u.rate.roll(now)
	u.plan.roll(now)
	k.rate.roll(now)

	var res admitResult
	if in.countPlan {
		if b := u.plan.check(in.plan, in.est); b.exceeded {
			res.refused, res.planBreach, res.breach = true, true, b
		}
	}
	if !res.refused {
		if b := u.rate.check(&in.userLimits, in.est); b.exceeded {
			res.refused, res.breach = true, b
		} else if b := k.rate.check(&in.keyLimits, in.est); b.exceeded {
			res.refused, res.keyBreach, res.breach = true, true, b
		}
	}
	if !res.refused {
		u.rate.add(in.est)
		k.rate.add(in.est)
		if in.countPlan {
			u.plan.add(in.est)
		}
		for p := range numPeriods {
			res.ends[p] = u.rate[p].end
		}
	}
	u.rate.tightest(&in.userLimits, &res.requests, &res.tokens)
	k.rate.tightest(&in.keyLimits, &res.requests, &res.tokens)
	if in.plan != nil {
		u.plan.tightest(in.plan, &res.requests, &res.tokens)
	}
	return res
}

// correct replaces a counted estimate by the actual tokens.
func (l *limiter) correct(userID, keyID int64, plan, refunded bool, ends *[numPeriods]int64, est, actual int64) {
	if est == actual && !(plan && refunded) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if u, ok := l.users[userID]; ok {
		u.rate.correct(ends, est, actual)
		if plan {
			u.plan.correct(ends, est, actual)
			if refunded {
				u.plan.uncount(ends)
			}
		}
	}
	if k, ok := l.keys[keyID]; ok {
		k.rate.correct(ends, est, actual)
	}
}

// seedCall is one user's plan counter load in progress; concurrent first
// requests of that user wait for it instead of loading again.
type seedCall struct {
	done chan struct{}
	err  error
}

// seed loads a user's plan counters (requests and tokens of the current UTC
// day and month) from the store's usage totals, once per user while it
// stays in memory. One load per user runs at a time: other callers wait
// for it (or for their ctx) and share its outcome.
func (l *limiter) seed(ctx context.Context, st storage.Policy, userID int64, now time.Time) error {
	l.mu.Lock()
	for {
		if l.userLocked(userID).seeded {
			l.mu.Unlock()
			return nil
		}
		c, ok := l.seeding[userID]
		if !ok {
			break
		}
		l.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		// A load that failed only because its caller went away is retried
		// by the next waiter rather than failing everyone.
		if c.err != nil && !errors.Is(c.err, context.Canceled) && !errors.Is(c.err, context.DeadlineExceeded) {
			return c.err
		}
		l.mu.Lock()
	}
	c := &seedCall{done: make(chan struct{})}
	l.seeding[userID] = c
	l.mu.Unlock()

	dayReq, dayTok, monReq, monTok, err := st.UsageTotals(ctx, userID, perDay.start(now), perMonth.start(now))

	l.mu.Lock()
	delete(l.seeding, userID)
	if err == nil {
		u := l.userLocked(userID)
		if !u.seeded {
			u.plan.roll(now)
			u.plan[perDay].requests += dayReq
			u.plan[perDay].tokens += dayTok
			u.plan[perMonth].requests += monReq
			u.plan[perMonth].tokens += monTok
			u.seeded = true
		}
	}
	l.mu.Unlock()
	c.err = err
	close(c.done)
	return err
}

// sweepInterval is how often idle counters are evicted.
const sweepInterval = time.Minute

// sweep evicts, every interval, the counters whose day window has ended
// (all their rate windows are then empty, so nothing is lost; plan counters
// are re-seeded from the store on next use).
func (l *limiter) sweep(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.evictIdle(l.now())
		}
	}
}

// evictIdle drops the counters idle since before the current UTC day.
func (l *limiter) evictIdle(now time.Time) (evicted int) {
	ns := now.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, u := range l.users {
		if ns >= u.rate[perDay].end && ns >= u.plan[perDay].end {
			delete(l.users, id)
			evicted++
		}
	}
	for id, k := range l.keys {
		if ns >= k.rate[perDay].end {
			delete(l.keys, id)
			evicted++
		}
	}
	return evicted
}

// mergeLimits resolves limits field by field: the first non-zero value of
// the levels, in order, wins.
func mergeLimits(a, b, c, d storage.RateLimits) storage.RateLimits {
	pick := func(v ...int64) int64 {
		for _, x := range v {
			if x != 0 {
				return x
			}
		}
		return 0
	}
	return storage.RateLimits{
		RequestsPerMinute: pick(a.RequestsPerMinute, b.RequestsPerMinute, c.RequestsPerMinute, d.RequestsPerMinute),
		RequestsPerHour:   pick(a.RequestsPerHour, b.RequestsPerHour, c.RequestsPerHour, d.RequestsPerHour),
		RequestsPerDay:    pick(a.RequestsPerDay, b.RequestsPerDay, c.RequestsPerDay, d.RequestsPerDay),
		TokensPerMinute:   pick(a.TokensPerMinute, b.TokensPerMinute, c.TokensPerMinute, d.TokensPerMinute),
		TokensPerHour:     pick(a.TokensPerHour, b.TokensPerHour, c.TokensPerHour, d.TokensPerHour),
		TokensPerDay:      pick(a.TokensPerDay, b.TokensPerDay, c.TokensPerDay, d.TokensPerDay),
	}
}

// validateLimits refuses negative limits.
func validateLimits(l storage.RateLimits) error {
	for _, v := range []int64{l.RequestsPerMinute, l.RequestsPerHour, l.RequestsPerDay, l.TokensPerMinute, l.TokensPerHour, l.TokensPerDay} {
		if v < 0 {
			return errors.New("limits must not be negative")
		}
	}
	return nil
}

// refusal turns an admit refusal into the 429 the client sees.
func (res *admitResult) refusal(env string, now time.Time) *gatewayError {
	b := res.breach
	kind := "request"
	if b.tokens {
		kind = "token"
	}
	retry := int((b.end - now.UnixNano() + int64(time.Second) - 1) / int64(time.Second))
	if retry < 1 {
		retry = 1
	}
	if res.planBreach {
		return errRateLimited("plan_limit_exceeded",
			fmt.Sprintf("Plan limit exceeded: %s %s limit exceeded (%d) for %s environment", periodNames[b.period], kind, b.limit, env),
			retry)
	}
	who := "user"
	if res.keyBreach {
		who = "API key"
	}
	name := periodNames[b.period]
	if b.period == perDay {
		name = "Day"
	}
	return errRateLimited("rate_limit_exceeded",
		fmt.Sprintf("Rate limit exceeded: %s %s limit exceeded (%d) for this %s", name, kind, b.limit, who),
		retry)
}

// Canonical header names (set directly in the map: no canonicalization
// allocation on the hot path).
const (
	hdrLimitRequests     = "X-Ratelimit-Limit-Requests"
	hdrRemainingRequests = "X-Ratelimit-Remaining-Requests"
	hdrResetRequests     = "X-Ratelimit-Reset-Requests"
	hdrLimitTokens       = "X-Ratelimit-Limit-Tokens"
	hdrRemainingTokens   = "X-Ratelimit-Remaining-Tokens"
	hdrResetTokens       = "X-Ratelimit-Reset-Tokens"
)

// setRateLimitHeaders writes the x-ratelimit-* headers of the tightest
// request and token limits (when there are any). All values are cut from
// one string and stored in vals (nil: allocated here), to keep the hot
// path at one allocation.
func setRateLimitHeaders(h http.Header, req, tok quota, now time.Time, vals *[6]string) {
	if req.limit <= 0 && tok.limit <= 0 {
		return
	}
	var buf [128]byte
	b := buf[:0]
	var cuts [7]int
	qs := [2]quota{req, tok}
	for i, q := range qs {
		if q.limit <= 0 {
			cuts[3*i+1], cuts[3*i+2], cuts[3*i+3] = len(b), len(b), len(b)
			continue
		}
		b = strconv.AppendInt(b, q.limit, 10)
		cuts[3*i+1] = len(b)
		b = strconv.AppendInt(b, q.remaining, 10)
		cuts[3*i+2] = len(b)
		b = appendReset(b, q.end, now)
		cuts[3*i+3] = len(b)
	}
	all := string(b)
	if vals == nil {
		vals = new([6]string)
	}
	names := [6]string{hdrLimitRequests, hdrRemainingRequests, hdrResetRequests, hdrLimitTokens, hdrRemainingTokens, hdrResetTokens}
	for i := range vals {
		if qs[i/3].limit <= 0 {
			continue
		}
		vals[i] = all[cuts[i]:cuts[i+1]]
		h[names[i]] = vals[i : i+1 : i+1]
	}
}

// appendReset appends the time until end, rounded up to whole seconds, in
// Go's duration format ("0s", "40s", "6m0s", "11h59m40s").
func appendReset(b []byte, end int64, now time.Time) []byte {
	d := end - now.UnixNano()
	if d <= 0 {
		return append(b, "0s"...)
	}
	secs := (d + int64(time.Second) - 1) / int64(time.Second)
	h, m, s := secs/3600, secs/60%60, secs%60
	if h > 0 {
		b = strconv.AppendInt(b, h, 10)
		b = append(b, 'h')
	}
	if h > 0 || m > 0 {
		b = strconv.AppendInt(b, m, 10)
		b = append(b, 'm')
	}
	b = strconv.AppendInt(b, s, 10)
	return append(b, 's')
}

// peek sets the x-ratelimit-* headers of a caller without counting
// anything (for refusals before admission).
func (l *limiter) peek(a *admission, now time.Time, h http.Header) {
	var req, tok quota
	in := a.input()
	l.mu.Lock()
	if u, ok := l.users[in.userID]; ok {
		u.rate.roll(now)
		u.rate.tightest(&in.userLimits, &req, &tok)
		if in.plan != nil {
			u.plan.roll(now)
			u.plan.tightest(in.plan, &req, &tok)
		}
	} else {
		var empty windows
		empty.roll(now)
		empty.tightest(&in.userLimits, &req, &tok)
		if in.plan != nil {
			empty.tightest(in.plan, &req, &tok)
		}
	}
	if k, ok := l.keys[in.keyID]; ok {
		k.rate.roll(now)
		k.rate.tightest(&in.keyLimits, &req, &tok)
	} else {
		var empty windows
		empty.roll(now)
		empty.tightest(&in.keyLimits, &req, &tok)
	}
	l.mu.Unlock()
	setRateLimitHeaders(h, req, tok, now, nil)
}
