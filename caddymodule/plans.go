package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sync"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// userPolicy is what the store says about a user beyond their keys: the
// active subscription (with its plan) and the rate limits an admin set.
// Snapshots, read-only.
type userPolicy struct {
	userPlan    *storage.UserPlan // nil: none
	plan        *storage.Plan     // nil: none
	adminLimits storage.RateLimits
}

// entitlements are the plan rules in force for one request.
type entitlements struct {
	planName   string
	models     []string // globs; empty: every model
	limits     periodLimits
	trialEnded bool // no plan, and the trial is over: metered calls are refused
}

// entitlementsAt returns the entitlements at now of user u for a key of
// the environment env: the active plan's; without one, none beyond credits
// for a user who paid their way out of the trial, else the trial's (which
// may have ended). Keys of other environments than live get half of each
// limit (at least 1).
func (p *userPolicy) entitlementsAt(now time.Time, env string, u *storage.User, trial *TrialPolicy) entitlements {
	var e entitlements
	var dReq, mReq, dTok, mTok int64
	switch {
	case p != nil && p.plan != nil && p.userPlan.ActiveAt(now):
		e.planName, e.models = p.plan.Name, p.plan.Models
		dReq, mReq = p.plan.DailyRequestLimit, p.plan.MonthlyRequestLimit
		dTok, mTok = p.plan.DailyTokenLimit, p.plan.MonthlyTokenLimit
	case u != nil && u.SubscriptionStatus == StatusPayAsYouGo:
		e.planName = PayAsYouGoPlanName
	default:
		t := &trial.Plan
		e.planName, e.models = t.Name, t.Models
		dReq, mReq = t.DailyRequestLimit, t.MonthlyRequestLimit
		dTok, mTok = t.DailyTokenLimit, t.MonthlyTokenLimit
		e.trialEnded = trial.endedAt(u, now)
	}
	if env != "live" {
		dReq, mReq, dTok, mTok = half(dReq), half(mReq), half(dTok), half(mTok)
	}
	e.limits.requests[perDay], e.limits.requests[perMonth] = dReq, mReq
	e.limits.tokens[perDay], e.limits.tokens[perMonth] = dTok, mTok
	return e
}

// half halves a positive limit, keeping at least 1 (0 stays unlimited).
func half(n int64) int64 {
	if n <= 0 {
		return n
	}
	return max(n/2, 1)
}

// modelAllowed reports whether model matches one of the globs (an empty
// list allows every model).
func modelAllowed(globs []string, model string) bool {
	if len(globs) == 0 {
		return true
	}
	for _, g := range globs {
		if g == model || g == "*" {
			return true
		}
		if ok, _ := path.Match(g, model); ok {
			return true
		}
	}
	return false
}

// errModelNotAllowed is the 403 for a model outside the plan.
func errModelNotAllowed(model, plan string) *gatewayError {
	return errForbidden("model_not_allowed",
		fmt.Sprintf("The model %q is not available on your plan (%s)", model, plan))
}

// validateGlob checks a model glob.
func validateGlob(g string) error {
	if g == "" {
		return errors.New("empty model glob")
	}
	if _, err := path.Match(g, ""); err != nil {
		return fmt.Errorf("bad model glob %q: %v", g, err)
	}
	return nil
}

// planCache holds userPolicy values in memory, loaded on first use and
// dropped by the change feed (plan definitions, assignments, admin limits).
// Reads never write: an expired plan simply counts as none.
type planCache struct {
	store storage.Policy
	// behind, when set, reports that the store's change feed is behind its
	// bound: get reads the store, caching nothing, until it has caught up.
	behind func() bool

	mu    sync.RWMutex
	gen   uint64
	users map[int64]*userPolicy
}

// maxCachedPolicies bounds the cache; when full it is cleared.
const maxCachedPolicies = 100_000

func newPlanCache(st storage.Policy) *planCache {
	return &planCache{store: st, users: make(map[int64]*userPolicy)}
}

// get returns a user's policy, reading the store only on a miss.
func (c *planCache) get(ctx context.Context, userID int64) (*userPolicy, error) {
	if c.behind != nil && c.behind() {
		return c.load(ctx, userID)
	}
	c.mu.RLock()
	p, ok := c.users[userID]
	gen := c.gen
	c.mu.RUnlock()
	if ok {
		return p, nil
	}
	p, err := c.load(ctx, userID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if gen == c.gen {
		if len(c.users) >= maxCachedPolicies {
			clear(c.users)
		}
		c.users[userID] = p
	}
	c.mu.Unlock()
	return p, nil
}

func (c *planCache) load(ctx context.Context, userID int64) (*userPolicy, error) {
	p := new(userPolicy)
	up, err := c.store.ActiveUserPlan(ctx, userID)
	switch {
	case err == nil:
		plan, err := c.store.GetPlan(ctx, up.PlanID)
		if err == nil {
			p.userPlan, p.plan = up, plan
		} else if !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
	case !errors.Is(err, storage.ErrNotFound):
		return nil, err
	}
	l, err := c.store.UserLimits(ctx, userID)
	switch {
	case err == nil:
		p.adminLimits = l
	case !errors.Is(err, storage.ErrNotFound):
		return nil, err
	}
	return p, nil
}

// invalidate drops what a change affects.
func (c *planCache) invalidate(ch storage.Change) {
	switch ch.Kind {
	case storage.ChangePlan, storage.ChangeAll:
		c.mu.Lock()
		c.gen++
		clear(c.users)
		c.mu.Unlock()
	case storage.ChangeLimits, storage.ChangeUser:
		c.mu.Lock()
		c.gen++
		delete(c.users, ch.UserID)
		c.mu.Unlock()
	}
}
