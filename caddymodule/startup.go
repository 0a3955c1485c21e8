package caddymodule

import (
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// logStartup logs one line saying what the gateway runs with: where it
// listens and proxies to (as far as the HTTP app shows), the storage, where
// the secret came from and whether the admin API is on. It warns when an
// upstream credential header resolves to nothing (GATEWAYZ_API_KEY unset
// in Caddyfile.example): every proxied request would then be refused by
// the upstream.
func (a *App) logStartup() {
	backend, location := a.storage.Describe()
	var routes gatewayRoutes
	if v, err := a.ctx.AppIfConfigured("http"); err == nil {
		if httpApp, ok := v.(*caddyhttp.App); ok {
			routes = findGatewayRoutes(httpApp)
		}
	}
	a.logger.Info("gatewayz started",
		zap.Strings("listen", routes.listen),
		zap.Strings("upstreams", routes.upstreams),
		zap.String("storage", backend),
		zap.String("storage_location", location),
		zap.String("secret", a.secretOrigin()),
		zap.Bool("admin_api", a.adminKey != ""))
	for _, h := range routes.emptyCredentials {
		a.logger.Warn("an upstream credential resolves to nothing: set its environment variable, or the upstream will refuse every request",
			zap.String("header", h))
	}
}

// secretOrigin says where the server secret came from, never the secret.
func (a *App) secretOrigin() string {
	switch {
	case a.secretSource != "config":
		return "generated " + a.secretSource
	case strings.Contains(a.Secret, "{env."):
		return "environment"
	default:
		return "config"
	}
}

// gatewayRoutes is what the HTTP app shows of the gateway's sites.
type gatewayRoutes struct {
	listen    []string // addresses of the servers with a gatewayz handler
	upstreams []string // dial addresses of the proxies after it
	// emptyCredentials are the proxies' credential headers (as configured,
	// e.g. "Authorization: Bearer {env.GATEWAYZ_API_KEY}") whose
	// environment placeholders resolve to nothing.
	emptyCredentials []string
}

// findGatewayRoutes walks the servers' routes for gatewayz handlers and the
// reverse proxies that follow them.
func findGatewayRoutes(app *caddyhttp.App) gatewayRoutes {
	var found gatewayRoutes
	for _, srv := range app.Servers {
		if found.walk(srv.Routes, false) {
			found.listen = append(found.listen, srv.Listen...)
		}
	}
	for _, s := range []*[]string{&found.listen, &found.upstreams, &found.emptyCredentials} {
		slices.Sort(*s)
		*s = slices.Compact(*s)
	}
	return found
}

// walk visits routes in order; after says a gatewayz handler came before
// them. A gateway inside a subroute (a `handle` block) is followed by what
// comes after it there, not by its sibling blocks. It reports whether a
// gateway was met.
func (f *gatewayRoutes) walk(routes caddyhttp.RouteList, after bool) (found bool) {
	for _, rt := range routes {
		for _, h := range rt.Handlers {
			switch h := h.(type) {
			case *Gateway:
				after, found = true, true
			case *caddyhttp.Subroute:
				found = f.walk(h.Routes, after) || found
			case *reverseproxy.Handler:
				if after {
					f.addProxy(h)
				}
			}
		}
	}
	return found
}

// credentialHeaders are request headers that carry an upstream key.
var credentialHeaders = []string{"Authorization", "X-Api-Key", "Api-Key"}

func (f *gatewayRoutes) addProxy(h *reverseproxy.Handler) {
	for _, u := range h.Upstreams {
		f.upstreams = append(f.upstreams, u.Dial)
	}
	if h.Headers == nil || h.Headers.Request == nil {
		return
	}
	repl := caddy.NewReplacer()
	for _, name := range credentialHeaders {
		for _, v := range h.Headers.Request.Set.Values(name) {
			if emptyCredential(repl, v) {
				f.emptyCredentials = append(f.emptyCredentials, name+": "+v)
			}
		}
	}
}

// emptyCredential reports whether v takes its credential from environment
// placeholders that resolve to nothing ("Bearer " left, or nothing).
func emptyCredential(repl *caddy.Replacer, v string) bool {
	if !strings.Contains(v, "{env.") {
		return false
	}
	resolved := strings.TrimSpace(repl.ReplaceKnown(v, ""))
	scheme, rest, _ := strings.Cut(resolved, " ")
	return resolved == "" || strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(rest) == ""
}
