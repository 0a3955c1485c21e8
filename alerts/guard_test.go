package alerts

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestBlocked(t *testing.T) {
	blocked := []string{"127.0.0.1", "127.8.9.1", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
		"169.254.169.254", "169.254.1.1", "fe80::1", "fc00::1", "fd00:ec2::254", "100.64.0.1", "100.127.255.254",
		"0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "224.0.0.1", "255.255.255.255", "64:ff9b::a9fe:a9fe"}
	allowed := []string{"8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "93.184.216.34"}
	for _, s := range blocked {
		if !Blocked(netip.MustParseAddr(s)) {
			t.Errorf("%s not blocked", s)
		}
	}
	for _, s := range allowed {
		if Blocked(netip.MustParseAddr(s)) {
			t.Errorf("%s blocked", s)
		}
	}
}

func TestCheckURL(t *testing.T) {
	strict := Guard{}
	open := Guard{AllowHTTP: true, AllowPrivate: true}
	tests := []struct {
		url          string
		strict, open bool // accepted
	}{
		{"https://hooks.example.com/gatewayz", true, true},
		{"https://hooks.example.com:8443/x?y=1", true, true},
		{"http://hooks.example.com/x", false, true},
		{"https://127.0.0.1/x", false, true},
		{"https://[::1]/x", false, true},
		{"https://169.254.169.254/latest/meta-data", false, true},
		{"https://10.0.0.5/x", false, true},
		{"https://localhost/x", false, true},
		{"https://a.localhost/x", false, true},
		{"ftp://example.com/x", false, false},
		{"https://user:pw@example.com/x", false, false},
		{"https:///x", false, false},
		{"/relative", false, false},
		{"", false, false},
		{" https://example.com", false, false},
		{"https://example.com/#frag", false, false},
		{"javascript:alert(1)", false, false},
	}
	for _, tc := range tests {
		if _, err := strict.CheckURL(tc.url); (err == nil) != tc.strict {
			t.Errorf("strict CheckURL(%q) = %v, want accepted %v", tc.url, err, tc.strict)
		}
		if _, err := open.CheckURL(tc.url); (err == nil) != tc.open {
			t.Errorf("open CheckURL(%q) = %v, want accepted %v", tc.url, err, tc.open)
		}
	}
}

func FuzzCheckURL(f *testing.F) {
	f.Add("https://example.com/x")
	f.Add("http://[::1]:80/")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Guard{}.CheckURL(s)
		if err == nil && (u.Scheme != "https" || u.Host == "") {
			t.Fatalf("accepted %q", s)
		}
	})
}

// The dial-time check refuses a name that resolves to loopback, which the
// registration check cannot see.
func TestGuardRefusesAtDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	d := &net.Dialer{Timeout: time.Second, Control: Guard{}.Control}
	if _, err := d.DialContext(context.Background(), "tcp", net.JoinHostPort("localhost", port)); !errors.Is(err, ErrBlockedAddress) {
		t.Fatalf("dial to localhost: %v, want ErrBlockedAddress", err)
	}
	d.Control = Guard{AllowPrivate: true}.Control
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial with private targets allowed: %v", err)
	}
	c.Close()
}
