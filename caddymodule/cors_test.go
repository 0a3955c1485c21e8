package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCORSOriginAllowed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cors   CORS
		origin string
		want   bool
	}{
		{"listed", CORS{AllowedOrigins: []string{"https://app.example.com"}}, "https://app.example.com", true},
		{"listed, other case", CORS{AllowedOrigins: []string{"https://App.example.com"}}, "https://app.example.com", true},
		{"other port", CORS{AllowedOrigins: []string{"https://app.example.com"}}, "https://app.example.com:8443", false},
		{"other scheme", CORS{AllowedOrigins: []string{"https://app.example.com"}}, "http://app.example.com", false},
		{"any", CORS{AllowedOrigins: []string{"*"}}, "http://localhost:5173", true},
		{"opaque origin", CORS{AllowedOrigins: []string{"*"}}, "null", false},
		{"no origin", CORS{AllowedOrigins: []string{"*"}}, "", false},
		{"key decides", CORS{KeyReferrers: true}, "https://shop.example.com", true},
		{"key mode with a list", CORS{KeyReferrers: true, AllowedOrigins: []string{"https://a.example.com"}}, "https://b.example.com", false},
	} {
		if got := tc.cors.originAllowed(tc.origin); got != tc.want {
			t.Errorf("%s: originAllowed(%q) = %v, want %v", tc.name, tc.origin, got, tc.want)
		}
	}
}

func TestCORSAllowCaller(t *testing.T) {
	keyMode := &CORS{KeyReferrers: true}
	listed := normalizeReferrerRules([]string{"*.example.com"})
	for _, tc := range []struct {
		name      string
		cors      *CORS
		origin    string
		referrers []string
		wantErr   string
		wantACAO  string
	}{
		{"off", nil, "https://x.example.com", nil, "", ""},
		{"server call", keyMode, "", nil, "", ""},
		{"key lists the origin", keyMode, "https://x.example.com", listed, "", "https://x.example.com"},
		{"key does not list it", keyMode, "https://evil.test", listed, "origin_not_allowed", ""},
		{"unrestricted key", keyMode, "https://x.example.com", nil, "origin_not_allowed", ""},
		{"origin list only", &CORS{AllowedOrigins: []string{"https://x.example.com"}}, "https://x.example.com", nil, "", "https://x.example.com"},
		{"origin not in the list", &CORS{AllowedOrigins: []string{"https://x.example.com"}}, "https://y.example.com", nil, "", ""},
	} {
		r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		h := http.Header{}
		gerr := tc.cors.allowCaller(h, r, tc.referrers)
		code := ""
		if gerr != nil {
			code = gerr.Code
		}
		if code != tc.wantErr || h.Get("Access-Control-Allow-Origin") != tc.wantACAO {
			t.Errorf("%s: error %q, ACAO %q; want %q, %q", tc.name, code, h.Get("Access-Control-Allow-Origin"), tc.wantErr, tc.wantACAO)
		}
	}
}

// TestCORSPreflightThroughGateway: a preflight needs no key, reaches no
// upstream and counts as a preflight; an OPTIONS that is no preflight is
// still the 405 it was.
func TestCORSPreflightThroughGateway(t *testing.T) {
	e := newTestEnv(t, func(_ *App, g *Gateway) { g.CORS = &CORS{AllowedOrigins: []string{"http://localhost:5173"}} })
	rec := e.do(t, "OPTIONS", "/v1/chat/completions", "", "", "Origin: http://localhost:5173",
		"Access-Control-Request-Method: POST", "Access-Control-Request-Headers: authorization, content-type")
	if rec.Code != http.StatusNoContent || rec.Header().Get("Access-Control-Allow-Origin") != "http://localhost:5173" ||
		!strings.Contains(rec.Header().Get("Vary"), "Origin") {
		t.Fatalf("preflight: %d %v", rec.Code, rec.Header())
	}
	if n := e.upstream.Load(); n != 0 {
		t.Fatalf("the preflight reached the upstream")
	}
	wantError(t, e.do(t, "OPTIONS", "/v1/chat/completions", "", ""), http.StatusMethodNotAllowed, "method_not_allowed", "OPTIONS")
}
