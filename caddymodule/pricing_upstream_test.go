package caddymodule

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func TestUSDToNano(t *testing.T) {
	tests := []struct {
		raw   string
		perUS int64
		want  uint64
		ok    bool
	}{
		{`"0.000001"`, 1000, 1_000_000, true},       // $1/M tokens at 1000 credits/$: 1 credit per 1K
		{`"0.00000015"`, 1000, 150_000, true},       // 0.15 credit per 1K, exact
		{`"0.0000000000001"`, 1, 1, true},           // below a nano-credit: rounded up
		{`"0"`, 1000, 0, true},                      // free
		{`0.000003`, 1000, 3_000_000, true},         // a JSON number
		{`"3e-6"`, 1000, 3_000_000, true},           // exponent form
		{`"-1"`, 1000, 0, false},                    // OpenRouter's variable price
		{`"abc"`, 1000, 0, false},                   // not a decimal
		{`"1/3"`, 1000, 0, false},                   // a fraction is not a decimal
		{`null`, 1000, 0, false},                    // absent
		{``, 1000, 0, false},                        // absent
		{`"100000000000000000000"`, 1000, 0, false}, // absurd
		{`"0.1234567891234"`, 1, 123_456_790, true}, // 123456789.1234 nano: rounded up
		{`" 0.000002 "`, 1000, 2_000_000, true},     // padded
	}
	for _, tt := range tests {
		got, ok := usdToNano(json.RawMessage(tt.raw), tt.perUS)
		if got != tt.want || ok != tt.ok {
			t.Errorf("usdToNano(%s, %d) = %d %v, want %d %v", tt.raw, tt.perUS, got, ok, tt.want, tt.ok)
		}
	}
}

// modelList is an OpenRouter-style model list.
const modelList = `{"data":[
	{"id":"claude-x","pricing":{"prompt":"0.000003","completion":"0.000015","input_cache_read":"0.0000003","input_cache_write":"0.00000375"}},
	{"id":"cheap","pricing":{"prompt":"0.00000015","completion":"0.0000006"}},
	{"id":"variable","pricing":{"prompt":"-1","completion":"-1"}},
	{"id":"unpriced"}
]}`

func TestParseUpstreamPrices(t *testing.T) {
	p, err := parseUpstreamPrices([]byte(modelList), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 2 {
		t.Fatalf("entries %+v", p)
	}
	// claude-x: 3 / 15 / 0.3 / 3.75 credits per 1K tokens.
	if got := p.priceFor("claude-x"); got != (tokenPrices{prompt: 3_000_000, completion: 15_000_000, cacheRead: 300_000, cacheWrite: 3_750_000}) {
		t.Fatalf("claude-x %+v", got)
	}
	// Cache prices default to the prompt price.
	if got := p.priceFor("cheap"); got.cacheRead != 150_000 || got.cacheWrite != 150_000 {
		t.Fatalf("cheap %+v", got)
	}
	// 10,000 prompt tokens of which 8,000 cached, 100 completion:
	// 2000×0.003 + 8000×0.0003 + 100×0.015 = 6 + 2.4 + 1.5 = 9.9 -> 10.
	if got := p.usageCost("claude-x", usage{PromptTokens: 10_000, CacheReadTokens: 8000, CompletionTokens: 100}); got != 10 {
		t.Fatalf("cost %d, want 10", got)
	}
	if got := p.priceFor("variable"); got != defaultTokenPrices {
		t.Fatalf("a variable price must keep the default, got %+v", got)
	}
	for _, bad := range []string{`{`, `{"data":[{"id":"x","pricing":{"prompt":"-1","completion":"1"}}]}`} {
		if _, err := parseUpstreamPrices([]byte(bad), 1000); err == nil {
			t.Fatalf("%s: no error", bad)
		}
	}
}

func TestRefreshUpstreamPrices(t *testing.T) {
	var fail atomic.Bool
	var auth atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		if fail.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		_, _ = w.Write([]byte(modelList))
	}))
	defer srv.Close()
	e := newTestEnv(t, func(a *App, _ *Gateway) {
		a.Prices = []ModelPrice{{Model: "claude-*", PromptPer1K: 1, CompletionPer1K: 2}} // overrides the upstream
	})
	a := e.app
	// Set after Start, so that no timer loads concurrently: the test
	// drives the loads itself.
	a.UpstreamPrices = &UpstreamPrices{URL: srv.URL, CreditsPerUSD: 1000}
	a.refreshPrices(context.Background(), srv.Client(), srv.URL, "sk-op")
	if auth.Load() != "Bearer sk-op" {
		t.Fatalf("authorization %v", auth.Load())
	}
	p := a.Pricing()
	if got := p.priceFor("claude-x"); got.prompt != 1*nanoPer1K {
		t.Fatalf("the configured price must win: %+v", got)
	}
	if got := p.priceFor("cheap"); got.prompt != 150_000 {
		t.Fatalf("cheap from the upstream: %+v", got)
	}
	tbl := a.PriceTable()
	if !tbl.UpstreamEnabled || tbl.UpstreamLoadedAt.IsZero() || tbl.LastError != "" {
		t.Fatalf("status %+v", tbl)
	}
	want := []ModelPriceInfo{
		{"claude-*", "1", "2", "1", "1", priceSourceConfig},
		{"claude-x", "3", "15", "0.3", "3.75", priceSourceUpstream},
		{"cheap", "0.15", "0.6", "0.15", "0.15", priceSourceUpstream},
		{"*", "1000", "1000", "1000", "1000", priceSourceDefault},
	}
	if len(tbl.Models) != len(want) {
		t.Fatalf("table %+v", tbl.Models)
	}
	for i := range want {
		if tbl.Models[i] != want[i] {
			t.Fatalf("row %d %+v, want %+v", i, tbl.Models[i], want[i])
		}
	}

	// A failed refresh keeps the last good table, and is counted.
	before := refreshFailures(t)
	fail.Store(true)
	a.refreshPrices(context.Background(), srv.Client(), srv.URL, "sk-op")
	if got := a.Pricing().priceFor("cheap"); got.prompt != 150_000 {
		t.Fatalf("last good prices lost: %+v", got)
	}
	tbl = a.PriceTable()
	if tbl.Failures != 1 || tbl.LastError == "" || refreshFailures(t) != before+1 {
		t.Fatalf("failure not recorded: %+v", tbl)
	}
}

// refreshFailures reads gatewayz_upstream_prices_refresh_failures_total.
func refreshFailures(t *testing.T) float64 {
	t.Helper()
	var m dto.Metric
	if err := metricPriceRefreshFailures.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
