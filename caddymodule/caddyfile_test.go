package caddymodule

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func TestGatewayUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    Gateway
		wantErr string
	}{
		{name: "bare", input: `gatewayz`, want: Gateway{}},
		{name: "empty block", input: `gatewayz {
		}`, want: Gateway{}},
		{name: "all options", input: `gatewayz {
			max_body_size 2MiB
			free_paths /v1/files* /v1/batches/*
			free_paths /health
			limits {
				requests_per_minute 60
				requests_per_hour 1000
				requests_per_day 10000
				tokens_per_minute 10000
				tokens_per_hour 100000
				tokens_per_day 1000000
			}
		}`, want: Gateway{
			MaxBodySize: 2 << 20,
			FreePaths:   []string{"/v1/files*", "/v1/batches/*", "/health"},
			Limits: storage.RateLimits{RequestsPerMinute: 60, RequestsPerHour: 1000, RequestsPerDay: 10000,
				TokensPerMinute: 10000, TokensPerHour: 100000, TokensPerDay: 1000000},
		}},
		{name: "argument", input: `gatewayz foo`, wantErr: "wrong argument count"},
		{name: "unknown option", input: `gatewayz {
			bogus 1
		}`, wantErr: `unknown gatewayz subdirective "bogus"; valid: max_body_size, free_paths, limits, cors,`},
		{name: "lower_max_tokens says on or off", input: `gatewayz {
			lower_max_tokens maybe
		}`, wantErr: `lower_max_tokens must be on or off, got "maybe"`},
		{name: "cors", input: `gatewayz {
			cors http://localhost:5173 {
				origins https://app.example.com
				key_referrers
				max_age 1h
			}
		}`, want: Gateway{CORS: &CORS{
			AllowedOrigins: []string{"http://localhost:5173", "https://app.example.com"}, KeyReferrers: true, MaxAge: caddy.Duration(time.Hour),
		}}},
		{name: "cors any origin", input: `gatewayz {
			cors *
		}`, want: Gateway{CORS: &CORS{AllowedOrigins: []string{"*"}}}},
		{name: "cors needs origins", input: `gatewayz {
			cors
		}`, wantErr: "cors needs allowed_origins or key_referrers"},
		{name: "cors origin with a path", input: `gatewayz {
			cors https://app.example.com/page
		}`, wantErr: "must be scheme://host[:port] or *"},
		{name: "unknown cors option", input: `gatewayz {
			cors * {
				methods GET
			}
		}`, wantErr: `unknown cors option "methods"; valid: origins, key_referrers, max_age`},
		{name: "bad size", input: `gatewayz {
			max_body_size lots
		}`, wantErr: "bad max_body_size"},
		{name: "size without value", input: `gatewayz {
			max_body_size
		}`, wantErr: "wrong argument count"},
		{name: "free_paths empty", input: `gatewayz {
			free_paths
		}`, wantErr: "wrong argument count"},
		{name: "negative limit", input: `gatewayz {
			limits {
				requests_per_minute -1
			}
		}`, wantErr: "non-negative integer"},
		{name: "unknown limit", input: `gatewayz {
			limits {
				requests_per_week 1
			}
		}`, wantErr: `unknown limit "requests_per_week"; valid: requests_per_minute,`},
		{name: "limit with two values", input: `gatewayz {
			limits {
				tokens_per_day 1 2
			}
		}`, wantErr: "wrong argument count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g Gateway
			err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(g, tt.want) {
				t.Fatalf("got %+v, want %+v", g, tt.want)
			}
		})
	}
}

