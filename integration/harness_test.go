package integration

// Shared harness of the integration tests. Every test here runs a real
// Caddy in this process through caddytest (one at a time: the admin
// endpoint is localhost:2999 and sites listen on :9080), with the
// caddy-gatewayz modules compiled in, a fresh bbolt file per test and fake
// upstreams on 127.0.0.1.
//
// Helpers:
//   - globalOptions: the global options every caddytest config must carry.
//   - startFakeOpenAI: an OpenAI-compatible upstream that records what it
//     received (to prove client keys never reach it).
//   - gatewayCaddyfile / startGateway: a Caddyfile with the management API
//     and the gateway in front of an upstream, and a running Caddy for it.
//   - (*gateway).do / doJSON: requests with headers; registerUser and
//     adminKey for creating users and keys through the management API.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/gatewayz/caddy-gatewayz"
)

// TestMain points HOME and the XDG directories at a temporary directory,
// so Caddy's data (certificates, autosave.json, the default database) never
// touches the real ones.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gatewayz-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, v := range []string{"HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"} {
		os.Setenv(v, filepath.Join(dir, strings.ToLower(v)))
	}
	// Caddy computed this path at package init, before the variables above.
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// globalOptions must be in every config loaded through caddytest: without
// them the admin endpoint moves and the next InitServer fails.
const globalOptions = `skip_install_trust
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns`

// gatewayBase is the site address of the test configs.
const gatewayBase = "http://localhost:9080"

// testAdminKey is the admin bearer of the configs built by gatewayCaddyfile.
const testAdminKey = "integration-admin-key-abcdefghijklmnop"

// upstreamKey is the operator's key the test configs send upstream.
const upstreamKey = "operator-upstream-key"

// seenRequest is what the fake upstream received.
type seenRequest struct {
	Method, Path string
	Header       http.Header
	Body         []byte
}

// fakeOpenAI is an OpenAI-compatible upstream: chat/completions,
// completions and embeddings answer JSON with fixed usage (prompt 4,
// completion 6, total 10 tokens); GET /v1/models lists two models. Every
// answer carries an upstream X-Ratelimit-Limit-Requests of 999999.
type fakeOpenAI struct {
	*httptest.Server
	mu   sync.Mutex
	seen []seenRequest
}

// startFakeOpenAI starts a fake upstream on 127.0.0.1, closed at the end of
// the test.
func startFakeOpenAI(t *testing.T) *fakeOpenAI {
	t.Helper()
	f := &fakeOpenAI{}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeOpenAI) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.seen = append(f.seen, seenRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	// Real upstreams send their own limits; the gateway's must win.
	w.Header().Set("X-Ratelimit-Limit-Requests", "999999")
	switch r.URL.Path {
	case "/v1/models":
		io.WriteString(w, `{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"},{"id":"llama-3","object":"model"}]}`)
	case "/v1/embeddings":
		io.WriteString(w, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],"model":"m","usage":{"prompt_tokens":4,"total_tokens":4}}`)
	default:
		var req struct {
			Model string `json:"model"`
		}
		_ = json.Unmarshal(body, &req)
		fmt.Fprintf(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":%q,`+
			`"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}`, req.Model)
	}
}

// requests returns a copy of what the upstream received so far.
func (f *fakeOpenAI) requests() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenRequest(nil), f.seen...)
}

// hostPort is the upstream's address for reverse_proxy.
func (f *fakeOpenAI) hostPort() string { return strings.TrimPrefix(f.URL, "http://") }

// gatewayConfig parameterizes gatewayCaddyfile; zero values give a working
// default.
type gatewayConfig struct {
	DBPath       string // default: a fresh file in t.TempDir()
	Upstream     string // host:port; default: a closed port
	AppOptions   string // extra lines inside the global `gatewayz { }`
	ServerBlock  string // extra global options (e.g. `servers { trusted_proxies static 127.0.0.1/32 }`)
	GatewayBlock string // lines inside the site's `gatewayz { }`
	SiteOptions  string // extra site directives (e.g. a `log` block)
}

// gatewayCaddyfile builds a config with the management API on /auth/*,
// /user/*, /admin/*, /plans*, and /v1/* through the gateway to the upstream
// (with the operator's key set by header_up). It returns the Caddyfile and
// the database path.
func gatewayCaddyfile(t *testing.T, c gatewayConfig) (string, string) {
	t.Helper()
	if c.DBPath == "" {
		c.DBPath = filepath.Join(t.TempDir(), "gatewayz.db")
	}
	if c.Upstream == "" {
		c.Upstream = "127.0.0.1:9"
	}
	cfg := fmt.Sprintf(`{
	%s
	%s
	gatewayz {
		storage bolt %s {
			no_sync
		}
		secret integration-secret-0123456789abcdef
		admin_key %s
		%s
	}
}

http://localhost:9080 {
	%s
	@api path /auth/* /user/* /admin/* /plans /plans/* /pricing /health
	handle @api {
		gatewayz_api
	}
	handle /v1/* {
		gatewayz {
			%s
		}
		reverse_proxy %s {
			header_up Authorization "Bearer %s"
			# the upstream's own rate-limit headers would duplicate ours
			header_down -x-ratelimit-*
		}
	}
	handle {
		respond "not here" 404
	}
}
`, globalOptions, c.ServerBlock, c.DBPath, testAdminKey, c.AppOptions, c.SiteOptions, c.GatewayBlock, c.Upstream, upstreamKey)
	return cfg, c.DBPath
}

