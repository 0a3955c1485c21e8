package e2e

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/openai/openai-go/v3/option"
)

// TestSDKDoesNotRetryLongRefusals drives the OpenAI Go SDK, allowed two
// retries, into refusals that waiting does not clear: a daily trial limit
// (Retry-After of hours) and a 402. x-should-retry: false makes the SDK
// give up after the first attempt instead of retrying.
func TestSDKDoesNotRetryLongRefusals(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	cf := writeCaddyfile(t, func(s string) string {
		return strings.Replace(s, "signup_credits {env.GATEWAYZ_SIGNUP_CREDITS}",
			"signup_credits {env.GATEWAYZ_SIGNUP_CREDITS}\n\t\ttrial {\n\t\t\trequests_per_day 1\n\t\t}", 1)
	})
	g := startGateway(t, up.URL, func(c *Config) { c.Caddyfile = cf })
	api := NewAPI(g.URL, testAdminKey)
	var attempts atomic.Int64
	count := option.WithMiddleware(func(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		attempts.Add(1)
		return next(r)
	})
	ctx := context.Background()

	u, err := api.Register("daily", "daily@example.com", -1)
	if err != nil {
		t.Fatal(err)
	}
	sdk := sdkClient(g, u.APIKey, option.WithMaxRetries(2), count)
	if _, err := sdk.Chat.Completions.New(ctx, chatParams(50)); err != nil {
		t.Fatalf("first request of the day: %v", err)
	}
	attempts.Store(0)
	_, err = sdk.Chat.Completions.New(ctx, chatParams(50))
	e := apiError(t, "second request of the day", err, http.StatusTooManyRequests)
	if e.Response.Header.Get("X-Should-Retry") != "false" || e.Response.Header.Get("X-Request-Id") == "" {
		t.Fatalf("429 headers %v", e.Response.Header)
	}
	if n := attempts.Load(); n != 1 {
		t.Fatalf("the SDK sent the daily-limited request %d times, want 1", n)
	}

	broke, err := api.Register("broke", "broke@example.com", 0)
	if err != nil {
		t.Fatal(err)
	}
	attempts.Store(0)
	_, err = sdkClient(g, broke.APIKey, option.WithMaxRetries(2), count).Chat.Completions.New(ctx, chatParams(50))
	e = apiError(t, "request without credits", err, http.StatusPaymentRequired)
	if n := attempts.Load(); n != 1 || e.Response.Header.Get("X-Gatewayz-Credits-Remaining") != "0" {
		t.Fatalf("402: %d attempts, headers %v", n, e.Response.Header)
	}
}
