package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// loadOpenAPI parses and validates an OpenAPI document with kin-openapi,
// with example, default and format checking on.
func loadOpenAPI(t *testing.T, b []byte) (*openapi3.T, error) {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(b)
	if err != nil {
		return nil, err
	}
	err = doc.Validate(context.Background(),
		openapi3.EnableMultiError(),
		openapi3.EnableExamplesValidation(),
		openapi3.EnableSchemaDefaultsValidation(),
		openapi3.EnableSchemaFormatValidation(),
		openapi3.EnableSchemaPatternValidation(),
	)
	return doc, err
}

func mustLoadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := loadOpenAPI(t, openAPIDocument)
	if err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI document: %v", err)
	}
	return doc
}

func TestDocsOpenAPIValid(t *testing.T) {
	doc := mustLoadOpenAPI(t)
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	for _, name := range []string{"userKey", "adminKey", "apiKeyHeader"} {
		if doc.Components.SecuritySchemes[name] == nil {
			t.Errorf("security scheme %q missing", name)
		}
	}
	if s := doc.Components.SecuritySchemes["apiKeyHeader"]; s != nil && (s.Value.In != "header" || !strings.EqualFold(s.Value.Name, "x-api-key")) {
		t.Errorf("apiKeyHeader = %s %s, want header x-api-key", s.Value.In, s.Value.Name)
	}
	// The description states the product decisions clients rely on.
	for _, want := range []string{"shown exactly once", "422", "409", "WWW-Authenticate", "x-api-key", "never goes below zero"} {
		if !strings.Contains(doc.Info.Description, want) {
			t.Errorf("info.description does not mention %q", want)
		}
	}
}

// The validator must be able to fail: damaged copies of the document are
// refused.
func TestDocsOpenAPIValidatorRejectsBrokenDocuments(t *testing.T) {
	var base map[string]any
	if err := json.Unmarshal(openAPIDocument, &base); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(doc map[string]any){
		"dangling schema ref": func(doc map[string]any) {
			doc["components"].(map[string]any)["schemas"].(map[string]any)["Error"] = map[string]any{"$ref": "#/components/schemas/Nope"}
		},
		"response without description": func(doc map[string]any) {
			op := doc["paths"].(map[string]any)["/health"].(map[string]any)["get"].(map[string]any)
			delete(op["responses"].(map[string]any)["200"].(map[string]any), "description")
		},
		"unknown parameter location": func(doc map[string]any) {
			op := doc["paths"].(map[string]any)["/plans/{plan_id}"].(map[string]any)["get"].(map[string]any)
			op["parameters"].([]any)[0].(map[string]any)["in"] = "body"
		},
		"undeclared path parameter": func(doc map[string]any) {
			paths := doc["paths"].(map[string]any)
			paths["/plans/{other_id}"] = paths["/plans"]
		},
		"example not matching its schema": func(doc map[string]any) {
			s := doc["components"].(map[string]any)["schemas"].(map[string]any)["Scopes"].(map[string]any)
			s["example"] = map[string]any{"read": 5}
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			var doc map[string]any
			b, _ := json.Marshal(base)
			_ = json.Unmarshal(b, &doc)
			damage(doc)
			b, _ = json.Marshal(doc)
			if _, err := loadOpenAPI(t, b); err == nil {
				t.Fatal("damaged document accepted")
			}
		})
	}
}

// openAPIPath turns a Go ServeMux pattern path into its OpenAPI form:
// "{file...}" becomes "{file}" and a trailing "{$}" goes.
func openAPIPath(pattern string) string {
	p := strings.TrimSuffix(pattern, "{$}")
	return regexp.MustCompile(`\{([A-Za-z0-9_]+)\.\.\.\}`).ReplaceAllString(p, "{$1}")
}

