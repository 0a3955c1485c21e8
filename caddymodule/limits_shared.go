package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Limits counted by the store.
//
// On a store that several nodes share and that counts limits itself
// (storage.LimitCounter: PostgreSQL), the rate limits and plan quotas are
// not counted in memory: a metered request's limits travel with its
// reservation and are checked and counted in the same database call
// (exact across nodes, no extra round trip); a free route's request is
// counted in one call of its own. The in-memory limiter serves the stores
// only one process opens (bbolt).

// The store's windows are the limiter's periods, in the same order.
var (
	_ [storage.NumWindows - numPeriods]struct{}
	_ [numPeriods - storage.NumWindows]struct{}
	_ [storage.WindowMonth - int(perMonth)]struct{}
	_ [int(perMonth) - storage.WindowMonth]struct{}
)

func windowCounts(pl *periodLimits) storage.WindowCounts {
	return storage.WindowCounts{Requests: pl.requests, Tokens: pl.tokens}
}

// limitRequest is what the store checks and counts for the admission. A
// key whose limits are its user's (no limits of its own) is not counted
// apart: the user's windows count every request of the key and more, so
// the user's limit is always reached first; the store then does not lock
// the key's row for them.
func (a *admission) limitRequest(now time.Time) *storage.LimitRequest {
	lr := &storage.LimitRequest{Now: now, Tokens: a.estTokens}
	lr.Limits[storage.LevelPlan] = windowCounts(&a.planLimits)
	lr.Limits[storage.LevelUser] = windowCounts(&a.rl.user)
	if a.rl.key != a.rl.user {
		lr.Limits[storage.LevelKey] = windowCounts(&a.rl.key)
	}
	return lr
}

// admitCounted admits a request on a store that counts limits: a metered
// request is counted by its reservation (Gateway.reserve), a free one
// here.
func (g *Gateway) admitCounted(ctx context.Context, c storage.LimitCounter, a *admission, now time.Time, h http.Header) *gatewayError {
	a.lim = nil // nothing is counted in memory, nothing to correct after
	lr := a.limitRequest(now)
	if a.route.metered() {
		a.alloc.limits = lr
		a.entry.admitted.Add(1)
		return nil
	}
	st, err := c.CountLimits(ctx, a.key.UserID, a.key.ID, lr)
	var ex *storage.LimitExceeded
	switch {
	case errors.As(err, &ex):
		return a.limitRefusal(lr, ex, h)
	case err != nil:
		if ce := g.logger.Check(zap.ErrorLevel, "counting rate limits"); ce != nil {
			ce.Write(zap.Error(err))
		}
		return errPlanUnchecked(err)
	}
	a.setCountedHeaders(lr, &st, h)
	return nil
}

// countedResult is the admission result of what the store counted for lr
// (and, for a refusal, the limit crossed): the header quotas and the
// refusal.
func (a *admission) countedResult(lr *storage.LimitRequest, st *storage.LimitState, ex *storage.LimitExceeded) admitResult {
	now := lr.Now
	level := func(l storage.LimitLevel) windows {
		var ws windows
		for p := range ws {
			ws[p] = window{end: period(p).end(now), requests: st[l].Requests[p], tokens: st[l].Tokens[p]}
		}
		return ws
	}
	var res admitResult
	if ex != nil {
		p := period(ex.Window)
		res.refused, res.planBreach, res.keyBreach = true, ex.Level == storage.LevelPlan, ex.Level == storage.LevelKey
		res.breach = breach{period: p, tokens: ex.Tokens, limit: ex.Limit, end: p.end(now), exceeded: true}
	}
	in := a.input()
	user, key, plan := level(storage.LevelUser), level(storage.LevelKey), level(storage.LevelPlan)
	user.tightest(&in.userLimits, &res.requests, &res.tokens)
	key.tightest(&in.keyLimits, &res.requests, &res.tokens)
	plan.tightest(in.plan, &res.requests, &res.tokens)
	return res
}

// setCountedHeaders sets the x-ratelimit-* headers of what the store
// counted for lr.
func (a *admission) setCountedHeaders(lr *storage.LimitRequest, st *storage.LimitState, h http.Header) {
	res := a.countedResult(lr, st, nil)
	setRateLimitHeaders(h, res.requests, res.tokens, lr.Now, &a.headerVals)
}

// limitRefusal is the 429 of a limit the store refused for lr, with its
// headers.
func (a *admission) limitRefusal(lr *storage.LimitRequest, ex *storage.LimitExceeded, h http.Header) *gatewayError {
	res := a.countedResult(lr, &ex.State, ex)
	setRateLimitHeaders(h, res.requests, res.tokens, lr.Now, &a.headerVals)
	return res.refusal(a.env, lr.Now)
}
