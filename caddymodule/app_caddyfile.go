package caddymodule

import (
	"encoding/json"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("gatewayz", parseGlobalOption)
}

func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "gatewayz", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the `gatewayz` global option:
//
//	gatewayz {
//	    storage        <backend> ...   # e.g. bolt { path ... } or postgres { dsn ... }
//	    db_path        <path>          # shorthand for bolt, e.g. {env.GATEWAYZ_DB}
//	    database_url   <dsn>           # shorthand for postgres when it resolves non-empty
//	    secret         <secret>        # e.g. {env.GATEWAYZ_SECRET}
//	    admin_key      <token>         # e.g. {env.GATEWAYZ_ADMIN_KEY}
//	    signup_credits <n>             # or a placeholder
//	    rotation_grace <duration>
//	    usage_retention <duration>
//	    usage_detail_retention <duration>
//	    negative_cache_size <n>
//	    security_audit_per_minute <n>
//	    trial {
//	        requests_per_day <n>      # 0: unlimited; and tokens_per_day,
//	        requests_per_month <n>    # tokens_per_month
//	        models <glob...>
//	        days <n>                  # trial length; 0: no end
//	        ends_at_top_up            # the first top-up ends the trial
//	    }
//	    signup_plan <plan-name> [<months>]
//	    trial_models   <glob...>      # same as trial { models ... }
//	    default_limits {
//	        requests_per_minute <n>    # and _hour, _day, tokens_per_*
//	    }
//	    price <model-glob> <prompt_per_1k> <completion_per_1k> [<cache_read_per_1k> [<cache_write_per_1k>]]
//	    webhook {                      # several allowed: the operator's endpoints
//	        url    <url>
//	        secret {env.GATEWAYZ_WEBHOOK_SECRET}   # a runtime placeholder only
//	        events <type...>           # default: every type
//	    }
//	    alerts {
//	        low_balance_threshold <n>  # users' default; 0: off
//	        allow_http                 # users' webhooks may use http
//	        allow_private_targets      # users' webhooks may reach private addresses
//	        timeout <d>  retry_base <d>  retry_ceiling <d>  retry_for <d>
//	        poll_interval <d>  batch_window <d>  expiry_scan_interval <d>
//	        security_burst <n>  security_window <d>  retention <d>
//	    }
//	    upstream_prices {
//	        url <model-list-url>     # e.g. {env.GATEWAYZ_UPSTREAM}/v1/models
//	        api_key <key>            # a placeholder: {env.GATEWAYZ_API_KEY}
//	        credits_per_usd <n>
//	        refresh <duration>       # default 1h
//	    }
//	}
//
// Use runtime placeholders ({env.VAR}) for secrets, not {$VAR}: the latter
// is substituted when the Caddyfile is adapted and would be saved in the
// autosaved config.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		name := d.Val()
		switch name {
		case "storage":
			raw, err := unmarshalStorage(d)
			if err != nil {
				return err
			}
			a.StorageRaw = raw
		case "db_path", "database_url", "secret", "admin_key", "signup_credits":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			switch name {
			case "db_path":
				a.DBPath = s
			case "database_url":
				a.DatabaseURL = s
			case "secret":
				a.Secret = s
			case "admin_key":
				a.AdminKeyValue = s
			case "signup_credits":
				if !isPlaceholder(s) {
					if n, err := strconv.ParseInt(s, 10, 64); err != nil || n < 0 {
						return d.Errf("signup_credits must be a non-negative integer or a placeholder, got %q", s)
					}
				}
				a.SignupCreditsValue = s
			}
		case "rotation_grace", "usage_retention", "usage_detail_retention":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur < 0 {
				return d.Errf("bad %s %q", name, s)
			}
			switch name {
			case "rotation_grace":
				a.RotationGracePeriod = caddy.Duration(dur)
			case "usage_retention":
				a.UsageRetention = caddy.Duration(dur)
			case "usage_detail_retention":
				a.UsageDetailRetention = caddy.Duration(dur)
			}
		case "commit_window", "lock_timeout", "no_sync":
			return d.Errf("%s is an option of the bolt storage: storage bolt { %s ... }", name, name)
		case "negative_cache_size", "security_audit_per_minute":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return d.Errf("%s must be a positive integer, got %q", name, s)
			}
			if name == "negative_cache_size" {
				a.NegativeCacheSize = n
			} else {
				a.SecurityAuditPerMinute = n
			}
		case "trial_models":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, g := range args {
				if err := validateGlob(g); err != nil {
					return d.Errf("trial_models: %v", err)
				}
			}
			a.TrialModels = append(a.TrialModels, args...)
		case "trial":
			if d.NextArg() {
				return d.ArgErr()
			}
			if a.Trial == nil {
				a.Trial = new(Trial)
			}
			if err := unmarshalTrial(d, a.Trial); err != nil {
				return err
			}
		case "signup_plan":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			a.SignupPlan = args[0]
			if len(args) == 2 {
				n, err := strconv.Atoi(args[1])
				if err != nil || n < 1 || n > maxSignupPlanMonths {
					return d.Errf("signup_plan months must be between 1 and %d, got %q", maxSignupPlanMonths, args[1])
				}
				a.SignupPlanMonths = n
			}
		case "default_limits":
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := parseRateLimits(d, &a.DefaultLimits); err != nil {
				return err
			}
		case "upstream_prices":
			up, err := parseUpstreamPricesBlock(d)
			if err != nil {
				return err
			}
			a.UpstreamPrices = up
		case "webhook":
			w, err := parseWebhook(d)
			if err != nil {
				return err
			}
			a.Webhooks = append(a.Webhooks, w)
		case "alerts":
			if a.Alerts == nil {
				a.Alerts = new(AlertSettings)
			}
			if err := parseAlerts(d, a.Alerts); err != nil {
				return err
			}
		case "price":
			mp, err := parsePrice(d)
			if err != nil {
				return err
			}
			a.Prices = append(a.Prices, mp)
		default:
			return unknownOption(d, "gatewayz option", appOptions)
		}
	}
	return nil
}

