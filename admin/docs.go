package admin

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// The API documentation: the OpenAPI 3.1 document at /openapi.json, Swagger
// UI at /docs and ReDoc at /redoc. Everything is embedded in the binary
// (scripts/fetch-docs-assets.sh vendors the pinned Swagger UI and ReDoc
// files), so the pages work on a host without Internet access, and their
// Content-Security-Policy lets the browser load nothing from another origin.

// openAPIDocument describes every route of routes() plus the gateway's /v1
// routes; docs_test.go holds the two together.
//
//go:embed openapi.json
var openAPIDocument []byte

//go:embed assets
var assetsFS embed.FS

// docsAssets is the assets directory, served under /docs/assets/.
var docsAssets = func() fs.FS {
	sub, err := fs.Sub(assetsFS, "assets")
	if err != nil {
		panic(err) // "assets" is a valid path; fs.Sub cannot fail on it
	}
	return sub
}()

// Pages of the documentation, within docsAssets.
const (
	swaggerPage = "docs.html"
	redocPage   = "redoc.html"
)

// docsCSP is the Content-Security-Policy of the documentation pages: scripts,
// styles, fonts, fetches and workers only from this origin (plus inline
// styles and data: images, which both UIs generate, and blob: workers, which
// ReDoc's search uses).
const docsCSP = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; " +
	"img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// docsETags maps each embedded file (and the OpenAPI document, under
// "openapi.json") to a strong ETag of its content, computed on first use.
var docsETags = sync.OnceValue(func() map[string]string {
	tags := map[string]string{"/openapi.json": etag(openAPIDocument)}
	_ = fs.WalkDir(docsAssets, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(docsAssets, name)
		if err != nil {
			return err
		}
		tags[name] = etag(b)
		return nil
	})
	return tags
})

func etag(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:12]) + `"`
}

// openAPI serves the OpenAPI document (GET /openapi.json).
func (h *Handler) openAPI(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("ETag", docsETags()["/openapi.json"])
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(openAPIDocument))
}

// swaggerUI serves the Swagger UI page (GET /docs).
func (h *Handler) swaggerUI(w http.ResponseWriter, r *http.Request) {
	h.serveDocsFile(w, r, swaggerPage, true)
}

// redoc serves the ReDoc page (GET /redoc).
func (h *Handler) redoc(w http.ResponseWriter, r *http.Request) {
	h.serveDocsFile(w, r, redocPage, true)
}

// docsAsset serves an embedded file of the documentation pages (GET
// /docs/assets/{file...}).
func (h *Handler) docsAsset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if name == "" || !fs.ValidPath(name) || path.Clean(name) != name {
		writeErr(w, errNotFound("Not found"))
		return
	}
	h.serveDocsFile(w, r, name, name == swaggerPage || name == redocPage)
}

// serveDocsFile writes the embedded file name with its content type, an ETag
// (so browsers revalidate instead of downloading again) and, for pages, the
// Content-Security-Policy. Directories and unknown files are a JSON 404.
func (h *Handler) serveDocsFile(w http.ResponseWriter, r *http.Request, name string, page bool) {
	tag, ok := docsETags()[name]
	if !ok {
		writeErr(w, errNotFound("Not found"))
		return
	}
	b, err := fs.ReadFile(docsAssets, name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", docsContentType(name))
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("ETag", tag)
	if page {
		hdr.Set("Cache-Control", "no-cache")
		hdr.Set("Content-Security-Policy", docsCSP)
		hdr.Set("Referrer-Policy", "no-referrer")
	} else {
		hdr.Set("Cache-Control", "public, max-age=86400")
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
}

// docsContentType is the media type of an embedded file: by extension, and
// plain text for the extension-less LICENSE, NOTICE and VERSION files.
func docsContentType(name string) string {
	ext := path.Ext(name)
	switch ext {
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".html":
		return "text/html; charset=utf-8"
	case "", ".txt":
		return "text/plain; charset=utf-8"
	}
	if t := mime.TypeByExtension(ext); t != "" && !strings.HasPrefix(t, "application/octet-stream") {
		return t
	}
	return "application/octet-stream"
}
