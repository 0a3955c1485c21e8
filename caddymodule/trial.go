package caddymodule

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Trial is what a user without an active plan may do: the operator's
// setting, `trial { ... }` in the gatewayz app. Unset fields keep the
// reference's defaults; 0 means unlimited.
type Trial struct {
	// RequestsPerDay is the daily request limit. Default 100.
	RequestsPerDay *int64 `json:"requests_per_day,omitempty"`

	// TokensPerDay is the daily token limit. Default 10000.
	TokensPerDay *int64 `json:"tokens_per_day,omitempty"`

	// RequestsPerMonth is the calendar-month request limit. Default 1000.
	RequestsPerMonth *int64 `json:"requests_per_month,omitempty"`

	// TokensPerMonth is the calendar-month token limit. Default 100000.
	TokensPerMonth *int64 `json:"tokens_per_month,omitempty"`

	// Models are the model globs a trial user may call. Default: every
	// model.
	Models []string `json:"models,omitempty"`

	// Days is how long the trial lasts from registration; afterwards a
	// user without a plan (and not topped up, with ends_at_top_up) is
	// refused with 403 trial_expired. Default 0: the trial does not end.
	Days int64 `json:"days,omitempty"`

	// EndsAtTopUp ends the trial at the user's first admin top-up: from
	// then on the user pays as they go, limited by their credits and the
	// rate limits only, not by the trial limits.
	EndsAtTopUp bool `json:"ends_at_top_up,omitempty"`
}

// Trial defaults (the reference's).
const (
	trialPlanName            = "Trial"
	PayAsYouGoPlanName       = "Pay as you go" // the plan name shown after a trial ended at a top-up
	trialDailyRequestLimit   = 100
	trialMonthlyRequestLimit = 1000
	trialDailyTokenLimit     = 10_000
	trialMonthlyTokenLimit   = 100_000
)

// Subscription statuses the gateway acts on.
const (
	// StatusTrial is a new user's status.
	StatusTrial = "trial"
	// StatusPayAsYouGo is the status of a user whose trial ended at a
	// top-up (trial ends_at_top_up): no plan limits without a plan.
	StatusPayAsYouGo = "pay_as_you_go"
)

// TrialFeatures are the features of users without an active plan.
var TrialFeatures = []string{"basic_models"}

// TrialPolicy is the trial in force, resolved from the app's settings.
type TrialPolicy struct {
	// Plan carries the trial's name, limits (0: unlimited), models and
	// features, in the shape of a plan.
	Plan storage.Plan
	// Period is how long a trial lasts from registration; 0: forever.
	Period time.Duration
	// EndsAtTopUp says the first top-up ends the trial.
	EndsAtTopUp bool
}

// resolveTrial applies the defaults to t (which may be nil) and the
// deprecated trial_models.
func resolveTrial(t *Trial, trialModels []string) (*TrialPolicy, error) {
	if t == nil {
		t = new(Trial)
	}
	pick := func(name string, v *int64, def int64) (int64, error) {
		if v == nil {
			return def, nil
		}
		if *v < 0 {
			return 0, fmt.Errorf("gatewayz: trial %s must not be negative", name)
		}
		return *v, nil
	}
	p := &TrialPolicy{EndsAtTopUp: t.EndsAtTopUp}
	p.Plan = storage.Plan{Name: trialPlanName, IsActive: true, Features: TrialFeatures}
	var err error
	if p.Plan.DailyRequestLimit, err = pick("requests_per_day", t.RequestsPerDay, trialDailyRequestLimit); err != nil {
		return nil, err
	}
	if p.Plan.DailyTokenLimit, err = pick("tokens_per_day", t.TokensPerDay, trialDailyTokenLimit); err != nil {
		return nil, err
	}
	if p.Plan.MonthlyRequestLimit, err = pick("requests_per_month", t.RequestsPerMonth, trialMonthlyRequestLimit); err != nil {
		return nil, err
	}
	if p.Plan.MonthlyTokenLimit, err = pick("tokens_per_month", t.TokensPerMonth, trialMonthlyTokenLimit); err != nil {
		return nil, err
	}
	for _, m := range append(append([]string(nil), t.Models...), trialModels...) {
		if err := validateGlob(m); err != nil {
			return nil, fmt.Errorf("gatewayz: trial models: %v", err)
		}
		p.Plan.Models = append(p.Plan.Models, m)
	}
	if t.Days < 0 || t.Days > 36500 {
		return nil, fmt.Errorf("gatewayz: trial days must be between 0 and 36500")
	}
	p.Period = time.Duration(t.Days) * 24 * time.Hour
	return p, nil
}

// ExpiresAt is when a trial that starts at registered ends; the zero time
// when it does not.
func (p *TrialPolicy) ExpiresAt(registered time.Time) time.Time {
	if p.Period <= 0 {
		return time.Time{}
	}
	return registered.Add(p.Period)
}

// endedAt reports whether u's trial is over at now: past its recorded
// expiry while the trial has a length. A trial without days never ends
// by time, so an expiry recorded under an earlier setting is not held
// against the user.
func (p *TrialPolicy) endedAt(u *storage.User, now time.Time) bool {
	return p.Period > 0 && u != nil && !u.TrialExpiresAt.IsZero() && !now.Before(u.TrialExpiresAt)
}

// errTrialExpired is the 403 of a user whose trial is over.
func errTrialExpired(at time.Time) *gatewayError {
	return errForbidden("trial_expired", fmt.Sprintf(
		"Your trial ended on %s: top up credits or subscribe to a plan to continue", at.UTC().Format(time.RFC3339)))
}

// unmarshalTrial parses the trial block of the gatewayz global option:
//
//	trial {
//	    requests_per_day   <n>   # 0: unlimited
//	    tokens_per_day     <n>
//	    requests_per_month <n>
//	    tokens_per_month   <n>
//	    models <glob...>
//	    days <n>                 # 0: the trial does not end
//	    ends_at_top_up
//	}
func unmarshalTrial(d *caddyfile.Dispenser, t *Trial) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		var field **int64
		switch name {
		case "requests_per_day":
			field = &t.RequestsPerDay
		case "tokens_per_day":
			field = &t.TokensPerDay
		case "requests_per_month":
			field = &t.RequestsPerMonth
		case "tokens_per_month":
			field = &t.TokensPerMonth
		case "days":
		case "models":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, g := range args {
				if err := validateGlob(g); err != nil {
					return d.Errf("trial models: %v", err)
				}
			}
			t.Models = append(t.Models, args...)
			continue
		case "ends_at_top_up":
			if d.NextArg() {
				return d.ArgErr()
			}
			t.EndsAtTopUp = true
			continue
		default:
			return unknownOption(d, "trial option", trialOptions)
		}
		n, err := nonNegativeArg(d, "trial "+name)
		if err != nil {
			return err
		}
		if field == nil {
			t.Days = n
		} else {
			*field = &n
		}
	}
	return nil
}

// trialOptions are the fields of the trial block.
var trialOptions = []string{
	"requests_per_day", "tokens_per_day", "requests_per_month", "tokens_per_month", "models", "days", "ends_at_top_up",
}
