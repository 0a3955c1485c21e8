package admin

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestValidateEmail(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"alice@example.com", "alice@example.com", true},
		{"  Bob.Smith+tag@Example.ORG ", "Bob.Smith+tag@example.org", true},
		{"a@b.co", "a@b.co", true},
		{"x@sub-domain.example.io", "x@sub-domain.example.io", true},
		{"", "", false},
		{"plainaddress", "", false},
		{"@example.com", "", false},
		{"alice@", "", false},
		{"alice@localhost", "", false},
		{"Alice <alice@example.com>", "", false},
		{"alice@exa mple.com", "", false},
		{"alice@-example.com", "", false},
		{"alice@example..com", "", false},
		{"alice@example.com.", "", false},
		{"al ice@example.com", "", false},
		{"alice@example.com (comment)", "", false},
		{strings.Repeat("a", 65) + "@example.com", "", false},
		{"alice@" + strings.Repeat("a", 64) + ".com", "", false},
		{"victim\u200b@example.com", "", false},
		{"victim\u202e@example.com", "", false},
		{"victim\u00ad@example.com", "", false},
		{"vic\u2060tim@example.com", "", false},
		{"victim@exa\u200bmple.com", "", false},
		{"victim\ufeff@example.com", "", false},
		{"vic\xfftim@example.com", "", false},
		{"vic\ufffdtim@example.com", "", false},
		{"vic\u00a0tim@example.com", "", false},
		{"Victim@Example.COM", "Victim@example.com", true},
	} {
		got, err := validateEmail(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("validateEmail(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && statusOf(err) != 422 {
			t.Errorf("validateEmail(%q): status %d, want 422", tc.in, statusOf(err))
		}
	}
}

func TestValidateIPAllowlist(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string
		ok   bool
	}{
		{nil, []string{}, true},
		{[]string{"203.0.113.7"}, []string{"203.0.113.7"}, true},
		{[]string{" 10.0.0.0/8 ", "2001:db8::1"}, []string{"10.0.0.0/8", "2001:db8::1"}, true},
		{[]string{"10.1.2.3/8"}, []string{"10.0.0.0/8"}, true},
		{[]string{"2001:db8::/32"}, []string{"2001:db8::/32"}, true},
		{[]string{"::ffff:192.0.2.1"}, []string{"192.0.2.1"}, true},
		{[]string{""}, nil, false},
		{[]string{"example.com"}, nil, false},
		{[]string{"256.1.1.1"}, nil, false},
		{[]string{"10.0.0.0/33"}, nil, false},
		{[]string{"10.0.0.1-10.0.0.9"}, nil, false},
		{[]string{"fe80::1%eth0"}, nil, false},
		{[]string{"1.2.3.4", "*"}, nil, false},
	} {
		got, err := validateIPAllowlist(tc.in)
		if tc.ok != (err == nil) || (tc.ok && !slices.Equal(got, tc.want)) {
			t.Errorf("validateIPAllowlist(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && statusOf(err) != 422 {
			t.Errorf("validateIPAllowlist(%q): status %d, want 422", tc.in, statusOf(err))
		}
	}
}

