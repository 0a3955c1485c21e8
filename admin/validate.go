package admin

import (
	"encoding/json"
	"net/mail"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Pure validators shared by the handlers. Each returns a normalized value
// or an *apiError (422 unless noted).

// environmentTags are the accepted environment_tag values, in the order the
// reference listed them in its error message.
var environmentTags = []string{"test", "staging", "live", "development"}

// validateEnvironment checks an environment_tag. An unknown tag is a 400, as
// the reference's deliberate check.
func validateEnvironment(tag string) error {
	if _, ok := storage.EnvPrefix(tag); !ok {
		return errBadRequest("Invalid environment tag. Must be one of: %s", strings.Join(environmentTags, ", "))
	}
	return nil
}

// environmentOrLive returns the requested environment_tag, or "live" when
// none is given, after checking it with validateEnvironment.
func environmentOrLive(tag *string) (string, error) {
	env := "live"
	if tag != nil {
		env = *tag
	}
	if err := validateEnvironment(env); err != nil {
		return "", err
	}
	return env, nil
}

// validateEmail accepts a plain address "local@domain.tld" (no display
// name, no comments) and returns it trimmed with the domain lower-cased.
// Invisible characters are refused, as in names (zero-width, bidi, soft
// hyphen and every other format character), so that no look-alike of an
// address registers as another account; the store compares addresses
// case-insensitively.
func validateEmail(s string) (string, error) {
	s = strings.TrimSpace(s)
	bad := errValidation("Invalid email address")
	if s == "" || len(s) > 254 || !utf8.ValidString(s) {
		return "", bad
	}
	for _, r := range s {
		if forbiddenNameRune(r) || unicode.Is(unicode.Cf, r) || unicode.IsSpace(r) {
			return "", errValidation("Email address must not contain control, bidirectional or invisible characters (found %U)", r)
		}
	}
	addr, err := mail.ParseAddress(s)
	if err != nil || addr.Address != s || addr.Name != "" {
		return "", bad
	}
	at := strings.LastIndexByte(s, '@')
	local, domain := s[:at], strings.ToLower(s[at+1:])
	if local == "" || len(local) > 64 || strings.ContainsAny(local, " \"\\") {
		return "", bad
	}
	if !isHostname(domain) || !strings.Contains(domain, ".") {
		return "", bad
	}
	return local + "@" + domain, nil
}

// isHostname reports whether s is a DNS name: dot-separated labels of
// letters, digits and inner hyphens, 1-63 characters each, no trailing dot.
func isHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// validateIPAllowlist checks that every entry is an IP address or a CIDR
// prefix (v4 or v6) and returns the canonical forms.
func validateIPAllowlist(list []string) ([]string, error) {
	out := make([]string, 0, len(list))
	for _, raw := range list {
		s := strings.TrimSpace(raw)
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, errValidation("ip_allowlist entry %q is not an IP address or CIDR", clip(raw))
			}
			out = append(out, p.Masked().String())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, errValidation("ip_allowlist entry %q is not an IP address or CIDR", clip(raw))
		}
		out = append(out, a.Unmap().String())
	}
	return out, nil
}

// validateDomains checks that every entry is a host name ("example.com"),
// a wildcard ("*.example.com") or an IP literal, IPv6 bare or in brackets
// ("::1", "[::1]"), and returns them lower-cased, IP literals in canonical
// form without brackets ("::1"), the form the gateway matches the Origin
// or Referer host against. Schemes, paths, ports, zones and bare "*" are
// refused.
func validateDomains(list []string) ([]string, error) {
	out := make([]string, 0, len(list))
	for _, raw := range list {
		s := strings.ToLower(strings.TrimSpace(raw))
		if ip, ok := ipLiteral(s); ok {
			out = append(out, ip)
			continue
		}
		host := strings.TrimPrefix(s, "*.")
		if !isHostname(host) || (host != s && !strings.Contains(host, ".")) {
			return nil, errValidation("domain_referrers entry %q must be a host name, *.host or an IP address", clip(raw))
		}
		out = append(out, s)
	}
	return out, nil
}

// ipLiteral returns the canonical form of an IP address given bare or, for
// IPv6, in brackets; false for anything else, zoned addresses included.
func ipLiteral(s string) (string, bool) {
	bracketed := strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]")
	if bracketed {
		s = s[1 : len(s)-1]
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || (bracketed && !a.Is6()) {
		return "", false
	}
	return a.String(), true
}

