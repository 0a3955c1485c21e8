package integration

// Integration tests of CORS in the gateway handler: preflights answered
// without a key and without reaching the upstream, allowed origins, and the
// key_referrers mode where the calling key's domain_referrers decide. The
// real-browser test (a page on another port calling the gateway with
// fetch) is TestCORSBrowser.

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// preflight sends a browser's preflight for a POST with an Authorization
// and a Content-Type header from origin.
func (g *gateway) preflight(path, origin string) response {
	g.t.Helper()
	return g.do("OPTIONS", path, nil, "Origin: "+origin, "Access-Control-Request-Method: POST",
		"Access-Control-Request-Headers: authorization, content-type")
}

func TestCORSAllowedOrigins(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), GatewayBlock: "cors http://app.localhost:5173"})
	key, _ := g.registerUser("cors@example.com")
	const app = "http://app.localhost:5173"

	r := g.preflight("/v1/chat/completions", app).mustStatus(t, 204, "preflight")
	if r.Header.Get("Access-Control-Allow-Origin") != app || r.Header.Get("Access-Control-Allow-Headers") != "authorization, content-type" ||
		!strings.Contains(r.Header.Get("Access-Control-Allow-Methods"), "POST") || r.Header.Get("Access-Control-Max-Age") != "600" {
		t.Fatalf("preflight headers %v", r.Header)
	}
	other := g.preflight("/v1/chat/completions", "http://evil.localhost").mustStatus(t, 204, "preflight of another origin")
	if other.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("another origin was allowed: %v", other.Header)
	}
	if n := len(up.requests()); n != 0 {
		t.Fatalf("preflights reached the upstream %d times", n)
	}
	if credits, _ := g.balance(key); credits != 1000 {
		t.Fatalf("balance after preflights %d, want 1000", credits)
	}

	r = g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key), "Origin: "+app).mustStatus(t, 200, "chat from the app")
	if r.Header.Get("Access-Control-Allow-Origin") != app || !strings.Contains(r.Header.Get("Access-Control-Expose-Headers"), "X-Gatewayz-Credits-Remaining") {
		t.Fatalf("chat headers %v", r.Header)
	}
	// A refusal is readable by the page too.
	r = g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), "Origin: "+app)
	wantRefusal(t, r, 401, "missing_api_key", "", "no key from the app")
	if r.Header.Get("Access-Control-Allow-Origin") != app || r.Header.Get("X-Request-Id") == "" {
		t.Fatalf("401 headers %v", r.Header)
	}
	r = g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key), "Origin: http://evil.localhost").mustStatus(t, 200, "chat from elsewhere")
	if r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("another origin got CORS headers: %v", r.Header)
	}
}

func TestCORSKeyReferrers(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), GatewayBlock: "cors {\n\t\t\t\tkey_referrers\n\t\t\t}"})
	owner, _ := g.registerUser("referrers@example.com")
	web, _ := g.createKey(owner, map[string]any{"key_name": "web", "domain_referrers": []string{"*.example.com"}})

	// Any origin may ask: the key decides on the actual request.
	r := g.preflight("/v1/chat/completions", "https://shop.example.com").mustStatus(t, 204, "preflight")
	if r.Header.Get("Access-Control-Allow-Origin") != "https://shop.example.com" {
		t.Fatalf("preflight headers %v", r.Header)
	}
	r = g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(web), "Origin: https://shop.example.com").
		mustStatus(t, 200, "listed origin")
	if r.Header.Get("Access-Control-Allow-Origin") != "https://shop.example.com" {
		t.Fatalf("chat headers %v", r.Header)
	}
	// The unrestricted primary key may not be used from a page at all,
	// and a refused call is not charged.
	before, _ := g.balance(owner)
	r = g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(owner), "Origin: https://shop.example.com")
	wantRefusal(t, r, 403, "origin_not_allowed", "domain_referrers", "unrestricted key from a page")
	if r.Header.Get("Access-Control-Allow-Origin") != "https://shop.example.com" {
		t.Fatalf("the refusal is not readable by the page: %v", r.Header)
	}
	if after, _ := g.balance(owner); after != before {
		t.Fatalf("refused call charged: %d -> %d", before, after)
	}
	// Without Origin (a server), the key works as before.
	g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(owner)).mustStatus(t, 200, "server call")
	if n := len(up.requests()); n != 2 {
		t.Fatalf("upstream saw %d requests, want 2", n)
	}
}

// corsPage is a web app on another origin that calls the gateway with
// fetch (the OpenAI SDK's browser transport does the same) and writes what
// it could read into the page.
const corsPage = `<!doctype html><html><body><pre id="out">pending</pre><script>
async function call(key) {
  try {
    const r = await fetch(%q, {method: "POST",
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
      body: JSON.stringify({model: "gpt-4o-mini", max_tokens: 16, messages: [{role: "user", content: "hello"}]})});
    const j = await r.json();
    return r.status + " " + (j.choices ? j.choices[0].message.content : j.error.code) +
      " credits=" + r.headers.get("x-gatewayz-credits-remaining") + " id=" + (r.headers.get("x-request-id") || "").length;
  } catch (e) { return "blocked " + e; }
}
(async () => {
  const web = await call(%q), primary = await call(%q);
  document.getElementById("out").textContent = "web: " + web + "\nprimary: " + primary + "\ndone";
})();
</script></body></html>`

func TestCORSBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("caddytest is skipped in -short mode")
	}
	chromium := findChromium(t)
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), GatewayBlock: "cors {\n\t\t\t\tkey_referrers\n\t\t\t}"})
	owner, _ := g.registerUser("browser@example.com")
	web, _ := g.createKey(owner, map[string]any{"key_name": "web", "domain_referrers": []string{"localhost"}})

	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, corsPage, gatewayBase+"/v1/chat/completions", web, owner)
	}))
	t.Cleanup(page.Close)

	// The browser resolves only localhost: the page is on localhost at
	// another port than the gateway, so another origin.
	res := renderInChromium(t, chromium, strings.Replace(page.URL, "127.0.0.1", "localhost", 1))
	if !strings.Contains(res.dom, "done") {
		t.Fatalf("the page did not finish; DOM:\n%s\nconsole:\n%s", tail(res.dom), strings.Join(res.console, "\n"))
	}
	// The listed key gets the answer, its balance and id; the primary key
	// is refused with a reason the page can read.
	if !strings.Contains(res.dom, "web: 200 hi credits=") || !strings.Contains(res.dom, "id=36") {
		t.Errorf("web key from the page: DOM\n%s", tail(res.dom))
	}
	if !strings.Contains(res.dom, "primary: 403 origin_not_allowed") {
		t.Errorf("primary key from the page: DOM\n%s", tail(res.dom))
	}
	// One chat reached the upstream (no preflight, no refused call) and
	// was billed exactly: 10 tokens at 1 credit each.
	if n := len(up.requests()); n != 1 {
		t.Errorf("upstream saw %d requests, want 1", n)
	}
	if credits, _ := g.balance(owner); credits != 990 {
		t.Errorf("balance %d, want 990", credits)
	}
}
