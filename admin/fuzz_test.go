package admin

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Fuzz targets of the management API's pure input handling: the one JSON
// decoder every endpoint uses, and the validators of the key restrictions.
// Seed corpora live in testdata/fuzz/<Name>/.

// FuzzDecodeBody: any body decodes into the request types or is refused
// with a 422 that echoes no input; nothing panics.
func FuzzDecodeBody(f *testing.F) {
	for _, s := range []string{
		`{"key_name":"k","environment_tag":"live","scope_permissions":{"read":["*"],"write":"chat"},"expiration_days":3,"max_requests":10,"ip_allowlist":["10.0.0.0/8"],"domain_referrers":["*.example.com"]}`,
		`{"key_name":"k"}{"key_name":"x"}`,
		`{"key_name":null}`,
		`{"max_requests":1.5}`,
		`{"max_requests":99999999999999999999}`,
		`{"scope_permissions":{"read":[1]}}`,
		`{"scope_permissions":[]}`,
		`{"unknown":1}`,
		`[]`, `null`, ``, `{`, "\xff", `{"key_name":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req createKeyRequest
		err := decodeBody(body, &req)
		if err == nil {
			if !json.Valid(body) {
				t.Fatalf("accepted invalid JSON %q", body)
			}
			if _, err := validateScopesInput(req.ScopePerms); err != nil && !isAPIError(err) {
				t.Fatalf("scope validation error is not an API error: %v", err)
			}
			return
		}
		var ae *apiError
		if !errors.As(err, &ae) {
			t.Fatalf("decode error %T %v is not an API error", err, err)
		}
		if ae.Status != 422 {
			t.Fatalf("decode error status %d for %q", ae.Status, body)
		}
		// The detail names a field at most: no long stretch of the input.
		if len(body) > 24 && strings.Contains(ae.Detail, string(body[:24])) {
			t.Fatalf("detail %q echoes the body", ae.Detail)
		}
	})
}

func isAPIError(err error) bool {
	var ae *apiError
	return errors.As(err, &ae)
}

// validateScopesInput validates an optional scope input.
func validateScopesInput(in *scopeInput) (any, error) {
	if in == nil {
		return nil, nil
	}
	return validateScopes(*in)
}

// FuzzValidateRestrictions: accepted ip_allowlist entries are canonical
// prefixes or addresses (validating them again changes nothing), accepted
// domain_referrers are lower-case hosts or *.hosts (likewise idempotent),
// and refusals are 422s.
func FuzzValidateRestrictions(f *testing.F) {
	for _, s := range [][2]string{
		{"10.0.0.1,10.0.0.0/8,2001:db8::/32", "example.com,*.example.org"},
		{"::ffff:1.2.3.4", "EXAMPLE.com"},
		{"10.0.0.1/8", "127.0.0.1"},
		{"fe80::1%eth0", "*.com"},
		{" 1.2.3.4 ", "*"},
		{"1.2.3.4/33", "https://example.com"},
		{"", "example.com:443"},
		{"::/0", "::1"},
		{"0.0.0.0/0", "-bad-.com"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, ips, domains string) {
		ipList := strings.Split(ips, ",")
		out, err := validateIPAllowlist(ipList)
		if err != nil {
			if ae, ok := err.(*apiError); !ok || ae.Status != 422 {
				t.Fatalf("ip_allowlist refusal %v is not a 422", err)
			}
		} else {
			for _, e := range out {
				if _, perr := netip.ParsePrefix(e); perr != nil {
					if a, aerr := netip.ParseAddr(e); aerr != nil || a.Zone() != "" {
						t.Fatalf("accepted ip_allowlist entry %q is neither a prefix nor a plain address", e)
					}
				}
			}
			again, err := validateIPAllowlist(out)
			if err != nil || !reflect.DeepEqual(again, out) {
				t.Fatalf("ip_allowlist %q not canonical: %q then %q (%v)", ipList, out, again, err)
			}
		}
		dList := strings.Split(domains, ",")
		dout, err := validateDomains(dList)
		if err != nil {
			if ae, ok := err.(*apiError); !ok || ae.Status != 422 {
				t.Fatalf("domain_referrers refusal %v is not a 422", err)
			}
			return
		}
		for _, d := range dout {
			if d == "" || d != strings.ToLower(d) || !utf8.ValidString(d) ||
				strings.ContainsAny(d, "/?#@ \t\r\n") || strings.Contains(d, "://") || d == "*" {
				t.Fatalf("accepted domain_referrers entry %q", d)
			}
		}
		again, err := validateDomains(dout)
		if err != nil || !reflect.DeepEqual(again, dout) {
			t.Fatalf("domain_referrers %q not canonical: %q then %q (%v)", dList, dout, again, err)
		}
	})
}

// FuzzBudgetInput: spend_limit and spend_limit_reset decode into a budget
// with a non-negative limit and a known period, or are refused with a 422;
// nothing panics.
func FuzzBudgetInput(f *testing.F) {
	for _, s := range []string{
		`{"spend_limit":100,"spend_limit_reset":"monthly"}`, `{"spend_limit":null}`, `{"spend_limit":0}`,
		`{"spend_limit":-1}`, `{"spend_limit":1.5}`, `{"spend_limit":1e2}`, `{"spend_limit":"7"}`,
		`{"spend_limit":99999999999999999999}`, `{"spend_limit":-0}`, `{"spend_limit_reset":"hourly"}`,
		`{"spend_limit_reset":""}`, `{"spend_limit_reset":null}`, `{"spend_limit": 5 }`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req setLimitsRequest
		err := decodeBody(body, &req)
		if err == nil {
			var b storage.Budget
			if b, err = req.budget(storage.Budget{}); err == nil {
				if b.Limit != nil && *b.Limit < 0 {
					t.Fatalf("%q: negative limit %d", body, *b.Limit)
				}
				if _, perr := storage.ParseBudgetReset(string(b.Reset)); perr != nil || b.Reset == "" {
					t.Fatalf("%q: period %q", body, b.Reset)
				}
				return
			}
		}
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != 422 && ae.Status != 413 {
			t.Fatalf("%q: %v", body, err)
		}
	})
}
