package alerts

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
)

// A user's webhook makes the gateway send a request where the user says:
// the guard keeps it off the gateway's own network (SSRF). The URL is
// checked when the webhook is registered (CheckURL), and the address
// actually dialled is checked again at connection time (Control), after
// name resolution, so a name that resolves (or rebinds) to a private
// address is refused too. Redirects are never followed and no proxy from
// the environment is used (it would dial for us, unchecked).

// Guard says what users' webhooks may target.
type Guard struct {
	// AllowHTTP accepts http:// URLs (default: https only).
	AllowHTTP bool
	// AllowPrivate accepts loopback, private, link-local, CGNAT and
	// metadata addresses (for tests and private deployments).
	AllowPrivate bool
}

// ErrBlockedAddress is the error of a dial to a refused address.
var ErrBlockedAddress = errors.New("alerts: webhook target address is not allowed")

// blockedPrefixes are the ranges a user's webhook may not reach, beyond
// what netip's predicates cover (loopback, private, link-local,
// unspecified, multicast).
var blockedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
	netip.MustParsePrefix("64:ff9b::/96"),    // NAT64 (embeds IPv4)
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("fd00:ec2::/32"),   // EC2 metadata (IPv6; also in fc00::/7)
	netip.MustParsePrefix("2002::/16"),       // 6to4 (embeds IPv4)
	netip.MustParsePrefix("2001::/32"),       // Teredo (embeds IPv4)
	netip.MustParsePrefix("169.254.0.0/16"),  // link-local, cloud metadata 169.254.169.254
	netip.MustParsePrefix("fe80::/10"),       // link-local
	netip.MustParsePrefix("fc00::/7"),        // unique local
	netip.MustParsePrefix("127.0.0.0/8"),     // loopback
	netip.MustParsePrefix("::1/128"),         // loopback
	netip.MustParsePrefix("10.0.0.0/8"),      // private
	netip.MustParsePrefix("172.16.0.0/12"),   // private
	netip.MustParsePrefix("192.168.0.0/16"),  // private
	netip.MustParsePrefix("::/128"),          // unspecified
	netip.MustParsePrefix("ff00::/8"),        // multicast
	netip.MustParsePrefix("224.0.0.0/4"),     // multicast
	netip.MustParsePrefix("::ffff:0:0/96"),   // IPv4-mapped (checked unmapped)
	netip.MustParsePrefix("100::/64"),        // discard
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
}

// Blocked reports whether a user's webhook may not reach addr.
func Blocked(addr netip.Addr) bool {
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsLoopback() || addr.IsPrivate() || addr.IsLinkLocalUnicast() ||
		addr.IsLinkLocalMulticast() || addr.IsInterfaceLocalMulticast() || addr.IsMulticast() || addr.IsUnspecified() {
		return true
	}
	for _, p := range blockedPrefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// maxURLLen bounds a webhook URL.
const maxURLLen = 2048

// CheckURL validates a user's webhook URL: absolute, https (or http when
// allowed), a host, no user info, and, when the host is an IP address, one
// that may be reached. It returns the URL in its parsed form.
func (g Guard) CheckURL(raw string) (*url.URL, error) {
	if raw == "" || len(raw) > maxURLLen || strings.TrimSpace(raw) != raw {
		return nil, fmt.Errorf("url must be an absolute https URL of at most %d characters", maxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return nil, errors.New("url must be an absolute https URL")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !g.AllowHTTP {
			return nil, errors.New("url must use https (the operator does not allow http webhooks)")
		}
	default:
		return nil, errors.New("url must use https")
	}
	if u.User != nil {
		return nil, errors.New("url must not contain credentials; the payload is signed instead")
	}
	if u.Fragment != "" {
		return nil, errors.New("url must not contain a fragment")
	}
	host := u.Hostname()
	if host == "" {
		return nil, errors.New("url must name a host")
	}
	if addr, err := netip.ParseAddr(host); err == nil && !g.AllowPrivate && Blocked(addr) {
		return nil, errors.New("url points at a loopback, private, link-local or metadata address, which webhooks may not reach")
	}
	if !g.AllowPrivate && (strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost")) {
		return nil, errors.New("url points at localhost, which webhooks may not reach")
	}
	return u, nil
}

// Control is a net.Dialer Control function refusing blocked addresses: it
// sees the address actually dialled, after name resolution.
func (g Guard) Control(network, address string, _ syscall.RawConn) error {
	if g.AllowPrivate {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrBlockedAddress, address)
	}
	if Blocked(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrBlockedAddress, ap.Addr())
	}
	if !strings.HasPrefix(network, "tcp") {
		return fmt.Errorf("%w: network %s", ErrBlockedAddress, network)
	}
	return nil
}