// appOptions are the options of the gatewayz global option.
var appOptions = []string{
	"storage", "db_path", "database_url", "secret", "admin_key", "signup_credits", "signup_plan", "trial",
	"rotation_grace", "usage_retention", "usage_detail_retention", "negative_cache_size",
	"security_audit_per_minute", "trial_models", "default_limits", "price", "webhook", "alerts",
}

// unmarshalStorage reads `storage <backend> [<args>] [{ ... }]` into the
// backend module's JSON, as Caddy's own `storage` global option does.
func unmarshalStorage(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, "gatewayz.storage."+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(unm, "backend", name, nil), nil
}

// isPlaceholder reports whether s is a single {placeholder}.
func isPlaceholder(s string) bool {
	return len(s) > 2 && s[0] == '{' && s[len(s)-1] == '}'
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)

// parsePrice parses the arguments of a price line: a model glob, then the
// prompt, completion, cache-read and cache-write prices in credits per
// 1,000 tokens; the cache prices are optional (default: the prompt price).
func parsePrice(d *caddyfile.Dispenser) (ModelPrice, error) {
	args := d.RemainingArgs()
	if len(args) < 3 || len(args) > 5 {
		return ModelPrice{}, d.ArgErr()
	}
	model := args[0]
	if err := validateGlob(model); err != nil {
		return ModelPrice{}, d.Errf("price: %v", err)
	}
	var n [4]int64
	for i, s := range args[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 || v > maxPricePer1K {
			return ModelPrice{}, d.Errf("price %s: prices must be non-negative integers (credits per 1,000 tokens), got %q", model, s)
		}
		n[i] = v
	}
	mp := ModelPrice{Model: model, PromptPer1K: n[0], CompletionPer1K: n[1]}
	if len(args) > 3 {
		mp.CacheReadPer1K = &n[2]
	}
	if len(args) > 4 {
		mp.CacheWritePer1K = &n[3]
	}
	return mp, nil
}

// parseUpstreamPricesBlock parses an upstream_prices block.
func parseUpstreamPricesBlock(d *caddyfile.Dispenser) (*UpstreamPrices, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	up := new(UpstreamPrices)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		var s string
		if !d.AllArgs(&s) {
			return nil, d.ArgErr()
		}
		switch name {
		case "url":
			up.URL = s
		case "api_key":
			up.APIKey = s
		case "credits_per_usd":
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n <= 0 {
				return nil, d.Errf("credits_per_usd must be a positive integer, got %q", s)
			}
			up.CreditsPerUSD = n
		case "refresh":
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur <= 0 {
				return nil, d.Errf("bad refresh %q", s)
			}
			up.Refresh = caddy.Duration(dur)
		default:
			return nil, d.Errf("unknown upstream_prices option %q", name)
		}
	}
	return up, nil
}