// gateway is a running Caddy with a gatewayCaddyfile config.
type gateway struct {
	t      *testing.T
	tester *caddytest.Tester
	DBPath string
}

// startGateway loads a gatewayCaddyfile config into the test Caddy.
func startGateway(t *testing.T, c gatewayConfig) *gateway {
	t.Helper()
	if testing.Short() {
		t.Skip("caddytest integration test")
	}
	cfg, db := gatewayCaddyfile(t, c)
	tester := caddytest.NewTester(t)
	tester.InitServer(cfg, "caddyfile")
	forgetIdleConnections(tester)
	return &gateway{t: t, tester: tester, DBPath: db}
}

// reload loads another config into the running Caddy (a graceful reload).
func (g *gateway) reload(c gatewayConfig) {
	g.t.Helper()
	cfg, _ := gatewayCaddyfile(g.t, c)
	g.tester.InitServer(cfg, "caddyfile")
	forgetIdleConnections(g.tester)
}

// forgetIdleConnections closes the clients' idle keep-alive connections
// after a config load: the previous config's server closes its own, and a
// POST written onto one of them before the client notices ends in EOF
// (net/http does not retry a request that is not idempotent), which made
// a test fail now and then. A client sees the same on any reload; the
// tests are about what the new config serves.
func forgetIdleConnections(tester *caddytest.Tester) {
	tester.Client.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
}

// response is a finished HTTP exchange.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// json decodes the body into a map (empty when it is not a JSON object).
func (r response) json() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(r.Body, &m)
	return m
}

// errorCode returns error.code of an OpenAI-shaped error body.
func (r response) errorCode() string {
	e, _ := r.json()["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// errorMessage returns error.message of an OpenAI-shaped error body.
func (r response) errorMessage() string {
	e, _ := r.json()["error"].(map[string]any)
	s, _ := e["message"].(string)
	return s
}

// do sends a request to the gateway site; body may be nil, a string, bytes
// or a value to marshal as JSON; headers are "Name: value" strings.
func (g *gateway) do(method, path string, body any, headers ...string) response {
	g.t.Helper()
	return doRequest(g.t, g.tester.Client, method, gatewayBase+path, body, headers...)
}

// doRequest is do for any URL and client.
func doRequest(t *testing.T, client *http.Client, method, url string, body any, headers ...string) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		if strings.EqualFold(name, "Host") {
			req.Host = strings.TrimSpace(value)
			continue
		}
		req.Header.Add(name, strings.TrimSpace(value))
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// mustStatus fails the test unless the response has the status.
func (r response) mustStatus(t *testing.T, want int, what string) response {
	t.Helper()
	if r.Status != want {
		t.Fatalf("%s: status %d, want %d; body %s", what, r.Status, want, r.Body)
	}
	return r
}

// bearer is an Authorization header for do.
func bearer(key string) string { return "Authorization: Bearer " + key }

// adminAuth is the admin bearer header for do.
func adminAuth() string { return bearer(testAdminKey) }

// registerUser creates a user through POST /auth/register and returns
// their primary key and id.
func (g *gateway) registerUser(email string) (key string, userID int64) {
	g.t.Helper()
	out := g.do("POST", "/auth/register", map[string]any{"username": strings.Split(email, "@")[0], "email": email}).
		mustStatus(g.t, 200, "register "+email).json()
	key, _ = out["api_key"].(string)
	id, _ := out["user_id"].(float64)
	if key == "" || id == 0 {
		g.t.Fatalf("register %s: %v", email, out)
	}
	return key, int64(id)
}

// createKey creates a key with the given fields through POST
// /user/api-keys, authenticated by owner; it returns the key and its id.
func (g *gateway) createKey(owner string, fields map[string]any) (key string, id int64) {
	g.t.Helper()
	out := g.do("POST", "/user/api-keys", fields, bearer(owner)).mustStatus(g.t, 200, "create key").json()
	key, _ = out["api_key"].(string)
	f, _ := out["key_id"].(float64)
	if key == "" || f == 0 {
		g.t.Fatalf("create key: %v", out)
	}
	return key, int64(f)
}

// updateKey sends PUT /user/api-keys/{id} with fields, authenticated by
// owner, and returns the JSON answer.
func (g *gateway) updateKey(owner string, id int64, fields map[string]any) map[string]any {
	g.t.Helper()
	return g.do("PUT", fmt.Sprintf("/user/api-keys/%d", id), fields, bearer(owner)).mustStatus(g.t, 200, "update key").json()
}

// chatBody is a small chat completion request for model.
func chatBody(model string) map[string]any {
	return map[string]any{"model": model, "max_tokens": 16, "messages": []map[string]any{{"role": "user", "content": "hello"}}}
}
