package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/alerts"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the `gatewayz` app. It owns the store and the settings shared by the
// gateway handler (`http.handlers.gatewayz`) and the management API
// (`http.handlers.gatewayz_api`): the storage backend, the server secret, the
// admin key, signup credits, default rate limits and model prices.
//
// The store, the in-memory key index, the plan cache and the rate-limiter
// state live in a value shared through a package-level caddy.UsagePool keyed
// by the backend's StoreKey (a bbolt file's absolute path), so a config
// reload keeps the store open, never waits on bbolt's file lock, and keeps
// every counter.
//
// Secrets (secret, admin_key) are resolved with placeholders at run time, for
// example "{env.GATEWAYZ_SECRET}"; the resolved values are never written
// into the config (and so never into Caddy's autosave.json).
type App struct {
	// StorageRaw is the storage backend, a module of the gatewayz.storage
	// namespace chosen by its "backend" key: "bolt" (the default, one
	// embedded file) or "postgres". Without it the db_path and
	// database_url shorthands choose.
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=gatewayz.storage inline_key=backend"`

	// DBPath is shorthand for the bolt storage with this path: the bbolt
	// database file. Default: gatewayz.db in Caddy's data directory.
	// Placeholders are resolved (e.g. "{env.GATEWAYZ_DB}"); an empty result
	// means the default.
	DBPath string `json:"db_path,omitempty"`

	// DatabaseURL, when it resolves to a non-empty value at run time,
	// selects the postgres storage with this DSN instead of the bolt file,
	// usually "{env.GATEWAYZ_DATABASE_URL}": one environment variable moves
	// a config from the file to the database.
	DatabaseURL string `json:"database_url,omitempty"`

	// Secret is the server secret from which the key-lookup hash and the
	// key encryption are derived (at least 16 characters), usually
	// "{env.GATEWAYZ_SECRET}". When it resolves to empty, a storage backend
	// that can (bolt) keeps a random secret in a 0600 file beside the
	// database (<path>.secret), so it survives restarts; the others need
	// it set.
	Secret string `json:"secret,omitempty"`

	// AdminKeyValue is the bearer token of /admin/*, usually
	// "{env.GATEWAYZ_ADMIN_KEY}". Resolved at run time; when it resolves to
	// empty the admin API is disabled.
	AdminKeyValue string `json:"admin_key,omitempty"`

	// SignupCreditsValue is the credit grant of a new user: an integer or a
	// placeholder resolving to one (e.g. "{env.GATEWAYZ_SIGNUP_CREDITS}").
	// Default 1000 (also when the placeholder resolves to empty).
	SignupCreditsValue string `json:"signup_credits,omitempty"`

	// DefaultLimits are the global per-minute/hour/day request and token
	// limits, applied per user and per key where nothing more specific is
	// set (admin limits, the key's own limits, the site's limits). Zero
	// fields are unlimited.
	DefaultLimits storage.RateLimits `json:"default_limits,omitzero"`

	// Prices sets per-model prices in credits per 1,000 tokens; the first
	// entry whose model glob matches wins. Default: 1 credit per token.
	Prices []ModelPrice `json:"prices,omitempty"`

	// UpstreamPrices, when set, loads model prices from the upstream's
	// model list (pricing_upstream.go); Prices override them.
	UpstreamPrices *UpstreamPrices `json:"upstream_prices,omitempty"`

	// Trial is what a user without an active plan may do: daily and
	// monthly limits, models, length, and whether a top-up ends it.
	// Default: the reference's 100 requests and 10,000 tokens a day,
	// 1,000 requests and 100,000 tokens a month, every model, no end.
	Trial *Trial `json:"trial,omitempty"`

	// TrialModels are model globs callable without an active plan, added
	// to trial.models. Kept for older configs.
	TrialModels []string `json:"trial_models,omitempty"`

	// SignupPlan is the name of a plan every new user is subscribed to at
	// registration, for signup_plan_months months of 30 days (default 1).
	// Empty: new users start on the trial.
	SignupPlan string `json:"signup_plan,omitempty"`

	// SignupPlanMonths is how long the signup plan runs. Default 1.
	SignupPlanMonths int `json:"signup_plan_months,omitempty"`

	// RotationGracePeriod is how long a rotated key's previous secret
	// keeps authenticating. Default 0 (it stops at once).
	RotationGracePeriod caddy.Duration `json:"rotation_grace,omitempty"`

	// UsageRetention, when positive, prunes the hourly and daily usage
	// rollups (what reports, statistics and plan quotas read) older than
	// this (checked hourly). Default 0: keep them.
	UsageRetention caddy.Duration `json:"usage_retention,omitempty"`

	// UsageDetailRetention is how long the per-request usage records are
	// kept (the recent requests views, disputes); older ones are pruned
	// hourly (their rollups stay), and the ledger's older charge entries
	// are grouped, so the database stops growing with traffic. Default 7
	// days; never longer than usage_retention when that is set.
	UsageDetailRetention caddy.Duration `json:"usage_detail_retention,omitempty"`

	// NegativeCacheSize bounds the cache of unknown key hashes that keeps
	// floods of made-up keys off the store. Default 10000.
	NegativeCacheSize int `json:"negative_cache_size,omitempty"`

	// SecurityAuditPerMinute is the most security audit events (denied IP,
	// denied referrer, inactive/expired/unknown key) recorded per kind and
	// per key or client IP each minute. Default 5.
	SecurityAuditPerMinute int `json:"security_audit_per_minute,omitempty"`

	// Webhooks are the operator's webhook endpoints: each receives every
	// user's events of its types, signed with its secret.
	Webhooks []OperatorWebhook `json:"webhooks,omitempty"`

	// Alerts configures alert events and webhook delivery (thresholds,
	// what users' webhooks may target, retries).
	Alerts *AlertSettings `json:"alerts,omitempty"`

	storage       StorageBackend
	alertsCfg     alerts.Config
	secretSource  string // "config", or "file <path>" for a generated secret
	started       chan struct{}
	startErr      error
	poolKey       string
	state         *sharedState
	keyring       *storage.Keyring
	adminKey      string
	signupCredits int64
	trial         *TrialPolicy
	ctx           caddy.Context
	logger        *zap.Logger
	prices        *priceBook // the active price table
	priceStatus   *priceStatus
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "gatewayz",
		New: func() caddy.Module { return new(App) },
	}
}

