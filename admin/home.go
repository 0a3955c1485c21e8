package admin

import (
	"bytes"
	"html/template"
	"net/http"
	"strings"
	"time"
)

// The landing page at / says what this server is and where to go next:
// the API documentation and, when it is served, the console. It is a
// static page (no script), under the documentation pages' CSP.

// homePage is the landing page; links are relative, so it works under a
// path prefix too.
var homePage = template.Must(template.New("home").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>caddy-gatewayz</title>
<link rel="icon" href="favicon.ico" type="image/svg+xml">
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; color: #1f2328; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; }
li { margin: .4rem 0; }
</style>
</head>
<body>
<h1>caddy-gatewayz</h1>
<p>A credit-metered gateway for LLM inference: OpenAI-compatible routes under
<code>/v1</code> (chat completions, completions, embeddings, models), paid for
with credits, and a management API for users, keys, plans and usage.</p>
<ul>
<li><a href="docs">API documentation</a> (Swagger UI, try requests in the browser)</li>
<li><a href="redoc">API reference</a> (ReDoc)</li>
<li><a href="openapi.json">OpenAPI document</a></li>
{{- if .Console}}
<li><a href="{{.Console}}">Console</a> (your keys, usage and credits)</li>
{{- end}}
</ul>
<p>Start with <code>POST /auth/register</code> to get an API key, then point an
OpenAI SDK at <code>/v1</code> of this server with that key.</p>
</body>
</html>
`))

// renderHome renders the landing page of this handler's configuration:
// the console is linked where it is served, and not when it is off.
func (h *Handler) renderHome() []byte {
	var data struct{ Console string }
	if !h.DisableConsole {
		data.Console = strings.TrimPrefix(h.consolePath(), "/")
	}
	var b bytes.Buffer
	if err := homePage.Execute(&b, data); err != nil {
		panic(err) // the template and its data are fixed
	}
	return b.Bytes()
}

// homeHandler serves the landing page (GET /).
func (h *Handler) homeHandler(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("Content-Security-Policy", docsCSP)
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(h.home))
}

// favicon serves the icon (GET /favicon.ico), an SVG.
func (h *Handler) favicon(w http.ResponseWriter, r *http.Request) {
	h.serveDocsFile(w, r, faviconFile, false)
}

const faviconFile = "favicon.svg"
