package admin

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHomePage: / says what this is and links the documentation; the
// console link follows the route table; other unknown paths stay 404.
func TestHomePage(t *testing.T) {
	h, _ := newTestHandler(t, "")
	rec := httptest.NewRecorder()
	h.serve(rec, httptest.NewRequest("GET", "/", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") || rec.Header().Get("Content-Security-Policy") == "" {
		t.Fatalf("GET /: %d %v", rec.Code, rec.Header())
	}
	for _, want := range []string{"credit-metered gateway", `href="docs"`, `href="redoc"`, `href="openapi.json"`, `href="favicon.ico"`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / lacks %q", want)
		}
	}
	if !strings.Contains(body, `<a href="console">Console</a>`) {
		t.Errorf("GET / does not link the console")
	}
	// The link follows the console's path, and goes when it is off.
	for _, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{ConsolePath: "/ui/gatewayz"}, `<a href="ui/gatewayz">Console</a>`},
		{Handler{DisableConsole: true}, ""},
	} {
		got := string(consoleHandler(tc.h).renderHome())
		if tc.want == "" && strings.Contains(got, "Console</a>") || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("%+v: console link wrong in\n%s", tc.h, got)
		}
	}
	rec = httptest.NewRecorder()
	h.serve(rec, httptest.NewRequest("GET", "/favicon.ico", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "image/svg+xml" || !strings.Contains(rec.Body.String(), "<svg") {
		t.Fatalf("GET /favicon.ico: %d %v", rec.Code, rec.Header())
	}
	rec = httptest.NewRecorder()
	h.serve(rec, httptest.NewRequest("GET", "/nope", nil))
	if rec.Code != 404 {
		t.Fatalf("GET /nope: %d", rec.Code)
	}
}
