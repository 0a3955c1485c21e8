package caddymodule

import (
	"fmt"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func init() {
	caddy.RegisterModule(new(Gateway))
}

// Gateway is the `http.handlers.gatewayz` handler. Placed in front of
// reverse_proxy, it decides for every request whether it may reach the
// upstream: key validation, access control (IP allowlist, referrer domains,
// scope), plan entitlements, rate limits, then metering and credits.
//
// Routes: POST /v1/chat/completions, /v1/completions and /v1/embeddings are
// metered; GET /v1/models (and /v1/models/*) is free for any valid key; paths
// matching free_paths are free too; every other path is answered 404
// without reaching the upstream.
type Gateway struct {
	// Limits override the app's default_limits for this site, field by
	// field (zero fields fall back to the app's). Admin limits and a key's
	// own limits still take precedence.
	Limits storage.RateLimits `json:"limits,omitzero"`

	// MaxBodySize is the largest request body accepted on metered routes,
	// in bytes. Default 4 MiB.
	MaxBodySize int64 `json:"max_body_size,omitempty"`

	// FreePaths are path globs (path.Match syntax, e.g. "/v1/files*")
	// proxied for any valid key without metering: no body read, no credit,
	// no plan counting (rate limits still count requests).
	FreePaths []string `json:"free_paths,omitempty"`

	// CORS lets web pages on other origins call the gateway from a
	// browser (cors.go). Default: off (browsers refuse cross-origin calls).
	CORS *CORS `json:"cors,omitempty"`

	// Metering settings (settle.go): default_max_tokens,
	// min_completion_tokens, lower_max_tokens, max_tokens_field,
	// embeddings_reserve_percent, max_response_buffer, settle_timeout.
	Metering

	app    *App
	state  *sharedState
	logger *zap.Logger
}

// defaultMaxBodySize bounds inference request bodies.
const defaultMaxBodySize = 4 << 20

// CaddyModule returns the Caddy module information.
func (*Gateway) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.gatewayz",
		New: func() caddy.Module { return new(Gateway) },
	}
}

// Provision gets the gatewayz app and applies defaults.
func (g *Gateway) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	if g.MaxBodySize <= 0 {
		g.MaxBodySize = defaultMaxBodySize
	}
	app, err := GetApp(ctx)
	if err != nil {
		return fmt.Errorf("loading gatewayz app: %v", err)
	}
	g.app = app
	g.state = app.state
	g.provisionMetering()
	if err := registerMetrics(ctx, g.state.store); err != nil {
		return fmt.Errorf("gatewayz: registering metrics: %v", err)
	}
	return nil
}

// Validate checks the configuration.
func (g *Gateway) Validate() error {
	if err := validateLimits(g.Limits); err != nil {
		return fmt.Errorf("gatewayz: limits: %v", err)
	}
	if err := g.validateMetering(); err != nil {
		return err
	}
	if err := g.CORS.validate(); err != nil {
		return err
	}
	for _, p := range g.FreePaths {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return fmt.Errorf("gatewayz: bad free_paths glob %q", p)
		}
	}
	return nil
}

// ServeHTTP runs the admission steps in order; the first refusal answers
// the client with an OpenAI-shaped error and nothing reaches the upstream.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	now := clockNow()
	if g.CORS.preflight(w, r) {
		requestCounters(route{}, false)[outcomePreflight].Inc()
		return nil
	}
	rt, gerr := g.route(r)
	if gerr != nil {
		return g.refuse(w, r, nil, rt, false, gerr, now)
	}
	rc := newRequestCtx(r)
	ip := rc.clientIP()
	e, gerr := g.authenticate(r, credentials(r), ip, now)
	if gerr != nil {
		return g.refuse(w, r, nil, rt, true, gerr, now)
	}
	rc.annotate(e)
	adm, gerr := g.newAdmission(r, e, rt, ip, now)
	if gerr != nil {
		return g.refuse(w, r, nil, rt, true, gerr, now)
	}
	if gerr := g.checkAccess(r, e, ip, rt, now); gerr != nil {
		return g.refuse(w, r, adm, rt, true, gerr, now)
	}
	if gerr := g.CORS.allowCaller(w.Header(), r, e.referrers); gerr != nil {
		return g.refuse(w, r, adm, rt, true, gerr, now)
	}
	if rt.metered() {
		if adm.req, gerr = readInferenceInto(adm.newRequest(), w, r, rt.endpoint, g.MaxBodySize); gerr != nil {
			return g.refuse(w, r, adm, rt, true, gerr, now)
		}
		setModelVars(r, adm.req.Model)
		if gerr := adm.checkModel(); gerr != nil {
			return g.refuse(w, r, adm, rt, true, gerr, now)
		}
	}
	if gerr := g.admit(r, adm, now, w.Header()); gerr != nil {
		return g.refuse(w, r, adm, rt, true, gerr, now)
	}
	return g.proxy(w, r, next, adm, &rc)
}

// refuse answers with the refusal, with the request's id, the CORS headers
// of an allowed origin and the x-ratelimit-* headers of the caller when
// known, and counts it by outcome. It returns nil: the response is written.
func (g *Gateway) refuse(w http.ResponseWriter, r *http.Request, adm *admission, rt route, routed bool, gerr *gatewayError, now time.Time) error {
	h := w.Header()
	if adm != nil && h[hdrLimitRequests] == nil {
		g.state.limiter.peek(adm, now, h)
	}
	h.Set(hdrRequestID, requestID(r))
	g.CORS.allowRefusal(h, r)
	requestCounters(rt, routed)[refusalOutcome(gerr)].Inc()
	writeError(w, gerr)
	return nil
}

