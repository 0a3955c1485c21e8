package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// proxy passes an admitted request to the next handler (reverse_proxy).
// The client's key headers were already removed by credentials; they are
// removed again here so that no path can forward them. The metered version
// in settle.go replaces this file.
func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, adm *admission) error {
	delete(r.Header, hdrAuthorization)
	delete(r.Header, hdrAPIKey)
	return next.ServeHTTP(w, r)
}