func TestValidateDomains(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string
		ok   bool
	}{
		{[]string{"example.com"}, []string{"example.com"}, true},
		{[]string{"*.Example.com", "app.example.org"}, []string{"*.example.com", "app.example.org"}, true},
		{[]string{"localhost"}, []string{"localhost"}, true},
		{[]string{"127.0.0.1"}, []string{"127.0.0.1"}, true},
		{[]string{"*"}, nil, false},
		{[]string{"*.com"}, nil, false},
		{[]string{"https://example.com"}, nil, false},
		{[]string{"example.com/path"}, nil, false},
		{[]string{"example.com:8080"}, nil, false},
		{[]string{"ex ample.com"}, nil, false},
		{[]string{"*example.com"}, nil, false},
		{[]string{"a.*.example.com"}, nil, false},
		{[]string{""}, nil, false},
		{[]string{"*.127.0.0.1"}, []string{"*.127.0.0.1"}, true}, // syntactically a host name
		{[]string{"::1"}, []string{"::1"}, true},
		{[]string{"[::1]"}, []string{"::1"}, true},
		{[]string{" [2001:DB8:0:0::1] "}, []string{"2001:db8::1"}, true},
		{[]string{"2001:0db8::0001"}, []string{"2001:db8::1"}, true},
		{[]string{"[::1]:8080"}, nil, false},
		{[]string{"[127.0.0.1]"}, nil, false},
		{[]string{"fe80::1%eth0"}, nil, false},
		{[]string{"[fe80::1%eth0]"}, nil, false},
		{[]string{"*.::1"}, nil, false},
		{[]string{"[::1"}, nil, false},
		{[]string{":::"}, nil, false},
	} {
		got, err := validateDomains(tc.in)
		if tc.ok != (err == nil) || (tc.ok && !slices.Equal(got, tc.want)) {
			t.Errorf("validateDomains(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestResolveExpiration(t *testing.T) {
	now := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	i := func(v int64) *int64 { return &v }
	s := func(v string) *string { return &v }
	for _, tc := range []struct {
		name   string
		days   *int64
		date   *string
		want   *time.Time
		status int
	}{
		{"none", nil, nil, nil, 0},
		{"days", i(2), nil, ptrTime(now.Add(48 * time.Hour)), 0},
		{"zero days", i(0), nil, nil, 400},
		{"negative days", i(-1), nil, nil, 400},
		{"huge days", i(1 << 40), nil, nil, 422},
		{"date minutes away", nil, s("2026-11-25T08:05:00Z"), ptrTime(now.Add(5 * time.Minute)), 0},
		{"date with offset", nil, s("2026-11-25T10:00:00+02:00"), nil, 422}, // = 08:00Z, not after now
		{"date offset future", nil, s("2026-11-25T11:00:00+02:00"), ptrTime(now.Add(time.Hour)), 0},
		{"past date", nil, s("2020-01-01T00:00:00Z"), nil, 422},
		{"no zone", nil, s("2030-01-01T00:00:00"), nil, 422},
		{"garbage", nil, s("tomorrow"), nil, 422},
		{"both", i(1), s("2030-01-01T00:00:00Z"), nil, 422},
	} {
		got, err := resolveExpiration(tc.days, tc.date, now)
		if statusOf(err) != tc.status {
			t.Errorf("%s: status %d (%v), want %d", tc.name, statusOf(err), err, tc.status)
			continue
		}
		if (got == nil) != (tc.want == nil) || (got != nil && !got.Equal(*tc.want)) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func ptrTime(t time.Time) *time.Time { return &t }

func TestParseTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2026-11-25T08:00:00Z", time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC), true},
		{"2026-11-25T10:00:00+02:00", time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC), true},
		{"2026-11-25T08:00:00.123456", time.Date(2026, 11, 25, 8, 0, 0, 123456000, time.UTC), true},
		{"2026-11-25", time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), true},
		{"25/11/2026", time.Time{}, false},
		{"", time.Time{}, false},
	} {
		got, ok := parseTime(tc.in)
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("parseTime(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestValidateEnvironmentAndScopes(t *testing.T) {
	for _, env := range []string{"live", "test", "staging", "development"} {
		if err := validateEnvironment(env); err != nil {
			t.Errorf("environment %q refused: %v", env, err)
		}
	}
	for _, env := range []string{"", "dev", "prod", "LIVE"} {
		if statusOf(validateEnvironment(env)) != 400 {
			t.Errorf("environment %q: want 400", env)
		}
	}
	if _, err := validateScopes(scopeInput{"read": {"api_keys"}, "write": {"*"}}); err != nil {
		t.Errorf("valid scopes refused: %v", err)
	}
	if statusOf(func() error { _, err := validateScopes(scopeInput{"delete": {"*"}}); return err }()) != 422 {
		t.Error("unknown permission: want 422")
	}
	if statusOf(func() error { _, err := validateScopes(scopeInput{"read": {""}}); return err }()) != 422 {
		t.Error("empty resource: want 422")
	}
}

func TestDecodeBody(t *testing.T) {
	type body struct {
		Credits *int64   `json:"credits"`
		Name    *string  `json:"name"`
		List    []string `json:"list"`
	}
	for _, tc := range []struct {
		in     string
		status int
		detail string
	}{
		{`{"credits": 5, "name": "x"}`, 0, ""},
		{`{"credits": 1.5}`, 422, `Field "credits" must be an integer`},
		{`{"credits": "5"}`, 422, `Field "credits" must be an integer`},
		{`{"credits": 1e3}`, 422, `Field "credits" must be an integer`},
		{`{"name": 5}`, 422, `Field "name" must be a string`},
		{`{"list": "a"}`, 422, `Field "list" must be a list of strings`},
		{`{"credits": 5`, 422, "Malformed JSON"},
		{`{"credits": 5} {}`, 422, "single JSON object"},
		{`{"credits": 5, "extra": 1}`, 422, `Unknown field "extra"`},
		{`[1,2]`, 422, "JSON object"},
		{`null`, 0, ""},
		{``, 422, "required"},
		{`   `, 422, "required"},
		{`not json`, 422, "Malformed JSON"},
		{`{"credits": 99999999999999999999}`, 422, `Field "credits" must be an integer`},
		{"{\"name\": \"bad\xffutf8\"}", 422, "valid UTF-8"},
		{"{\"name\": \"ok\"}\xc3", 422, "valid UTF-8"},
	} {
		var b body
		err := decodeBody([]byte(tc.in), &b)
		if statusOf(err) != tc.status {
			t.Errorf("decodeBody(%q): status %d (%v), want %d", tc.in, statusOf(err), err, tc.status)
			continue
		}
		if tc.detail != "" && !strings.Contains(err.Error(), tc.detail) {
			t.Errorf("decodeBody(%q): detail %q lacks %q", tc.in, err.Error(), tc.detail)
		}
	}
}

// Fields promoted from embedded structs are named as the client sent
// them, never by the Go name of the struct they come from.
func TestDecodeBodyNamesJSONFields(t *testing.T) {
	for _, tc := range []struct {
		dst    any
		in     string
		detail string
	}{
		{&addCreditsRequest{}, `{"user_id": "7", "credits": 1}`, `Field "user_id" must be an integer`},
		{&addCreditsRequest{}, `{"user_id": 1e40}`, `Field "user_id" must be an integer`},
		{&setLimitsRequest{}, `{"user_id": 1.5}`, `Field "user_id" must be an integer`},
		{&setLimitsRequest{}, `{"api_key": 5}`, `Field "api_key" must be a string`},
		{&setLimitsRequest{}, `{"rate_limits": {"requests_per_minute": "x"}}`, `Field "rate_limits.requests_per_minute" must be an integer`},
	} {
		err := decodeBody([]byte(tc.in), tc.dst)
		if statusOf(err) != 422 || err.Error() != tc.detail {
			t.Errorf("decodeBody(%s) into %T: %v, want 422 %q", tc.in, tc.dst, err, tc.detail)
		}
	}
}

func TestDecodeJSONTooLarge(t *testing.T) {
	h := &Handler{MaxBodyBytes: 16}
	r := httptest.NewRequest("POST", "/x", strings.NewReader(`{"name":"`+strings.Repeat("a", 64)+`"}`))
	var v struct {
		Name string `json:"name"`
	}
	err := h.decodeJSON(httptest.NewRecorder(), r, &v)
	if statusOf(err) != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: status %d (%v), want 413", statusOf(err), err)
	}
}

func TestPlanUsageWindows(t *testing.T) {
	now := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	recs := []storageUsage{
		{now.Add(-time.Hour), 10},                              // today
		{time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), 20},    // today, at midnight
		{time.Date(2026, 11, 24, 23, 59, 0, 0, time.UTC), 40},  // this month
		{time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), 80},     // this month, first instant
		{time.Date(2026, 10, 31, 23, 59, 0, 0, time.UTC), 160}, // last month
	}
	day, month := planUsage(rowsOf(toRecords(recs)), now)
	if day.Requests != 2 || day.Tokens != 30 || month.Requests != 4 || month.Tokens != 150 {
		t.Fatalf("day %+v month %+v", day, month)
	}
}

