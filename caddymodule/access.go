package caddymodule

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Access control of a known, usable key: request cap, IP allowlist,
// referrer domains and scope, in that order.

// Refusals of the access checks.
var (
	errKeyRequestLimit = errRateLimited("request_limit_reached", "API key request limit reached", 0)
	errIPNotAllowed    = errForbidden("ip_not_allowed", "IP address not allowed for this API key")
	errDomainNotAllow  = errForbidden("domain_not_allowed", "Domain not allowed for this API key")
	errNoInference     = errForbidden("insufficient_permissions",
		"This API key is not allowed to call inference endpoints (it needs write permission on chat)")
)

// checkAccess applies the key's restrictions to the request. It returns the
// refusal and, for security refusals, the audit action to record.
func checkAccess(e *keyEntry, r *http.Request, clientIP string, inference bool) (*gatewayError, string) {
	k := e.id.Key
	if k.MaxRequests != nil && k.RequestsUsed+e.admitted.Load() >= *k.MaxRequests {
		return errKeyRequestLimit, ""
	}
	switch networkDenied(e, r, clientIP) {
	case auditIPDenied:
		return errIPNotAllowed, auditIPDenied
	case auditReferrerDenied:
		return errDomainNotAllow, auditReferrerDenied
	}
	if inference && !k.Scopes.Allows(storage.PermWrite, storage.ResourceChat) {
		return errNoInference, ""
	}
	return nil, ""
}

// checkAccess applies the key's restrictions and records security refusals
// (denied IP or referrer) as audit events.
func (g *Gateway) checkAccess(r *http.Request, e *keyEntry, clientIP string, rt route, now time.Time) *gatewayError {
	gerr, action := checkAccess(e, r, clientIP, rt.metered())
	if action != "" {
		recordSecurity(g.state, action, e, r, clientIP, now)
	}
	return gerr
}

// networkDenied applies the key's IP allowlist, then its referrer rules, to
// the request, and returns the audit action of the refusal ("" when both
// pass). The gateway and CheckNetworkAccess share it.
func networkDenied(e *keyEntry, r *http.Request, clientIP string) string {
	if e.ipRestricted && !ipAllowed(e.allow, clientIP) {
		return auditIPDenied
	}
	if e.referrers != nil && !referrerAllowed(e.referrers, requestOriginHost(r)) {
		return auditReferrerDenied
	}
	return ""
}

// Refusals of CheckNetworkAccess (test with errors.Is). Both are 403s.
var (
	ErrIPNotAllowed     = errors.New("IP address not allowed for this API key")
	ErrDomainNotAllowed = errors.New("Domain not allowed for this API key")
)

// CheckNetworkAccess applies a key's ip_allowlist and domain_referrers to a
// request exactly as the gateway does, for the management API: the client
// IP is Caddy's (which honours trusted_proxies; the peer address outside
// Caddy), then the allowlist, then the Origin/Referer host against the
// referrer rules. A refusal is recorded as the same security audit event
// the gateway records and returned as ErrIPNotAllowed or
// ErrDomainNotAllowed. id is an identity returned by Authenticate; its
// pre-parsed rules come from the key index. It does not apply max_requests,
// which caps inference requests only.
func (a *App) CheckNetworkAccess(r *http.Request, id *Identity) error {
	if id == nil || id.Key == nil {
		return ErrUnknownKey
	}
	e := a.state.index.entryFor(id)
	ip := clientIP(r)
	if ip == "" {
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			ip = host
		}
	}
	action := networkDenied(e, r, ip)
	if action == "" {
		return nil
	}
	recordSecurity(a.state, action, e, r, ip, clockNow())
	if action == auditIPDenied {
		return ErrIPNotAllowed
	}
	return ErrDomainNotAllowed
}

// parseAllowlist parses IP allowlist entries (exact IPv4/IPv6 addresses and
// CIDRs). Blank entries are ignored; restricted is false when nothing else
// is left. Unparsable entries (refused at key creation) match nothing.
func parseAllowlist(entries []string) (allow []netip.Prefix, restricted bool) {
	for _, s := range entries {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		restricted = true
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				continue
			}
			if p.Addr().Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			allow = append(allow, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		a = a.Unmap().WithZone("")
		allow = append(allow, netip.PrefixFrom(a, a.BitLen()))
	}
	return allow, restricted
}

