package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	_ "github.com/gatewayz/caddy-gatewayz/admin"
	_ "github.com/gatewayz/caddy-gatewayz/caddymodule"
)

// The documentation pages are checked in a real browser: headless Chromium
// loads /docs and /redoc from a running Caddy, and the rendered DOM must
// show the operations of /openapi.json. The browser runs as if air-gapped
// (every host but localhost fails to resolve), and the test fails on any
// Content-Security-Policy refusal or any request to another origin.
//
// Without Chromium the test is skipped, except in CI (CI set), where
// .ci/run installs it and a missing browser is a failure.

const (
	docsBase           = "http://localhost:9080"
	docsBrowserTimeout = 90 * time.Second
)

// docsCaddyfile serves the management API (with its docs) and the gateway's
// /v1 routes (/v1/responses too), as Caddyfile.example does, in front of the upstream given
// (127.0.0.1:9, a closed port, when a test never gets that far).
const docsCaddyfile = `{
	skip_install_trust
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	gatewayz {
		db_path %s
		secret docs-test-secret-0123456789abcdef
	}
}

http://localhost:9080 {
	handle /v1/* {
		gatewayz {
			responses
		}
		reverse_proxy %s
	}
	handle {
		gatewayz_api
	}
}
`

func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed (CI is set: .ci/run installs it; apt-get install -y chromium)")
	}
	t.Skip("chromium not installed; apt-get install -y chromium (required when CI is set)")
	return ""
}

// startDocsCaddy starts Caddy with docsCaddyfile on a fresh database, with
// Caddy's HOME and XDG directories in a temporary directory.
func startDocsCaddy(t *testing.T) *caddytest.Tester {
	t.Helper()
	return startDocsCaddyUpstream(t, "127.0.0.1:9")
}

func startDocsCaddyUpstream(t *testing.T, upstream string) *caddytest.Tester {
	t.Helper()
	dir := t.TempDir()
	for _, v := range []string{"HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"} {
		t.Setenv(v, dir)
	}
	tester := caddytest.NewTester(t)
	db := filepath.Join(dir, "gatewayz.db")
	tester.InitServer(fmt.Sprintf(docsCaddyfile, db, upstream), "caddyfile")
	t.Cleanup(func() {
		if t.Failed() && !docsConfigLoaded(tester, db) {
			t.Log("NOTE: the running Caddy no longer has this test's config: another process on this machine " +
				"loaded its own through localhost:2999 (concurrent caddytest runs share that admin endpoint)")
		}
	})
	return tester
}

// docsConfigLoaded reports whether Caddy still runs the config whose
// database is db.
func docsConfigLoaded(tester *caddytest.Tester, db string) bool {
	resp, err := tester.Client.Get("http://localhost:2999/config/")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	quoted, _ := json.Marshal(db)
	return strings.Contains(string(b), string(quoted))
}