type storageUsage struct {
	at     time.Time
	tokens int64
}

func toRecords(in []storageUsage) []storage.UsageRecord {
	out := make([]storage.UsageRecord, 0, len(in))
	for _, u := range in {
		out = append(out, storage.UsageRecord{Time: u.at, TotalTokens: u.tokens, Credits: u.tokens})
	}
	return out
}

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		status   int
	}{
		{"  my key  ", "my key", 0},
		{"café ☕ 名前", "café ☕ 名前", 0},
		{strings.Repeat("é", 100), strings.Repeat("é", 100), 0},
		{strings.Repeat("é", 101), "", 422},
		{"", "", 422},
		{" \t ", "", 422},
		{"a\x00b", "", 422},
		{"line\nbreak", "", 422},
		{"trailing\n", "", 422},
		{"tab\there", "", 422},
		{"esc\x1b[31mred", "", 422},
		{"del\x7f", "", 422},
		{"c1\u0085x", "", 422},
		{"c1\u009bx", "", 422},
		{"rtl\u202eevil", "", 422},
		{"lre\u202ax", "", 422},
		{"iso\u2066x", "", 422},
		{"pdi\u2069x", "", 422},
		{"zero\u200bwidth", "", 422},
		{"zwj\u200dx", "", 422},
		{"wj\u2060x", "", 422},
		{"bom\ufeffx", "", 422},
		{"bad\xffutf8", "", 422},
		{"half\xc3", "", 422},
		{"replacement\ufffdchar", "", 422},
	} {
		got, err := validateName("key_name", tc.in)
		if statusOf(err) != tc.status || got != tc.want {
			t.Errorf("validateName(%q) = %q, %v; want %q status %d", tc.in, got, err, tc.want, tc.status)
		}
		if err != nil && !strings.Contains(err.Error(), "key_name") {
			t.Errorf("validateName(%q) error %q does not name the field", tc.in, err)
		}
	}
}
