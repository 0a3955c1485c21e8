package integration

// Integration tests of the trial as an operator setting: limits, length,
// the end of the trial at the first top-up, and the signup plan.

import (
	"fmt"
	"testing"
	"time"
)

func TestTrialOperatorSettings(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: `trial {
			requests_per_day 2
			tokens_per_day 0
			days 3
			ends_at_top_up
		}`})
	out := g.do("POST", "/auth/register", map[string]any{"username": "tria", "email": "trial@example.com"}).
		mustStatus(t, 200, "register").json()
	key, _ := out["api_key"].(string)
	userID, _ := out["user_id"].(float64)
	expires, err := time.Parse(time.RFC3339Nano, fmt.Sprint(out["trial_expires_at"]))
	if err != nil || time.Until(expires) < 71*time.Hour || time.Until(expires) > 73*time.Hour {
		t.Fatalf("trial_expires_at %v is not about 3 days away", out["trial_expires_at"])
	}

	for i := range 2 {
		g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)).mustStatus(t, 200, fmt.Sprint("trial request ", i))
	}
	r := g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key))
	wantRefusal(t, r, 429, "plan_limit_exceeded", "Daily request limit exceeded (2)", "third trial request")
	if r.Header.Get("X-Should-Retry") != "false" || r.Header.Get("X-Request-Id") == "" {
		t.Fatalf("daily trial limit headers: %v", r.Header)
	}
	usage := g.do("GET", "/user/plan/usage", nil, bearer(key)).mustStatus(t, 200, "plan usage").json()
	limits, _ := usage["limits"].(map[string]any)
	atLimit, _ := usage["at_limit"].(map[string]any)
	if limits["daily_request_limit"] != 2.0 || limits["daily_token_limit"] != 0.0 || atLimit["daily_tokens"] != false || atLimit["daily_requests"] != true {
		t.Fatalf("plan usage %v", usage)
	}

	// The admin tops the user up by id: the trial ends, the limit goes.
	g.do("POST", "/admin/add_credits", map[string]any{"user_id": int64(userID), "credits": 100000}, adminAuth()).
		mustStatus(t, 200, "top-up")
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)).mustStatus(t, 200, "after the top-up")
	profile := g.do("GET", "/user/profile", nil, bearer(key)).mustStatus(t, 200, "profile").json()
	if profile["subscription_status"] != "pay_as_you_go" {
		t.Fatalf("profile after top-up: %v", profile)
	}
}

func TestSignupPlan(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: "signup_plan Starter 2"})
	// Before the plan exists, new users start on the trial.
	out := g.do("POST", "/auth/register", map[string]any{"username": "early", "email": "early@example.com"}).
		mustStatus(t, 200, "register before the plan").json()
	if out["plan_name"] != "Trial" || out["subscription_status"] != "trial" {
		t.Fatalf("register without the plan: %v", out)
	}
	g.do("POST", "/admin/plans", map[string]any{
		"name": "Starter", "daily_request_limit": 1, "monthly_request_limit": 10,
		"daily_token_limit": 100000, "monthly_token_limit": 1000000, "price_per_month": 0,
	}, adminAuth()).mustStatus(t, 200, "create plan")
	out = g.do("POST", "/auth/register", map[string]any{"username": "late", "email": "late@example.com"}).
		mustStatus(t, 200, "register").json()
	key, _ := out["api_key"].(string)
	if out["plan_name"] != "Starter" || out["subscription_status"] != "active" {
		t.Fatalf("register with signup_plan: %v", out)
	}
	plan := g.do("GET", "/user/plan", nil, bearer(key)).mustStatus(t, 200, "user plan").json()
	end, err := time.Parse(time.RFC3339Nano, fmt.Sprint(plan["end_date"]))
	if plan["plan_name"] != "Starter" || err != nil || time.Until(end) < 59*24*time.Hour || time.Until(end) > 61*24*time.Hour {
		t.Fatalf("user plan %v: want Starter for 60 days", plan)
	}
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)).mustStatus(t, 200, "first request")
	wantRefusal(t, g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)),
		429, "plan_limit_exceeded", "Daily request limit exceeded (1)", "second request on Starter")
}