// openAPIOperations fetches /openapi.json from the server and returns its
// operations as "METHOD /path" with their summaries.
func openAPIOperations(t *testing.T, tester *caddytest.Tester) map[string]string {
	t.Helper()
	resp, err := tester.Client.Get(docsBase + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /openapi.json: %d", resp.StatusCode)
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	ops := map[string]string{}
	for p, item := range doc.Paths {
		for method, raw := range item {
			var op struct {
				Summary string `json:"summary"`
			}
			switch method {
			case "get", "put", "post", "delete", "patch", "head", "options", "trace":
			default:
				continue
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatal(err)
			}
			ops[strings.ToUpper(method)+" "+p] = op.Summary
		}
	}
	if len(ops) < 30 {
		t.Fatalf("only %d operations in /openapi.json", len(ops))
	}
	return ops
}

// browserResult is what a headless Chromium run saw.
type browserResult struct {
	dom     string
	console []string // console and CSP messages
	urls    []string // every URL the page requested (from the net log)
}

// renderInChromium loads target in headless Chromium and returns the DOM
// after scripts ran, the console output and the requested URLs (from a
// net log). A browser that exits without printing any DOM (it happens when
// the machine is starved) is started once more.
func renderInChromium(t *testing.T, chromium, target string) browserResult {
	t.Helper()
	res, stderr := runChromium(t, chromium, target)
	if res.dom == "" {
		t.Logf("chromium printed no DOM for %s; retrying once. stderr:\n%s", target, tail(stderr))
		res, stderr = runChromium(t, chromium, target)
		if res.dom == "" {
			t.Fatalf("chromium printed no DOM for %s; stderr:\n%s", target, tail(stderr))
		}
	}
	return res
}

func runChromium(t *testing.T, chromium, target string) (browserResult, string) {
	t.Helper()
	dir := t.TempDir()
	netlog := filepath.Join(dir, "netlog.json")
	ctx, cancel := context.WithTimeout(context.Background(), docsBrowserTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--disable-extensions", "--no-default-browser-check",
		"--disable-features=AutofillServerCommunication,Translate,OptimizationHints,MediaRouter",
		"--user-data-dir="+filepath.Join(dir, "profile"),
		// Air-gapped: only localhost resolves.
		"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
		"--enable-logging=stderr", "--v=0",
		"--log-net-log="+netlog,
		"--virtual-time-budget=10000",
		"--dump-dom", target)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_CACHE_HOME="+dir)
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("chromium did not finish %s within %s; stderr:\n%s", target, docsBrowserTimeout, tail(stderr.String()))
	}
	if err != nil {
		t.Fatalf("chromium %s: %v; stderr:\n%s", target, err, tail(stderr.String()))
	}
	res := browserResult{dom: string(out)}
	sc := bufio.NewScanner(strings.NewReader(stderr.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(line, "CONSOLE") || strings.Contains(line, "Content Security Policy") || strings.Contains(line, "Refused to") {
			res.console = append(res.console, line)
		}
	}
	res.urls = pageRequests(t, netlog, docsBase)
	return res, stderr.String()
}

// pageRequests returns the URLs of the requests the page at origin made,
// from a Chromium net log: the URL_REQUEST_START_JOB events whose initiator
// is the page's origin. (The browser's own background requests, which the
// host resolver rules make fail, have no such initiator.)
func pageRequests(t *testing.T, file, origin string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("reading chromium net log: %v", err)
	}
	var log struct {
		Constants struct {
			LogEventTypes map[string]int `json:"logEventTypes"`
		} `json:"constants"`
		Events []struct {
			Type   int `json:"type"`
			Params struct {
				URL       string `json:"url"`
				Initiator string `json:"initiator"`
			} `json:"params"`
		} `json:"events"`
	}
	if err := json.Unmarshal(b, &log); err != nil {
		t.Fatalf("parsing chromium net log: %v", err)
	}
	start, ok := log.Constants.LogEventTypes["URL_REQUEST_START_JOB"]
	if !ok {
		t.Fatal("chromium net log has no URL_REQUEST_START_JOB event type")
	}
	seen := map[string]bool{}
	for _, e := range log.Events {
		if e.Type == start && e.Params.Initiator == origin && e.Params.URL != "" {
			seen[e.Params.URL] = true
		}
	}
	urls := make([]string, 0, len(seen))
	for u := range seen {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	return urls
}

func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}

// checkSameOrigin fails on console errors about refused loads and on any
// request that left the server's origin.
func checkSameOrigin(t *testing.T, page string, res browserResult) {
	t.Helper()
	for _, line := range res.console {
		if strings.Contains(line, "Content Security Policy") || strings.Contains(line, "Refused to") ||
			strings.Contains(line, "ERR_NAME_NOT_RESOLVED") {
			t.Errorf("%s: %s", page, line)
		}
	}
	if !slices.Contains(res.urls, docsBase+"/openapi.json") {
		t.Errorf("%s: the page did not fetch /openapi.json (requests: %v)", page, res.urls)
	}
	for _, raw := range res.urls {
		u, err := url.Parse(raw)
		if err != nil {
			t.Errorf("%s: unparsable URL %q in the net log", page, raw)
			continue
		}
		switch u.Scheme {
		case "data", "blob", "about", "chrome", "chrome-untrusted", "devtools":
			continue
		}
		if u.Scheme != "http" || u.Host != "localhost:9080" {
			t.Errorf("%s requested %s: not same-origin", page, raw)
		}
	}
}

func TestDocsBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("caddytest is skipped in -short mode")
	}
	chromium := findChromium(t)
	tester := startDocsCaddy(t)
	ops := openAPIOperations(t, tester)

	t.Run("swagger-ui", func(t *testing.T) {
		res := renderInChromium(t, chromium, docsBase+"/docs")
		checkSameOrigin(t, "/docs", res)
		// Swagger UI renders one .opblock per operation, tagged with its
		// method and path.
		blocks := regexp.MustCompile(`class="opblock opblock-(get|put|post|delete|patch)\b`).FindAllString(res.dom, -1)
		if len(blocks) != len(ops) {
			t.Errorf("/docs rendered %d operation blocks, the document has %d operations", len(blocks), len(ops))
		}
		if !strings.Contains(res.dom, "/auth/register") {
			t.Error("/docs does not show /auth/register")
		}
		for key := range ops {
			method, p, _ := strings.Cut(key, " ")
			// The path is rendered with zero-width break opportunities.
			if !strings.Contains(res.dom, `data-path="`+p+`"`) && !strings.Contains(stripZeroWidth(res.dom), p) {
				t.Errorf("/docs does not show %s %s", method, p)
			}
		}
		if t.Failed() {
			t.Logf("console:\n%s\nDOM (%d bytes):\n%s", strings.Join(res.console, "\n"), len(res.dom), tail(res.dom))
		}
	})

	t.Run("redoc", func(t *testing.T) {
		res := renderInChromium(t, chromium, docsBase+"/redoc")
		checkSameOrigin(t, "/redoc", res)
		dom := stripZeroWidth(res.dom)
		if strings.Contains(dom, "Something went wrong") {
			t.Error("ReDoc reports an error rendering the document")
		}
		for key, summary := range ops {
			if summary == "" {
				t.Errorf("%s has no summary to show", key)
				continue
			}
			if !strings.Contains(dom, htmlEscape(summary)) {
				t.Errorf("/redoc does not show the operation %q (%s)", summary, key)
			}
		}
		if !strings.Contains(dom, "/auth/register") {
			t.Error("/redoc does not show /auth/register")
		}
		if t.Failed() {
			t.Logf("console:\n%s\nDOM (%d bytes):\n%s", strings.Join(res.console, "\n"), len(res.dom), tail(res.dom))
		}
	})
}

// Every documented /v1 route is served by the gateway handler (it answers
// a request without a key with the OpenAI-shaped 401, not the 404 of an
// unknown route), and an undocumented one is not.
func TestDocsGatewayRoutesServed(t *testing.T) {
	if testing.Short() {
		t.Skip("caddytest is skipped in -short mode")
	}
	tester := startDocsCaddy(t)
	ops := openAPIOperations(t, tester)
	var v1 int
	for key := range ops {
		method, p, _ := strings.Cut(key, " ")
		if !strings.HasPrefix(p, "/v1/") {
			continue
		}
		v1++
		p = strings.ReplaceAll(p, "{model}", "gpt-4o-mini")
		p = strings.ReplaceAll(p, "{response_id}", "resp_1")
		status, body := docsRequest(t, tester, method, p)
		if status != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s without a key: %d %s, want the gateway's 401", method, p, status, body)
		}
	}
	if v1 == 0 {
		t.Fatal("no /v1 routes documented")
	}
	if status, body := docsRequest(t, tester, "POST", "/v1/undocumented"); status != http.StatusNotFound || !strings.Contains(body, `"error"`) {
		t.Errorf("POST /v1/undocumented: %d %s, want the gateway's 404", status, body)
	}
}

