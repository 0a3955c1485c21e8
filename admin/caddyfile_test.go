package admin

import (
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{`gatewayz_api`, 0, true},
		{`gatewayz_api {
			max_body_size 1MiB
		}`, 1 << 20, true},
		{`gatewayz_api {
			max_body_size 4096
		}`, 4096, true},
		{`gatewayz_api extra`, 0, false},
		{`gatewayz_api {
			max_body_size
		}`, 0, false},
		{`gatewayz_api {
			max_body_size lots
		}`, 0, false},
		{`gatewayz_api {
			max_body_size 0
		}`, 0, false},
		{`gatewayz_api {
			max_body_size 2GiB
		}`, 0, false},
		{`gatewayz_api {
			max_body_size 1KB 2KB
		}`, 0, false},
		{`gatewayz_api {
			unknown_option 1
		}`, 0, false},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if tc.ok != (err == nil) || (tc.ok && h.MaxBodyBytes != tc.want) {
			t.Errorf("%q: max_body_bytes %d, err %v; want %d ok=%v", tc.in, h.MaxBodyBytes, err, tc.want, tc.ok)
		}
	}
}
