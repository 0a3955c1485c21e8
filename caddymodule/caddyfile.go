package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("gatewayz", parseGatewayDirective)
	// After encode, so that encode wraps outside the meter and the meter
	// sees plaintext upstream bodies.
	httpcaddyfile.RegisterDirectiveOrder("gatewayz", httpcaddyfile.After, "encode")
}

func parseGatewayDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(Gateway)
	err := g.UnmarshalCaddyfile(h.Dispenser)
	return g, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	gatewayz {
//	    max_body_size <size>
//	    free_paths <glob...>
//	    default_max_tokens <n>
//	    min_completion_tokens <n>
//	    lower_max_tokens [on|off]
//	    max_tokens_field max_tokens|max_completion_tokens
//	    embeddings_reserve_percent <n>
//	    max_response_buffer <size>
//	    settle_timeout <duration>
//	    cors [<origin...>] {
//	        origins <origin...>     # or *
//	        key_referrers           # the key's domain_referrers decide
//	        max_age <duration>
//	    }
//	    limits {
//	        requests_per_minute <n>
//	        requests_per_hour   <n>
//	        requests_per_day    <n>
//	        tokens_per_minute   <n>
//	        tokens_per_hour     <n>
//	        tokens_per_day      <n>
//	    }
//	}
//
// Every subdirective is optional; `gatewayz` alone uses the app's settings.
func (g *Gateway) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_body_size":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(s)
			if err != nil || n == 0 || n > 1<<40 {
				return d.Errf("bad max_body_size %q", s)
			}
			g.MaxBodySize = int64(n)
		case "free_paths":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			g.FreePaths = append(g.FreePaths, args...)
		case "limits":
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := parseRateLimits(d, &g.Limits); err != nil {
				return err
			}
		case "cors":
			c, err := unmarshalCORS(d)
			if err != nil {
				return err
			}
			g.CORS = c
		default:
			if ok, err := g.unmarshalMeteringOption(d); ok || err != nil {
				if err != nil {
					return err
				}
				continue
			}
			return unknownOption(d, "gatewayz subdirective", gatewayOptions)
		}
	}
	return nil
}

// parseRateLimits parses a block of rate-limit fields into l.
func parseRateLimits(d *caddyfile.Dispenser, l *storage.RateLimits) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		var field *int64
		switch name {
		case "requests_per_minute":
			field = &l.RequestsPerMinute
		case "requests_per_hour":
			field = &l.RequestsPerHour
		case "requests_per_day":
			field = &l.RequestsPerDay
		case "tokens_per_minute":
			field = &l.TokensPerMinute
		case "tokens_per_hour":
			field = &l.TokensPerHour
		case "tokens_per_day":
			field = &l.TokensPerDay
		default:
			return unknownOption(d, "limit", rateLimitOptions)
		}
		n, err := nonNegativeArg(d, name)
		if err != nil {
			return err
		}
		*field = n
	}
	return nil
}

// nonNegativeArg reads the one argument of the option name as a
// non-negative integer.
func nonNegativeArg(d *caddyfile.Dispenser, name string) (int64, error) {
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, d.Errf("%s must be a non-negative integer, got %q", name, s)
	}
	return n, nil
}

// gatewayOptions are the subdirectives of the gatewayz directive.
var gatewayOptions = []string{
	"max_body_size", "free_paths", "limits", "cors", "default_max_tokens", "min_completion_tokens",
	"lower_max_tokens", "max_tokens_field", "embeddings_reserve_percent", "max_response_buffer", "settle_timeout",
}

// rateLimitOptions are the fields of a limits block.
var rateLimitOptions = []string{
	"requests_per_minute", "requests_per_hour", "requests_per_day",
	"tokens_per_minute", "tokens_per_hour", "tokens_per_day",
}

// unknownOption is the error for an unknown option of a block: it names
// the option and lists the valid ones, so a typo is fixed without reading
// the source.
func unknownOption(d *caddyfile.Dispenser, what string, valid []string) error {
	return d.Errf("unknown %s %q; valid: %s", what, d.Val(), strings.Join(valid, ", "))
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Gateway)(nil)
