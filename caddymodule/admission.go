package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Admission decides whether an authenticated request may reach the
// upstream, in the order ServeHTTP runs it: the admission is built from
// the caller's policy (newAdmission), the model is checked against the
// plan (checkModel), the request is counted against the rate and plan
// limits (admit), and on metered routes its cost is reserved in one store
// call (reserve), waiting in arrival order when the user's requests in
// flight hold the credits it needs (creditwait.go); the metering step
// settles the reservation exactly once.

// admission is a request the gateway let through, handed to the metering
// step (proxy). It is owned by that request; read its fields, do not change
// them.
//
//   - route: what the path is; route.metered() is the one answer to "is
//     this request metered" (parsed, plan-counted, reserved and settled).
//   - key, user: snapshots of the caller's API key and user (read-only,
//     shared with other requests).
//   - rl: the per-key rate limits in force (admin > key > site > app, first
//     non-zero per field) and the per-user ones (admin > site > app).
//   - req: the parsed inference request on metered routes.
//   - clientIP: Caddy's client IP. planName: the plan in force ("Trial"
//     without one). env: the key's environment tag.
//   - estTokens: the tokens counted against the token limits at admission
//     (prompt estimate + max_tokens).
//
// After settlement the metering step calls recordTokens(actual) once with
// the real total tokens, which replaces the estimate in every token
// counter; when the request was refused or refunded (nothing charged, no
// usage recorded) it calls recordRefund instead.
type admission struct {
	route     route
	key       *storage.APIKey
	user      *storage.User
	rl        *resolvedLimits // the key's and the user's rate limits
	req       *inferenceRequest
	clientIP  string
	planName  string
	env       string
	estTokens int64

	entry      *keyEntry
	models     []string // model globs of the plan; empty: all
	planLimits periodLimits
	lim        *limiter
	ends       [numPeriods]int64
	recorded   bool
	headerVals [6]string       // backing of the x-ratelimit-* header values
	alloc      *meteredRequest // the allocation this admission is part of, on metered routes
}

// meteredRequest is what a metered request needs, allocated as one
// object: its admission, parsed request and settlement.
type meteredRequest struct {
	adm admission
	ir  inferenceRequest
	s   settlement
	// limits, on a store that counts limits, is what its reservation
	// checks and counts (nil: the limiter counted the request). Here
	// rather than in the admission, which free routes allocate too.
	limits *storage.LimitRequest
}

// countedLimits is what the reservation of a metered request counts on a
// store that counts limits, else nil.
func (a *admission) countedLimits() *storage.LimitRequest {
	if a.alloc == nil {
		return nil
	}
	return a.alloc.limits
}

// maskedKey is a.key.Masked(), computed once per key entry.
func (a *admission) maskedKey() string {
	if e := a.entry; e != nil && e.id.Key == a.key {
		return e.masked
	}
	return a.key.Masked()
}

// newRequest returns the (zero) inference request to parse the body into.
func (a *admission) newRequest() *inferenceRequest {
	if a.alloc != nil {
		return &a.alloc.ir
	}
	return new(inferenceRequest)
}

// newSettlement returns the (zero) settlement of the request.
func (a *admission) newSettlement() *settlement {
	if a.alloc != nil {
		return &a.alloc.s
	}
	return new(settlement)
}

// errPlanUnchecked refuses a request whose plan limits could not be read:
// 503 when the database is unreachable (retry once it is back), else 429.
func errPlanUnchecked(err error) *gatewayError {
	if errors.Is(err, storage.ErrUnavailable) {
		return errDatabaseUnavailable
	}
	return errRateLimited("plan_limit_exceeded", "Plan limit exceeded: Unable to check plan limits", 1)
}