func docsRequest(t *testing.T, tester *caddytest.Tester, method, p string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, docsBase+p, strings.NewReader(`{"model":"gpt-4o-mini"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

var zeroWidth = strings.NewReplacer("\u200b", "", "<wbr>", "", "&ZeroWidthSpace;", "", "&#8203;", "")

func stripZeroWidth(s string) string { return zeroWidth.Replace(s) }

var htmlEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func htmlEscape(s string) string { return htmlEscaper.Replace(s) }

// docsUpstream is an OpenAI-compatible upstream with fixed answers.
func docsUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	answers := map[string]string{
		"POST /v1/chat/completions": `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini",` +
			`"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],` +
			`"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}`,
		"POST /v1/completions": `{"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-instruct",` +
			`"choices":[{"index":0,"text":"Hi","finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}`,
		"POST /v1/embeddings": `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],` +
			`"model":"text-embedding-3-small","usage":{"prompt_tokens":3,"total_tokens":3}}`,
		"GET /v1/models":             `{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","owned_by":"openai"}]}`,
		"GET /v1/models/gpt-4o-mini": `{"id":"gpt-4o-mini","object":"model","owned_by":"openai"}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		answer, ok := answers[r.Method+" "+r.URL.Path]
		if !ok {
			http.Error(w, `{"error":{"message":"no such route","type":"invalid_request_error","code":null}}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Real /v1 answers of the gateway (through a fake upstream) match the
// document: status, body schema, gateway_usage and the metering headers.
func TestDocsGatewayResponsesMatchDocument(t *testing.T) {
	if testing.Short() {
		t.Skip("caddytest is skipped in -short mode")
	}
	upstream := docsUpstream(t)
	tester := startDocsCaddyUpstream(t, strings.TrimPrefix(upstream.URL, "http://"))

	resp, err := tester.Client.Get(docsBase + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	doc, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatal(err)
	}
	status, body := docsRequestBody(t, tester, "POST", "/auth/register", "",
		`{"username":"docs","email":"docs@example.com"}`)
	if status != 200 {
		t.Fatalf("register: %d %s", status, body)
	}
	var reg struct {
		APIKey string `json:"api_key"`
	}
	if err := json.Unmarshal([]byte(body), &reg); err != nil || reg.APIKey == "" {
		t.Fatalf("register answer %s", body)
	}

	for _, c := range []struct {
		method, template, path, body string
		want                         int
		metered                      bool
	}{
		{"POST", "/v1/chat/completions", "", `{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"Hello"}]}`, 200, true},
		{"POST", "/v1/completions", "", `{"model":"gpt-3.5-turbo-instruct","max_tokens":20,"prompt":"Hello"}`, 200, true},
		{"POST", "/v1/embeddings", "", `{"model":"text-embedding-3-small","input":"Hello"}`, 200, true},
		{"GET", "/v1/models", "", "", 200, false},
		{"GET", "/v1/models/{model}", "/v1/models/gpt-4o-mini", "", 200, false},
		{"POST", "/v1/chat/completions", "", `{"messages":[]}`, 400, false},
	} {
		p := c.path
		if p == "" {
			p = c.template
		}
		what := c.method + " " + p
		req, err := http.NewRequest(c.method, docsBase+p, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+reg.APIKey)
		if c.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: %d %s, want %d", what, resp.StatusCode, got, c.want)
			continue
		}
		pathItem := doc.Paths.Find(c.template)
		op := pathItem.GetOperation(c.method)
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{
				Request: req,
				Route:   &routers.Route{Spec: doc, Path: c.template, PathItem: pathItem, Method: c.method, Operation: op},
			},
			Status:  resp.StatusCode,
			Header:  resp.Header,
			Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
		}
		in.SetBodyBytes(got)
		if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
			t.Errorf("%s: the %d answer does not match the document: %v\n%s", what, resp.StatusCode, err, got)
		}
		if c.want != 200 {
			continue
		}
		if !c.metered {
			continue
		}
		if resp.Header.Get("X-Request-Id") == "" {
			t.Errorf("%s: no x-request-id", what)
		}
		if resp.Header.Get("X-Gatewayz-Credits-Remaining") == "" {
			t.Errorf("%s: no x-gatewayz-credits-remaining", what)
		}
		var out struct {
			GatewayUsage map[string]any `json:"gateway_usage"`
		}
		_ = json.Unmarshal(got, &out)
		gu := doc.Components.Schemas["GatewayUsage"].Value
		if out.GatewayUsage == nil {
			t.Errorf("%s: no gateway_usage in %s", what, got)
		}
		for k := range out.GatewayUsage {
			if gu.Properties[k] == nil {
				t.Errorf("%s: gateway_usage.%s is not documented", what, k)
			}
		}
	}
}

func docsRequestBody(t *testing.T, tester *caddytest.Tester, method, p, bearer, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, docsBase+p, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}
