package caddymodule

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// What the store counted becomes the refusal and the x-ratelimit-* headers
// the in-memory limiter would give for the same counts.
func TestCountedResult(t *testing.T) {
	now := time.Date(2026, 12, 5, 10, 30, 30, 0, time.UTC)
	user := rateLimits(storage.RateLimits{RequestsPerMinute: 60, TokensPerDay: 1000})
	key := rateLimits(storage.RateLimits{RequestsPerMinute: 10})
	var plan periodLimits
	plan.requests[perDay] = 100
	a := &admission{key: &storage.APIKey{ID: 7, UserID: 3}, env: "live", rl: &resolvedLimits{user: user, key: key}, planLimits: plan}
	counts := func(userMin, keyMin, planDay, userTokDay int64) *storage.LimitState {
		var st storage.LimitState
		st[storage.LevelUser].Requests[storage.WindowMinute] = userMin
		st[storage.LevelUser].Tokens[storage.WindowDay] = userTokDay
		st[storage.LevelKey].Requests[storage.WindowMinute] = keyMin
		st[storage.LevelPlan].Requests[storage.WindowDay] = planDay
		return &st
	}
	tests := []struct {
		name          string
		st            *storage.LimitState
		ex            *storage.LimitExceeded
		wantRemaining string // x-ratelimit-remaining-requests
		wantLimit     string
		wantReset     string
		wantTokens    string // x-ratelimit-remaining-tokens
		wantErr       string // message part, "" for none
	}{
		{name: "key tightest", st: counts(5, 4, 50, 10), wantRemaining: "6", wantLimit: "10", wantReset: "30s", wantTokens: "990"},
		{name: "plan tightest", st: counts(5, 0, 99, 0), wantRemaining: "1", wantLimit: "100", wantReset: "13h29m30s", wantTokens: "1000"},
		{name: "user minute refused", st: counts(60, 3, 50, 0),
			ex:            &storage.LimitExceeded{Level: storage.LevelUser, Window: storage.WindowMinute, Limit: 60},
			wantRemaining: "0", wantLimit: "60", wantReset: "30s", wantTokens: "1000",
			wantErr: "Rate limit exceeded: Minute request limit exceeded (60) for this user"},
		{name: "key refused", st: counts(10, 10, 50, 0),
			ex:            &storage.LimitExceeded{Level: storage.LevelKey, Window: storage.WindowMinute, Limit: 10},
			wantRemaining: "0", wantLimit: "10", wantReset: "30s", wantTokens: "1000",
			wantErr: "Minute request limit exceeded (10) for this API key"},
		{name: "plan refused", st: counts(1, 1, 100, 0),
			ex:            &storage.LimitExceeded{Level: storage.LevelPlan, Window: storage.WindowDay, Limit: 100},
			wantRemaining: "0", wantLimit: "100", wantReset: "13h29m30s", wantTokens: "1000",
			wantErr: "Plan limit exceeded: Daily request limit exceeded (100) for live environment"},
		{name: "token day refused", st: counts(1, 1, 1, 995),
			ex:            &storage.LimitExceeded{Level: storage.LevelUser, Window: storage.WindowDay, Tokens: true, Limit: 1000},
			wantRemaining: "9", wantLimit: "10", wantReset: "30s", wantTokens: "5",
			wantErr: "Day token limit exceeded (1000) for this user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lr := a.limitRequest(now)
			h := http.Header{}
			var msg string
			if tt.ex != nil {
				tt.ex.State = *tt.st
				gerr := a.limitRefusal(lr, tt.ex, h)
				if gerr.Status != http.StatusTooManyRequests || gerr.RetryAfter < 1 {
					t.Fatalf("refusal %+v", gerr)
				}
				msg = gerr.Message
			} else {
				a.setCountedHeaders(lr, tt.st, h)
			}
			if tt.wantErr != "" && !strings.Contains(msg, tt.wantErr) {
				t.Errorf("message %q, want %q", msg, tt.wantErr)
			}
			if got := h.Get(hdrRemainingRequests); got != tt.wantRemaining {
				t.Errorf("remaining %q, want %q", got, tt.wantRemaining)
			}
			if got := h.Get(hdrLimitRequests); got != tt.wantLimit {
				t.Errorf("limit %q, want %q", got, tt.wantLimit)
			}
			if got := h.Get(hdrResetRequests); got != tt.wantReset {
				t.Errorf("reset %q, want %q", got, tt.wantReset)
			}
			if got := h.Get(hdrRemainingTokens); got != tt.wantTokens {
				t.Errorf("remaining tokens %q, want %q", got, tt.wantTokens)
			}
		})
	}
}

// A key without limits of its own is counted through its user's only; one
// with its own limits at both levels.
func TestLimitRequestKeyLevel(t *testing.T) {
	user := rateLimits(storage.RateLimits{RequestsPerMinute: 60})
	for _, tt := range []struct {
		name    string
		key     periodLimits
		wantKey int64
	}{
		{"same as the user's", user, 0},
		{"its own", rateLimits(storage.RateLimits{RequestsPerMinute: 5}), 5},
	} {
		a := &admission{rl: &resolvedLimits{user: user, key: tt.key}, estTokens: 42}
		lr := a.limitRequest(time.Unix(0, 0))
		if got := lr.Limits[storage.LevelKey].Requests[storage.WindowMinute]; got != tt.wantKey {
			t.Errorf("%s: key level %d, want %d", tt.name, got, tt.wantKey)
		}
		if lr.Limits[storage.LevelUser].Requests[storage.WindowMinute] != 60 || lr.Tokens != 42 {
			t.Errorf("%s: %+v", tt.name, lr)
		}
	}
}