// newAdmission resolves what governs the caller: the user's policy (plan
// and admin limits, cached), the merged rate limits and the plan limits.
func (g *Gateway) newAdmission(r *http.Request, e *keyEntry, rt route, clientIP string, now time.Time) (*admission, *gatewayError) {
	pol, err := g.state.plans.get(r.Context(), e.id.Key.UserID)
	if err != nil {
		if c := g.logger.Check(zap.ErrorLevel, "loading plan and limits"); c != nil {
			c.Write(zap.Error(err))
		}
		return nil, errPlanUnchecked(err)
	}
	ent := pol.entitlementsAt(now, e.env, e.id.User, g.app.trial)
	if ent.trialEnded && rt.metered() {
		return nil, errTrialExpired(e.id.User.TrialExpiresAt)
	}
	var a *admission
	var mr *meteredRequest
	if rt.metered() {
		mr = new(meteredRequest)
		a = &mr.adm
	} else {
		a = new(admission)
	}
	*a = admission{
		key:        e.id.Key,
		user:       e.id.User,
		rl:         g.resolveLimits(e, pol),
		clientIP:   clientIP,
		planName:   ent.planName,
		env:        e.env,
		entry:      e,
		models:     ent.models,
		planLimits: ent.limits,
		lim:        g.state.limiter,
		route:      rt,
		alloc:      mr,
	}
	return a, nil
}

// resolvedLimits are a key's rate limits (admin, key, handler and app
// levels merged) and its user's (the same without the key level), for one
// policy snapshot and handler.
type resolvedLimits struct {
	pol       *userPolicy // the snapshot they were resolved under
	g         *Gateway
	key, user periodLimits
}

// resolveLimits returns the merged rate limits of e under pol, computed
// once per key version, policy snapshot and handler (all immutable).
func (g *Gateway) resolveLimits(e *keyEntry, pol *userPolicy) *resolvedLimits {
	if rl := e.limits.Load(); rl != nil && rl.pol == pol && rl.g == g {
		return rl
	}
	var admin storage.RateLimits
	if pol != nil {
		admin = pol.adminLimits
	}
	rl := &resolvedLimits{
		pol:  pol,
		g:    g,
		key:  rateLimits(mergeLimits(admin, e.id.Key.RateLimits, g.Limits, g.app.DefaultLimits)),
		user: rateLimits(mergeLimits(admin, storage.RateLimits{}, g.Limits, g.app.DefaultLimits)),
	}
	e.limits.Store(rl)
	return rl
}

// checkModel refuses a model outside the plan's model globs.
func (a *admission) checkModel() *gatewayError {
	if !a.route.metered() || modelAllowed(a.models, a.req.Model) {
		return nil
	}
	return errModelNotAllowed(a.req.Model, a.planName)
}

// admit counts the request against the plan (metered routes only) and rate
// limits, all or nothing, and sets the x-ratelimit-* headers. Plan counters
// are seeded from the usage records the first time a user is seen.
func (g *Gateway) admit(r *http.Request, a *admission, now time.Time, h http.Header) *gatewayError {
	if a.route.metered() {
		a.estTokens = a.req.PromptTokens + a.req.MaxTokens
	}
	if c := g.state.limits; c != nil {
		return g.admitCounted(r.Context(), c, a, now, h)
	}
	in := a.input()
	res := a.lim.admit(&in, now)
	if res.needSeed {
		if err := a.lim.seed(r.Context(), g.state.store, a.key.UserID, now); err != nil {
			if c := g.logger.Check(zap.ErrorLevel, "loading plan usage"); c != nil {
				c.Write(zap.Error(err))
			}
			return errPlanUnchecked(err)
		}
		if res = a.lim.admit(&in, now); res.needSeed { // evicted meanwhile
			return errRateLimited("plan_limit_exceeded", "Plan limit exceeded: Unable to check plan limits", 1)
		}
	}
	setRateLimitHeaders(h, res.requests, res.tokens, now, &a.headerVals)
	if res.refused {
		return res.refusal(a.env, now)
	}
	a.ends = res.ends
	if a.route.metered() {
		a.entry.admitted.Add(1)
	}
	return nil
}

// input is what the limiter needs to count the admission.
func (a *admission) input() admitInput {
	return admitInput{
		userID:     a.key.UserID,
		keyID:      a.key.ID,
		userLimits: a.rl.user,
		keyLimits:  a.rl.key,
		plan:       &a.planLimits,
		countPlan:  a.route.metered(),
		est:        a.estTokens,
	}
}