// ipAllowed reports whether the client IP (Caddy's client IP, which honours
// trusted_proxies) is in the allowlist. An unparsable IP is not allowed.
func ipAllowed(allow []netip.Prefix, clientIP string) bool {
	a, err := netip.ParseAddr(clientIP)
	if err != nil {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// normalizeReferrerRules turns domain_referrers entries into lower-case
// hosts ("example.com"), wildcards ("*.example.com") or IP literals, IPv6
// ones bare and in canonical form ("::1", from "::1", "[::1]" or
// "[0:0::1]:8080"), tolerating a scheme, port or path around them. nil when
// there are none. Browsers send IPv6 origins in that same canonical form
// ("http://[::1]:8080"), whose host requestOriginHost returns bare.
func normalizeReferrerRules(entries []string) []string {
	var rules []string
	for _, s := range entries {
		s = strings.ToLower(strings.TrimSpace(s))
		if s == "" {
			continue
		}
		if i := strings.Index(s, "://"); i >= 0 {
			s = s[i+3:]
		}
		if i := strings.IndexAny(s, "/?#"); i >= 0 {
			s = s[:i]
		}
		switch {
		case strings.HasPrefix(s, "["): // "[v6]" or "[v6]:port"
			if j := strings.IndexByte(s, ']'); j > 0 {
				s = canonicalIPRule(s[1:j])
			} else {
				s = ""
			}
		case strings.Count(s, ":") >= 2: // bare IPv6
			s = canonicalIPRule(s)
		default:
			if i := strings.LastIndexByte(s, ':'); i >= 0 {
				s = s[:i]
			}
		}
		s = strings.TrimSuffix(s, ".")
		if s == "" || s == "*." {
			s = "\x00" // matches nothing, keeps the key restricted
		}
		rules = append(rules, s)
	}
	return rules
}

// canonicalIPRule returns the canonical form of an IP literal rule, or ""
// (a rule matching nothing) when it is not one or carries a zone.
func canonicalIPRule(s string) string {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return ""
	}
	return a.String()
}

// requestOriginHost returns the host of the Origin header, else of the
// Referer header, lower-cased; "" when neither gives one.
func requestOriginHost(r *http.Request) string {
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		return hostOf(o)
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		return hostOf(ref)
	}
	return ""
}

// hostOf returns the lower-cased host of an absolute URL
// ("scheme://[userinfo@]host[:port][/path...]"), without a trailing dot, or
// "" when there is none. It does not allocate for lower-case input.
func hostOf(raw string) string {
	i := strings.Index(raw, "://")
	if i <= 0 {
		return ""
	}
	rest := raw[i+3:]
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		rest = rest[:j]
	}
	if j := strings.LastIndexByte(rest, '@'); j >= 0 {
		rest = rest[j+1:]
	}
	if strings.HasPrefix(rest, "[") {
		j := strings.IndexByte(rest, ']')
		if j < 0 {
			return ""
		}
		rest = rest[1:j]
	} else if j := strings.IndexByte(rest, ':'); j >= 0 {
		rest = rest[:j]
	}
	rest = strings.TrimSuffix(rest, ".")
	if rest == "" {
		return ""
	}
	for k := 0; k < len(rest); k++ {
		if c := rest[k]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(rest)
		}
	}
	return rest
}

// referrerAllowed matches a host against the rules: exactly, or as a
// subdomain of a "*.example.com" rule (which does not match example.com
// itself). Never by substring. An empty host matches nothing.
func referrerAllowed(rules []string, host string) bool {
	if host == "" {
		return false
	}
	for _, rule := range rules {
		if strings.HasPrefix(rule, "*.") {
			suffix := rule[1:] // ".example.com"
			if len(host) > len(suffix) && strings.HasSuffix(host, suffix) {
				return true
			}
			continue
		}
		if host == rule {
			return true
		}
	}
	return false
}

// clockNow is the gateway's clock (a variable so tests can fake it; tests
// of other packages use SetClock).
var clockNow = func() time.Time {
	if f := clockOverride.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}
