package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// UpstreamPrices loads model prices from the upstream's model list (GET
// <url> with the operator's key): an OpenRouter-style `pricing` object per
// model, in USD per token as decimal strings (`prompt`, `completion`,
// `input_cache_read`, `input_cache_write`). They are converted exactly
// (decimal arithmetic, rounded up only below a nano-credit per token) with
// CreditsPerUSD, refreshed every Refresh, and the last good table is kept
// when a refresh fails (logged, and counted in
// gatewayz_upstream_prices_refresh_failures_total). Prices set with
// `price` override them.
type UpstreamPrices struct {
	// URL is the model list, e.g. "{env.GATEWAYZ_UPSTREAM}/v1/models".
	// Placeholders are resolved at run time.
	URL string `json:"url,omitempty"`
	// APIKey is sent as a bearer token, usually "{env.GATEWAYZ_API_KEY}".
	// Resolved at run time; never written into the config.
	APIKey string `json:"api_key,omitempty"`
	// CreditsPerUSD converts USD to credits. Required.
	CreditsPerUSD int64 `json:"credits_per_usd,omitempty"`
	// Refresh is the time between loads. Default 1h.
	Refresh caddy.Duration `json:"refresh,omitempty"`
}

// Upstream price defaults and bounds.
const (
	defaultPriceRefresh = time.Hour
	priceFetchTimeout   = 30 * time.Second
	maxModelList        = 32 << 20
)

var metricPriceRefreshFailures = prometheus.NewCounter(prometheus.CounterOpts{
	Namespace: "gatewayz",
	Name:      "upstream_prices_refresh_failures_total",
	Help:      "Failed loads of the upstream's model prices (the last good prices stay in force).",
})

// priceStatus is the state of the upstream price loads, for GET
// /admin/prices.
type priceStatus struct {
	mu          sync.Mutex
	loadedAt    time.Time // the last good load
	lastAttempt time.Time
	lastError   string
	failures    int64
}

// upstreamModelList is the part of the model list that carries prices.
type upstreamModelList struct {
	Data []struct {
		ID      string `json:"id"`
		Pricing *struct {
			Prompt          json.RawMessage `json:"prompt"`
			Completion      json.RawMessage `json:"completion"`
			InputCacheRead  json.RawMessage `json:"input_cache_read"`
			InputCacheWrite json.RawMessage `json:"input_cache_write"`
		} `json:"pricing"`
	} `json:"data"`
}

// parseUpstreamPrices turns a model list into price entries in
// nano-credits per token. Models without a usable prompt and completion
// price (absent, negative such as OpenRouter's "-1" for variable prices,
// or not a decimal) are left out, so they keep the default or configured
// price. The cache prices default to the prompt price.
func parseUpstreamPrices(body []byte, creditsPerUSD int64) (pricing, error) {
	var list upstreamModelList
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("decoding the model list: %v", err)
	}
	var out pricing
	for _, m := range list.Data {
		if m.ID == "" || m.Pricing == nil {
			continue
		}
		p, ok1 := usdToNano(m.Pricing.Prompt, creditsPerUSD)
		c, ok2 := usdToNano(m.Pricing.Completion, creditsPerUSD)
		if !ok1 || !ok2 {
			continue
		}
		tp := tokenPrices{prompt: p, completion: c, cacheRead: p, cacheWrite: p}
		if v, ok := usdToNano(m.Pricing.InputCacheRead, creditsPerUSD); ok {
			tp.cacheRead = v
		}
		if v, ok := usdToNano(m.Pricing.InputCacheWrite, creditsPerUSD); ok {
			tp.cacheWrite = v
		}
		out = append(out, priceEntry{glob: m.ID, exact: true, prices: tp, source: priceSourceUpstream})
	}
	if len(out) == 0 && len(list.Data) > 0 {
		return nil, errors.New("no model in the list has a usable price")
	}
	return out, nil
}

// maxNanoPrice bounds a converted price (a billion credits per token, as
// the configured prices).
var maxNanoPrice = new(big.Int).SetUint64(maxPricePer1K * nanoPer1K)

// usdToNano converts a USD-per-token decimal (a JSON string or number) to
// nano-credits per token, exactly: rounded up only where the product has
// digits below a nano-credit. False for absent, null, negative, malformed
// or absurdly large values.
func usdToNano(raw json.RawMessage, creditsPerUSD int64) (uint64, bool) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return 0, false
	}
	if s[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false
		}
		s = strings.TrimSpace(s)
	}
	if s == "" || len(s) > 64 || strings.ContainsAny(s, "/") {
		return 0, false
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || r.Sign() < 0 {
		return 0, false
	}
	r.Mul(r, new(big.Rat).SetInt64(creditsPerUSD*nanoPerCredit))
	q, m := new(big.Int).QuoRem(r.Num(), r.Denom(), new(big.Int))
	if m.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	if q.Cmp(maxNanoPrice) > 0 {
		return 0, false
	}
	return q.Uint64(), true
}

