package caddymodule

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// CORS lets web pages on other origins call the gateway with fetch. The
// gateway answers preflights itself (no key needed, nothing reaches the
// upstream, nothing is charged) and adds Access-Control-Allow-Origin to
// the answers of allowed origins, refusals included, so a page can read
// the error.
type CORS struct {
	// AllowedOrigins are the origins whose pages may call the gateway,
	// exactly as browsers send them ("https://app.example.com",
	// "http://localhost:5173"), or "*" for any. With key_referrers and no
	// origins, any origin may ask and the key decides.
	AllowedOrigins []string `json:"allowed_origins,omitempty"`

	// KeyReferrers checks a browser's call against the calling key: the
	// Origin's host must be one of the key's domain_referrers ("*.host"
	// wildcards included), otherwise the call is refused with 403 before
	// anything is charged. A key without domain_referrers cannot be used
	// from a browser page in this mode.
	KeyReferrers bool `json:"key_referrers,omitempty"`

	// MaxAge is how long a browser may reuse a preflight answer. Default
	// 10m.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

const defaultCORSMaxAge = 10 * time.Minute

// corsExposedHeaders are the response headers a page's script may read:
// the ones an OpenAI SDK and a credit display need.
const corsExposedHeaders = "X-Request-Id, X-Gatewayz-Credits-Remaining, X-Should-Retry, Retry-After, " +
	"X-Ratelimit-Limit-Requests, X-Ratelimit-Remaining-Requests, X-Ratelimit-Reset-Requests, " +
	"X-Ratelimit-Limit-Tokens, X-Ratelimit-Remaining-Tokens, X-Ratelimit-Reset-Tokens"

// validate checks the origins: "*" or scheme://host[:port], nothing else.
func (c *CORS) validate() error {
	if c == nil {
		return nil
	}
	if len(c.AllowedOrigins) == 0 && !c.KeyReferrers {
		return fmt.Errorf("gatewayz: cors needs allowed_origins or key_referrers")
	}
	for _, o := range c.AllowedOrigins {
		if o == "*" {
			continue
		}
		if hostOf(o) == "" || strings.Count(o, "/") != 2 || strings.ContainsAny(o, "?#*") {
			return fmt.Errorf("gatewayz: cors origin %q must be scheme://host[:port] or *", o)
		}
	}
	if c.MaxAge < 0 {
		return fmt.Errorf("gatewayz: cors max_age must not be negative")
	}
	return nil
}

// originAllowed reports whether a page of origin may call the gateway
// (before its key is known).
func (c *CORS) originAllowed(origin string) bool {
	if origin == "" || origin == "null" {
		return false
	}
	if len(c.AllowedOrigins) == 0 {
		return c.KeyReferrers
	}
	for _, o := range c.AllowedOrigins {
		if o == "*" || strings.EqualFold(strings.TrimSuffix(o, "/"), origin) {
			return true
		}
	}
	return false
}

// preflight answers a CORS preflight (OPTIONS with Origin and
// Access-Control-Request-Method) with 204, allowing the origin when it may
// call; it reports false for every other request.
func (c *CORS) preflight(w http.ResponseWriter, r *http.Request) bool {
	if c == nil || r.Method != http.MethodOptions {
		return false
	}
	origin, method := r.Header.Get("Origin"), r.Header.Get("Access-Control-Request-Method")
	if origin == "" || method == "" {
		return false
	}
	h := w.Header()
	h.Set("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
	if c.originAllowed(origin) {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
			h.Set("Access-Control-Allow-Headers", req)
		}
		maxAge := time.Duration(c.MaxAge)
		if maxAge == 0 {
			maxAge = defaultCORSMaxAge
		}
		h.Set("Access-Control-Max-Age", strconv.Itoa(int(maxAge.Seconds())))
	}
	w.WriteHeader(http.StatusNoContent)
	return true
}

// allowCaller admits a browser's call of an authenticated key (referrers
// are its normalized domain_referrers) and sets the CORS headers of the
// answer. A call without Origin is not a browser's cross-origin call and
// passes untouched.
func (c *CORS) allowCaller(h http.Header, r *http.Request, referrers []string) *gatewayError {
	origin := r.Header.Get("Origin")
	if c == nil || origin == "" {
		return nil
	}
	if !c.originAllowed(origin) {
		return nil // no CORS headers: the browser withholds the answer
	}
	if c.KeyReferrers && !referrerAllowed(referrers, hostOf(origin)) {
		return errForbidden("origin_not_allowed",
			"This API key may not be used from this web origin: add its host to the key's domain_referrers")
	}
	setAllowOrigin(h, origin)
	return nil
}

// allowRefusal sets the CORS headers on a refusal to an allowed origin, so
// the page can read why.
func (c *CORS) allowRefusal(h http.Header, r *http.Request) {
	if c == nil {
		return
	}
	if origin := r.Header.Get("Origin"); c.originAllowed(origin) {
		setAllowOrigin(h, origin)
	}
}

func setAllowOrigin(h http.Header, origin string) {
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Expose-Headers", corsExposedHeaders)
	h.Add("Vary", "Origin")
}

// unmarshalCORS parses the cors block of the gatewayz directive:
//
//	cors [<origin...>] {
//	    origins <origin...>
//	    key_referrers
//	    max_age <duration>
//	}
func unmarshalCORS(d *caddyfile.Dispenser) (*CORS, error) {
	c := &CORS{AllowedOrigins: d.RemainingArgs()}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "origins":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			c.AllowedOrigins = append(c.AllowedOrigins, args...)
		case "key_referrers":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			c.KeyReferrers = true
		case "max_age":
			var s string
			if !d.AllArgs(&s) {
				return nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur < 0 {
				return nil, d.Errf("bad cors max_age %q", s)
			}
			c.MaxAge = caddy.Duration(dur)
		default:
			return nil, unknownOption(d, "cors option", corsOptions)
		}
	}
	if err := c.validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return c, nil
}

// corsOptions are the subdirectives of the cors block.
var corsOptions = []string{"origins", "key_referrers", "max_age"}
