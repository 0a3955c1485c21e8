package caddymodule

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Fuzz targets of the Caddyfile parsers: the `gatewayz` handler directive
// and the `gatewayz` global option. Whatever the tokens, parsing returns a
// config or an error (never panics), and an accepted config survives the
// JSON round trip Caddy makes (adapt, then load) unchanged. Seed corpora
// live in testdata/fuzz/<Name>/.

// dispenser tokenizes src the way Caddy does; ok is false when the
// tokenizer itself refuses the text (caddyfile.NewTestDispenser would exit
// the process on that).
func dispenser(src string) (*caddyfile.Dispenser, bool) {
	tokens, err := caddyfile.Tokenize([]byte(src), "Caddyfile")
	if err != nil {
		return nil, false
	}
	return caddyfile.NewDispenser(tokens), true
}

// roundTrip checks that v's JSON decodes (strictly, as Caddy loads module
// configs) into an equal value.
func roundTrip[T any](t *testing.T, src string, v *T) {
	t.Helper()
	js, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%q: parsed config does not marshal: %v", src, err)
	}
	back := new(T)
	dec := json.NewDecoder(bytesReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(back); err != nil {
		t.Fatalf("%q: config JSON %s does not load back: %v", src, js, err)
	}
	js2, _ := json.Marshal(back)
	if string(js) != string(js2) {
		t.Fatalf("%q: JSON round trip changed the config:\n%s\n%s", src, js, js2)
	}
}

func FuzzGatewayDirective(f *testing.F) {
	for _, s := range []string{
		"gatewayz",
		"gatewayz {\n}",
		"gatewayz {\n\tmax_body_size 8MiB\n\tfree_paths /v1/files* /v1/batches\n}",
		"gatewayz {\n\tlimits {\n\t\trequests_per_minute 60\n\t\ttokens_per_day 100000\n\t}\n}",
		"gatewayz {\n\tdefault_max_tokens 1024\n\tmin_completion_tokens 16\n\tlower_max_tokens on\n\tmax_tokens_field max_completion_tokens\n}",
		"gatewayz {\n\tembeddings_reserve_percent 120\n\tmax_response_buffer 32MiB\n\tsettle_timeout 10s\n}",
		"gatewayz {\n\tlower_max_tokens off\n}",
		"gatewayz {\n\tcredit_wait 0\n}",
		"gatewayz {\n\tcredit_wait 1m30s\n}",
		"gatewayz {\n\tcredit_wait -2s\n}",
		"gatewayz arg",
		"gatewayz {\n\tmax_body_size -1\n}",
		"gatewayz {\n\tlimits extra {\n\t}\n}",
		"gatewayz {\n\tlimits {\n\t\trequests_per_minute -5\n\t}\n}",
		"gatewayz {\n\tunknown 1\n}",
		"gatewayz {\n\tfree_paths\n}",
		"gatewayz {\n\tsettle_timeout forever\n}",
		"gatewayz {\n\tmax_tokens_field\n}",
		"gatewayz {\n\tlimits {\n\t\trequests_per_minute 99999999999999999999\n\t}\n}",
		"gatewayz {\n\tdefault_max_tokens 1 2\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		d, ok := dispenser(src)
		if !ok {
			return
		}
		g := new(Gateway)
		if err := g.UnmarshalCaddyfile(d); err != nil {
			return
		}
		roundTrip(t, src, g)
		// Parsing is deterministic.
		d2, _ := dispenser(src)
		g2 := new(Gateway)
		if err := g2.UnmarshalCaddyfile(d2); err != nil || !reflect.DeepEqual(g, g2) {
			t.Fatalf("%q parsed twice differently: %v", src, err)
		}
		// A parsed config is either valid or refused by Validate with an
		// error; no negative limits slip through either way.
		if err := g.Validate(); err == nil {
			l := g.Limits
			for _, v := range []int64{l.RequestsPerMinute, l.RequestsPerHour, l.RequestsPerDay, l.TokensPerMinute, l.TokensPerHour, l.TokensPerDay} {
				if v < 0 {
					t.Fatalf("%q: negative limit accepted: %+v", src, l)
				}
			}
			if g.MaxBodySize < 0 {
				t.Fatalf("%q: negative max_body_size accepted", src)
			}
		}
	})
}