// GetApp returns the gatewayz app of the config being provisioned (a
// default one when the config has none). Handlers call it in Provision.
func GetApp(ctx caddy.Context) (*App, error) {
	v, err := ctx.App("gatewayz")
	if err != nil {
		return nil, err
	}
	app, ok := v.(*App)
	if !ok {
		return nil, fmt.Errorf("gatewayz: app has unexpected type %T", v)
	}
	return app, nil
}

// Default settings.
const (
	defaultSignupCredits     = 1000
	defaultNegativeCacheSize = 10000
	defaultAuditPerMinute    = 5
	maxSignupPlanMonths      = 1200
)

// Provision resolves the settings. It opens, locks and creates nothing (so
// `caddy validate` has no side effects and works while a server runs on
// the same database): the store is opened, and a generated secret read or
// created, in Start.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.started = make(chan struct{})
	repl := caddy.NewReplacer()

	backend, err := a.loadStorage(ctx, repl)
	if err != nil {
		return err
	}
	a.storage = backend

	a.adminKey = strings.TrimSpace(repl.ReplaceAll(a.AdminKeyValue, ""))

	a.signupCredits = defaultSignupCredits
	if s := strings.TrimSpace(repl.ReplaceAll(a.SignupCreditsValue, "")); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("gatewayz: signup_credits must be a non-negative integer, got %q", s)
		}
		a.signupCredits = n
	}
	if a.NegativeCacheSize <= 0 {
		a.NegativeCacheSize = defaultNegativeCacheSize
	}
	if a.SecurityAuditPerMinute <= 0 {
		a.SecurityAuditPerMinute = defaultAuditPerMinute
	}
	if err := validateLimits(a.DefaultLimits); err != nil {
		return fmt.Errorf("gatewayz: default_limits: %v", err)
	}
	for _, p := range a.Prices {
		if err := validateGlob(p.Model); err != nil {
			return fmt.Errorf("gatewayz: price: %v", err)
		}
		if p.PromptPer1K < 0 || p.CompletionPer1K < 0 || negative(p.CacheReadPer1K) || negative(p.CacheWritePer1K) {
			return fmt.Errorf("gatewayz: price for %q must not be negative", p.Model)
		}
		if max(p.PromptPer1K, p.CompletionPer1K, deref(p.CacheReadPer1K), deref(p.CacheWritePer1K)) > maxPricePer1K {
			return fmt.Errorf("gatewayz: price for %q is too large", p.Model)
		}
	}
	a.prices = newPriceBook(configPricing(a.Prices))
	a.priceStatus = new(priceStatus)
	if up := a.UpstreamPrices; up != nil {
		if up.CreditsPerUSD <= 0 || up.CreditsPerUSD > 1<<30 {
			return fmt.Errorf("gatewayz: upstream_prices: credits_per_usd must be a positive integer")
		}
		if strings.TrimSpace(up.URL) == "" {
			return fmt.Errorf("gatewayz: upstream_prices: url is required")
		}
	}
	if a.trial, err = resolveTrial(a.Trial, a.TrialModels); err != nil {
		return err
	}
	if a.alertsCfg, err = a.resolveAlerts(repl); err != nil {
		return err
	}
	if a.SignupPlanMonths < 0 || a.SignupPlanMonths > maxSignupPlanMonths {
		return fmt.Errorf("gatewayz: signup_plan_months must be between 1 and %d", maxSignupPlanMonths)
	}

	if s := repl.ReplaceAll(a.Secret, ""); s != "" {
		secret := storage.SecretFromString(s)
		if secret == nil {
			return fmt.Errorf("gatewayz: secret must be at least %d characters", storage.MinSecretStringLen)
		}
		if a.keyring, err = storage.NewKeyring(secret); err != nil {
			return fmt.Errorf("gatewayz: %v", err)
		}
		a.secretSource = "config"
	} else if keeper, ok := backend.(SecretKeeper); ok {
		a.secretSource = "file " + keeper.SecretFile()
	} else {
		name, _ := backend.Describe()
		return fmt.Errorf("gatewayz: the %s storage needs an explicit secret, the same on every gateway that shares the database: set secret {env.GATEWAYZ_SECRET}", name)
	}

	// The state of this database, shared with the configs already using
	// it (a reload): pooled now, its store opened in Start.
	cfg := sharedConfig{negativeCacheSize: a.NegativeCacheSize, auditPerMinute: a.SecurityAuditPerMinute}
	key := backend.StoreKey()
	v, _, err := statePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newSharedState(cfg, a.logger), nil
	})
	if err != nil {
		return fmt.Errorf("gatewayz: %v", err)
	}
	a.poolKey = key
	a.state = v.(*sharedState)
	return nil
}

