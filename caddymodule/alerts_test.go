package caddymodule

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestAlertsCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    App
		wantErr string
	}{
		{name: "webhooks and alerts", input: `gatewayz {
			webhook {
				url https://hooks.example.com/gatewayz
				secret {env.GATEWAYZ_WEBHOOK_SECRET}
				events balance.low balance.depleted
			}
			webhook https://ops.example.com/ {
				secret {env.OPS_SECRET}
			}
			alerts {
				low_balance_threshold 500
				allow_http
				allow_private_targets
				timeout 5s
				retry_base 1s
				retry_ceiling 10m
				retry_for 12h
				poll_interval 2s
				batch_window 20ms
				expiry_scan_interval 1m
				security_burst 4
				security_window 30s
				retention 48h
			}
		}`, want: App{
			Webhooks: []OperatorWebhook{
				{URL: "https://hooks.example.com/gatewayz", Secret: "{env.GATEWAYZ_WEBHOOK_SECRET}", Events: []string{"balance.low", "balance.depleted"}},
				{URL: "https://ops.example.com/", Secret: "{env.OPS_SECRET}"},
			},
			Alerts: &AlertSettings{
				LowBalanceThreshold: 500, AllowHTTP: true, AllowPrivateTargets: true,
				Timeout: caddy.Duration(5 * time.Second), RetryBase: caddy.Duration(time.Second), RetryCeiling: caddy.Duration(10 * time.Minute),
				RetryFor: caddy.Duration(12 * time.Hour), PollInterval: caddy.Duration(2 * time.Second), BatchWindow: caddy.Duration(20 * time.Millisecond),
				ExpiryScanInterval: caddy.Duration(time.Minute), SecurityBurst: 4, SecurityWindow: caddy.Duration(30 * time.Second),
				Retention: caddy.Duration(48 * time.Hour),
			},
		}},
		{name: "literal secret", input: `gatewayz {
			webhook {
				url https://hooks.example.com/
				secret hunter2
			}
		}`, wantErr: "must be a runtime placeholder"},
		{name: "no url", input: `gatewayz {
			webhook {
				secret {env.S}
			}
		}`, wantErr: "url is required"},
		{name: "unknown event", input: `gatewayz {
			webhook https://x.example/ {
				secret {env.S}
				events balance.high
			}
		}`, wantErr: `unknown event type "balance.high"`},
		{name: "ping is not for operators", input: `gatewayz {
			webhook https://x.example/ {
				secret {env.S}
				events ping
			}
		}`, wantErr: `unknown event type "ping"`},
		{name: "unknown webhook option", input: `gatewayz {
			webhook https://x.example/ {
				secret {env.S}
				method PUT
			}
		}`, wantErr: `unknown webhook option "method"`},
		{name: "negative threshold", input: `gatewayz {
			alerts {
				low_balance_threshold -1
			}
		}`, wantErr: "low_balance_threshold must be a non-negative integer"},
		{name: "bad duration", input: `gatewayz {
			alerts {
				retry_base soon
			}
		}`, wantErr: `bad retry_base "soon"`},
		{name: "unknown alerts option", input: `gatewayz {
			alerts {
				sms +1555
			}
		}`, wantErr: `unknown alerts option "sms"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a App
			err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", a, tt.want)
			}
		})
	}
}

// Provision resolves the webhook secrets at run time and keeps them out of
// the config; it refuses literal secrets, empty ones and bad values.
func TestAlertsProvision(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("GWZ_TEST_HOOK_SECRET", "hook-secret-value")
	t.Setenv("GWZ_TEST_EMPTY", "")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	a := &App{DBPath: dir + "/a.db", Secret: "unit-test-secret-0123456789abcdef",
		Webhooks: []OperatorWebhook{{URL: "https://hooks.example.com/x", Secret: "{env.GWZ_TEST_HOOK_SECRET}", Events: []string{"balance.low"}}},
		Alerts:   &AlertSettings{LowBalanceThreshold: 7, AllowPrivateTargets: true, RetryBase: caddy.Duration(time.Second)}}
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	if ep := a.alertsCfg.Endpoints; len(ep) != 1 || ep[0].Secret != "hook-secret-value" || a.alertsCfg.LowBalanceThreshold != 7 ||
		!a.alertsCfg.Guard.AllowPrivate || a.alertsCfg.Guard.AllowHTTP || a.alertsCfg.RetryBase != time.Second {
		t.Fatalf("resolved %+v", a.alertsCfg)
	}
	if raw, _ := json.Marshal(a); strings.Contains(string(raw), "hook-secret-value") {
		t.Fatalf("resolved webhook secret in the config: %s", raw)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	if got := a.AlertHub().Config(); got.LowBalanceThreshold != 7 || len(got.Endpoints) != 1 || got.Secrets == nil {
		t.Fatalf("hub config %+v", got)
	}
	for _, bad := range []*App{
		{DBPath: dir + "/b.db", Webhooks: []OperatorWebhook{{URL: "https://x.example/", Secret: "literal"}}},
		{DBPath: dir + "/c.db", Webhooks: []OperatorWebhook{{URL: "https://x.example/", Secret: "{env.GWZ_TEST_EMPTY}"}}},
		{DBPath: dir + "/d.db", Webhooks: []OperatorWebhook{{URL: "ftp://x.example/", Secret: "{env.GWZ_TEST_HOOK_SECRET}"}}},
		{DBPath: dir + "/e.db", Webhooks: []OperatorWebhook{{URL: "https://x.example/", Secret: "{env.GWZ_TEST_HOOK_SECRET}", Events: []string{"nope"}}}},
		{DBPath: dir + "/f.db", Alerts: &AlertSettings{LowBalanceThreshold: -1}},
		{DBPath: dir + "/g.db", Alerts: &AlertSettings{Timeout: -1}},
		{DBPath: dir + "/h.db", Alerts: &AlertSettings{SecurityBurst: -2}},
	} {
		if err := bad.Provision(ctx); err == nil {
			bad.Cleanup()
			t.Errorf("Provision(%+v) = nil, want an error", bad)
		}
	}
}
