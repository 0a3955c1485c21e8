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
	consoleServed := false
	for _, rt := range h.routes() {
		consoleServed = consoleServed || (rt.Method == "GET" && (rt.Pattern == "/console" || rt.Pattern == "/console/"))
	}
	if got := strings.Contains(body, ">Console</a>"); got != consoleServed {
		t.Errorf("console link shown: %v, console served: %v", got, consoleServed)
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