func FuzzGlobalOption(f *testing.F) {
	for _, s := range []string{
		"gatewayz",
		"gatewayz {\n\tdb_path {env.GATEWAYZ_DB}\n\tsecret {env.GATEWAYZ_SECRET}\n\tadmin_key {env.GATEWAYZ_ADMIN_KEY}\n\tsignup_credits {env.GATEWAYZ_SIGNUP_CREDITS}\n}",
		"gatewayz {\n\tsignup_credits 500\n\trotation_grace 1h\n\tusage_retention 720h\n\tusage_detail_retention 24h\n}",
		"gatewayz {\n\tstorage bolt {\n\t\tpath {env.GATEWAYZ_DB}\n\t\tcommit_window 2ms\n\t\tlock_timeout 1s\n\t\tno_sync\n\t}\n}",
		"gatewayz {\n\tstorage bolt /data/gw.db\n\tdatabase_url {env.GATEWAYZ_DATABASE_URL}\n}",
		"gatewayz {\n\tnegative_cache_size 100\n\tsecurity_audit_per_minute 3\n\ttrial_models gpt-4o-mini* llama-*\n}",
		"gatewayz {\n\tdefault_limits {\n\t\trequests_per_minute 60\n\t\ttokens_per_hour 50000\n\t}\n}",
		"gatewayz {\n\tprice gpt-4o* 2500 10000\n\tprice * 1000 1000\n}",
		"gatewayz {\n\tsignup_credits -1\n}",
		"gatewayz {\n\tsignup_credits {env.X\n}",
		"gatewayz {\n\tprice [ 1 1\n}",
		"gatewayz {\n\tprice m -1 5\n}",
		"gatewayz {\n\tno_sync\n}",
		"gatewayz {\n\tstorage bolt {\n\t\tno_sync yes\n\t}\n}",
		"gatewayz {\n\tstorage bolt {\n\t\tcommit_window -2ms\n\t}\n}",
		"gatewayz {\n\tstorage nosuch\n}",
		"gatewayz {\n\tstorage\n}",
		"gatewayz {\n\ttrial_models\n}",
		"gatewayz {\n\tdefault_limits {\n\t\ttokens_per_day x\n\t}\n}",
		"gatewayz {\n\tdb_path\n}",
		"gatewayz extra",
		"gatewayz {\n\twebhook {\n\t\turl https://hooks.example.com/\n\t\tsecret {env.S}\n\t\tevents balance.low\n\t}\n}",
		"gatewayz {\n\twebhook https://x/ {\n\t\tsecret {env.S}\n\t}\n\talerts {\n\t\tallow_http\n\t\tretry_base 1s\n\t\tlow_balance_threshold 5\n\t}\n}",
		"gatewayz {\n\twebhook {\n\t\tsecret plain\n\t}\n}",
		"gatewayz {\n\talerts {\n\t\tsecurity_burst -1\n\t}\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		d, ok := dispenser(src)
		if !ok {
			return
		}
		a := new(App)
		if err := a.UnmarshalCaddyfile(d); err != nil {
			return
		}
		roundTrip(t, src, a)
		for _, p := range a.Prices {
			if p.PromptPer1K < 0 || p.CompletionPer1K < 0 || validateGlob(p.Model) != nil {
				t.Fatalf("%q: bad price accepted: %+v", src, p)
			}
		}
		for _, m := range a.TrialModels {
			if validateGlob(m) != nil {
				t.Fatalf("%q: bad trial model glob accepted: %q", src, m)
			}
		}
		var bolt BoltStorage
		if a.StorageRaw != nil {
			if err := json.Unmarshal(a.StorageRaw, &struct {
				Backend string `json:"backend"`
				*BoltStorage
			}{BoltStorage: &bolt}); err != nil {
				t.Fatalf("%q: storage JSON %s: %v", src, a.StorageRaw, err)
			}
		}
		for _, v := range []int64{int64(a.RotationGracePeriod), int64(a.UsageRetention), int64(a.UsageDetailRetention), int64(bolt.CommitWindow), int64(bolt.LockTimeout)} {
			if v < 0 {
				t.Fatalf("%q: negative duration accepted", src)
			}
		}
		if validateLimits(a.DefaultLimits) != nil {
			t.Fatalf("%q: bad default_limits accepted: %+v", src, a.DefaultLimits)
		}
		// The global option's adapter result is the app JSON.
		if _, err := parseGlobalOption(mustDispenser(t, src), nil); err != nil {
			t.Fatalf("%q: UnmarshalCaddyfile accepted it but the global option did not: %v", src, err)
		}
	})
}

func mustDispenser(t *testing.T, src string) *caddyfile.Dispenser {
	d, ok := dispenser(src)
	if !ok {
		t.Fatalf("%q no longer tokenizes", src)
	}
	return d
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
