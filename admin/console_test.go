package admin

import (
	"io/fs"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

func consoleHandler(c Handler) *Handler {
	h := &c
	h.setup(nil, zap.NewNop())
	return h
}

// The page carries the strict CSP and loads its assets from under the
// console path, wherever that is; the assets are served with their types;
// anything else under the path is a JSON 404.
func TestConsoleServing(t *testing.T) {
	for _, base := range []string{"/console", "/ui/gatewayz"} {
		h := consoleHandler(Handler{ConsolePath: base})
		if base == defaultConsolePath {
			h = consoleHandler(Handler{})
		}
		for _, page := range []string{base, base + "/"} {
			w := get(t, h, page)
			if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
				t.Fatalf("GET %s: %d %q", page, w.Code, w.Header().Get("Content-Type"))
			}
			csp := w.Header().Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self';", "style-src 'self';", "connect-src 'self';", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("%s: CSP %q lacks %q", page, csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
				t.Errorf("%s: CSP %q allows inline code", page, csp)
			}
			if w.Header().Get("X-Frame-Options") != "DENY" || w.Header().Get("Referrer-Policy") != "no-referrer" {
				t.Errorf("%s: frame or referrer headers missing: %v", page, w.Header())
			}
			body := w.Body.String()
			if regexp.MustCompile(`<script[^>]*>[^<]`).MatchString(body) || strings.Contains(body, "style=") || regexp.MustCompile(`\son[a-z]+=`).MatchString(body) {
				t.Errorf("%s has inline script, style or handlers", page)
			}
			refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(body, -1)
			if len(refs) < 3 {
				t.Fatalf("%s loads %d files", page, len(refs))
			}
			for _, m := range refs {
				if strings.HasPrefix(m[1], "#") {
					continue // the skip link
				}
				if !strings.HasPrefix(m[1], base+"/assets/") {
					t.Errorf("%s loads %q, not from %s/assets/", page, m[1], base)
					continue
				}
				if a := get(t, h, m[1]); a.Code != 200 || a.Body.Len() == 0 || a.Header().Get("X-Content-Type-Options") != "nosniff" {
					t.Errorf("%s: %s answered %d", page, m[1], a.Code)
				}
			}
		}
		for target, ct := range map[string]string{
			base + "/assets/app.js":      "text/javascript; charset=utf-8",
			base + "/assets/console.css": "text/css; charset=utf-8",
			base + "/assets/icon.svg":    "image/svg+xml",
		} {
			if w := get(t, h, target); w.Code != 200 || w.Header().Get("Content-Type") != ct || w.Header().Get("ETag") == "" {
				t.Errorf("GET %s: %d %q etag %q", target, w.Code, w.Header().Get("Content-Type"), w.Header().Get("ETag"))
			}
		}
		for _, target := range []string{base + "/assets/nope.js", base + "/index.html", base + "/assets/", base + "/assets/../index.html", base + "/x"} {
			if w := get(t, h, target); w.Code != 404 || !strings.Contains(w.Body.String(), `"detail"`) {
				t.Errorf("GET %s: %d %s, want the API's 404", target, w.Code, w.Body.String())
			}
		}
		r := httptest.NewRequest("POST", base, nil)
		w := httptest.NewRecorder()
		h.serve(w, r)
		if w.Code != 405 || w.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("POST %s: %d allow %q", base, w.Code, w.Header().Get("Allow"))
		}
	}
	// Off: the path is an unknown route; a lookalike path is never the console.
	if w := get(t, consoleHandler(Handler{DisableConsole: true}), "/console"); w.Code != 404 {
		t.Errorf("disabled console: %d", w.Code)
	}
	if w := get(t, consoleHandler(Handler{}), "/consoles"); w.Code != 404 {
		t.Errorf("/consoles: %d", w.Code)
	}
}

// The hand-written assets put data into the page only as text: no
// innerHTML, outerHTML, insertAdjacentHTML, document.write, eval or inline
// style attribute, and no URL of another origin.
func TestConsoleAssetsAreSafe(t *testing.T) {
	forbidden := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setAttribute\("style"|localStorage\.setItem|document\.cookie\s*=`)
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	var n int
	err := fs.WalkDir(consoleFiles, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(consoleFiles, name)
		if err != nil {
			return err
		}
		n++
		if m := forbidden.Find(b); m != nil && strings.HasSuffix(name, ".js") {
			t.Errorf("%s uses %s", name, m)
		}
		for _, m := range external.FindAll(b, -1) {
			if string(m) != "http://www.w3.org" { // the SVG namespace, never fetched
				t.Errorf("%s names the external URL %s", name, m)
			}
		}
		return nil
	})
	if err != nil || n < 6 {
		t.Fatalf("walked %d console files: %v", n, err)
	}
}

func TestConsolePathValidation(t *testing.T) {
	for path, ok := range map[string]bool{
		"":             true,
		"/console":     true,
		"/ui/console":  true,
		"console":      false,
		"/":            false,
		"/console/":    false,
		"/a/../b":      false,
		"/user":        false,
		"/admin/ui":    false,
		"/docs":        false,
		"/plans":       false,
		"/con sole":    false,
		"/console?x=1": false,
	} {
		h := &Handler{ConsolePath: path}
		if err := h.Validate(); ok != (err == nil) {
			t.Errorf("console_path %q: err %v, want ok=%v", path, err, ok)
		}
	}
	if err := (&Handler{ConsolePath: "/user", DisableConsole: true}).Validate(); err != nil {
		t.Errorf("a disabled console's path is not checked: %v", err)
	}
}

func TestConsoleCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in       string
		path     string
		disabled bool
		ok       bool
	}{
		{"gatewayz_api {\n console_path /ui\n}", "/ui", false, true},
		{"gatewayz_api {\n console off\n}", "", true, true},
		{"gatewayz_api {\n console_path\n}", "", false, false},
		{"gatewayz_api {\n console_path /a /b\n}", "", false, false},
		{"gatewayz_api {\n console on\n}", "", false, false},
		{"gatewayz_api {\n console off now\n}", "", false, false},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if tc.ok != (err == nil) || (tc.ok && (h.ConsolePath != tc.path || h.DisableConsole != tc.disabled)) {
			t.Errorf("%q: path %q disabled %v err %v", tc.in, h.ConsolePath, h.DisableConsole, err)
		}
	}
}
