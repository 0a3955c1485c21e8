// Package admin is the `http.handlers.gatewayz_api` module: the user and
// admin management API of caddy-gatewayz (registration, keys, plans,
// credits, usage, audit log), served from the store of the `gatewayz` app.
package admin

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/alerts"
	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler serves the management API. It is a terminal handler: every
// request it receives is answered (unknown paths with a JSON 404), so route
// only the API paths to it, e.g. /auth/*, /user/*, /admin/*, /plans* and
// /health.
type Handler struct {
	// MaxBodyBytes caps request bodies; larger bodies get 413.
	// Default 64 KiB.
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`

	// ConsolePath is where the web console is served (its page, and its
	// assets under <path>/assets/). Default "/console". It must not
	// overlap a route of the API.
	ConsolePath string `json:"console_path,omitempty"`

	// DisableConsole turns the web console off: its path is then an
	// unknown route like any other.
	DisableConsole bool `json:"disable_console,omitempty"`

	app    backend
	mux    *http.ServeMux
	logger *zap.Logger
	now    func() time.Time
	home   []byte // the landing page (home.go)
}

// backend is what the handler needs from the gatewayz app. It is an
// interface so that tests can hand the handler an App provisioned on a
// temporary database without a whole Caddy config.
type backend interface {
	WaitStarted(ctx context.Context) error
	Store() storage.Store
	Keyring() *storage.Keyring
	AdminKey() string
	SignupCredits() int64
	SignupPlanFor() (name string, months int)
	TrialPolicy() *caddymodule.TrialPolicy
	RotationGrace() time.Duration
	Authenticate(plaintext string) (*caddymodule.Identity, error)
	CheckNetworkAccess(r *http.Request, id *caddymodule.Identity) error
	PriceTable() caddymodule.PriceTable
	AlertHub() *alerts.Hub
	WebhookGuard() alerts.Guard
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.gatewayz_api",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision gets the shared gatewayz app and builds the route mux.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := caddymodule.GetApp(ctx)
	if err != nil {
		return err
	}
	h.setup(app, ctx.Logger())
	return nil
}

// setup wires the handler to its backend; Provision and tests call it.
func (h *Handler) setup(app backend, logger *zap.Logger) {
	h.app = app
	h.logger = logger
	if h.now == nil {
		h.now = caddymodule.Now
	}
	h.mux = h.buildMux()
	h.home = h.renderHome()
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.MaxBodyBytes < 0 {
		return fmt.Errorf("gatewayz_api: max_body_bytes must not be negative, got %d", h.MaxBodyBytes)
	}
	if err := h.validateConsolePath(); err != nil {
		return fmt.Errorf("gatewayz_api: %w", err)
	}
	return nil
}

// ServeHTTP answers the request from the route table; next is never called.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if err := h.app.WaitStarted(r.Context()); err != nil {
		writeErr(w, newError(http.StatusServiceUnavailable, "unavailable", "Service temporarily unavailable"))
		return nil
	}
	h.serve(w, r)
	return nil
}

// serve answers the console's paths (console.go) and dispatches the rest
// through the mux. Requests that match no route get the mux's own status
// (404, or 405 with Allow) in the API's JSON error shape.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	if h.serveConsole(w, r) {
		return
	}
	handler, pattern := h.mux.Handler(r)
	if pattern != "" {
		// Through the mux, not handler: only ServeMux.ServeHTTP sets the
		// request's path values ({key_id}, ...).
		h.mux.ServeHTTP(w, r)
		return
	}
	rec := &statusRecorder{header: http.Header{}}
	handler.ServeHTTP(rec, r)
	switch rec.status {
	case http.StatusMethodNotAllowed:
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		writeErr(w, newError(http.StatusMethodNotAllowed, "method_not_allowed", "Method Not Allowed"))
	case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		w.Write(rec.body.Bytes())
	default:
		writeErr(w, newError(http.StatusNotFound, "not_found", "Not Found"))
	}
}

// statusRecorder captures what the mux answers for unmatched requests.
type statusRecorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (s *statusRecorder) Header() http.Header { return s.header }
func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.body.Write(b)
}

// version is the module version from the build info ("devel" in a local
// build).
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	const path = "github.com/gatewayz/caddy-gatewayz"
	if bi.Main.Path == path {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == path {
			if d.Replace != nil && d.Replace.Version != "" {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return "unknown"
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ backend                     = (*caddymodule.App)(nil)
)