// Start reads (or creates) a generated secret and opens the store, unless
// a config still running opened it already (a reload keeps it open); then
// it logs what the gateway runs with and starts the usage pruner, which
// stops when this config is unloaded.
// Handlers wait for Start (WaitStarted) before they serve.
func (a *App) Start() error {
	err := a.start()
	a.startErr = err
	if err == nil {
		// Before handlers may serve: the start-up line comes first in the log.
		a.logStartup()
	}
	close(a.started)
	if err != nil {
		return err
	}
	go a.pruneUsage(a.ctx, a.detailRetention(), time.Duration(a.UsageRetention))
	if a.UpstreamPrices != nil && a.prices != nil {
		a.startUpstreamPrices(a.ctx)
	}
	return nil
}

func (a *App) start() error {
	if a.keyring == nil {
		secret, err := storage.LoadOrCreateSecret(a.storage.(SecretKeeper).SecretFile())
		if err != nil {
			return fmt.Errorf("gatewayz: %v", err)
		}
		if a.keyring, err = storage.NewKeyring(secret); err != nil {
			return fmt.Errorf("gatewayz: %v", err)
		}
	}
	a.alertsCfg.Secrets = a.keyring
	if err := a.state.open(func() (storage.Store, error) { return a.storage.OpenStore(a.ctx, a.logger) }, a.alertsCfg); err != nil {
		return fmt.Errorf("gatewayz: %v", err)
	}
	return nil
}

// errNotStarted answers requests that arrive when the app failed to start.
var errNotStarted = errors.New("gatewayz: the app did not start")

