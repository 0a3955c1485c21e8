package admin

import (
	"bytes"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// The web console: one page (console/index.html) and its hand-written ES
// modules and stylesheet, embedded in the binary and served under
// ConsolePath. The page holds the user's or admin's key in sessionStorage
// and calls the management API routes of routes() like any other client,
// so every view goes through the same authentication and validation.
// Nothing is loaded from another origin: the Content-Security-Policy
// allows scripts, styles, images and fetches from this origin only, and no
// inline script or style.

//go:embed console
var consoleFS embed.FS

// consoleFiles is the console directory; its assets are served under
// <ConsolePath>/assets/.
var consoleFiles = func() fs.FS {
	sub, err := fs.Sub(consoleFS, "console")
	if err != nil {
		panic(err) // "console" is a valid path; fs.Sub cannot fail on it
	}
	return sub
}()

// defaultConsolePath is where the console is served when the config says
// nothing.
const defaultConsolePath = "/console"

// consoleCSP is the console page's Content-Security-Policy.
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// consolePage renders index.html with the console's base path, so the
// page finds its assets wherever the console is mounted.
var consolePage = sync.OnceValue(func() *template.Template {
	return template.Must(template.ParseFS(consoleFiles, "index.html"))
})

// consoleETags are strong ETags of the assets, computed on first use.
var consoleETags = sync.OnceValue(func() map[string]string {
	tags := map[string]string{}
	_ = fs.WalkDir(consoleFiles, "assets", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(consoleFiles, name)
		if err != nil {
			return err
		}
		tags[name] = etag(b)
		return nil
	})
	return tags
})

// consolePath is the configured console path, or the default.
func (h *Handler) consolePath() string {
	if h.ConsolePath == "" {
		return defaultConsolePath
	}
	return h.ConsolePath
}

// validateConsolePath checks that the console path is a clean absolute
// path outside the API's own routes.
func (h *Handler) validateConsolePath() error {
	if h.DisableConsole {
		return nil
	}
	p := h.consolePath()
	if !strings.HasPrefix(p, "/") || p == "/" || path.Clean(p) != p || strings.ContainsAny(p, "{}?#%* ") {
		return errors.New("console_path must be a clean absolute path such as /console, not " + p)
	}
	first := strings.SplitN(p[1:], "/", 2)[0]
	for _, rt := range h.routes() {
		if seg := strings.SplitN(rt.Pattern[1:], "/", 2)[0]; seg == first {
			return errors.New("console_path " + p + " overlaps the API route " + rt.Pattern)
		}
	}
	return nil
}

// serveConsole answers the request if it is for the console (the page at
// the console path, with or without a trailing slash, and the assets under
// it) and reports whether it did.
func (h *Handler) serveConsole(w http.ResponseWriter, r *http.Request) bool {
	if h.DisableConsole {
		return false
	}
	base := h.consolePath()
	p := r.URL.Path
	if p != base && !strings.HasPrefix(p, base+"/") {
		return false
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeErr(w, newError(http.StatusMethodNotAllowed, "method_not_allowed", "Method Not Allowed"))
		return true
	}
	rest := strings.TrimPrefix(strings.TrimPrefix(p, base), "/")
	hdr := w.Header()
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	if rest == "" {
		var buf bytes.Buffer
		if err := consolePage().Execute(&buf, map[string]string{"Base": base}); err != nil {
			h.fail(w, r, err)
			return true
		}
		hdr.Set("Content-Type", "text/html; charset=utf-8")
		hdr.Set("Cache-Control", "no-cache")
		hdr.Set("Content-Security-Policy", consoleCSP)
		hdr.Set("X-Frame-Options", "DENY")
		hdr.Set("Cross-Origin-Opener-Policy", "same-origin")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(buf.Bytes()))
		return true
	}
	tag, ok := consoleETags()[rest]
	if !ok || !fs.ValidPath(rest) {
		writeErr(w, errNotFound("Not found"))
		return true
	}
	b, err := fs.ReadFile(consoleFiles, rest)
	if err != nil {
		h.fail(w, r, err)
		return true
	}
	hdr.Set("Content-Type", docsContentType(rest))
	hdr.Set("ETag", tag)
	hdr.Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	return true
}