// reservationPlan is what admission asks the store to hold for a request:
// its worst case, and for a request whose cap may be lowered, the least
// worth holding (storage.ReserveRequest; the store picks the amount in
// between atomically, by the share rule storage.ReserveAmount).
type reservationPlan struct {
	minCredits int64 // the prompt and a minimal completion; == maxCredits when the cap is fixed
	maxCredits int64 // the worst case at the full cap
	cap        int64 // per-choice completion cap at maxCredits (0 for embeddings)
	clientCap  bool  // the client sent the cap
}

// planReservation computes what a request may hold. Pure: integer
// arithmetic only.
//
//   - embeddings: the prompt estimate × EmbeddingsReservePercent/100, fixed;
//   - the client's own max_tokens: prompt + max_tokens × choices, fixed
//     unless LowerMaxTokens lets the gateway lower it;
//   - no max_tokens: prompt + DefaultMaxTokens × choices, which the gateway
//     lowers to what the hold affords;
//   - a lowerable cap holds at least prompt + MinCompletionTokens × choices.
func (m *Metering) planReservation(p pricing, ir *inferenceRequest) reservationPlan {
	if ir.Endpoint == endpointEmbeddings {
		est := (ir.PromptTokens*m.EmbeddingsReservePercent + 99) / 100
		need := p.reserveCost(ir.Model, est, 0)
		return reservationPlan{minCredits: need, maxCredits: need}
	}
	n := max(ir.choices, 1)
	plan := reservationPlan{cap: ir.MaxTokens, clientCap: ir.MaxTokens > 0}
	if !plan.clientCap {
		plan.cap = m.DefaultMaxTokens
	}
	plan.maxCredits = p.reserveCost(ir.Model, ir.PromptTokens, plan.cap*n)
	plan.minCredits = plan.maxCredits
	if !plan.clientCap || m.LowerMaxTokens {
		plan.minCredits = min(p.reserveCost(ir.Model, ir.PromptTokens, min(m.MinCompletionTokens, plan.cap)*n), plan.maxCredits)
	}
	return plan
}

// capFor returns the per-choice cap to send upstream for a hold of amount
// credits: the full cap when the worst case is held (0, "send as is", for
// the client's own), else the most the hold affords. Pure.
func (plan reservationPlan) capFor(p pricing, ir *inferenceRequest, amount int64) int64 {
	if ir.Endpoint == endpointEmbeddings {
		return 0
	}
	if amount >= plan.maxCredits {
		if plan.clientCap {
			return 0
		}
		return plan.cap
	}
	afford := p.maxCompletionFor(ir.Model, ir.PromptTokens, amount) / max(ir.choices, 1)
	return max(min(afford, plan.cap), 1)
}

// refusal is the 402 of a request the store could not hold: the balance
// itself is too low (no wait helps), or the user's requests in flight hold
// what it needs (retry: they come back when those settle).
func (plan reservationPlan) refusal(p pricing, ir *inferenceRequest, short *storage.CreditShortage) *gatewayError {
	if !short.BalanceShort() {
		return errCreditsHeld(short)
	}
	balance := max(short.Credits, 0)
	if ir.Endpoint == endpointEmbeddings {
		return errInsufficientCredits(fmt.Sprintf(
			"Insufficient credits: this request needs up to %d credits, the balance is %d", plan.maxCredits, balance))
	}
	afford := p.maxCompletionFor(ir.Model, ir.PromptTokens, balance)
	if afford >= 0 {
		afford /= max(ir.choices, 1)
	}
	if plan.minCredits < plan.maxCredits || afford < 1 {
		return errInsufficientCredits(fmt.Sprintf(
			"Insufficient credits: the prompt (about %d tokens) and a minimal completion need more than the balance of %d credits",
			ir.PromptTokens, balance))
	}
	return errInsufficientCredits(fmt.Sprintf(
		"Insufficient credits: max_tokens %d needs up to %d credits, the balance is %d; lower max_tokens to at most %d",
		plan.cap, plan.maxCredits, balance, afford))
}

// errCreditsHeld is the 402 of a request the balance would pay for, but
// whose user's requests in flight hold the credits it needs.
func errCreditsHeld(short *storage.CreditShortage) *gatewayError {
	msg := "Insufficient credits right now: earlier requests of this user hold or wait for the credits this one needs; retry"
	if short.Holds > 0 {
		msg = fmt.Sprintf("Insufficient credits right now: %d credits are held by %d requests in flight; retry", short.Reserved, short.Holds)
	}
	e := errorf(http.StatusPaymentRequired, "insufficient_quota", "credits_held", msg)
	e.RetryAfter = creditsHeldRetryAfter
	return e
}