// route is what the gateway does with a path: meter an inference endpoint,
// or pass a free one.
type route struct {
	endpoint string // "chat", "completions", "embeddings"; "" for free routes
}

func (rt route) metered() bool { return rt.endpoint != "" }

// route classifies the request; unknown paths are refused (default deny:
// nothing reaches the upstream unmetered unless listed as free).
func (g *Gateway) route(r *http.Request) (route, *gatewayError) {
	p := r.URL.Path
	var endpoint string
	switch p {
	case "/v1/chat/completions":
		endpoint = endpointChat
	case "/v1/completions":
		endpoint = endpointCompletions
	case "/v1/embeddings":
		endpoint = endpointEmbeddings
	}
	if endpoint != "" {
		if r.Method != http.MethodPost {
			return route{}, errMethodNotAllowed(r.Method, p)
		}
		return route{endpoint: endpoint}, nil
	}
	if p == "/v1/models" || strings.HasPrefix(p, "/v1/models/") {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return route{}, errMethodNotAllowed(r.Method, p)
		}
		return route{}, nil
	}
	for _, glob := range g.FreePaths {
		if matchPathGlob(glob, p) {
			return route{}, nil
		}
	}
	return route{}, errorf(http.StatusNotFound, "invalid_request_error", "unknown_url",
		fmt.Sprintf("Unknown request URL: %s %s", r.Method, p))
}

// matchPathGlob matches a request path against a free_paths glob: a glob
// whose only wildcard is a final "*" is a prefix match (so "/v1/files*"
// covers "/v1/files/abc", as Caddy's path matcher does); others use
// path.Match.
func matchPathGlob(glob, p string) bool {
	if prefix, ok := strings.CutSuffix(glob, "*"); ok && !strings.ContainsAny(prefix, "*?[\\") {
		return strings.HasPrefix(p, prefix)
	}
	ok, _ := path.Match(glob, p)
	return ok
}

func errMethodNotAllowed(method, p string) *gatewayError {
	return errorf(http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed",
		fmt.Sprintf("Method %s is not allowed on %s", method, p))
}

// admission is a request the gateway let through, handed to the metering
// step (proxy). It is owned by that request; read its fields, do not change
// them.
//
//   - key, user: snapshots of the caller's API key and user (read-only,
//     shared with other requests).
//   - limits: the per-key rate limits in force (admin > key > site > app,
//     first non-zero per field); userLimits the per-user ones (admin > site
//     > app).
//   - req: the parsed inference request; nil on free routes (GET /v1/models,
//     free_paths), which are neither metered nor charged.
//   - clientIP: Caddy's client IP. planName: the plan in force ("Trial"
//     without one). env: the key's environment tag.
//   - estTokens: the tokens counted against the token limits at admission
//     (prompt estimate + max_tokens).
//
// After settlement the metering step calls recordTokens(actual) once with
// the real total tokens, which replaces the estimate in every token
// counter; when the request was refused or refunded (nothing charged, no
// usage recorded) it calls recordRefund instead.
type admission struct {
	key       *storage.APIKey
	user      *storage.User
	rl        *resolvedLimits // the key's and the user's rate limits
	req       *inferenceRequest
	clientIP  string
	planName  string
	env       string
	estTokens int64

	entry       *keyEntry
	models      []string // model globs of the plan; empty: all
	planLimits  periodLimits
	lim         *limiter
	planCounted bool
	ends        [numPeriods]int64
	recorded    bool
	headerVals  [6]string       // backing of the x-ratelimit-* header values
	metered     *meteredRequest // the allocation this admission is part of, on metered routes
}

// meteredRequest is what a metered request needs, allocated as one
// object: its admission, parsed request and settlement.
type meteredRequest struct {
	adm admission
	ir  inferenceRequest
	s   settlement
}

// newRequest returns the (zero) inference request to parse the body into.
func (a *admission) newRequest() *inferenceRequest {
	if a.metered != nil {
		return &a.metered.ir
	}
	return new(inferenceRequest)
}

// newSettlement returns the (zero) settlement of the request.
func (a *admission) newSettlement() *settlement {
	if a.metered != nil {
		return &a.metered.s
	}
	return new(settlement)
}

// recordTokens replaces the estimated tokens counted at admission by the
// actual ones, in the per-minute/hour/day and plan counters whose window
// has not ended since. Call it once, after settlement; later calls do
// nothing.
func (a *admission) recordTokens(actual int64) {
	if a == nil || a.recorded || a.lim == nil {
		return
	}
	a.recorded = true
	if actual < 0 {
		actual = 0
	}
	a.lim.correct(a.key.UserID, a.key.ID, a.planCounted, false, &a.ends, a.estTokens, actual)
}

// recordRefund is recordTokens(0) for a request that was refused after
// admission (402, request cap) or refunded (upstream error, nothing
// delivered): its tokens are taken back and it no longer counts toward the
// plan's daily and monthly requests, which count charged requests only (as
// the usage records they are re-seeded from after a restart). It still
// counts toward the per-minute/hour/day request rate limits, so refusals
// cannot be retried without bound.
func (a *admission) recordRefund() {
	if a == nil || a.recorded || a.lim == nil {
		return
	}
	a.recorded = true
	a.lim.correct(a.key.UserID, a.key.ID, a.planCounted, true, &a.ends, a.estTokens, 0)
}

// Cleanup does nothing: the shared state belongs to the app.
func (g *Gateway) Cleanup() error { return nil }

// Interface guards
var (
	_ caddy.Provisioner           = (*Gateway)(nil)
	_ caddy.Validator             = (*Gateway)(nil)
	_ caddy.CleanerUpper          = (*Gateway)(nil)
	_ caddyhttp.MiddlewareHandler = (*Gateway)(nil)
)
