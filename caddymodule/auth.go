package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Canonical names of the credential headers.
const (
	hdrAuthorization = "Authorization"
	hdrAPIKey        = "X-Api-Key"
)

// credentials returns the API key the client presented: the Bearer token of
// Authorization, else x-api-key (Anthropic-style clients). Both headers are
// removed from the request in place, so the key reaches neither the
// upstream nor the access log (which shares this request's header map and
// would otherwise log x-api-key in clear).
func credentials(r *http.Request) string {
	var key string
	if v := r.Header[hdrAuthorization]; len(v) > 0 {
		if a := v[0]; len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			key = strings.TrimSpace(a[7:])
		}
		delete(r.Header, hdrAuthorization)
	}
	if v := r.Header[hdrAPIKey]; len(v) > 0 {
		if key == "" {
			key = strings.TrimSpace(v[0])
		}
		delete(r.Header, hdrAPIKey)
	}
	return key
}

// Refusals of authentication.
var (
	errMissingKey = errUnauthorized("missing_api_key",
		"Missing API key: send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header")
	errInvalidKey  = errUnauthorized("invalid_api_key", "Invalid API key")
	errInactiveKey = errUnauthorized("inactive_api_key", "API key is inactive")
	errExpiredKey  = errUnauthorized("expired_api_key", "API key has expired")
	errUnavailable = errorf(http.StatusServiceUnavailable, "server_error", "service_unavailable",
		"The gateway cannot verify API keys right now; retry shortly")
	errFeedBehind = errorf(http.StatusServiceUnavailable, "server_error", "service_unavailable",
		"The gateway cannot confirm this API key is still valid: it has lost track of changes made on other nodes and cannot reach its database; retry shortly")
)

// authenticate is the gateway's side of App.authenticate: a refusal in
// OpenAI shape, with unknown, inactive and expired keys recorded as
// (rate-limited) security events.
func (g *Gateway) authenticate(r *http.Request, key, clientIP string, now time.Time) (*keyEntry, *gatewayError) {
	if key == "" {
		return nil, errMissingKey
	}
	e, err := g.app.authenticate(r.Context(), key, now)
	switch {
	case err == nil:
		return e, nil
	case errors.Is(err, errMalformedKey):
		return nil, errInvalidKey
	case errors.Is(err, ErrUnknownKey):
		g.state.audit.record(auditUnknownKey, clientIP, &storage.AuditEntry{
			IP:      clientIP,
			Details: map[string]any{"key_prefix": storage.MaskKey(key), "path": r.URL.Path},
		}, now)
		return nil, errInvalidKey
	case errors.Is(err, ErrInactiveKey):
		recordSecurity(g.state, auditKeyInactive, e, r, clientIP, now)
		return nil, errInactiveKey
	case errors.Is(err, ErrExpiredKey):
		recordSecurity(g.state, auditKeyExpired, e, r, clientIP, now)
		return nil, errExpiredKey
	case errors.Is(err, ErrFeedBehind):
		if c := g.logger.Check(zap.WarnLevel, "API key not confirmed: change feed behind and database unreachable"); c != nil {
			c.Write(zap.Error(err))
		}
		return nil, errFeedBehind
	}
	if c := g.logger.Check(zap.ErrorLevel, "looking up API key"); c != nil {
		c.Write(zap.Error(err))
	}
	return nil, errUnavailable
}

// errMalformedKey is ErrUnknownKey for a string not shaped like a key,
// which is refused without a store read and without an audit event.
var errMalformedKey = fmt.Errorf("%w (not shaped like a gw_ key)", ErrUnknownKey)

// authenticate resolves a plaintext key through the in-memory index and
// checks that it is usable (active, not expired): the one authenticator of
// the gateway (Gateway.authenticate) and the management API
// (App.Authenticate). A string that is not shaped like a key is refused
// (errMalformedKey) without touching the store or the index; a known key
// that is not usable is returned with ErrInactiveKey or ErrExpiredKey, so
// the refusal can name it. A store failure while loading an uncached key
// is returned as is.
func (a *App) authenticate(ctx context.Context, key string, now time.Time) (*keyEntry, error) {
	if _, ok := storage.ParseKey(key); !ok {
		return nil, errMalformedKey
	}
	var hash [32]byte
	e, err := a.state.index.lookup(ctx, a.keyring.HashTo(&hash, key), now)
	if err != nil {
		return nil, err
	}
	return e, e.usable(now)
}