// Refusals of the reservation step.
var (
	errCreditsUnavail = errorf(http.StatusServiceUnavailable, "server_error", "service_unavailable",
		"The gateway cannot check credits right now; retry shortly")
	// errClientGone ends a request whose client left while it waited for
	// credits: nothing is written to it (the status is for the access log).
	errClientGone = errorf(statusClientClosed, "invalid_request_error", "client_closed", "client closed the request")
)

// Credit wait settings.
const (
	// creditsHeldRetryAfter is the Retry-After of a 402 for held credits:
	// requests in flight usually settle within seconds.
	creditsHeldRetryAfter = 1
	// creditRecheck bounds a wait for a wake that never comes (a release
	// on another node sharing the database whose change was not
	// delivered): the head of a queue retries at this interval.
	creditRecheck = time.Second
	// statusClientClosed is the access-log status of a request whose
	// client left before the answer (as reverse_proxy records it).
	statusClientClosed = 499
)

// reservation is the outcome of the reservation step.
type reservation struct {
	res       *storage.Reservation
	maxTokens int64         // when > 0, the per-choice cap to send upstream
	waited    time.Duration // time spent waiting for credits
}

// reserve holds the request's cost in one store call. When the balance
// would pay but the user's requests in flight hold what it needs, it waits
// for them, up to CreditWait, in arrival order (creditwait.go); a client
// that leaves ends its wait at once, holding nothing.
func (g *Gateway) reserve(ctx context.Context, adm *admission, cfg *Metering, h http.Header) (reservation, *gatewayError) {
	prices := g.app.Pricing()
	plan := cfg.planReservation(prices, adm.req)
	req := storage.ReserveRequest{
		UserID: adm.key.UserID, KeyID: adm.key.ID,
		Credits: plan.maxCredits, MinCredits: plan.minCredits,
	}
	if adm.key.MaxRequests != nil {
		req.MaxRequests = *adm.key.MaxRequests
	}
	now := clockNow()
	req.KeyBudget, req.UserBudget = adm.budgetWindows(now)
	req.Limits = adm.countedLimits()
	wait := time.Duration(*cfg.CreditWait)
	// A spent budget is refused at once: waiting for credits cannot help.
	// A budget whose rest is held by requests in flight is waited for like
	// held credits (the holds come back as those settle), so that
	// concurrent requests are not refused while the budget has room.
	var budgetHeld *storage.BudgetExceeded
	try := func() (*storage.Reservation, *storage.CreditShortage, *gatewayError) {
		res, short, be, gerr := g.tryReserve(ctx, adm, req, h)
		budgetHeld = nil
		if be != nil {
			if wait <= 0 || !plan.budgetHeld(be) {
				return nil, nil, plan.budgetRefusal(prices, adm.req, be, adm.budgetReset(be), now)
			}
			budgetHeld = be
			return nil, &storage.CreditShortage{}, nil // held: wait
		}
		return res, short, gerr
	}
	queue := g.state.credits
	if wait <= 0 || !queue.queued(req.UserID) {
		res, short, gerr := try()
		switch {
		case res != nil:
			return reservation{res: res, maxTokens: plan.capFor(prices, adm.req, res.Amount)}, nil
		case gerr != nil:
			return reservation{}, gerr
		case wait <= 0 || short.BalanceShort():
			return reservation{}, plan.refusal(prices, adm.req, short)
		}
	}

	start := time.Now()
	w := queue.join(req.UserID)
	defer queue.leave(req.UserID, w)
	bound := time.NewTimer(wait)
	defer bound.Stop()
	recheck := time.NewTimer(creditRecheck)
	defer recheck.Stop()
	var short *storage.CreditShortage
	for {
		if head, behind := queue.position(req.UserID, w); head {
			req.Waiting = behind
			var res *storage.Reservation
			var gerr *gatewayError
			res, short, gerr = try()
			switch {
			case res != nil:
				waited := time.Since(start)
				observeCreditWait(waitAdmitted, waited)
				return reservation{res: res, maxTokens: plan.capFor(prices, adm.req, res.Amount), waited: waited}, nil
			case gerr != nil:
				return reservation{}, gerr
			case short.BalanceShort():
				observeCreditWait(waitRefused, time.Since(start))
				return reservation{}, plan.refusal(prices, adm.req, short)
			}
		}
		select {
		case <-w.wake:
		case <-recheck.C:
			recheck.Reset(creditRecheck)
		case <-bound.C:
			observeCreditWait(waitRefused, time.Since(start))
			if budgetHeld != nil {
				return reservation{waited: time.Since(start)}, plan.budgetRefusal(prices, adm.req, budgetHeld, adm.budgetReset(budgetHeld), now)
			}
			if short == nil { // never at the head: the requests ahead waited too
				short = &storage.CreditShortage{Needed: plan.minCredits}
			}
			return reservation{waited: time.Since(start)}, errCreditsHeld(short)
		case <-ctx.Done():
			observeCreditWait(waitClientGone, time.Since(start))
			return reservation{waited: time.Since(start)}, errClientGone
		}
	}
}