// parseTime accepts RFC 3339 (with a zone, "Z" included) and, like the
// reference's ISO parsing, a zone-less "2006-01-02T15:04:05[.frac]" or a bare
// date, both read as UTC.
func parseTime(s string) (time.Time, bool) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), true
	}
	for _, layout := range []string{"2006-01-02T15:04:05.999999999", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// maxExpirationDays bounds expiration_days (about 100 years), so that the
// date arithmetic cannot overflow.
const maxExpirationDays = 36500

// resolveExpiration turns expiration_days or expiration_date into a date.
// days <= 0 is a 400 (the reference's check); a malformed or past date is a
// 422; giving both is a 422.
func resolveExpiration(days *int64, date *string, now time.Time) (*time.Time, error) {
	if days != nil && date != nil {
		return nil, errValidation("Give either expiration_days or expiration_date, not both")
	}
	if days != nil {
		if *days <= 0 {
			return nil, errBadRequest("Expiration days must be positive")
		}
		if *days > maxExpirationDays {
			return nil, errValidation("expiration_days must be at most %d", maxExpirationDays)
		}
		t := now.Add(time.Duration(*days) * 24 * time.Hour).UTC()
		return &t, nil
	}
	if date != nil {
		t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(*date))
		if err != nil {
			return nil, errValidation("expiration_date must be an RFC 3339 date-time, e.g. 2030-01-02T15:04:05Z")
		}
		if !t.After(now) {
			return nil, errValidation("expiration_date is in the past")
		}
		if t.After(now.Add(maxExpirationDays * 24 * time.Hour)) {
			return nil, errValidation("expiration_date is too far in the future")
		}
		t = t.UTC()
		return &t, nil
	}
	return nil, nil
}

// scopeInput is scope_permissions as clients send it: each permission maps
// to a list of resources or a single resource string.
type scopeInput storage.Scopes

func (s *scopeInput) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || raw == nil {
		return errValidation("Field \"scope_permissions\" must be an object of permission to resource list")
	}
	out := make(scopeInput, len(raw))
	for perm, v := range raw {
		var list []string
		if err := json.Unmarshal(v, &list); err != nil {
			var one string
			if err := json.Unmarshal(v, &one); err != nil {
				return errValidation("scope_permissions.%s must be a list of strings", clip(perm))
			}
			list = []string{one}
		}
		out[perm] = list
	}
	*s = out
	return nil
}

// validateScopes returns the canonical form of a scope a client sent (see
// storage.ParseScopes); anything it refuses is a 422 naming the field.
func validateScopes(in scopeInput) (storage.Scopes, error) {
	out, err := storage.ParseScopes(in)
	if err != nil {
		return nil, errValidation("%s", err.Error())
	}
	return out, nil
}

// validateName checks a key, plan or user name: valid UTF-8 without
// control or invisible formatting characters, non-blank once trimmed, at
// most 100 characters.
func validateName(field, s string) (string, error) {
	if err := checkNameChars(field, s); err != nil {
		return "", err
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errValidation("%s must not be empty", field)
	}
	if utf8.RuneCountInString(s) > 100 {
		return "", errValidation("%s must be at most 100 characters", field)
	}
	return s, nil
}

// checkNameChars refuses invalid UTF-8 and the characters that would let a
// name rewrite a log line, a terminal or the text around it: C0 and C1
// controls (tab and newline included), DEL, bidi overrides and isolates and
// zero-width characters.
func checkNameChars(field, s string) error {
	if !utf8.ValidString(s) {
		return errValidation("%s must be valid UTF-8", field)
	}
	for _, r := range s {
		if forbiddenNameRune(r) {
			return errValidation("%s must not contain control, bidirectional or zero-width characters (found %U)", field, r)
		}
	}
	return nil
}

// forbiddenNameRune reports whether r may not appear in a name.
func forbiddenNameRune(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f: // C0, DEL, C1
		return true
	case r >= 0x200b && r <= 0x200f: // zero-width space/joiners, LRM, RLM
		return true
	case r >= 0x202a && r <= 0x202e: // bidi embeddings and overrides
		return true
	case r >= 0x2060 && r <= 0x2069: // word joiner, invisible operators, bidi isolates
		return true
	case r == 0xfeff, r == 0x061c: // zero-width no-break space (BOM), Arabic letter mark
		return true
	case r == utf8.RuneError: // what an invalid byte or a lone surrogate escape decodes to
		return true
	}
	return false
}

// clip bounds user input echoed in an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
