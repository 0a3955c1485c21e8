package caddymodule

import (
	"strings"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func ptr[T any](v T) *T { return &v }

func TestResolveTrial(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trial   *Trial
		models  []string
		want    storage.Plan
		period  time.Duration
		wantErr string
	}{
		{name: "defaults", want: storage.Plan{DailyRequestLimit: 100, DailyTokenLimit: 10000, MonthlyRequestLimit: 1000, MonthlyTokenLimit: 100000}},
		{name: "zero is unlimited", trial: &Trial{RequestsPerDay: ptr[int64](0), TokensPerMonth: ptr[int64](0), Days: 7},
			want: storage.Plan{DailyTokenLimit: 10000, MonthlyRequestLimit: 1000}, period: 7 * 24 * time.Hour},
		{name: "models and trial_models", trial: &Trial{Models: []string{"a*"}}, models: []string{"b"},
			want: storage.Plan{DailyRequestLimit: 100, DailyTokenLimit: 10000, MonthlyRequestLimit: 1000, MonthlyTokenLimit: 100000, Models: []string{"a*", "b"}}},
		{name: "negative", trial: &Trial{TokensPerDay: ptr[int64](-1)}, wantErr: "tokens_per_day must not be negative"},
		{name: "bad glob", models: []string{"["}, wantErr: "bad model glob"},
		{name: "days too long", trial: &Trial{Days: 40000}, wantErr: "days must be between"},
	} {
		p, err := resolveTrial(tc.trial, tc.models)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := p.Plan
		if got.Name != "Trial" || got.DailyRequestLimit != tc.want.DailyRequestLimit || got.DailyTokenLimit != tc.want.DailyTokenLimit ||
			got.MonthlyRequestLimit != tc.want.MonthlyRequestLimit || got.MonthlyTokenLimit != tc.want.MonthlyTokenLimit ||
			strings.Join(got.Models, ",") != strings.Join(tc.want.Models, ",") || p.Period != tc.period {
			t.Errorf("%s: got %+v period %v", tc.name, got, p.Period)
		}
	}
}

func TestEntitlementsWithoutPlan(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	trial, err := resolveTrial(&Trial{RequestsPerDay: ptr[int64](5), Days: 3, Models: []string{"m*"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	forever, _ := resolveTrial(nil, nil)
	plan := &userPolicy{
		userPlan: &storage.UserPlan{StartDate: now.Add(-time.Hour), EndDate: now.Add(time.Hour), IsActive: true},
		plan:     &storage.Plan{Name: "Pro", DailyRequestLimit: 50},
	}
	for _, tc := range []struct {
		name      string
		pol       *userPolicy
		user      storage.User
		trial     *TrialPolicy
		wantPlan  string
		wantDaily int64
		wantEnded bool
	}{
		{"trial running", nil, storage.User{SubscriptionStatus: StatusTrial, TrialExpiresAt: now.Add(time.Minute)}, trial, "Trial", 5, false},
		{"trial over", nil, storage.User{SubscriptionStatus: StatusTrial, TrialExpiresAt: now}, trial, "Trial", 5, true},
		{"no recorded end", nil, storage.User{SubscriptionStatus: StatusTrial}, trial, "Trial", 5, false},
		{"trial without days never ends", nil, storage.User{SubscriptionStatus: StatusTrial, TrialExpiresAt: now.Add(-time.Hour)}, forever, "Trial", 100, false},
		{"topped up", nil, storage.User{SubscriptionStatus: StatusPayAsYouGo, TrialExpiresAt: now.Add(-time.Hour)}, trial, PayAsYouGoPlanName, 0, false},
		{"plan wins over an ended trial", plan, storage.User{SubscriptionStatus: "active", TrialExpiresAt: now.Add(-time.Hour)}, trial, "Pro", 50, false},
	} {
		e := tc.pol.entitlementsAt(now, "live", &tc.user, tc.trial)
		if e.planName != tc.wantPlan || e.limits.requests[perDay] != tc.wantDaily || e.trialEnded != tc.wantEnded {
			t.Errorf("%s: got %s daily %d ended %v", tc.name, e.planName, e.limits.requests[perDay], e.trialEnded)
		}
	}
}

// TestGatewayTrialEnds drives a trial with days through the gateway: a
// user past the trial's end is refused on metered routes (not on
// /v1/models) until a top-up ends the trial.
func TestGatewayTrialEnds(t *testing.T) {
	e := newTestEnv(t, func(a *App, _ *Gateway) { a.Trial = &Trial{Days: 3, EndsAtTopUp: true} })
	key, k := e.newKey(t, "", nil)
	ctx := t.Context()
	end := time.Now().Add(time.Hour)
	if _, err := e.st.UpdateUser(ctx, k.UserID, func(u *storage.User) error { u.TrialExpiresAt = end; return nil }); err != nil {
		t.Fatal(err)
	}
	if rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)); rec.Code != 200 {
		t.Fatalf("during the trial: %d %s", rec.Code, rec.Body)
	}
	clockNow = func() time.Time { return end.Add(time.Second) }
	defer func() { clockNow = time.Now }()
	rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key))
	wantError(t, rec, 403, "trial_expired", "Your trial ended on "+end.UTC().Format(time.RFC3339))
	if rec := e.do(t, "GET", "/v1/models", "", "", bearer(key)); rec.Code != 200 {
		t.Fatalf("models after the trial: %d", rec.Code)
	}
	if _, err := e.st.UpdateUser(ctx, k.UserID, func(u *storage.User) error { u.SubscriptionStatus = StatusPayAsYouGo; return nil }); err != nil {
		t.Fatal(err)
	}
	if rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key)); rec.Code != 200 {
		t.Fatalf("after the top-up: %d %s", rec.Code, rec.Body)
	}
}