// recordSecurity queues the audit event of a security refusal of key e (the
// gateway's and the management API's alike): its id and masked prefix,
// never the key.
//
// It also counts the refusal toward the key's security.alert burst.
func recordSecurity(st *sharedState, action string, e *keyEntry, r *http.Request, clientIP string, now time.Time) {
	st.alerts.SecurityRefusal(e.id.Key, strings.TrimPrefix(action, "security."), now)
	st.audit.record(action, e.keyID+"|"+clientIP, &storage.AuditEntry{
		UserID: e.id.Key.UserID,
		KeyID:  e.id.Key.ID,
		IP:     clientIP,
		Details: map[string]any{
			"key_prefix": e.id.Key.Masked(),
			"path":       r.URL.Path,
			"origin":     requestOriginHost(r),
		},
	}, now)
}

// requestCtx is what the gateway uses of a request's context, looked up
// once per request (each lookup walks the chain of context values):
// Caddy's replacer and vars (nil outside Caddy), and the extra access-log
// fields (nil when the server writes no access log: the fields would go
// nowhere, and every ExtraLogFields.Add or Set allocates).
type requestCtx struct {
	repl  *caddy.Replacer
	vars  map[string]any
	extra *caddyhttp.ExtraLogFields
	// entry is the caller's key once authenticated (annotate), and
	// logged the value of the gateway's access-log field once added
	// (logCaller): each Add or Set of an extra field clears a sync.Map,
	// which allocates, so a request adds its one field once.
	entry  *keyEntry
	logged zapcore.ObjectMarshaler
}

func newRequestCtx(r *http.Request) requestCtx {
	ctx := r.Context()
	var rc requestCtx
	rc.repl, _ = ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	rc.vars, _ = ctx.Value(caddyhttp.VarsCtxKey).(map[string]any)
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); !ok || srv.Logs != nil {
		rc.extra, _ = ctx.Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	}
	return rc
}

// setVar sets a Caddy var as caddyhttp.SetVar does.
func (rc *requestCtx) setVar(key string, v any) {
	if rc.vars == nil {
		return
	}
	if v == nil {
		delete(rc.vars, key)
		return
	}
	rc.vars[key] = v
}

func (rc *requestCtx) annotate(e *keyEntry) {
	if rc.repl != nil {
		rc.repl.Set("http.auth.user.id", e.userIDVal)
	}
	rc.setVar("gatewayz_user_id", e.userIDVal)
	rc.setVar("gatewayz_key_id", e.keyIDVal)
	rc.setVar("gatewayz_env", e.envVal)
	rc.entry = e
}

// logCaller adds the gateway's access-log field of an authenticated
// request, once, as soon as it is known what the request logs: the
// settlement of an admitted metered request (adm with its allocation:
// the caller's ids, then the metering fields as it settles), else the
// caller's ids alone (the key entry). It must run before the request is
// answered: the entry is written after the handler returns, with the
// fields added by then.
func (rc *requestCtx) logCaller(adm *admission) {
	if rc.extra == nil || rc.entry == nil || rc.logged != nil {
		return
	}
	var m zapcore.ObjectMarshaler = rc.entry
	if adm != nil && adm.alloc != nil {
		s := &adm.alloc.s
		s.adm = adm
		m = s
	}
	rc.logged = m
	rc.extra.Add(zap.Field{Key: logFieldKey, Type: zapcore.InlineMarshalerType, Interface: m})
}

// clientIP returns Caddy's client IP of the request (which honours the
// server's trusted_proxies).
func clientIP(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	return ip
}

func (rc *requestCtx) clientIP() string {
	ip, _ := rc.vars[caddyhttp.ClientIPVarKey].(string)
	return ip
}