// startUpstreamPrices loads the prices now and then every Refresh, until
// ctx ends (the config is unloaded).
func (a *App) startUpstreamPrices(ctx context.Context) {
	up := a.UpstreamPrices
	repl := caddy.NewReplacer()
	url := strings.TrimSpace(repl.ReplaceAll(up.URL, ""))
	key := strings.TrimSpace(repl.ReplaceAll(up.APIKey, ""))
	every := time.Duration(up.Refresh)
	if every <= 0 {
		every = defaultPriceRefresh
	}
	client := &http.Client{Timeout: priceFetchTimeout}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			a.refreshPrices(ctx, client, url, key)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// refreshPrices loads the upstream's prices once and installs them behind
// the configured ones; on failure the table in force stays.
func (a *App) refreshPrices(ctx context.Context, client *http.Client, url, key string) {
	st := a.priceStatus
	now := time.Now()
	table, err := fetchUpstreamPrices(ctx, client, url, key, a.UpstreamPrices.CreditsPerUSD)
	st.mu.Lock()
	defer st.mu.Unlock()
	st.lastAttempt = now
	if err != nil {
		if ctx.Err() != nil {
			return // unloading: not a failure of the upstream
		}
		st.lastError = err.Error()
		st.failures++
		metricPriceRefreshFailures.Inc()
		if c := a.logger.Check(zap.WarnLevel, "loading upstream prices; the last good prices stay in force"); c != nil {
			c.Write(zap.Error(err))
		}
		return
	}
	full := append(configPricing(a.Prices), table...)
	a.prices.table.Store(&full)
	st.loadedAt, st.lastError = now, ""
}

// fetchUpstreamPrices gets and parses the model list.
func fetchUpstreamPrices(ctx context.Context, client *http.Client, url, key string, creditsPerUSD int64) (pricing, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("model list answered %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxModelList))
	if err != nil {
		return nil, err
	}
	return parseUpstreamPrices(body, creditsPerUSD)
}

// ModelPriceInfo is one row of the active price table, in credits per
// 1,000 tokens of each kind (decimal strings: upstream prices may be
// fractional).
type ModelPriceInfo struct {
	Model           string `json:"model"`
	PromptPer1K     string `json:"prompt_per_1k"`
	CompletionPer1K string `json:"completion_per_1k"`
	CacheReadPer1K  string `json:"cache_read_per_1k"`
	CacheWritePer1K string `json:"cache_write_per_1k"`
	// Source is "config" (a price line), "upstream" (the model list) or
	// "default" (every model no row matches).
	Source string `json:"source"`
}

// PriceTable is the active price table and where it came from.
type PriceTable struct {
	Models []ModelPriceInfo
	// UpstreamLoadedAt is the time of the last good upstream load (zero:
	// none, or upstream prices are off); LastAttempt, LastError and
	// Failures describe the loads so far.
	UpstreamEnabled  bool
	UpstreamLoadedAt time.Time
	LastAttempt      time.Time
	LastError        string
	Failures         int64
}

// PriceTable returns the active price table, the default price last.
func (a *App) PriceTable() PriceTable {
	var t PriceTable
	for _, e := range a.Pricing() {
		t.Models = append(t.Models, priceInfo(e.glob, e.prices, e.source))
	}
	t.Models = append(t.Models, priceInfo("*", defaultTokenPrices, priceSourceDefault))
	if st := a.priceStatus; st != nil && a.UpstreamPrices != nil {
		st.mu.Lock()
		t.UpstreamEnabled = true
		t.UpstreamLoadedAt, t.LastAttempt, t.LastError, t.Failures = st.loadedAt, st.lastAttempt, st.lastError, st.failures
		st.mu.Unlock()
	}
	return t
}

func priceInfo(model string, tp tokenPrices, source string) ModelPriceInfo {
	return ModelPriceInfo{Model: model, PromptPer1K: per1K(tp.prompt), CompletionPer1K: per1K(tp.completion),
		CacheReadPer1K: per1K(tp.cacheRead), CacheWritePer1K: per1K(tp.cacheWrite), Source: source}
}

// per1K formats a nano-credits-per-token price as credits per 1,000
// tokens, exactly ("2.5", "0.000125").
func per1K(nano uint64) string {
	r := new(big.Rat).SetFrac(new(big.Int).SetUint64(nano), big.NewInt(nanoPer1K))
	s := r.FloatString(6)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}
