package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
)

// authLevel says who may call a route.
type authLevel int

const (
	public authLevel = iota // anyone
	user                    // a valid API key (Authorization: Bearer gw_...)
	admin                   // the operator's GATEWAYZ_ADMIN_KEY
)

func (a authLevel) String() string {
	switch a {
	case user:
		return "user"
	case admin:
		return "admin"
	}
	return "public"
}

type ctxKey int

const identityKey ctxKey = 0

// identity returns the caller of a user route (set by requireUser).
func identity(r *http.Request) *caddymodule.Identity {
	id, _ := r.Context().Value(identityKey).(*caddymodule.Identity)
	return id
}

// bearer returns the token of an "Authorization: Bearer <token>" header.
func bearer(r *http.Request) (string, bool) {
	v := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// withAuth wraps a route's handler with the authentication its level
// requires and, for user routes, the scope it needs.
func (h *Handler) withAuth(level authLevel, scope need, next http.HandlerFunc) http.HandlerFunc {
	switch level {
	case user:
		return h.requireUser(scope, next)
	case admin:
		return h.requireAdmin(next)
	}
	return next
}

// requireUser authenticates an API key. Missing credentials: 401 with
// WWW-Authenticate (not the reference's 403); unknown key: 401 "Invalid API
// key"; inactive or expired: 401 saying which. The key's ip_allowlist and
// domain_referrers then apply as on the gateway (caddymodule's
// CheckNetworkAccess, which also records the security audit event): a
// restricted key used from elsewhere gets 403 and cannot manage keys or read
// the account. max_requests is not applied here: it caps inference requests
// only, so a key at its cap can still be inspected, rotated or deleted.
// Last, the key's scope must grant the route's need (403 otherwise),
// before the body is read, so a refusal depends on nothing the caller sent
// but its key.
func (h *Handler) requireUser(scope need, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearer(r)
		if !ok {
			writeErr(w, newError(http.StatusUnauthorized, "not_authenticated", "Not authenticated"))
			return
		}
		id, err := h.app.Authenticate(token)
		switch {
		case err == nil && id != nil && id.Key != nil && id.User != nil:
		case errors.Is(err, caddymodule.ErrInactiveKey):
			writeErr(w, newError(http.StatusUnauthorized, "inactive_key", "API key is inactive"))
			return
		case errors.Is(err, caddymodule.ErrExpiredKey):
			writeErr(w, newError(http.StatusUnauthorized, "expired_key", "API key has expired"))
			return
		case err == nil, errors.Is(err, caddymodule.ErrUnknownKey):
			writeErr(w, newError(http.StatusUnauthorized, "invalid_api_key", "Invalid API key"))
			return
		case errors.Is(err, caddymodule.ErrFeedBehind):
			h.logger.Warn("API key not confirmed: change feed behind and database unreachable", zap.Error(err))
			writeErr(w, newError(http.StatusServiceUnavailable, "unavailable",
				"This node cannot confirm the API key is still valid: it has lost track of changes made on other nodes and cannot reach its database; retry shortly"))
			return
		default:
			h.logger.Error("authenticating API key", zap.Error(err))
			writeErr(w, newError(http.StatusServiceUnavailable, "unavailable", "Service temporarily unavailable"))
			return
		}
		switch err := h.app.CheckNetworkAccess(r, id); {
		case err == nil:
		case errors.Is(err, caddymodule.ErrIPNotAllowed):
			writeErr(w, newError(http.StatusForbidden, "ip_not_allowed", "IP address not allowed for this API key"))
			return
		case errors.Is(err, caddymodule.ErrDomainNotAllowed):
			writeErr(w, newError(http.StatusForbidden, "domain_not_allowed", "Domain not allowed for this API key"))
			return
		default:
			writeErr(w, newError(http.StatusUnauthorized, "invalid_api_key", "Invalid API key"))
			return
		}
		if !scope.grantedBy(id.Key.Scopes) {
			writeErr(w, scope.refusal())
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), identityKey, id)))
	}
}

// requireAdmin checks the admin bearer in constant time. With no admin key
// configured the admin API is off: 503.
func (h *Handler) requireAdmin(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h.app.AdminKey() == "" {
			writeErr(w, newError(http.StatusServiceUnavailable, "admin_disabled",
				"Admin API is disabled: set GATEWAYZ_ADMIN_KEY to enable it"))
			return
		}
		if !h.isAdmin(r) {
			writeErr(w, newError(http.StatusUnauthorized, "invalid_admin_key", "Invalid admin API key"))
			return
		}
		next(w, r)
	}
}

// isAdmin reports whether the request carries the admin bearer. Both sides
// are hashed first so the comparison takes the same time whatever the
// lengths.
func (h *Handler) isAdmin(r *http.Request) bool {
	want := h.app.AdminKey()
	token, ok := bearer(r)
	if want == "" || !ok {
		return false
	}
	a, b := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// clientIP is Caddy's client IP (which honours trusted_proxies), or the
// peer address outside Caddy.
func clientIP(r *http.Request) string {
	if v, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && v != "" {
		return v
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
