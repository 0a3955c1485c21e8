package admin

import (
	"context"
	"encoding/json"
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

	"github.com/getkin/kin-openapi/openapi3"
	"go.uber.org/zap"
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
	}
	for _, key := range sortedKeys(documented) {
		if _, ok := served[key]; ok || slices.Contains(gatewayRoutes, key) {
			continue
		}
		t.Errorf("documented but not served: %s", key)
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
	metered := []string{"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings"}
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
		statuses := []int{401, 403, 404, 405, 429, 502}
		headers := []string{"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
			"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "x-request-id"}
		if slices.Contains(metered, key) {
			statuses = append(statuses, 400, 402, 413)
			headers = append(headers, "x-gatewayz-credits-remaining")
			body := op.Responses.Status(200).Value.Content.Get("application/json").Schema.Value
			if !slices.Contains(body.Required, "gateway_usage") {
				t.Errorf("%s: 200 body does not require gateway_usage", key)
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
