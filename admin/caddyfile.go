package admin

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("gatewayz_api", parseCaddyfile)
	// The API answers every request it gets, like respond: order it just
	// before respond. For another order, use it inside route { }.
	httpcaddyfile.RegisterDirectiveOrder("gatewayz_api", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	gatewayz_api {
//	    max_body_size <size>   # e.g. 64KiB, 1MB
//	    console_path  <path>   # where the web console is served [/console]
//	    console       off      # no web console
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_body_size":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(d.Val())
			if err != nil || n == 0 || n > 1<<30 {
				return d.Errf("max_body_size: invalid size %q (1 byte to 1GiB)", d.Val())
			}
			h.MaxBodyBytes = int64(n)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "console_path":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.ConsolePath = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "console":
			if !d.NextArg() || d.Val() != "off" {
				return d.Err("console: the only value is off")
			}
			h.DisableConsole = true
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized gatewayz_api option %q", d.Val())
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