func TestGatewayJSON(t *testing.T) {
	g := Gateway{MaxBodySize: 1024, FreePaths: []string{"/v1/files*"}, Limits: storage.RateLimits{RequestsPerMinute: 5}}
	raw, err := json.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"limits":{"requests_per_minute":5,"requests_per_hour":0,"requests_per_day":0,"tokens_per_minute":0,"tokens_per_hour":0,"tokens_per_day":0},"max_body_size":1024,"free_paths":["/v1/files*"]}`
	if string(raw) != want {
		t.Fatalf("JSON = %s\nwant   %s", raw, want)
	}
}

func TestGatewayValidate(t *testing.T) {
	for _, g := range []Gateway{{FreePaths: []string{"["}}, {FreePaths: []string{""}}, {Limits: storage.RateLimits{TokensPerDay: -1}}} {
		if err := g.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", g)
		}
	}
}

func TestMatchPathGlob(t *testing.T) {
	tests := []struct {
		glob, path string
		want       bool
	}{
		{"/v1/files*", "/v1/files", true},
		{"/v1/files*", "/v1/files/abc/content", true},
		{"/v1/files*", "/v1/file", false},
		{"/v1/batches/*", "/v1/batches/b1", true},
		{"/v1/batches/*", "/v1/batches/b1/cancel", true},
		{"/v1/*/status", "/v1/x/status", true},
		{"/v1/*/status", "/v1/x/y/status", false},
		{"/health", "/health", true},
		{"/health", "/healthz", false},
	}
	for _, tt := range tests {
		if got := matchPathGlob(tt.glob, tt.path); got != tt.want {
			t.Errorf("matchPathGlob(%q, %q) = %v, want %v", tt.glob, tt.path, got, tt.want)
		}
	}
}

func TestAppUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    App
		wantErr string
	}{
		{name: "bare", input: `gatewayz`, want: App{}},
		{name: "all options", input: `gatewayz {
			db_path {env.GATEWAYZ_DB}
			database_url {env.GATEWAYZ_DATABASE_URL}
			secret {env.GATEWAYZ_SECRET}
			admin_key {env.GATEWAYZ_ADMIN_KEY}
			signup_credits {env.GATEWAYZ_SIGNUP_CREDITS}
			rotation_grace 10m
			usage_retention 90d
			usage_detail_retention 2d
			negative_cache_size 500
			security_audit_per_minute 3
			trial_models gpt-4o-mini llama-*
			default_limits {
				requests_per_minute 60
				tokens_per_day 1000000
			}
			price gpt-4o* 2500 10000
			price cheap 1 2
		}`, want: App{
			DBPath: "{env.GATEWAYZ_DB}", DatabaseURL: "{env.GATEWAYZ_DATABASE_URL}",
			Secret: "{env.GATEWAYZ_SECRET}", AdminKeyValue: "{env.GATEWAYZ_ADMIN_KEY}",
			SignupCreditsValue:  "{env.GATEWAYZ_SIGNUP_CREDITS}",
			RotationGracePeriod: caddy.Duration(10 * 60e9), UsageRetention: caddy.Duration(90 * 24 * 3600e9),
			UsageDetailRetention: caddy.Duration(2 * 24 * 3600e9),
			NegativeCacheSize:    500, SecurityAuditPerMinute: 3,
			TrialModels:   []string{"gpt-4o-mini", "llama-*"},
			DefaultLimits: storage.RateLimits{RequestsPerMinute: 60, TokensPerDay: 1000000},
			Prices:        []ModelPrice{{Model: "gpt-4o*", PromptPer1K: 2500, CompletionPer1K: 10000}, {Model: "cheap", PromptPer1K: 1, CompletionPer1K: 2}},
		}},
		{name: "database_url shorthand", input: `gatewayz {
			db_path {env.GATEWAYZ_DB}
			database_url {env.GATEWAYZ_DATABASE_URL}
		}`, want: App{DBPath: "{env.GATEWAYZ_DB}", DatabaseURL: "{env.GATEWAYZ_DATABASE_URL}"}},
		{name: "bolt storage", input: `gatewayz {
			storage bolt {
				path {env.GATEWAYZ_DB}
				commit_window 5ms
				lock_timeout 2s
				no_sync
			}
		}`, want: App{StorageRaw: json.RawMessage(`{"backend":"bolt","commit_window":5000000,"lock_timeout":2000000000,"no_sync":true,"path":"{env.GATEWAYZ_DB}"}`)}},
		{name: "bolt storage path argument", input: `gatewayz {
			storage bolt /data/gw.db
		}`, want: App{StorageRaw: json.RawMessage(`{"backend":"bolt","path":"/data/gw.db"}`)}},
		{name: "unknown storage backend", input: `gatewayz {
			storage nosuch
		}`, wantErr: "gatewayz.storage.nosuch"},
		{name: "storage needs a backend", input: `gatewayz {
			storage
		}`, wantErr: "wrong argument count"},
		{name: "unknown bolt option", input: `gatewayz {
			storage bolt {
				fsync off
			}
		}`, wantErr: "valid: path, commit_window, lock_timeout, no_sync"},
		{name: "bolt options moved", input: `gatewayz {
			commit_window 5ms
		}`, wantErr: "storage bolt { commit_window"},
		{name: "negative detail retention", input: `gatewayz {
			usage_detail_retention -1h
		}`, wantErr: "bad usage_detail_retention"},
		{name: "literal signup credits", input: `gatewayz {
			signup_credits 250
		}`, want: App{SignupCreditsValue: "250"}},
		{name: "zero grace", input: `gatewayz {
			rotation_grace 0s
		}`, want: App{}},
		{name: "bad signup credits", input: `gatewayz {
			signup_credits 1.5
		}`, wantErr: "non-negative integer or a placeholder"},
		{name: "bad duration", input: `gatewayz {
			rotation_grace soon
		}`, wantErr: "bad rotation_grace"},
		{name: "cache prices", input: `gatewayz {
			price claude-* 3000 15000 300 3750
			price gpt-4o* 2500 10000 1250
		}`, want: App{Prices: []ModelPrice{
			{Model: "claude-*", PromptPer1K: 3000, CompletionPer1K: 15000, CacheReadPer1K: new(int64(300)), CacheWritePer1K: new(int64(3750))},
			{Model: "gpt-4o*", PromptPer1K: 2500, CompletionPer1K: 10000, CacheReadPer1K: new(int64(1250))},
		}}},
		{name: "upstream prices", input: `gatewayz {
			upstream_prices {
				url {env.GATEWAYZ_UPSTREAM}/v1/models
				api_key {env.GATEWAYZ_API_KEY}
				credits_per_usd 1000
				refresh 30m
			}
		}`, want: App{UpstreamPrices: &UpstreamPrices{URL: "{env.GATEWAYZ_UPSTREAM}/v1/models", APIKey: "{env.GATEWAYZ_API_KEY}",
			CreditsPerUSD: 1000, Refresh: caddy.Duration(30 * 60e9)}}},
		{name: "upstream prices: bad rate", input: `gatewayz {
			upstream_prices {
				credits_per_usd 0.5
			}
		}`, wantErr: "credits_per_usd must be a positive integer"},
		{name: "upstream prices: unknown option", input: `gatewayz {
			upstream_prices {
				currency eur
			}
		}`, wantErr: "unknown upstream_prices option"},
		{name: "price takes at most five args", input: `gatewayz {
			price m 1 2 3 4 5
		}`, wantErr: "wrong argument count"},
		{name: "cache price must be integer", input: `gatewayz {
			price m 1 2 0.1
		}`, wantErr: "non-negative integers"},
		{name: "price needs three args", input: `gatewayz {
			price gpt-4o 1
		}`, wantErr: "wrong argument count"},
		{name: "price must be integer", input: `gatewayz {
			price gpt-4o 0.5 1
		}`, wantErr: "non-negative integers"},
		{name: "bad glob", input: `gatewayz {
			price [ 1 1
		}`, wantErr: "bad model glob"},
		{name: "no_sync takes no argument", input: `gatewayz {
			storage bolt {
				no_sync yes
			}
		}`, wantErr: "wrong argument count"},
		{name: "unknown option", input: `gatewayz {
			database x
		}`, wantErr: `unknown gatewayz option "database"; valid: storage, db_path, database_url, secret,`},
		{name: "trial and signup plan", input: `gatewayz {
			trial {
				requests_per_day 0
				tokens_per_day 5000
				requests_per_month 300
				tokens_per_month 0
				models gpt-4o-mini meta-llama/*
				days 14
				ends_at_top_up
			}
			signup_plan Starter 3
		}`, want: App{
			Trial: &Trial{
				RequestsPerDay: ptr[int64](0), TokensPerDay: ptr[int64](5000), RequestsPerMonth: ptr[int64](300), TokensPerMonth: ptr[int64](0),
				Models: []string{"gpt-4o-mini", "meta-llama/*"}, Days: 14, EndsAtTopUp: true,
			},
			SignupPlan: "Starter", SignupPlanMonths: 3,
		}},
		{name: "unknown trial option", input: `gatewayz {
			trial {
				requests_per_week 3
			}
		}`, wantErr: `unknown trial option "requests_per_week"; valid: requests_per_day, tokens_per_day, requests_per_month, tokens_per_month, models, days, ends_at_top_up`},
		{name: "negative trial limit", input: `gatewayz {
			trial {
				days -1
			}
		}`, wantErr: "trial days must be a non-negative integer"},
		{name: "signup plan months", input: `gatewayz {
			signup_plan Starter 0
		}`, wantErr: "signup_plan months must be between 1 and 1200"},
		{name: "argument", input: `gatewayz x`, wantErr: "wrong argument count"},
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

func TestAppJSON(t *testing.T) {
	a := App{DBPath: "/data/gw.db", Secret: "{env.GATEWAYZ_SECRET}", AdminKeyValue: "{env.GATEWAYZ_ADMIN_KEY}",
		SignupCreditsValue: "500", RotationGracePeriod: caddy.Duration(60e9), Prices: []ModelPrice{{Model: "m", PromptPer1K: 1, CompletionPer1K: 2}}}
	raw, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"db_path":"/data/gw.db","secret":"{env.GATEWAYZ_SECRET}","admin_key":"{env.GATEWAYZ_ADMIN_KEY}","signup_credits":"500",` +
		`"prices":[{"model":"m","prompt_per_1k":1,"completion_per_1k":2}],"rotation_grace":60000000000}`
	if string(raw) != want {
		t.Fatalf("JSON = %s\nwant   %s", raw, want)
	}
	var back App
	if err := json.Unmarshal(raw, &back); err != nil || !reflect.DeepEqual(back, a) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
}

func TestAppProvisionResolvesPlaceholders(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("GWZ_TEST_ADMIN", "admin-token")
	t.Setenv("GWZ_TEST_CREDITS", "42")
	t.Setenv("GWZ_TEST_DB", dir+"/sub/gw.db")
	t.Setenv("GWZ_TEST_DATABASE_URL", "")
	a := &App{DBPath: "{env.GWZ_TEST_DB}", DatabaseURL: "{env.GWZ_TEST_DATABASE_URL}", AdminKeyValue: "{env.GWZ_TEST_ADMIN}", SignupCreditsValue: "{env.GWZ_TEST_CREDITS}"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	// database_url resolves to empty: db_path's bbolt file.
	backend, location := a.Storage().Describe()
	if a.AdminKey() != "admin-token" || a.SignupCredits() != 42 || backend != "bolt" || location != dir+"/sub/gw.db" {
		t.Fatalf("resolved: admin %q credits %d storage %s %q", a.AdminKey(), a.SignupCredits(), backend, location)
	}
	// The config keeps the placeholders, never the resolved secrets.
	raw, _ := json.Marshal(a)
	if strings.Contains(string(raw), "admin-token") {
		t.Fatalf("resolved secret in the config: %s", raw)
	}
	// Provisioning (what `caddy validate` does) created nothing: no
	// database directory, file or secret.
	if _, err := os.Stat(dir + "/sub"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Provision created the database directory: %v", err)
	}
	// Start opens the store and, with no secret configured, keeps a
	// generated one in a 0600 file beside the database.
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitStarted(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"gw.db", "gw.db.secret"} {
		if fi, err := os.Stat(dir + "/sub/" + f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s after Start: %v, %v", f, fi, err)
		}
	}
	if a.secretOrigin() != "generated file "+dir+"/sub/gw.db.secret" {
		t.Fatalf("secret origin %q", a.secretOrigin())
	}
	// A second app on the same file shares the open store and reuses the
	// generated secret.
	b := &App{DBPath: dir + "/sub/gw.db"}
	if err := b.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Cleanup()
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	if b.Store() != a.Store() {
		t.Error("two apps on one file must share the store")
	}
	if got := b.Keyring().Hash("x"); string(got) != string(a.Keyring().Hash("x")) {
		t.Error("the generated secret must be reused")
	}

	for _, bad := range []*App{
		{DBPath: dir + "/c.db", SignupCreditsValue: "many"},
		{DBPath: dir + "/d.db", Secret: "short"},
		{DBPath: dir + "/e.db", DefaultLimits: storage.RateLimits{RequestsPerDay: -5}},
		{DBPath: dir + "/f.db", StorageRaw: testBolt(dir + "/f.db")},
		{StorageRaw: json.RawMessage(`{"backend":"bolt","commit_window":-1}`)},
	} {
		if err := bad.Provision(ctx); err == nil {
			bad.Cleanup()
			t.Errorf("Provision(%+v) = nil, want an error", bad)
		}
	}
}

// TestAppStorageSelection: database_url selects PostgreSQL when it resolves
// to a value, with a clear error when this build has no PostgreSQL storage,
// and Provision connects to nothing either way.
func TestAppStorageSelection(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	t.Setenv("GWZ_TEST_DATABASE_URL", "postgres://gw:pw@127.0.0.1:1/gw")
	a := &App{DBPath: t.TempDir() + "/gw.db", DatabaseURL: "{env.GWZ_TEST_DATABASE_URL}", Secret: "selection-secret-0123456789"}
	err := a.Provision(ctx)
	defer a.Cleanup()
	if _, gerr := caddy.GetModule(postgresBackendID); gerr != nil {
		if err == nil || !strings.Contains(err.Error(), "database_url is set, but this build has no PostgreSQL storage") {
			t.Fatalf("database_url without the postgres module: %v", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Provision with database_url: %v", err)
	}
	if backend, location := a.Storage().Describe(); backend != "postgres" || strings.Contains(location, "pw") {
		t.Fatalf("storage %s at %q", backend, location)
	}
}

// TestAppStartFailure: a store that cannot open fails Start with the
// reason, and handlers waiting for the app hear that it did not start.
func TestAppStartFailure(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	notDir := t.TempDir() + "/file"
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := &App{StorageRaw: testBolt(notDir + "/gw.db"), Secret: "start-failure-secret-0123456789"}
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	if err := a.Start(); err == nil || !strings.Contains(err.Error(), "database directory") {
		t.Fatalf("Start on an impossible path: %v", err)
	}
	if err := a.WaitStarted(t.Context()); !errors.Is(err, errNotStarted) {
		t.Fatalf("WaitStarted after a failed Start: %v", err)
	}
}

func TestAppReloadKeepsState(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	old := &App{StorageRaw: testBolt(dir + "/gw.db")}
	if err := old.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	old.state.limiter.admit(&admitInput{userID: 1, keyID: 1}, clockNow())
	// Reload: the new config is provisioned and started before the old is
	// cleaned up.
	next := &App{StorageRaw: testBolt(dir + "/./gw.db"), SignupCreditsValue: "7"}
	if err := next.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if next.state != old.state {
		t.Fatal("the reloaded app must share the state")
	}
	if u, _ := next.state.limiter.size(); u != 1 {
		t.Fatal("limiter state lost across the reload")
	}
	if err := next.Store().Ping(t.Context()); err != nil {
		t.Fatalf("store closed after the old config's cleanup: %v", err)
	}
	if err := next.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := next.Cleanup(); err != nil { // a second Cleanup is harmless
		t.Fatal(err)
	}
	if err := old.state.store.Ping(t.Context()); err == nil {
		t.Fatal("the store must be closed when the last config is cleaned up")
	}
}