// WaitStarted blocks until the app has started (the store is open), or ctx
// ends. Caddy starts apps in no set order, so the HTTP server may take a
// request a moment before this app's Start has run; after that this costs
// one check of a closed channel: a receive that does not block, without
// ctx.Done (on a request's context that makes its done channel, under a
// lock, and a select over two channels costs more than the check). It
// returns an error when Start failed.
func (a *App) WaitStarted(ctx context.Context) error {
	select {
	case <-a.started:
		return a.startResult()
	default:
	}
	select {
	case <-a.started:
		return a.startResult()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startResult is WaitStarted's answer once Start has run.
func (a *App) startResult() error {
	if a.startErr != nil {
		return errNotStarted
	}
	return nil
}

// Stop does nothing: the store is closed by the pool's destructor once no
// config uses it (never here, since handlers may still be draining).
func (a *App) Stop() error { return nil }

// Cleanup releases this config's reference to the shared store.
func (a *App) Cleanup() error {
	if a.poolKey == "" {
		return nil
	}
	key := a.poolKey
	a.poolKey = ""
	_, err := statePool.Delete(key)
	return err
}

// DefaultUsageDetailRetention is how long usage records are kept when
// usage_detail_retention is not set.
const DefaultUsageDetailRetention = 7 * 24 * time.Hour

// detailRetention is how long usage records are kept: the configured
// time (default DefaultUsageDetailRetention), at most usage_retention.
func (a *App) detailRetention() time.Duration {
	d := time.Duration(a.UsageDetailRetention)
	if d <= 0 {
		d = DefaultUsageDetailRetention
	}
	if r := time.Duration(a.UsageRetention); r > 0 && r < d {
		d = r
	}
	return d
}

// pruneUsage prunes, hourly, the usage records older than detail and,
// when rollups is positive, the rollups older than it.
func (a *App) pruneUsage(ctx context.Context, detail, rollups time.Duration) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		var rollupsBefore time.Time
		if rollups > 0 {
			rollupsBefore = now.Add(-rollups)
		}
		n, err := a.state.store.PruneUsage(ctx, now.Add(-detail), rollupsBefore)
		if err != nil && ctx.Err() == nil {
			a.logger.Error("pruning usage records", zap.Error(err))
		} else if n > 0 {
			a.logger.Info("pruned usage records", zap.Int("count", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Store returns the shared store.
func (a *App) Store() storage.Store { return a.state.store }

// Keyring returns the keyring derived from the server secret.
func (a *App) Keyring() *storage.Keyring { return a.keyring }

// AdminKey returns the resolved admin bearer token, "" when unset.
func (a *App) AdminKey() string { return a.adminKey }

// SignupCredits returns the credit grant of a new user.
func (a *App) SignupCredits() int64 { return a.signupCredits }

// TrialPolicy returns the trial in force for users without an active plan.
func (a *App) TrialPolicy() *TrialPolicy { return a.trial }

// SignupPlanFor returns the name of the plan new users get and for how
// many months; "" when they start on the trial.
func (a *App) SignupPlanFor() (name string, months int) {
	return a.SignupPlan, max(a.SignupPlanMonths, 1)
}

// RotationGrace returns how long a rotated key's previous secret keeps
// working.
func (a *App) RotationGrace() time.Duration { return time.Duration(a.RotationGracePeriod) }

// Pricing returns the active price table.
func (a *App) Pricing() pricing {
	if a.prices != nil {
		if p := a.prices.table.Load(); p != nil {
			return *p
		}
	}
	return configPricing(a.Prices)
}

// Storage returns the storage backend.
func (a *App) Storage() StorageBackend { return a.storage }

// Identity is an authenticated API key and its owner. Both are snapshots
// shared between requests: read them, never modify them.
type Identity struct {
	Key  *storage.APIKey
	User *storage.User
}

// Errors of Authenticate (test with errors.Is). All of them are 401s.
var (
	ErrUnknownKey  = errors.New("Invalid API key")
	ErrInactiveKey = errors.New("API key is inactive")
	ErrExpiredKey  = errors.New("API key has expired")
)

// Authenticate resolves a plaintext API key for the management API
// (authenticate, shared with the gateway): no store read when the key is
// known, and none for a string that is not shaped like a key. Refusals
// match ErrUnknownKey, ErrInactiveKey or ErrExpiredKey (errors.Is); a store
// failure while loading an uncached key is returned as is.
func (a *App) Authenticate(plaintext string) (*Identity, error) {
	e, err := a.authenticate(context.Background(), plaintext, time.Now())
	if err != nil {
		return nil, err
	}
	return &e.id, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
