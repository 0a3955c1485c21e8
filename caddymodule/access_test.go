package caddymodule

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func TestIPAllowlist(t *testing.T) {
	tests := []struct {
		name       string
		entries    []string
		ip         string
		restricted bool
		want       bool
	}{
		{"exact v4", []string{"203.0.113.7"}, "203.0.113.7", true, true},
		{"exact v4 other", []string{"203.0.113.7"}, "203.0.113.8", true, false},
		{"cidr v4 inside", []string{"10.0.0.0/8"}, "10.200.3.4", true, true},
		{"cidr v4 outside", []string{"10.0.0.0/8"}, "11.0.0.1", true, false},
		{"cidr v4 unmasked host bits", []string{"192.168.1.77/24"}, "192.168.1.3", true, true},
		{"exact v6", []string{"2001:db8::1"}, "2001:db8::1", true, true},
		{"exact v6 other", []string{"2001:db8::1"}, "2001:db8::2", true, false},
		{"cidr v6 inside", []string{"2001:db8::/32"}, "2001:db8:ffff::9", true, true},
		{"cidr v6 outside", []string{"2001:db8::/32"}, "2001:db9::1", true, false},
		{"v4-mapped client", []string{"198.51.100.0/24"}, "::ffff:198.51.100.20", true, true},
		{"v4-mapped entry", []string{"::ffff:198.51.100.20"}, "198.51.100.20", true, true},
		{"v4-mapped cidr entry", []string{"::ffff:198.51.100.0/120"}, "198.51.100.9", true, true},
		{"v4 entry does not match v6", []string{"127.0.0.1"}, "::1", true, false},
		{"zone ignored", []string{"fe80::1"}, "fe80::1%eth0", true, true},
		{"several entries", []string{"1.2.3.4", "10.0.0.0/8", "2001:db8::/32"}, "2001:db8::5", true, true},
		{"blank entries ignored", []string{"", "  "}, "1.2.3.4", false, false},
		{"garbage entry matches nothing", []string{"not-an-ip"}, "1.2.3.4", true, false},
		{"no substring match", []string{"1.2.3.4"}, "11.2.3.45", true, false},
		{"unparsable client", []string{"0.0.0.0/0"}, "", true, false},
		{"any v4", []string{"0.0.0.0/0"}, "8.8.8.8", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			allow, restricted := parseAllowlist(tt.entries)
			if restricted != tt.restricted {
				t.Fatalf("restricted = %v, want %v", restricted, tt.restricted)
			}
			if got := ipAllowed(allow, tt.ip); got != tt.want {
				t.Errorf("ipAllowed(%v, %q) = %v, want %v", tt.entries, tt.ip, got, tt.want)
			}
		})
	}
}

func TestReferrerRules(t *testing.T) {
	tests := []struct {
		name  string
		rules []string
		host  string
		want  bool
	}{
		{"exact", []string{"example.com"}, "example.com", true},
		{"exact case-insensitive rule", []string{"Example.COM"}, "example.com", true},
		{"exact does not match subdomain", []string{"example.com"}, "app.example.com", false},
		{"wildcard subdomain", []string{"*.example.com"}, "app.example.com", true},
		{"wildcard deep subdomain", []string{"*.example.com"}, "a.b.example.com", true},
		{"wildcard not apex", []string{"*.example.com"}, "example.com", false},
		{"no substring (suffix)", []string{"example.com"}, "evilexample.com", false},
		{"no substring (wildcard)", []string{"*.example.com"}, "evilexample.com", false},
		{"no substring (prefix)", []string{"example.com"}, "example.com.evil.net", false},
		{"rule with scheme and path", []string{"https://example.com/app"}, "example.com", true},
		{"rule with port", []string{"example.com:8443"}, "example.com", true},
		{"trailing dot", []string{"example.com."}, "example.com", true},
		{"empty host", []string{"example.com"}, "", false},
		{"second rule", []string{"a.test", "*.b.test"}, "x.b.test", true},
		{"ipv6 bare", []string{"::1"}, "::1", true},
		{"ipv6 bracketed", []string{"[::1]"}, "::1", true},
		{"ipv6 bracketed with port", []string{"[::1]:8080"}, "::1", true},
		{"ipv6 with scheme and port", []string{"http://[2001:DB8::1]:8443/app"}, "2001:db8::1", true},
		{"ipv6 non-canonical rule", []string{"2001:0db8:0:0:0:0:0:1"}, "2001:db8::1", true},
		{"ipv6 other address", []string{"::1"}, "::2", false},
		{"ipv6 rule is not a port-stripped ':'", []string{"::1"}, ":", false},
		{"ipv6 zone refused", []string{"fe80::1%eth0"}, "fe80::1", false},
		{"ipv6 unclosed bracket", []string{"[::1"}, "::1", false},
		{"ipv6 garbage", []string{"::g::"}, "::g::", false},
		{"ipv4 literal", []string{"127.0.0.1"}, "127.0.0.1", true},
		{"ipv4 literal with port", []string{"127.0.0.1:8080"}, "127.0.0.1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules := normalizeReferrerRules(tt.rules)
			if got := referrerAllowed(rules, tt.host); got != tt.want {
				t.Errorf("referrerAllowed(%v, %q) = %v, want %v", rules, tt.host, got, tt.want)
			}
		})
	}
	if normalizeReferrerRules(nil) != nil || normalizeReferrerRules([]string{""}) != nil {
		t.Error("no rules must mean unrestricted (nil)")
	}
	if r := normalizeReferrerRules([]string{"*."}); referrerAllowed(r, "example.com") {
		t.Error("a degenerate rule must match nothing")
	}
}

