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
// limits (admit), and on metered routes its worst-case cost is reserved
// (reserve), which the metering step settles exactly once.

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

// reservationPlan is what admission reserves for a request.
type reservationPlan struct {
	credits   int64 // worst-case cost to hold
	maxTokens int64 // when > 0, the per-choice cap to send upstream
}

// planReservation computes the worst-case cost of ir against available
// credits. Pure: integer arithmetic only.
//
//   - embeddings: the prompt estimate × EmbeddingsReservePercent/100;
//   - the client's own max_tokens: prompt + max_tokens × choices; when
//     unaffordable, 402, or with LowerMaxTokens the cap the balance affords;
//   - no max_tokens: prompt + DefaultMaxTokens × choices, lowered to what
//     the balance affords;
//   - 402 when not even MinCompletionTokens per choice is affordable.
func (m *Metering) planReservation(p pricing, ir *inferenceRequest, available int64) (reservationPlan, *gatewayError) {
	if ir.Endpoint == endpointEmbeddings {
		est := (ir.PromptTokens*m.EmbeddingsReservePercent + 99) / 100
		need := p.cost(ir.Model, est, 0)
		if need > available {
			return reservationPlan{}, errInsufficientCredits(fmt.Sprintf(
				"Insufficient credits: this request needs up to %d credits, %d available", need, max(available, 0)))
		}
		return reservationPlan{credits: need}, nil
	}
	n := max(ir.choices, 1)
	cap := ir.MaxTokens
	clientCap := cap > 0
	if !clientCap {
		cap = m.DefaultMaxTokens
	}
	need := p.cost(ir.Model, ir.PromptTokens, cap*n)
	if need <= available {
		plan := reservationPlan{credits: need}
		if !clientCap {
			plan.maxTokens = cap
		}
		return plan, nil
	}
	afford := p.maxCompletionFor(ir.Model, ir.PromptTokens, available)
	if afford >= 0 {
		afford /= n
	}
	if afford < m.MinCompletionTokens {
		return reservationPlan{}, errInsufficientCredits(fmt.Sprintf(
			"Insufficient credits: the prompt (about %d tokens) and a minimal completion need more than the %d credits available",
			ir.PromptTokens, max(available, 0)))
	}
	if clientCap && !m.LowerMaxTokens {
		return reservationPlan{}, errInsufficientCredits(fmt.Sprintf(
			"Insufficient credits: max_tokens %d needs up to %d credits, %d available; lower max_tokens to at most %d",
			cap, need, available, afford))
	}
	return reservationPlan{credits: p.cost(ir.Model, ir.PromptTokens, afford*n), maxTokens: afford}, nil
}

// Refusals of the metering step.
var (
	errCreditsUnavail = errorf(http.StatusServiceUnavailable, "server_error", "service_unavailable",
		"The gateway cannot check credits right now; retry shortly")
)

// reserve holds the worst-case cost of the request. A reservation lost to
// a concurrent request (ErrInsufficientCredits after the balance said
// otherwise) is recomputed against the new balance, a few times. It
// returns the balance after the hold, or on a 402 the balance available.
func (g *Gateway) reserve(ctx context.Context, adm *admission, cfg *Metering) (*storage.Reservation, reservationPlan, int64, *gatewayError) {
	store := g.state.store
	prices := g.app.Pricing()
	var maxReq int64
	if adm.key.MaxRequests != nil {
		maxReq = *adm.key.MaxRequests
	}
	var last *gatewayError
	for range maxReserveAttempts {
		bal, err := store.Balance(ctx, adm.key.UserID)
		if err != nil {
			g.logStoreError("reading balance", err)
			return nil, reservationPlan{}, 0, errCreditsUnavail
		}
		avail := bal.Available()
		plan, gerr := cfg.planReservation(prices, adm.req, avail)
		if gerr != nil {
			return nil, reservationPlan{}, avail, gerr
		}
		res, err := store.Reserve(ctx, storage.ReserveRequest{
			UserID: adm.key.UserID, KeyID: adm.key.ID, Credits: plan.credits, MaxRequests: maxReq,
		})
		switch {
		case err == nil:
			return res, plan, avail - plan.credits, nil
		case errors.Is(err, storage.ErrRequestLimit):
			return nil, reservationPlan{}, 0, errKeyRequestLimit
		case errors.Is(err, storage.ErrInsufficientCredits):
			last = errInsufficientCredits("Insufficient credits: concurrent requests hold the remaining balance")
			continue
		default:
			g.logStoreError("reserving credits", err)
			return nil, reservationPlan{}, 0, errCreditsUnavail
		}
	}
	return nil, reservationPlan{}, 0, last
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
