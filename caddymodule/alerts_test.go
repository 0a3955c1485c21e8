package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

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