func TestDocsOpenAPIPath(t *testing.T) {
	for in, want := range map[string]string{
		"/user/api-keys/{key_id}": "/user/api-keys/{key_id}",
		"/docs/assets/{file...}":  "/docs/assets/{file}",
		"/health":                 "/health",
		"/x/{$}":                  "/x/",
	} {
		if got := openAPIPath(in); got != want {
			t.Errorf("openAPIPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// gatewayRoutes are the routes of the gateway handler
// (http.handlers.gatewayz), which this document also describes.
var gatewayRoutes = []string{
	"POST /v1/chat/completions",
	"POST /v1/completions",
	"POST /v1/embeddings",
	"GET /v1/models",
	"GET /v1/models/{model}",
	"POST /v1/messages",
	"POST /v1/responses",
	"GET /v1/responses/{response_id}",
}

// documentedOperations lists "METHOD /path" of every operation in doc.
func documentedOperations(doc *openapi3.T) map[string]*openapi3.Operation {
	ops := map[string]*openapi3.Operation{}
	for p, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			ops[method+" "+p] = op
		}
	}
	return ops
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Every route the management API serves is documented, every documented
// route is served, and each is documented with the authentication the
// route table gives it.
func TestDocsOpenAPIMatchesRoutes(t *testing.T) {
	doc := mustLoadOpenAPI(t)
	documented := documentedOperations(doc)
	h := &Handler{}
	served := map[string]route{}
	for _, rt := range h.routes() {
		key := rt.Method + " " + openAPIPath(rt.Pattern)
		if _, dup := served[key]; dup {
			t.Errorf("route %s appears twice in routes()", key)
		}
		served[key] = rt
	}
	for _, key := range sortedKeys(served) {
		op, ok := documented[key]
		if !ok {
			t.Errorf("served but not documented: %s", key)
			continue
		}
		checkOperationAuth(t, key, op, doc, served[key].Auth)
		checkOperationScope(t, key, op, served[key])
	}
	for _, key := range sortedKeys(documented) {
		if _, ok := served[key]; ok || slices.Contains(gatewayRoutes, key) {
			continue
		}
		t.Errorf("documented but not served: %s", key)
	}
}

// checkOperationScope checks that a user route needs a scope, and that op
// documents it as x-required-scope (and that other routes document none).
func checkOperationScope(t *testing.T, key string, op *openapi3.Operation, rt route) {
	t.Helper()
	documented, _ := op.Extensions["x-required-scope"].(string)
	if rt.Auth != user {
		if documented != "" || rt.Scope != noScope {
			t.Errorf("%s: a %s route with scope %q (documented %q)", key, rt.Auth, rt.Scope, documented)
		}
		return
	}
	if rt.Scope.String() == "" {
		t.Errorf("%s: user route without a scope in routes()", key)
	}
	if documented != rt.Scope.String() {
		t.Errorf("%s: x-required-scope %q, routes() needs %q", key, documented, rt.Scope)
	}
	if !rt.Scope.full && !strings.Contains(op.Description, fmt.Sprintf("Needs `%s` on `%s`", rt.Scope.perm, rt.Scope.resource)) {
		t.Errorf("%s: description does not say it needs %s", key, rt.Scope)
	}
}

// checkOperationAuth checks that op declares the security of level and the
// error responses its authentication produces.
func checkOperationAuth(t *testing.T, key string, op *openapi3.Operation, doc *openapi3.T, level authLevel) {
	t.Helper()
	security := doc.Security
	if op.Security != nil {
		security = *op.Security
	}
	var schemes []string
	for _, req := range security {
		for name := range req {
			schemes = append(schemes, name)
		}
	}
	sort.Strings(schemes)
	var want []string
	var wantErrors []int
	switch level {
	case user:
		want, wantErrors = []string{"userKey"}, []int{401}
	case admin:
		want, wantErrors = []string{"adminKey"}, []int{401, 503}
	}
	if !slices.Equal(schemes, want) {
		t.Errorf("%s: documented security %v, served as %s (want %v)", key, schemes, level, want)
	}
	for _, status := range wantErrors {
		if op.Responses.Status(status) == nil {
			t.Errorf("%s: no %d response documented", key, status)
		}
	}
}

// Every error response of the management API is documented in its
// {"detail", "code"} shape, every /v1 error in the OpenAI shape, and 401s
// carry WWW-Authenticate.
func TestDocsOpenAPIErrorShapes(t *testing.T) {
	doc := mustLoadOpenAPI(t)
	mgmt := doc.Components.Schemas["Error"].Value
	openai := doc.Components.Schemas["OpenAIError"].Value
	if !slices.Equal(mgmt.Required, []string{"detail"}) || mgmt.Properties["code"] == nil {
		t.Errorf("Error schema: required %v, want [detail] and an optional code", mgmt.Required)
	}
	inner := openai.Properties["error"].Value
	for _, f := range []string{"message", "type", "code"} {
		if !slices.Contains(inner.Required, f) {
			t.Errorf("OpenAIError.error does not require %q", f)
		}
	}
	for key, op := range documentedOperations(doc) {
		v1 := strings.Contains(key, " /v1/")
		for code, resp := range op.Responses.Map() {
			if code[0] != '4' && code[0] != '5' {
				continue
			}
			media := resp.Value.Content.Get("application/json")
			if media == nil {
				t.Errorf("%s %s: no application/json error body", key, code)
				continue
			}
			want := mgmt
			if v1 {
				want = openai
			}
			if strings.Contains(key, " /v1/messages") {
				want = doc.Components.Schemas["AnthropicError"].Value
			}
			if key == "GET /health" && code == "503" {
				// Health reports its own state, in its own shape.
				want = doc.Components.Schemas["HealthResponse"].Value
			}
			if media.Schema.Value != want {
				t.Errorf("%s %s: error body is not the %s shape", key, code, map[bool]string{true: "OpenAI", false: "detail"}[v1])
			}
			if code == "401" && resp.Value.Headers["WWW-Authenticate"] == nil {
				t.Errorf("%s 401: WWW-Authenticate header not documented", key)
			}
			if code == "429" && resp.Value.Headers["Retry-After"] == nil {
				t.Errorf("%s 429: Retry-After header not documented", key)
			}
		}
	}
}

// The gateway's /v1 routes are documented with both credential forms, their
// statuses and the response headers the gateway sets.
func TestDocsOpenAPIGatewayRoutes(t *testing.T) {
	doc := mustLoadOpenAPI(t)
	ops := documentedOperations(doc)
	var v1 []string
	for key := range ops {
		if strings.Contains(key, " /v1/") {
			v1 = append(v1, key)
		}
	}
	sort.Strings(v1)
	want := slices.Clone(gatewayRoutes)
	sort.Strings(want)
	if !slices.Equal(v1, want) {
		t.Fatalf("documented /v1 operations %v, want %v", v1, want)
	}
	metered := []string{"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "POST /v1/messages", "POST /v1/responses"}
	for _, key := range v1 {
		op := ops[key]
		var schemes []string
		for _, req := range *op.Security {
			for name := range req {
				schemes = append(schemes, name)
			}
		}
		sort.Strings(schemes)
		if !slices.Equal(schemes, []string{"apiKeyHeader", "userKey"}) {
			t.Errorf("%s: security %v, want bearer or x-api-key", key, schemes)
		}
		wantScope := "none" // free routes: any valid key
		if slices.Contains(metered, key) {
			wantScope = storage.PermWrite + ":" + storage.ResourceChat
		}
		if got, _ := op.Extensions["x-required-scope"].(string); got != wantScope {
			t.Errorf("%s: x-required-scope %q, the gateway needs %q", key, got, wantScope)
		}
		statuses := []int{401, 403, 404, 405, 429, 502}
		headers := []string{"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
			"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"}
		if slices.Contains(metered, key) {
			statuses = append(statuses, 400, 402, 413)
			headers = append(headers, "x-request-id", "x-gatewayz-credits-remaining")
			body := op.Responses.Status(200).Value.Content.Get("application/json").Schema.Value
			if gu := body.Properties["gateway_usage"]; gu == nil || gu.Value != doc.Components.Schemas["GatewayUsage"].Value {
				t.Errorf("%s: 200 body does not document gateway_usage", key)
			}
			gu := doc.Components.Schemas["GatewayUsage"].Value
			for _, f := range []string{"tokens_charged", "user_balance_after", "user_api_key"} {
				if gu.Properties[f] == nil {
					t.Errorf("GatewayUsage lacks %s", f)
				}
			}
		}
		for _, s := range statuses {
			if op.Responses.Status(s) == nil {
				t.Errorf("%s: %d not documented", key, s)
			}
		}
		for _, name := range headers {
			if op.Responses.Status(200).Value.Headers[name] == nil {
				t.Errorf("%s: 200 header %s not documented", key, name)
			}
		}
	}
}

// docsHandler is a Handler with its real route table; the documentation
// routes are public and need no backend.
func docsHandler() *Handler {
	h := &Handler{logger: zap.NewNop()}
	h.mux = h.buildMux()
	return h
}

func get(t *testing.T, h *Handler, target string, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest("GET", target, nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.serve(w, r)
	return w
}

func TestDocsServeOpenAPI(t *testing.T) {
	h := docsHandler()
	w := get(t, h, "/openapi.json")
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /openapi.json: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	if w.Body.String() != string(openAPIDocument) {
		t.Fatal("GET /openapi.json does not serve the embedded document")
	}
	etag := w.Header().Get("ETag")
	if w := get(t, h, "/openapi.json", "If-None-Match", etag); etag == "" || w.Code != http.StatusNotModified {
		t.Errorf("revalidation with ETag %q: %d, want 304", etag, w.Code)
	}
	if w := get(t, h, "/openapi.json", "Authorization", "Bearer nonsense"); w.Code != 200 {
		t.Errorf("public route refused a request with a bogus bearer: %d", w.Code)
	}
}

// attrRe finds the URL-valued attributes of the pages.
var attrRe = regexp.MustCompile(`(?i)\b(src|href|spec-url)\s*=\s*"([^"]*)"`)

// The pages load only same-origin files, by relative URL (so they also work
// under a path prefix), each of which is served; the CSP forbids anything
// else.
func TestDocsPages(t *testing.T) {
	h := docsHandler()
	for _, page := range []struct {
		path   string
		assets []string // files the page must load
	}{
		{"/docs", []string{"/docs/assets/swagger-ui/swagger-ui-bundle.js", "/docs/assets/swagger-ui/swagger-ui.css", "/docs/assets/swagger-init.js"}},
		{"/redoc", []string{"/docs/assets/redoc/redoc.standalone.js", "/openapi.json"}},
	} {
		w := get(t, h, page.path)
		if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
			t.Fatalf("GET %s: %d %q", page.path, w.Code, w.Header().Get("Content-Type"))
		}
		csp := w.Header().Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self';", "connect-src 'self';"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", page.path, csp, want)
			}
		}
		base, _ := url.Parse("http://gw.example" + page.path)
		var loaded []string
		for _, m := range attrRe.FindAllStringSubmatch(w.Body.String(), -1) {
			ref := m[2]
			u, err := url.Parse(ref)
			if err != nil || u.Scheme != "" || u.Host != "" || strings.HasPrefix(ref, "/") {
				t.Errorf("%s: %s=%q is not a relative same-origin URL", page.path, m[1], ref)
				continue
			}
			abs := base.ResolveReference(u).Path
			loaded = append(loaded, abs)
			if w := get(t, h, abs); w.Code != 200 || w.Body.Len() == 0 {
				t.Errorf("%s: %s=%q (%s) is not served: %d", page.path, m[1], ref, abs, w.Code)
			}
		}
		for _, want := range page.assets {
			if !slices.Contains(loaded, want) {
				t.Errorf("%s does not load %s (loads %v)", page.path, want, loaded)
			}
		}
	}
	// The Swagger UI initializer fetches the document by relative URL and
	// turns off the online validator.
	init := get(t, h, "/docs/assets/swagger-init.js").Body.String()
	for _, want := range []string{`"openapi.json"`, "validatorUrl: null"} {
		if !strings.Contains(init, want) {
			t.Errorf("swagger-init.js lacks %s", want)
		}
	}
}

// The vendored bundles load nothing from a CDN or font service (ReDoc's
// footer logo from cdn.redoc.ly is patched out by the fetch script).
func TestDocsVendoredBundlesLoadNothingExternal(t *testing.T) {
	for _, name := range []string{"swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css", "redoc/redoc.standalone.js"} {
		b, err := fs.ReadFile(docsAssets, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, host := range []string{"cdn.redoc.ly", "fonts.googleapis.com", "fonts.gstatic.com", "unpkg.com", "cdn.jsdelivr.net", "cdnjs.cloudflare.com"} {
			if strings.Contains(string(b), host) {
				t.Errorf("%s refers to %s", name, host)
			}
		}
	}
}

// The files written for this project (not the vendored bundles) name no
// external URL.
func TestDocsOwnFilesHaveNoExternalURLs(t *testing.T) {
	for _, name := range []string{swaggerPage, redocPage, "swagger-init.js"} {
		b, err := fs.ReadFile(docsAssets, name)
		if err != nil {
			t.Fatal(err)
		}
		if m := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]`).Find(b); m != nil {
			t.Errorf("%s mentions %q", name, m)
		}
	}
}

func TestDocsAssets(t *testing.T) {
	h := docsHandler()
	for target, wantType := range map[string]string{
		"/docs/assets/swagger-ui/swagger-ui-bundle.js": "text/javascript; charset=utf-8",
		"/docs/assets/swagger-ui/swagger-ui.css":       "text/css; charset=utf-8",
		"/docs/assets/swagger-ui/LICENSE":              "text/plain; charset=utf-8",
		"/docs/assets/swagger-ui/NOTICE":               "text/plain; charset=utf-8",
		"/docs/assets/redoc/redoc.standalone.js":       "text/javascript; charset=utf-8",
		"/docs/assets/redoc/LICENSE":                   "text/plain; charset=utf-8",
	} {
		w := get(t, h, target)
		if w.Code != 200 || w.Header().Get("Content-Type") != wantType || w.Body.Len() == 0 {
			t.Errorf("GET %s: %d %q (%d bytes), want 200 %q", target, w.Code, w.Header().Get("Content-Type"), w.Body.Len(), wantType)
		}
		if w.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", target)
		}
	}
	for _, target := range []string{
		"/docs/assets/nope.js",
		"/docs/assets/swagger-ui",
		"/docs/assets/swagger-ui/",
		"/docs/assets/../docs.go",
		"/docs/assets/%2e%2e/docs.go",
		"/docs/assets/swagger-ui/..%2f..%2fdocs.go",
		"/docs/assets/",
	} {
		w := get(t, h, target)
		if w.Code == 200 {
			t.Errorf("GET %s: 200, want a refusal", target)
		}
		if w.Code == 404 && !strings.Contains(w.Body.String(), `"detail"`) {
			t.Errorf("GET %s: 404 body %q is not the API's error shape", target, w.Body.String())
		}
	}
}

// The vendored versions are the ones the fetch script pins, licences are
// kept, and the embedded payload stays small.
func TestDocsVendoredAssets(t *testing.T) {
	script, err := os.ReadFile("../scripts/fetch-docs-assets.sh")
	if err != nil {
		t.Fatal(err)
	}
	for dir, variable := range map[string]string{"swagger-ui": "SWAGGER_UI_VERSION", "redoc": "REDOC_VERSION"} {
		m := regexp.MustCompile(`(?m)^` + variable + `=(\S+)$`).FindSubmatch(script)
		if m == nil {
			t.Fatalf("%s not pinned in the fetch script", variable)
		}
		got, err := fs.ReadFile(docsAssets, dir+"/VERSION")
		if f := strings.Fields(string(got)); err != nil || len(f) == 0 || f[0] != string(m[1]) {
			t.Errorf("%s/VERSION = %q, the script pins %s", dir, got, m[1])
		}
		if lic, err := fs.ReadFile(docsAssets, dir+"/LICENSE"); err != nil || len(lic) < 500 {
			t.Errorf("%s/LICENSE missing or truncated", dir)
		}
	}
	var total int64
	_ = fs.WalkDir(docsAssets, ".", func(name string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			info, _ := d.Info()
			total += info.Size()
		}
		return err
	})
	if total > 4<<20 {
		t.Errorf("embedded documentation assets are %d bytes, over the 4 MiB budget", total)
	}
}

// docsCall is one request of the contract scenario.
type docsCall struct {
	method, template string // the route, as documented
	path             string // the request path ("" means template)
	bearer           string
	header           http.Header
	body             any // JSON-encoded unless a string
	want             int
}

// docsContract sends requests through the real handler and checks each
// request and response against the OpenAPI document: the request is one the
// document allows, the status is documented for the operation, the body
// matches the documented schema, and no response object carries a field
// the schema does not document. It records which routes answered 2xx.
type docsContract struct {
	t      *testing.T
	h      *Handler
	doc    *openapi3.T
	served map[string]bool // "METHOD /template" answered 2xx
}

func (c *docsContract) do(call docsCall) map[string]any {
	t := c.t
	t.Helper()
	p := call.path
	if p == "" {
		p = call.template
	}
	var raw []byte
	switch b := call.body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	newReq := func() *http.Request {
		r := httptest.NewRequest(call.method, p, bytes.NewReader(raw))
		if raw == nil {
			r = httptest.NewRequest(call.method, p, nil)
		} else {
			r.Header.Set("Content-Type", "application/json")
		}
		for k, v := range call.header {
			r.Header[k] = v
		}
		if call.bearer != "" {
			r.Header.Set("Authorization", "Bearer "+call.bearer)
		}
		return r
	}
	what := call.method + " " + p
	pathItem := c.doc.Paths.Find(call.template)
	if pathItem == nil || pathItem.GetOperation(call.method) == nil {
		t.Fatalf("%s: %s %s is not documented", what, call.method, call.template)
	}
	op := pathItem.GetOperation(call.method)
	params := map[string]string{}
	tmpl, actual := strings.Split(call.template, "/"), strings.Split(p, "/")
	for i, seg := range tmpl {
		if strings.HasPrefix(seg, "{") && i < len(actual) {
			params[strings.Trim(seg, "{}")] = strings.Join(actual[i:], "/")[:len(actual[i])]
		}
	}
	input := &openapi3filter.RequestValidationInput{
		Request:    newReq(),
		PathParams: params,
		Route:      &routers.Route{Spec: c.doc, Path: call.template, PathItem: pathItem, Method: call.method, Operation: op},
		Options: &openapi3filter.Options{
			AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc,
			IncludeResponseStatus: true,
			MultiError:            true,
		},
	}
	if call.want < 400 {
		// Requests the handler accepts must be valid by the document.
		if err := openapi3filter.ValidateRequest(context.Background(), input); err != nil {
			t.Errorf("%s: request is not valid by the document: %v", what, err)
		}
	}

	rec := httptest.NewRecorder()
	c.h.serve(rec, newReq())
	if rec.Code != call.want {
		t.Fatalf("%s: status %d, want %d (body %s)", what, rec.Code, call.want, rec.Body.String())
	}
	if rec.Code < 300 {
		c.served[call.method+" "+call.template] = true
	}
	ct := rec.Header().Get("Content-Type")
	if !strings.HasPrefix(ct, "application/json") {
		// Pages, assets, exports and backups: the documented media type.
		resp := op.Responses.Status(rec.Code)
		if resp == nil {
			t.Errorf("%s: status %d not documented", what, rec.Code)
			return nil
		}
		mt := strings.TrimSpace(strings.Split(ct, ";")[0])
		if resp.Value.Content.Get(mt) == nil && resp.Value.Content.Get("*/*") == nil {
			t.Errorf("%s: %d answered %s, not documented", what, rec.Code, mt)
		}
		return nil
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: input,
		Status:                 rec.Code,
		Header:                 rec.Header(),
		Options:                input.Options,
	}
	out.SetBodyBytes(rec.Body.Bytes())
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("%s: %d response does not match the document: %v\nbody: %s", what, rec.Code, err, rec.Body.String())
	}
	var body any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	schema := op.Responses.Status(rec.Code).Value.Content.Get("application/json").Schema.Value
	for _, f := range undocumentedFields(body, schema, "") {
		t.Errorf("%s: %d response has the undocumented field %s", what, rec.Code, f)
	}
	m, _ := body.(map[string]any)
	return m
}

// undocumentedFields lists the object fields of v that schema s does not
// describe (objects whose schema lists properties and does not allow
// additional ones explicitly). For oneOf/anyOf it takes the closest branch.
func undocumentedFields(v any, s *openapi3.Schema, at string) []string {
	if s == nil {
		return nil
	}
	if alts := append(slices.Clone(s.OneOf), s.AnyOf...); len(alts) > 0 {
		var best []string
		for i, alt := range alts {
			if alt.Value.Type != nil && alt.Value.Type.Is("null") {
				if v == nil {
					return nil
				}
				continue
			}
			got := undocumentedFields(v, alt.Value, at)
			if i == 0 || best == nil || len(got) < len(best) {
				best = got
			}
			if len(got) == 0 {
				return nil
			}
		}
		return best
	}
	var out []string
	for _, sub := range s.AllOf {
		out = append(out, undocumentedFields(v, sub.Value, at)...)
	}
	switch v := v.(type) {
	case map[string]any:
		explicit := s.AdditionalProperties.Has != nil && *s.AdditionalProperties.Has ||
			s.AdditionalProperties.Schema != nil
		for k, fv := range v {
			if p, ok := s.Properties[k]; ok {
				out = append(out, undocumentedFields(fv, p.Value, at+"."+k)...)
				continue
			}
			if s.AdditionalProperties.Schema != nil {
				out = append(out, undocumentedFields(fv, s.AdditionalProperties.Schema.Value, at+"."+k)...)
				continue
			}
			if len(s.Properties) > 0 && !explicit {
				out = append(out, at+"."+k)
			}
		}
	case []any:
		if s.Items != nil {
			for i, item := range v {
				out = append(out, undocumentedFields(item, s.Items.Value, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return out
}

// The contract: every route of the route table answers, in a realistic
// sequence, with the statuses, fields and types the document gives.
func TestDocsResponsesMatchHandlers(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	c := &docsContract{t: t, h: h, doc: mustLoadOpenAPI(t), served: map[string]bool{}}
	admin := testAdminKey

	c.do(docsCall{method: "GET", template: "/health", want: 200})
	c.do(docsCall{method: "GET", template: "/", want: 200})
	c.do(docsCall{method: "GET", template: "/favicon.ico", want: 200})
	c.do(docsCall{method: "GET", template: "/openapi.json", want: 200})
	c.do(docsCall{method: "GET", template: "/docs", want: 200})
	c.do(docsCall{method: "GET", template: "/redoc", want: 200})
	c.do(docsCall{method: "GET", template: "/docs/assets/{file}", path: "/docs/assets/swagger-ui/swagger-ui.css", want: 200})
	c.do(docsCall{method: "GET", template: "/docs/assets/{file}", path: "/docs/assets/nope.css", want: 404})

	reg := c.do(docsCall{method: "POST", template: "/auth/register", want: 200,
		body: map[string]any{"username": "alice", "email": "alice@example.com", "auth_method": "email", "environment_tag": "live", "key_name": "Main"}})
	key := reg["api_key"].(string)
	uid := int64(reg["user_id"].(float64))
	c.do(docsCall{method: "POST", template: "/auth/register", want: 409, body: map[string]any{"username": "a2", "email": "alice@example.com"}})
	c.do(docsCall{method: "POST", template: "/auth/register", want: 422, body: map[string]any{"username": "a3", "email": "nope"}})
	c.do(docsCall{method: "POST", template: "/auth/register", want: 422, body: map[string]any{"username": "a4", "email": "a4@example.com", "extra": 1}})

	// Plans
	c.do(docsCall{method: "GET", template: "/plans", want: 200})
	plan := c.do(docsCall{method: "POST", template: "/admin/plans", bearer: admin, want: 200, body: map[string]any{
		"name": "Pro", "description": "For teams", "daily_request_limit": 1000, "monthly_request_limit": 20000,
		"daily_token_limit": 1000000, "monthly_token_limit": 20000000, "price_per_month": 49.5,
		"features": []string{"basic_models", "priority"}, "models": []string{"gpt-4o*"},
	}})
	planID := int64(plan["plan"].(map[string]any)["id"].(float64))
	planPath := fmt.Sprintf("/plans/%d", planID)
	c.do(docsCall{method: "POST", template: "/admin/plans", bearer: admin, want: 409, body: map[string]any{"name": "Pro"}})
	c.do(docsCall{method: "GET", template: "/plans", want: 200})
	c.do(docsCall{method: "GET", template: "/plans/{plan_id}", path: planPath, want: 200})
	c.do(docsCall{method: "GET", template: "/plans/{plan_id}", path: "/plans/999999", want: 404})
	c.do(docsCall{method: "GET", template: "/admin/plans", bearer: admin, want: 200})
	c.do(docsCall{method: "PUT", template: "/admin/plans/{plan_id}", path: "/admin" + planPath, bearer: admin, want: 200,
		body: map[string]any{"description": "For bigger teams"}})
	c.do(docsCall{method: "GET", template: "/user/plan", bearer: key, want: 404})
	c.do(docsCall{method: "GET", template: "/user/plan/entitlements", path: "/user/plan/entitlements?feature=priority", bearer: key, want: 200})
	c.do(docsCall{method: "POST", template: "/admin/assign-plan", bearer: admin, want: 200,
		body: map[string]any{"user_id": uid, "plan_id": planID, "duration_months": 1}})
	c.do(docsCall{method: "GET", template: "/user/plan", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/plan/entitlements", path: "/user/plan/entitlements?feature=priority", bearer: key, want: 200})

	// Usage, so the usage views have rows.
	settle(t, app, uid, keyIDOf(t, h, key), "gpt-4o-mini", 12, 30, time.Now())
	c.do(docsCall{method: "GET", template: "/user/plan/usage", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/monitor", path: "/user/monitor?days=7", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/balance", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/balance", want: 401})
	c.do(docsCall{method: "GET", template: "/user/usage", path: "/user/usage?model=gpt-4o-mini&limit=10", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/usage", path: "/user/usage?date=yesterday", bearer: key, want: 422})
	c.do(docsCall{method: "GET", template: "/user/usage/export", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/usage/daily", path: "/user/usage/daily?days=7", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/users", path: "/admin/users?q=alice", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/users/{user_id}/usage", path: fmt.Sprintf("/admin/users/%d/usage", uid), bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/users/{user_id}/usage", path: "/admin/users/999999/usage", bearer: admin, want: 404})
	c.do(docsCall{method: "GET", template: "/admin/users/{user_id}/ledger", path: fmt.Sprintf("/admin/users/%d/ledger?limit=5", uid), bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/stats", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/stats", path: "/admin/stats?period=day", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/stats", path: "/admin/stats?period=week", bearer: admin, want: 422})
	c.do(docsCall{method: "GET", template: "/user/balance", bearer: "gw_live_" + strings.Repeat("x", 43), want: 401})

	// Keys
	created := c.do(docsCall{method: "POST", template: "/user/api-keys", bearer: key, want: 200, body: map[string]any{
		"key_name": "ci", "environment_tag": "test", "scope_permissions": map[string]any{"read": []string{"*"}, "write": []string{"chat"}},
		"expiration_days": 30, "max_requests": 100, "ip_allowlist": []string{"10.0.0.0/8", "2001:db8::1"},
		"domain_referrers": []string{"*.example.com"}, "action": "create", "spend_limit": 5000, "spend_limit_reset": "monthly",
	}})
	ciID := int64(created["key_id"].(float64))
	ciPath := fmt.Sprintf("/user/api-keys/%d", ciID)
	c.do(docsCall{method: "POST", template: "/user/api-keys", bearer: key, want: 409, body: map[string]any{"key_name": "ci"}})
	c.do(docsCall{method: "POST", template: "/user/api-keys", bearer: key, want: 400, body: map[string]any{"key_name": "x", "expiration_days": 0}})
	c.do(docsCall{method: "POST", template: "/user/api-keys", bearer: key, want: 422, body: map[string]any{"key_name": "x", "ip_allowlist": []string{"nope"}}})
	c.do(docsCall{method: "POST", template: "/user/api-keys", bearer: created["api_key"].(string), want: 403, body: map[string]any{"key_name": "y"}})
	c.do(docsCall{method: "POST", template: "/user/api-keys", bearer: key, want: 200, body: map[string]any{
		"key_name": "dated", "expiration_date": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}})
	c.do(docsCall{method: "GET", template: "/user/api-keys", bearer: key, want: 200})
	c.do(docsCall{method: "PUT", template: "/user/api-keys/{key_id}", path: ciPath, bearer: key, want: 200,
		body: map[string]any{"key_name": "ci-2", "max_requests": 50, "is_active": true}})
	c.do(docsCall{method: "PUT", template: "/user/api-keys/{key_id}", path: ciPath, bearer: key, want: 200,
		body: map[string]any{"spend_limit": nil, "spend_limit_reset": "weekly"}})
	c.do(docsCall{method: "PUT", template: "/user/api-keys/{key_id}", path: ciPath, bearer: key, want: 422, body: map[string]any{"spend_limit": -5}})
	c.do(docsCall{method: "PUT", template: "/admin/api-keys/{key_id}", path: fmt.Sprintf("/admin/api-keys/%d", ciID), bearer: admin, want: 200,
		body: map[string]any{"spend_limit": 100, "spend_limit_reset": "daily"}})
	c.do(docsCall{method: "PUT", template: "/admin/api-keys/{key_id}", path: fmt.Sprintf("/admin/api-keys/%d", ciID), bearer: admin, want: 400, body: map[string]any{}})
	c.do(docsCall{method: "PUT", template: "/admin/api-keys/{key_id}", path: fmt.Sprintf("/admin/api-keys/%d", ciID), bearer: admin, want: 422, body: `{"spend_limit":1.5}`})
	c.do(docsCall{method: "PUT", template: "/admin/api-keys/{key_id}", path: "/admin/api-keys/999999", bearer: admin, want: 404, body: map[string]any{"spend_limit": 1}})
	c.do(docsCall{method: "PUT", template: "/user/api-keys/{key_id}", path: ciPath, bearer: key, want: 400, body: map[string]any{}})
	c.do(docsCall{method: "PUT", template: "/user/api-keys/{key_id}", path: "/user/api-keys/999999", bearer: key, want: 404, body: map[string]any{"key_name": "z"}})
	c.do(docsCall{method: "PUT", template: "/user/api-keys/{key_id}", path: ciPath, bearer: key, want: 200, body: map[string]any{"action": "rotate"}})
	c.do(docsCall{method: "GET", template: "/user/api-keys/usage", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/api-keys/audit-logs", path: "/user/api-keys/audit-logs?limit=50&action=create", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/api-keys/audit-logs", path: "/user/api-keys/audit-logs?start_date=yesterday", bearer: key, want: 422})
	c.do(docsCall{method: "DELETE", template: "/user/api-keys/{key_id}", path: ciPath, bearer: key, want: 422})
	c.do(docsCall{method: "DELETE", template: "/user/api-keys/{key_id}", path: ciPath, bearer: key, want: 400, body: map[string]any{"confirmation": "DELETE"}})
	c.do(docsCall{method: "DELETE", template: "/user/api-keys/{key_id}", path: ciPath, bearer: key, want: 200, body: map[string]any{"confirmation": "DELETE_KEY"}})

	// Profile
	c.do(docsCall{method: "GET", template: "/user/profile", bearer: key, want: 200})
	c.do(docsCall{method: "PUT", template: "/user/profile", bearer: key, want: 200,
		body: map[string]any{"name": "Alice A.", "preferences": map[string]any{"theme": "dark"}, "settings": nil}})

	c.do(docsCall{method: "PUT", template: "/user/profile", bearer: key, want: 200, body: map[string]any{"low_balance_threshold": 100}})
	c.do(docsCall{method: "PUT", template: "/user/profile", bearer: key, want: 422, body: map[string]any{"low_balance_threshold": -1}})
	c.do(docsCall{method: "PUT", template: "/user/profile", bearer: key, want: 422, body: `{"low_balance_threshold":1.5}`})

	// Webhooks
	hook := c.do(docsCall{method: "POST", template: "/user/webhooks", bearer: key, want: 200,
		body: map[string]any{"url": "https://hooks.example.com/gatewayz", "events": []string{"balance.low", "credits.added"}, "description": "ops"}})
	hookPath := fmt.Sprintf("/user/webhooks/%d", int64(hook["id"].(float64)))
	c.do(docsCall{method: "POST", template: "/user/webhooks", bearer: key, want: 422, body: map[string]any{"url": "http://hooks.example.com/"}})
	c.do(docsCall{method: "POST", template: "/user/webhooks", bearer: key, want: 422, body: map[string]any{"url": "https://127.0.0.1/"}})
	c.do(docsCall{method: "POST", template: "/user/webhooks", bearer: key, want: 422, body: map[string]any{"url": "https://hooks.example.com/", "events": []string{"nope"}}})
	c.do(docsCall{method: "GET", template: "/user/webhooks", bearer: key, want: 200})
	c.do(docsCall{method: "POST", template: "/user/webhooks/{webhook_id}/test", path: hookPath + "/test", bearer: key, want: 200})
	c.do(docsCall{method: "POST", template: "/user/webhooks/{webhook_id}/test", path: "/user/webhooks/999999/test", bearer: key, want: 404})
	c.do(docsCall{method: "GET", template: "/user/webhooks/deliveries", path: "/user/webhooks/deliveries?limit=10", bearer: key, want: 200})
	c.do(docsCall{method: "GET", template: "/user/webhooks/deliveries", path: "/user/webhooks/deliveries?limit=x", bearer: key, want: 422})
	c.do(docsCall{method: "GET", template: "/admin/webhooks/deliveries", bearer: admin, want: 200})
	c.do(docsCall{method: "DELETE", template: "/user/webhooks/{webhook_id}", path: hookPath, bearer: key, want: 200})
	c.do(docsCall{method: "DELETE", template: "/user/webhooks/{webhook_id}", path: hookPath, bearer: key, want: 404})

	// Admin
	c.do(docsCall{method: "GET", template: "/admin/balance", want: 401})
	c.do(docsCall{method: "GET", template: "/admin/balance", bearer: "wrong", want: 401})
	c.do(docsCall{method: "POST", template: "/admin/add_credits", bearer: admin, want: 200,
		header: http.Header{"Idempotency-Key": {"topup-1"}}, body: map[string]any{"api_key": key, "credits": 500, "note": "welcome"}})
	c.do(docsCall{method: "POST", template: "/admin/add_credits", bearer: admin, want: 200,
		header: http.Header{"Idempotency-Key": {"topup-1"}}, body: map[string]any{"api_key": key, "credits": 500, "note": "welcome"}})
	c.do(docsCall{method: "POST", template: "/admin/add_credits", bearer: admin, want: 409,
		header: http.Header{"Idempotency-Key": {"topup-1"}}, body: map[string]any{"api_key": key, "credits": 501}})
	c.do(docsCall{method: "POST", template: "/admin/add_credits", bearer: admin, want: 400, body: map[string]any{"user_id": uid, "credits": 0}})
	c.do(docsCall{method: "POST", template: "/admin/add_credits", bearer: admin, want: 422, body: `{"user_id":1,"credits":1.5}`})
	c.do(docsCall{method: "POST", template: "/admin/add_credits", bearer: admin, want: 404, body: map[string]any{"user_id": 999999, "credits": 1}})
	c.do(docsCall{method: "GET", template: "/admin/balance", path: "/admin/balance?offset=0&limit=10", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/monitor", bearer: admin, want: 200})
	c.do(docsCall{method: "POST", template: "/admin/limit", bearer: admin, want: 200, body: map[string]any{
		"user_id": uid, "rate_limits": map[string]any{"requests_per_minute": 10, "tokens_per_day": 100000}}})
	c.do(docsCall{method: "POST", template: "/admin/limit", bearer: admin, want: 200, body: map[string]any{
		"user_id": uid, "spend_limit": 100000, "spend_limit_reset": "monthly"}})
	c.do(docsCall{method: "POST", template: "/admin/limit", bearer: admin, want: 422, body: map[string]any{"user_id": uid, "spend_limit_reset": "hourly"}})
	c.do(docsCall{method: "GET", template: "/admin/users/{user_id}", path: fmt.Sprintf("/admin/users/%d", uid), bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/users/{user_id}", path: "/admin/users/999999", bearer: admin, want: 404})
	c.do(docsCall{method: "GET", template: "/admin/audit-logs", path: fmt.Sprintf("/admin/audit-logs?user_id=%d&limit=100", uid), bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/audit-logs/verify", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/audit-logs/export", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/security", path: "/admin/security?expiring_within_days=30", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/backup", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/admin/prices", bearer: admin, want: 200})
	c.do(docsCall{method: "GET", template: "/pricing", want: 200})
	c.do(docsCall{method: "DELETE", template: "/admin/plans/{plan_id}", path: "/admin" + planPath, bearer: admin, want: 200})

	// Bulk rotation replaces the calling key too: continue with its new secret.
	bulk := c.do(docsCall{method: "PUT", template: "/user/api-keys/{key_id}", path: fmt.Sprintf("/user/api-keys/%d", keyIDOf(t, h, key)),
		bearer: key, want: 200, body: map[string]any{"action": "bulk_rotate"}})
	for _, nk := range bulk["new_keys"].([]any) {
		if m := nk.(map[string]any); m["key_name"] == "Main" {
			key = m["new_api_key"].(string)
		}
	}
	c.do(docsCall{method: "DELETE", template: "/user/account", bearer: key, want: 400, body: map[string]any{"confirmation": "yes"}})
	c.do(docsCall{method: "DELETE", template: "/user/account", bearer: key, want: 200, body: map[string]any{"confirmation": "DELETE_ACCOUNT"}})
	c.do(docsCall{method: "GET", template: "/user/profile", bearer: key, want: 401})

	for _, rt := range h.routes() {
		if key := rt.Method + " " + openAPIPath(rt.Pattern); !c.served[key] {
			t.Errorf("the contract scenario never got a 2xx from %s", key)
		}
	}
}