func TestRequestOriginHost(t *testing.T) {
	tests := []struct {
		name            string
		origin, referer string
		want            string
	}{
		{"origin wins", "https://App.Example.com:8443", "https://other.test/page", "app.example.com"},
		{"referer when no origin", "", "https://docs.example.com/a/b?c", "docs.example.com"},
		{"null origin falls back", "null", "https://x.test/", "x.test"},
		{"neither", "", "", ""},
		{"unparsable", "::::", "", ""},
		{"no host", "", "/relative/path", ""},
		{"ipv6 host", "http://[2001:db8::1]:80", "", "2001:db8::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
			if tt.origin != "" {
				r.Header.Set("Origin", tt.origin)
			}
			if tt.referer != "" {
				r.Header.Set("Referer", tt.referer)
			}
			if got := requestOriginHost(r); got != tt.want {
				t.Errorf("requestOriginHost = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCheckAccessOrder(t *testing.T) {
	max := int64(3)
	k := &storage.APIKey{
		ID: 1, UserID: 1, IsActive: true, MaxRequests: &max, RequestsUsed: 3,
		IPAllowlist: []string{"10.0.0.0/8"}, DomainReferrers: []string{"example.com"},
		Scopes: storage.Scopes{"read": {"*"}},
	}
	r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
	check := func(ip string) (*gatewayError, string) {
		return checkAccess(newKeyEntry(k, &storage.User{ID: 1}), r, ip, true)
	}
	if e, _ := check("10.1.1.1"); e != errKeyRequestLimit {
		t.Fatalf("request cap first: got %v", e)
	}
	k.RequestsUsed = 2
	if e, a := check("192.0.2.1"); e != errIPNotAllowed || a != auditIPDenied {
		t.Fatalf("ip next: got %v %q", e, a)
	}
	if e, a := check("10.1.1.1"); e != errDomainNotAllow || a != auditReferrerDenied {
		t.Fatalf("restricted key without Origin/Referer: got %v %q", e, a)
	}
	r.Header.Set("Referer", "https://example.com/x")
	if e, a := check("10.1.1.1"); e != errNoInference || a != "" {
		t.Fatalf("scope last: got %v %q", e, a)
	}
	if e, _ := checkAccess(newKeyEntry(k, &storage.User{ID: 1}), r, "10.1.1.1", false); e != nil {
		t.Fatalf("free routes need no inference scope: got %v", e)
	}
	k.Scopes = storage.Scopes{"write": {"chat"}}
	if e, _ := check("10.1.1.1"); e != nil {
		t.Fatalf("write/chat allows inference: got %v", e)
	}
	k.Scopes = storage.Scopes{"write": {"*"}}
	if e, _ := check("10.1.1.1"); e != nil {
		t.Fatalf("write/* allows inference: got %v", e)
	}
	for _, narrowest := range []storage.Scopes{nil, {}, {"write": {}}} {
		k.Scopes = narrowest
		if e, _ := check("10.1.1.1"); e != errNoInference {
			t.Fatalf("scope %v allows inference: got %v", narrowest, e)
		}
	}
}

func TestCheckNetworkAccess(t *testing.T) {
	e := newTestEnv(t, nil)
	plain, _ := e.newKey(t, "", func(k *storage.APIKey) {
		k.IPAllowlist = []string{"10.0.0.0/8", "::1"}
		k.DomainReferrers = []string{"app.example.com", "[::1]"}
	})
	id, err := e.app.Authenticate(plain)
	if err != nil {
		t.Fatal(err)
	}
	req := func(remoteAddr, clientIP, origin string) *http.Request {
		r := httptest.NewRequest("GET", "/user/api-keys", nil)
		r.RemoteAddr = remoteAddr
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), httptest.NewRecorder(), &caddyhttp.Server{})
		if clientIP != "" {
			caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, clientIP)
		}
		return r
	}
	for _, tt := range []struct {
		name                         string
		remoteAddr, clientIP, origin string
		want                         error
	}{
		{"allowed ip and origin", "10.1.2.3:5000", "10.1.2.3", "https://app.example.com", nil},
		{"ipv6 ip and origin", "[::1]:5000", "::1", "http://[::1]:8080", nil},
		{"foreign ip", "192.0.2.1:5000", "192.0.2.1", "https://app.example.com", ErrIPNotAllowed},
		{"client ip wins over peer (trusted proxy)", "10.1.2.3:5000", "192.0.2.1", "https://app.example.com", ErrIPNotAllowed},
		{"peer address outside Caddy", "10.9.9.9:5000", "", "https://app.example.com", nil},
		{"ip checked before referrer", "192.0.2.1:5000", "192.0.2.1", "", ErrIPNotAllowed},
		{"no origin", "10.1.2.3:5000", "10.1.2.3", "", ErrDomainNotAllowed},
		{"foreign origin", "10.1.2.3:5000", "10.1.2.3", "https://evil.example.com", ErrDomainNotAllowed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := e.app.CheckNetworkAccess(req(tt.remoteAddr, tt.clientIP, tt.origin), id); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("CheckNetworkAccess = %v, want %v", err, tt.want)
			}
		})
	}
	// An identity that is not the index's own (a copy, or one whose entry
	// was replaced) still gets its key's rules.
	k2 := *id.Key
	stale := Identity{Key: &k2, User: id.User}
	if err := e.app.CheckNetworkAccess(req("192.0.2.1:5000", "192.0.2.1", "https://app.example.com"), &stale); !errors.Is(err, ErrIPNotAllowed) {
		t.Fatalf("stale identity: %v", err)
	}
	if err := e.app.CheckNetworkAccess(req("10.1.2.3:5000", "10.1.2.3", ""), nil); err == nil {
		t.Fatal("nil identity allowed")
	}
}
