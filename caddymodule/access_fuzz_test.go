package caddymodule

import (
	"net"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

// Fuzz targets of the access matchers: the IP allowlist and the referrer
// domains. Seed corpora live in testdata/fuzz/<Name>/.

// oracleIPAllowed is an independent implementation of the allowlist
// semantics on the net package: exact IPs and CIDRs, v4 and v6, an
// IPv4-mapped IPv6 address equal to its IPv4 form, zones ignored. ok is
// false when net and netip disagree on whether an input parses (the
// oracle has nothing to say then).
func oracleIPAllowed(entries []string, client string) (allowed, ok bool) {
	stripZone := func(s string) string {
		if i := strings.IndexByte(s, '%'); i >= 0 {
			return s[:i]
		}
		return s
	}
	_, errNetip := netip.ParseAddr(client)
	ip := net.ParseIP(stripZone(client))
	if (errNetip == nil) != (ip != nil) {
		return false, false
	}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if strings.Contains(e, "/") {
			_, errNetip := netip.ParsePrefix(e)
			_, n, err := net.ParseCIDR(e)
			if (errNetip == nil) != (err == nil) {
				return false, false
			}
			if err == nil && ip != nil && n.Contains(ip) {
				allowed = true
			}
			continue
		}
		_, errNetip := netip.ParseAddr(e)
		eip := net.ParseIP(stripZone(e))
		if (errNetip == nil) != (eip != nil) {
			return false, false
		}
		if eip != nil && ip != nil && eip.Equal(ip) {
			allowed = true
		}
	}
	return allowed, true
}

func FuzzIPAllowlist(f *testing.F) {
	for _, s := range [][2]string{
		{"203.0.113.7", "203.0.113.7"},
		{"203.0.113.7", "203.0.113.8"},
		{"10.0.0.0/8,192.168.1.0/24", "10.200.3.4"},
		{"10.0.0.0/8", "::ffff:10.1.2.3"},
		{"::ffff:10.0.0.0/104", "10.1.2.3"},
		{"2001:db8::/32", "2001:db8:1::5"},
		{"2001:db8::1", "2001:DB8:0:0:0:0:0:1"},
		{"fe80::1%eth0", "fe80::1"},
		{"::/0", "1.2.3.4"},
		{"0.0.0.0/0", "::1"},
		{"", "1.2.3.4"},
		{" , ,", "1.2.3.4"},
		{"not-an-ip, 1.2.3.4/33", "1.2.3.4"},
		{"1.2.3.4", "1.2.3.4:80"},
		{"1.2.3.4", ""},
		{"01.2.3.4", "1.2.3.4"},
		{"1.2.3.4/32", "1.2.3.4%x"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, list, client string) {
		entries := strings.Split(list, ",")
		allow, restricted := parseAllowlist(entries)
		nonBlank := false
		for _, e := range entries {
			if strings.TrimSpace(e) != "" {
				nonBlank = true
			}
		}
		if restricted != nonBlank {
			t.Fatalf("restricted=%v for entries %q", restricted, entries)
		}
		got := ipAllowed(allow, client)
		if _, err := netip.ParseAddr(client); err != nil && got {
			t.Fatalf("unparsable client IP %q allowed by %q", client, entries)
		}
		if want, ok := oracleIPAllowed(entries, client); ok && got != want {
			t.Fatalf("ipAllowed(%q, %q) = %v, the net package says %v", entries, client, got, want)
		}
		// More entries never take permission away.
		more, _ := parseAllowlist(append(entries, "192.0.2.1", "2001:db8::/48"))
		if got && !ipAllowed(more, client) {
			t.Fatalf("adding entries to %q refused %q", entries, client)
		}
		// An address is allowed by an allowlist holding exactly it.
		if a, err := netip.ParseAddr(client); err == nil {
			exact, _ := parseAllowlist([]string{a.WithZone("").String()})
			if !ipAllowed(exact, client) {
				t.Fatalf("%q not allowed by its own exact entry", client)
			}
			// The IPv4 and IPv4-mapped IPv6 forms are the same client.
			if a.Is4() {
				mapped := netip.AddrFrom16(a.As16()).String()
				if ipAllowed(allow, mapped) != got {
					t.Fatalf("%q and %q disagree under %q", client, mapped, entries)
				}
			}
		}
	})
}

// oracleHost is the host of an absolute URL by net/url, lower-cased and
// without a trailing dot; ok is false when net/url cannot say (it refuses
// the input, or unescapes what the gateway keeps as is).
func oracleHost(raw string) (string, bool) {
	if strings.ContainsAny(raw, "%\\") {
		return "", false
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] >= 0x80 { // non-ASCII hosts: compared as given, no oracle
			return "", false
		}
	}
	i := strings.Index(raw, "://")
	if i <= 0 {
		return "", false
	}
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" || !strings.EqualFold(u.Scheme, raw[:i]) {
		return "", false
	}
	return strings.TrimSuffix(asciiLower(u.Hostname()), "."), true
}

// asciiLower lower-cases A-Z only (host names are compared as bytes).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func FuzzReferrerMatch(f *testing.F) {
	for _, s := range [][4]string{
		{"example.com", "https://example.com", "", "1"},
		{"example.com", "https://evil-example.com", "", "0"},
		{"example.com", "", "https://example.com.evil.net/page", "0"},
		{"*.example.com", "https://api.example.com:8443", "", "1"},
		{"*.example.com", "https://example.com", "", "0"},
		{"*.example.com", "https://a.b.example.com.", "", "1"},
		{"https://Example.COM/path", "HTTPS://EXAMPLE.com/", "", "1"},
		{"example.com", "null", "https://example.com/x?y#z", "1"},
		{"example.com", "https://user:pw@example.com@evil.net/", "", "0"},
		{"example.com", "https://evil.net/?next=https://example.com", "", "0"},
		{"[::1]", "http://[::1]:8080/", "", "1"},
		{"*.", "https://anything.com", "", "0"},
		{"", "https://example.com", "", "0"},
		{"example.com", "", "", "0"},
		{"example.com:443", "https://example.com", "", "1"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, rulesList, origin, referer string) {
		rules := normalizeReferrerRules(strings.Split(rulesList, ","))
		for _, r := range rules {
			if r != asciiLower(r) {
				t.Fatalf("rule %q not lower-cased", r)
			}
		}
		if h := hostOf(origin); h != "" {
			if want, ok := oracleHost(origin); ok && h != want {
				t.Fatalf("hostOf(%q) = %q, net/url says %q", origin, h, want)
			}
		}
		req := httptest.NewRequest("GET", "http://gateway.test/v1/models", nil)
		for name, v := range map[string]string{"Origin": origin, "Referer": referer} {
			if v != "" {
				req.Header[name] = []string{v}
			}
		}
		host := requestOriginHost(req)
		if origin != "" && origin != "null" && host != hostOf(origin) {
			t.Fatalf("Origin %q present but the host came from elsewhere: %q", origin, host)
		}
		if !referrerAllowed(rules, host) {
			return
		}
		// Allowed: by an exact rule, or a wildcard whose suffix the host
		// has with at least one more label character. Never a substring.
		for _, r := range rules {
			if r == host {
				return
			}
			if strings.HasPrefix(r, "*.") && len(host) > len(r)-1 && strings.HasSuffix(host, r[1:]) {
				return
			}
		}
		t.Fatalf("host %q allowed by %q without an exact or wildcard match", host, rules)
	})
}
