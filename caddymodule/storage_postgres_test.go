package caddymodule

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestPostgresStorageUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    PostgresStorage
		wantErr string
	}{
		{name: "dsn argument", input: `postgres {env.GATEWAYZ_DATABASE_URL}`, want: PostgresStorage{DSN: "{env.GATEWAYZ_DATABASE_URL}"}},
		{name: "all options", input: `postgres {
			dsn {env.GATEWAYZ_DATABASE_URL}
			pool_size 32
			statement_timeout 3s
			lease 10s
			feed_bound 2s
			commit_window 1ms
			async_reserve
			node edge-1
		}`, want: PostgresStorage{DSN: "{env.GATEWAYZ_DATABASE_URL}", PoolSize: 32,
			StatementTimeout: caddy.Duration(3 * time.Second), Lease: caddy.Duration(10 * time.Second),
			FeedBound: caddy.Duration(2 * time.Second), CommitWindow: caddy.Duration(time.Millisecond),
			AsyncReserve: true, Node: "edge-1"}},
		{name: "async_reserve takes no argument", input: `postgres {
			async_reserve yes
		}`, wantErr: "wrong argument count"},
		{name: "zero commit window", input: `postgres {
			commit_window 0s
		}`, want: PostgresStorage{}},
		{name: "bad commit window", input: `postgres {
			commit_window -1ms
		}`, wantErr: "bad commit_window"},
		{name: "bad pool size", input: `postgres {
			pool_size 0
		}`, wantErr: "pool_size must be a positive integer"},
		{name: "bad lease", input: `postgres {
			lease never
		}`, wantErr: "bad lease"},
		{name: "bad feed bound", input: `postgres {
			feed_bound 0s
		}`, wantErr: "bad feed_bound"},
		{name: "two arguments", input: `postgres a b`, wantErr: "wrong argument count"},
		{name: "unknown option", input: `postgres {
			password x
		}`, wantErr: `unknown postgres storage option "password"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p PostgresStorage
			err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", p, tt.want)
			}
		})
	}
}

// On PostgreSQL the secret must be explicit: a per-node generated one
// would make keys of one node unusable on the others. The refusal comes
// before any connection.
func TestPostgresNeedsSecret(t *testing.T) {
	t.Setenv("GWZ_TEST_DATABASE_URL", "postgres://u@127.0.0.1:1/db")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	a := &App{DatabaseURL: "{env.GWZ_TEST_DATABASE_URL}"}
	err := a.Provision(ctx)
	if err == nil || !strings.Contains(err.Error(), "postgres storage needs an explicit secret") {
		t.Fatalf("Provision without a secret: %v", err)
	}
}

// FuzzPostgresStorage: whatever the tokens, parsing the backend's block
// returns a config or an error, an accepted one survives the JSON round
// trip and holds no non-positive pool size or duration.
func FuzzPostgresStorage(f *testing.F) {
	for _, s := range []string{
		"postgres {env.GATEWAYZ_DATABASE_URL}",
		"postgres {\n\tdsn postgres://u:p@h:5432/db?sslmode=require\n\tpool_size 8\n\tstatement_timeout 2s\n\tlease 3s\n\tfeed_bound 1s\n\tcommit_window 2ms\n\tasync_reserve\n\tnode n1\n}",
		"postgres {\n\tpool_size -1\n}",
		"postgres {\n\tlease 0s\n}",
		"postgres a b",
		"postgres {\n\tdsn\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		d, ok := dispenser(src)
		if !ok {
			return
		}
		p := new(PostgresStorage)
		if err := p.UnmarshalCaddyfile(d); err != nil {
			return
		}
		roundTrip(t, src, p)
		if p.PoolSize < 0 || p.StatementTimeout < 0 || p.Lease < 0 || p.CommitWindow < 0 {
			t.Fatalf("%q: negative setting accepted: %+v", src, p)
		}
	})
}
