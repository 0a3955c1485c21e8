package caddymodule

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/gatewayz/caddy-gatewayz/alerts"
)

// OperatorWebhook is an operator's webhook endpoint: it receives every
// user's events of the listed types, signed with its secret.
type OperatorWebhook struct {
	// URL is where events are POSTed (http or https; placeholders are
	// resolved at run time). The operator's endpoints are trusted: the
	// guard on users' webhooks does not apply to them.
	URL string `json:"url,omitempty"`

	// Secret signs the deliveries (Gatewayz-Signature). It must be a
	// runtime placeholder, e.g. "{env.GATEWAYZ_WEBHOOK_SECRET}", so that
	// it never lands in the config Caddy autosaves.
	Secret string `json:"secret,omitempty"`

	// Events are the event types sent; empty or "*": every type.
	Events []string `json:"events,omitempty"`
}

// AlertSettings configure alert events and their webhook delivery.
type AlertSettings struct {
	// LowBalanceThreshold is the default balance below which balance.low
	// fires, for users who did not set their own low_balance_threshold.
	// Default 0: off.
	LowBalanceThreshold int64 `json:"low_balance_threshold,omitempty"`

	// AllowHTTP lets users register http:// webhooks. Default: https only.
	AllowHTTP bool `json:"allow_http,omitempty"`

	// AllowPrivateTargets lets users' webhooks reach loopback, private,
	// link-local, CGNAT and cloud metadata addresses. Default: refused
	// (checked at registration and again on every connection).
	AllowPrivateTargets bool `json:"allow_private_targets,omitempty"`

	// Timeout bounds one delivery attempt. Default 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// RetryBase is the wait after a delivery's first failure; it doubles
	// with each failure up to RetryCeiling (default 1h), with jitter, for
	// RetryFor after the event (default 24h). Default 30s.
	RetryBase    caddy.Duration `json:"retry_base,omitempty"`
	RetryCeiling caddy.Duration `json:"retry_ceiling,omitempty"`
	RetryFor     caddy.Duration `json:"retry_for,omitempty"`

	// PollInterval is how often the delivery worker looks for due
	// deliveries (new events wake it at once). Default 1s.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// BatchWindow is the longest an event raised by a request waits in
	// memory before it is written to the outbox. Default 50ms.
	BatchWindow caddy.Duration `json:"batch_window,omitempty"`

	// ExpiryScanInterval is how often keys are scanned for key.expiring
	// (a day before expiration_date). Default 10m.
	ExpiryScanInterval caddy.Duration `json:"expiry_scan_interval,omitempty"`

	// SecurityBurst refused requests of one key (bad IP or referrer,
	// expired or inactive key) within SecurityWindow raise one
	// security.alert. Defaults 10 and 1m.
	SecurityBurst  int            `json:"security_burst,omitempty"`
	SecurityWindow caddy.Duration `json:"security_window,omitempty"`

	// Retention is how long events and delivery records are kept.
	// Default 168h (7 days).
	Retention caddy.Duration `json:"retention,omitempty"`
}

// maxOperatorWebhooks bounds the operator's endpoints.
const maxOperatorWebhooks = 16

// resolveAlerts checks the alert settings and operator webhooks and
// returns the hub config (without the secrets' decrypter, set at Start).
func (a *App) resolveAlerts(repl *caddy.Replacer) (alerts.Config, error) {
	var cfg alerts.Config
	if len(a.Webhooks) > maxOperatorWebhooks {
		return cfg, fmt.Errorf("gatewayz: at most %d webhooks", maxOperatorWebhooks)
	}
	for i, w := range a.Webhooks {
		ep, err := resolveOperatorWebhook(w, repl)
		if err != nil {
			return cfg, fmt.Errorf("gatewayz: webhook %d: %v", i+1, err)
		}
		cfg.Endpoints = append(cfg.Endpoints, ep)
	}
	s := a.Alerts
	if s == nil {
		s = new(AlertSettings)
	}
	if s.LowBalanceThreshold < 0 {
		return cfg, fmt.Errorf("gatewayz: alerts: low_balance_threshold must not be negative")
	}
	if s.SecurityBurst < 0 {
		return cfg, fmt.Errorf("gatewayz: alerts: security_burst must not be negative")
	}
	for name, d := range map[string]caddy.Duration{
		"timeout": s.Timeout, "retry_base": s.RetryBase, "retry_ceiling": s.RetryCeiling, "retry_for": s.RetryFor,
		"poll_interval": s.PollInterval, "batch_window": s.BatchWindow, "expiry_scan_interval": s.ExpiryScanInterval,
		"security_window": s.SecurityWindow, "retention": s.Retention,
	} {
		if d < 0 {
			return cfg, fmt.Errorf("gatewayz: alerts: %s must not be negative", name)
		}
	}
	cfg.LowBalanceThreshold = s.LowBalanceThreshold
	cfg.Guard = alerts.Guard{AllowHTTP: s.AllowHTTP, AllowPrivate: s.AllowPrivateTargets}
	cfg.Timeout = time.Duration(s.Timeout)
	cfg.RetryBase, cfg.RetryCeiling, cfg.RetryFor = time.Duration(s.RetryBase), time.Duration(s.RetryCeiling), time.Duration(s.RetryFor)
	cfg.PollInterval, cfg.BatchWindow = time.Duration(s.PollInterval), time.Duration(s.BatchWindow)
	cfg.ExpiryScan = time.Duration(s.ExpiryScanInterval)
	cfg.SecurityBurst, cfg.SecurityWindow = s.SecurityBurst, time.Duration(s.SecurityWindow)
	cfg.Retention = time.Duration(s.Retention)
	return cfg, nil
}

