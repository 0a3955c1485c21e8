package caddymodule

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func TestClearsSoon(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  *gatewayError
		want bool
	}{
		{"per-minute limit", errRateLimited("rate_limit_exceeded", "", 42), true},
		{"a minute exactly", errRateLimited("rate_limit_exceeded", "", 60), true},
		{"hourly limit", errRateLimited("rate_limit_exceeded", "", 61), false},
		{"daily plan limit", errRateLimited(codePlanLimit, "", 32151), false},
		{"plan check unavailable", errRateLimited(codePlanLimit, "", 1), true},
		{"key request cap", errKeyRequestLimit, false},
		{"402", errInsufficientCredits("no"), false},
		{"401", errUnauthorized("invalid_api_key", "no"), true},
		{"503", errCreditsUnavail, true},
	} {
		if got := tc.err.clearsSoon(); got != tc.want {
			t.Errorf("%s: clearsSoon = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRefusalOutcome(t *testing.T) {
	for _, tc := range []struct {
		err  *gatewayError
		want outcome
	}{
		{errUnauthorized("invalid_api_key", ""), outcomeUnauthenticated},
		{errForbidden("ip_not_allowed", ""), outcomeForbidden},
		{errRateLimited("rate_limit_exceeded", "", 3), outcomeRateLimited},
		{errRateLimited(codePlanLimit, "", 3), outcomePlanLimit},
		{errKeyRequestLimit, outcomeRequestLimit},
		{errInsufficientCredits(""), outcomeInsufficient},
		{errorf(402, "insufficient_quota", codeKeyBudget, ""), outcomeBudget},
		{errorf(402, "insufficient_quota", codeUserBudget, ""), outcomeBudget},
		{errBadRequest(""), outcomeBadRequest},
		{errMethodNotAllowed("GET", "/v1/chat/completions"), outcomeBadRequest},
		{errCreditsUnavail, outcomeStoreError},
	} {
		if got := refusalOutcome(tc.err); got != tc.want {
			t.Errorf("%s: outcome %s, want %s", tc.err.Code, got, tc.want)
		}
	}
}

// TestRefusalHeaders checks what an SDK sees on each refusal: the request
// id always, x-should-retry: false where waiting does not help, a short
// accurate Retry-After on per-minute limits, the balance on a 402, and the
// refusal counted by outcome.
func TestRefusalHeaders(t *testing.T) {
	e := newTestEnv(t, func(_ *App, g *Gateway) { g.Limits = storage.RateLimits{RequestsPerMinute: 3} })
	clockNow = func() time.Time { return time.Date(2026, 12, 4, 17, 30, 15, 0, time.UTC) }
	defer func() { clockNow = time.Now }()
	count := func(endpoint string, o outcome) float64 {
		var m dto.Metric
		if err := metricRequests.WithLabelValues(endpoint, o.String()).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}

	before := count("chat", outcomeUnauthenticated)
	rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer("gw_live_nope"))
	wantError(t, rec, 401, "invalid_api_key", "")
	wantRefusalHeaders(t, rec, "", "")
	if got := count("chat", outcomeUnauthenticated); got != before+1 {
		t.Errorf("unauthenticated count %v, want %v", got, before+1)
	}

	key, k := e.newKey(t, "", nil)
	ctx := context.Background()
	unlimited := &storage.Plan{Name: "Unlimited", IsActive: true}
	if err := e.st.CreatePlan(ctx, unlimited); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.AssignPlan(ctx, k.UserID, unlimited.ID, clockNow().Add(-time.Hour), clockNow().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	before = count("chat", outcomeInsufficient)
	rec = e.do(t, "POST", "/v1/chat/completions", strings.Replace(chatBody, `"max_tokens":10`, `"max_tokens":2000000`, 1), "", bearer(key))
	wantError(t, rec, 402, "insufficient_credits", "")
	wantRefusalHeaders(t, rec, "false", "")
	if got := rec.Header().Get(hdrCreditsRemaining); got != "1000000" {
		t.Errorf("402 %s = %q, want 1000000", hdrCreditsRemaining, got)
	}
	if got := count("chat", outcomeInsufficient); got != before+1 {
		t.Errorf("insufficient count %v, want %v", got, before+1)
	}

	// Per-minute limit (the 402 counted too): 45 seconds to the next
	// minute, retried by SDKs.
	for range 2 {
		if rec := e.do(t, "GET", "/v1/models", "", "", bearer(key)); rec.Code != 200 {
			t.Fatalf("models: %d", rec.Code)
		}
	}
	before = count("free", outcomeRateLimited)
	rec = e.do(t, "GET", "/v1/models", "", "", bearer(key))
	wantError(t, rec, 429, "rate_limit_exceeded", "Minute")
	wantRefusalHeaders(t, rec, "", "45")
	if got := count("free", outcomeRateLimited); got != before+1 {
		t.Errorf("rate_limited count %v, want %v", got, before+1)
	}

	// Daily plan limit: not before midnight UTC, so no automatic retry.
	plan := &storage.Plan{Name: "One", DailyRequestLimit: 1, MonthlyRequestLimit: 100, IsActive: true}
	if err := e.st.CreatePlan(ctx, plan); err != nil {
		t.Fatal(err)
	}
	key2, k2 := e.newKey(t, "", nil)
	if _, err := e.st.AssignPlan(ctx, k2.UserID, plan.ID, clockNow().Add(-time.Hour), clockNow().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if rec := e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key2)); rec.Code != 200 {
		t.Fatalf("first: %d %s", rec.Code, rec.Body)
	}
	before = count("chat", outcomePlanLimit)
	rec = e.do(t, "POST", "/v1/chat/completions", chatBody, "", bearer(key2))
	wantError(t, rec, 429, codePlanLimit, "Daily request limit exceeded (1)")
	wantRefusalHeaders(t, rec, "false", strconv.Itoa(6*3600+29*60+45))
	if got := count("chat", outcomePlanLimit); got != before+1 {
		t.Errorf("plan_limit count %v, want %v", got, before+1)
	}

	// Unknown routes count under endpoint "none".
	before = count("none", outcomeBadRequest)
	rec = e.do(t, "GET", "/v1/chat/completions", "", "", bearer(key))
	wantError(t, rec, http.StatusMethodNotAllowed, "method_not_allowed", "")
	wantRefusalHeaders(t, rec, "", "")
	if got := count("none", outcomeBadRequest); got != before+1 {
		t.Errorf("none/bad_request count %v, want %v", got, before+1)
	}
}

// wantRefusalHeaders checks X-Request-Id (present), X-Should-Retry and
// Retry-After (exact; "" for absent).
func wantRefusalHeaders(t *testing.T, rec interface{ Header() http.Header }, shouldRetry, retryAfter string) {
	t.Helper()
	h := rec.Header()
	if len(h.Get(hdrRequestID)) != 36 {
		t.Errorf("%s = %q, want a UUID", hdrRequestID, h.Get(hdrRequestID))
	}
	if got := h.Get(hdrShouldRetry); got != shouldRetry {
		t.Errorf("%s = %q, want %q", hdrShouldRetry, got, shouldRetry)
	}
	if got := h.Get("Retry-After"); got != retryAfter {
		t.Errorf("Retry-After = %q, want %q", got, retryAfter)
	}
}
