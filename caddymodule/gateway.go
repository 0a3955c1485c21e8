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

	// Responses meters POST /v1/responses (the OpenAI Responses API) and
	// passes GET /v1/responses/{id} free for a valid key. Turn it on only
	// for an upstream that serves the Responses API; off (the default),
	// those paths are a 404 like any unknown route.
	Responses bool `json:"responses,omitempty"`

	// CORS lets web pages on other origins call the gateway from a
	// browser (cors.go). Default: off (browsers refuse cross-origin calls).
	CORS *CORS `json:"cors,omitempty"`

	// Metering settings (metering.go): default_max_tokens,
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
	if err := registerMetrics(ctx, g.state); err != nil {
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

// ServeHTTP runs the steps in the order of the files that hold them: the
// route (here), the key (auth.go), its access rules (access.go), the
// admission (admission.go: policy, body and model, limits) and metering
// (metering.go: reservation, upstream, settlement). The first refusal
// answers the client with an OpenAI-shaped error and nothing reaches the
// upstream.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	now := clockNow()
	if g.CORS.preflight(w, r) {
		requestCounters(route{}, false)[outcomePreflight].Inc()
		return nil
	}
	if err := g.app.WaitStarted(r.Context()); err != nil {
		return g.refuse(w, r, nil, route{}, false, errUnavailable, now)
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
	// The key's own restrictions (its access rules, and the web origin it
	// may be used from) need nothing but the key: they run before the
	// policy lookup, which may read the store.
	gerr = g.checkAccess(r, e, ip, rt, now)
	if gerr == nil {
		gerr = g.CORS.allowCaller(w.Header(), r, e.referrers)
	}
	if gerr != nil {
		// The refusal still carries the caller's current limits when the
		// policy can be had.
		adm, _ := g.newAdmission(r, e, rt, ip, now)
		rc.logCaller(nil)
		return g.refuse(w, r, adm, rt, true, gerr, now)
	}
	adm, gerr := g.newAdmission(r, e, rt, ip, now)
	if gerr != nil {
		rc.logCaller(nil)
		return g.refuse(w, r, nil, rt, true, gerr, now)
	}
	rc.logCaller(adm)
	if rt.metered() {
		if adm.req, gerr = readInferenceInto(adm.newRequest(), w, r, rt.endpoint, g.MaxBodySize); gerr != nil {
			return g.refuse(w, r, adm, rt, true, gerr, now)
		}
		rc.setModelVars(adm.req.Model)
		if gerr := adm.checkModel(); gerr != nil {
			return g.refuse(w, r, adm, rt, true, gerr, now)
		}
	}
	if gerr := g.admit(r, adm, now, w.Header()); gerr != nil {
		return g.refuse(w, r, adm, rt, true, gerr, now)
	}
	if rt.endpoint == endpointMessages {
		setAnthropicRateLimitHeaders(w.Header(), now)
	}
	return g.proxy(w, r, next, adm, &rc)
}

// refuse answers with the refusal, with the request's id, the CORS headers
// of an allowed origin and the x-ratelimit-* headers of the caller when
// known, and counts it by outcome. It returns nil: the response is written.
func (g *Gateway) refuse(w http.ResponseWriter, r *http.Request, adm *admission, rt route, routed bool, gerr *gatewayError, now time.Time) error {
	h := w.Header()
	// Limits counted by the store are only known from its answer: a
	// refusal before the count carries no x-ratelimit-* headers there.
	if adm != nil && h[hdrLimitRequests] == nil && g.state.limits == nil {
		g.state.limiter.peek(adm, now, h)
	}
	rc := newRequestCtx(r)
	h.Set(hdrRequestID, rc.requestID())
	g.CORS.allowRefusal(h, r)
	requestCounters(rt, routed)[refusalOutcome(gerr)].Inc()
	if isAnthropicPath(r.URL.Path) {
		setAnthropicRateLimitHeaders(h, now)
	}
	writeErrorFor(w, r.URL.Path, gerr)
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
	case "/v1/messages":
		endpoint = endpointMessages
	case "/v1/responses":
		if g.Responses {
			endpoint = endpointResponses
		}
	}
	if endpoint != "" {
		if r.Method != http.MethodPost {
			return route{}, errMethodNotAllowed(r.Method, p)
		}
		return route{endpoint: endpoint}, nil
	}
	if p == "/v1/models" || strings.HasPrefix(p, "/v1/models/") || (g.Responses && isResponseRetrieval(p)) {
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

// Cleanup does nothing: the shared state belongs to the app.
func (g *Gateway) Cleanup() error { return nil }

// Interface guards
var (
	_ caddy.Provisioner           = (*Gateway)(nil)
	_ caddy.Validator             = (*Gateway)(nil)
	_ caddy.CleanerUpper          = (*Gateway)(nil)
	_ caddyhttp.MiddlewareHandler = (*Gateway)(nil)
)