// resolveOperatorWebhook checks one operator webhook and resolves its
// placeholders.
func resolveOperatorWebhook(w OperatorWebhook, repl *caddy.Replacer) (alerts.Endpoint, error) {
	if !strings.Contains(w.Secret, "{env.") && !strings.Contains(w.Secret, "{file.") {
		return alerts.Endpoint{}, fmt.Errorf("secret must be a runtime placeholder such as {env.GATEWAYZ_WEBHOOK_SECRET}, so that it is not saved with the config")
	}
	secret := strings.TrimSpace(repl.ReplaceAll(w.Secret, ""))
	if secret == "" {
		return alerts.Endpoint{}, fmt.Errorf("secret %s resolves to empty", w.Secret)
	}
	raw := strings.TrimSpace(repl.ReplaceAll(w.URL, ""))
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return alerts.Endpoint{}, fmt.Errorf("url must be an absolute http or https URL")
	}
	for _, t := range w.Events {
		if !alerts.ValidType(t) || t == alerts.Ping {
			return alerts.Endpoint{}, fmt.Errorf("unknown event type %q (known: %s)", t, strings.Join(alerts.Types[:len(alerts.Types)-1], ", "))
		}
	}
	return alerts.Endpoint{URL: raw, Secret: secret, Events: w.Events}, nil
}

// AlertHub returns the alert hub of the store (after Start).
func (a *App) AlertHub() *alerts.Hub { return a.state.alerts }

// parseWebhook parses a webhook block:
//
//	webhook {
//	    url    <url>
//	    secret {env.GATEWAYZ_WEBHOOK_SECRET}
//	    events <type...>
//	}
func parseWebhook(d *caddyfile.Dispenser) (OperatorWebhook, error) {
	var w OperatorWebhook
	if d.NextArg() {
		w.URL = d.Val()
		if d.NextArg() {
			return w, d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch name := d.Val(); name {
		case "url", "secret":
			var s string
			if !d.AllArgs(&s) {
				return w, d.ArgErr()
			}
			if name == "url" {
				w.URL = s
			} else {
				w.Secret = s
			}
		case "events":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return w, d.ArgErr()
			}
			for _, t := range args {
				if !alerts.ValidType(t) || t == alerts.Ping {
					return w, d.Errf("webhook: unknown event type %q", t)
				}
			}
			w.Events = append(w.Events, args...)
		default:
			return w, d.Errf("unknown webhook option %q (url, secret, events)", name)
		}
	}
	if w.URL == "" {
		return w, d.Err("webhook: url is required")
	}
	if !strings.Contains(w.Secret, "{env.") && !strings.Contains(w.Secret, "{file.") {
		return w, d.Err("webhook: secret is required and must be a runtime placeholder, e.g. {env.GATEWAYZ_WEBHOOK_SECRET}")
	}
	return w, nil
}

// parseAlerts parses an alerts block.
func parseAlerts(d *caddyfile.Dispenser, s *AlertSettings) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		switch name {
		case "allow_http":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.AllowHTTP = true
			continue
		case "allow_private_targets":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.AllowPrivateTargets = true
			continue
		}
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		switch name {
		case "low_balance_threshold", "security_burst":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || n > 1<<52 {
				return d.Errf("%s must be a non-negative integer, got %q", name, v)
			}
			if name == "security_burst" {
				s.SecurityBurst = int(min(n, 1<<30))
			} else {
				s.LowBalanceThreshold = n
			}
		case "timeout", "retry_base", "retry_ceiling", "retry_for", "poll_interval", "batch_window",
			"expiry_scan_interval", "security_window", "retention":
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("bad %s %q", name, v)
			}
			*map[string]*caddy.Duration{
				"timeout": &s.Timeout, "retry_base": &s.RetryBase, "retry_ceiling": &s.RetryCeiling, "retry_for": &s.RetryFor,
				"poll_interval": &s.PollInterval, "batch_window": &s.BatchWindow, "expiry_scan_interval": &s.ExpiryScanInterval,
				"security_window": &s.SecurityWindow, "retention": &s.Retention,
			}[name] = caddy.Duration(dur)
		default:
			return d.Errf("unknown alerts option %q", name)
		}
	}
	return nil
}

// WebhookGuard is what users' webhooks may target under this config.
func (a *App) WebhookGuard() alerts.Guard { return a.alertsCfg.Guard }

// budgetAlerts is the state's spent hook (see observeSpend): a settlement
// that took its key's spend in the current budget window across 80 % or
// all of the key's spend_limit raises key.budget_warning or
// key.budget_reached, once per crossing (from the spend before and after
// this settlement, counted by the store in its atomic step); a new window
// starts from zero, so the next window fires again.
func (s *sharedState) budgetAlerts(n SpendNotice) {
	k := n.Spent.Key
	if !k.Valid || !k.Limited {
		return
	}
	s.alerts.BudgetChanged(n.UserID, n.KeyID, k.Before, k.After, k.Limit, n.KeyReset.WindowEnd(k.Window))
}