// tryReserve makes the one store call of a reservation. It returns the
// reservation, or the shortage when credits are short, or the budget that
// refused it, or the refusal when anything else stops it. On a store that
// counts limits, the call counts them too (req.Limits), and the
// x-ratelimit-* headers are set in h from what it counted.
func (g *Gateway) tryReserve(ctx context.Context, adm *admission, req storage.ReserveRequest, h http.Header) (*storage.Reservation, *storage.CreditShortage, *storage.BudgetExceeded, *gatewayError) {
	res, err := g.state.store.Reserve(ctx, req)
	if err == nil {
		if res.Limits != nil {
			adm.setCountedHeaders(req.Limits, res.Limits, h)
		}
		return res, nil, nil, nil
	}
	var short *storage.CreditShortage
	var ex *storage.LimitExceeded
	switch {
	case errors.As(err, &ex):
		return nil, nil, nil, adm.limitRefusal(req.Limits, ex, h)
	case errors.As(err, &short):
		if short.Limits != nil {
			// Counted against the request rate once: a retry is not.
			req.Limits.Counted = true
			adm.setCountedHeaders(req.Limits, short.Limits, h)
		}
		return nil, short, nil, nil
	case asBudgetExceeded(err) != nil:
		be := asBudgetExceeded(err)
		if be.Limits != nil {
			req.Limits.Counted = true
			adm.setCountedHeaders(req.Limits, be.Limits, h)
		}
		return nil, nil, be, nil
	case errors.Is(err, storage.ErrRequestLimit):
		return nil, nil, nil, errKeyRequestLimit
	case errors.Is(err, storage.ErrInsufficientCredits):
		// A store without the details: treat it as held, so that a wait
		// can still help.
		return nil, &storage.CreditShortage{}, nil, nil
	}
	g.logStoreError("reserving credits", err)
	return nil, nil, nil, errCreditsUnavail
}

// recordTokens replaces the estimated tokens counted at admission by the
// actual ones, in the per-minute/hour/day and plan counters whose window
// has not ended since. Call it once, after settlement; later calls do
// nothing.
func (a *admission) recordTokens(actual int64) {
	if a == nil || a.recorded || a.lim == nil {
		return
	}
	a.recorded = true
	if actual < 0 {
		actual = 0
	}
	a.lim.correct(a.key.UserID, a.key.ID, a.route.metered(), false, &a.ends, a.estTokens, actual)
}

// recordRefund is recordTokens(0) for a request that was refused after
// admission (402, request cap) or refunded (upstream error, nothing
// delivered): its tokens are taken back and it no longer counts toward the
// plan's daily and monthly requests, which count charged requests only (as
// the usage records they are re-seeded from after a restart). It still
// counts toward the per-minute/hour/day request rate limits, so refusals
// cannot be retried without bound.
func (a *admission) recordRefund() {
	if a == nil || a.recorded || a.lim == nil {
		return
	}
	a.recorded = true
	a.lim.correct(a.key.UserID, a.key.ID, a.route.metered(), true, &a.ends, a.estTokens, 0)
}
