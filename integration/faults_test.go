package integration

// Upstream faults (issue #7, part 2): each one answered in OpenAI shape (or
// passed through), with the reservation released and the ledger exact
// (balance = initial - sum of the charges the usage API reports).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// faultUpstream answers according to the request's model:
//
//	ok          JSON completion, usage 4+6
//	e500        500 with an OpenAI error body
//	e503html    503 with an HTML page
//	e429        429 with Retry-After: 7
//	slow        waits 10s before the headers (beyond the proxy's 3s timeout)
//	malformed   200 application/json that is not JSON
//	truncated   Content-Length of the whole body, half of it, then abort
//	cut         an SSE stream aborted after 5 content events
//	nousage     a complete SSE stream without a usage chunk
//	huge        a 6 MiB JSON completion, usage 4+6 at its end
//	hugestream  a 6 MiB SSE stream, then usage 4+1500
//	overuse     JSON claiming 100000 completion tokens (max_tokens was 16)
type faultUpstream struct {
	*httptest.Server
}

func startFaultUpstream(t *testing.T) *faultUpstream {
	t.Helper()
	hugeCompletion()
	f := &faultUpstream{httptest.NewServer(http.HandlerFunc(faultServe))}
	t.Cleanup(f.Close)
	return f
}

func faultServe(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model string `json:"model"`
	}
	body, _ := io.ReadAll(r.Body)
	_ = jsonUnmarshalLoose(body, &req)
	h := w.Header()
	completion := func(content string, prompt, compl int) string {
		return fmt.Sprintf(`{"id":"chatcmpl-f","object":"chat.completion","created":1,"model":%q,`+
			`"choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, req.Model, content, prompt, compl, prompt+compl)
	}
	event := func(content string) string {
		return fmt.Sprintf("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":%q,"+
			"\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":null}]}\n\n", req.Model, content)
	}
	flush := func() { http.NewResponseController(w).Flush() }
	switch req.Model {
	case "ok":
		h.Set("Content-Type", "application/json")
		io.WriteString(w, completion("hi", 4, 6))
	case "e500":
		h.Set("Content-Type", "application/json")
		w.WriteHeader(500)
		io.WriteString(w, `{"error":{"message":"upstream exploded","type":"server_error","code":"internal"}}`)
	case "e503html":
		h.Set("Content-Type", "text/html")
		w.WriteHeader(503)
		io.WriteString(w, "<html><body>Service Unavailable</body></html>")
	case "e429":
		h.Set("Content-Type", "application/json")
		h.Set("Retry-After", "7")
		w.WriteHeader(429)
		io.WriteString(w, `{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}`)
	case "slow":
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		h.Set("Content-Type", "application/json")
		io.WriteString(w, completion("late", 4, 6))
	case "malformed":
		h.Set("Content-Type", "application/json")
		io.WriteString(w, `{"choices":[{"message":{"content":"hi"}}], "usage": {"prompt_tokens": 4, oops`)
	case "truncated":
		b := completion("this body is cut in the middle", 4, 6)
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", fmt.Sprint(len(b)))
		w.WriteHeader(200)
		io.WriteString(w, b[:len(b)/2])
		flush()
		panic(http.ErrAbortHandler)
	case "cut", "nousage":
		h.Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for i := 0; i < 5; i++ {
			io.WriteString(w, event("word "))
			flush()
		}
		if req.Model == "cut" {
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"nousage\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
		io.WriteString(w, "data: [DONE]\n\n")
	case "huge":
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", fmt.Sprint(len(hugeCompletion())))
		w.WriteHeader(200)
		w.Write(hugeCompletion())
	case "hugestream":
		h.Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		chunk := event(strings.Repeat("y", 4096))
		for i := 0; i < 1500; i++ {
			io.WriteString(w, chunk)
		}
		fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"hugestream\",\"choices\":[],"+
			"\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1500,\"total_tokens\":1504}}\n\n")
		io.WriteString(w, "data: [DONE]\n\n")
	case "overuse":
		h.Set("Content-Type", "application/json")
		io.WriteString(w, completion("hi", 4, 100000))
	default:
		w.WriteHeader(404)
	}
}

// hugeCompletion is the 6 MiB answer of the "huge" model, built once (and
// before the test's first request) so that building it never counts
// against the proxy's response header timeout.
var hugeCompletion = sync.OnceValue(func() []byte {
	return []byte(fmt.Sprintf(`{"id":"chatcmpl-f","object":"chat.completion","created":1,"model":"huge",`+
		`"choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"stop"}],`+
		`"usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}`, strings.Repeat("x", 6<<20)))
})

// refusingListener accepts connections and closes them at once, like an
// upstream that is up but refuses to talk.
func refusingListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) // RST rather than FIN
			}
			c.Close()
		}
	}()
	return l.Addr().String()
}

// closedPort returns an address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// faultsCaddyfile routes /v1/* through the gateway to one of three
// upstreams chosen by the X-Fault-Upstream header, with a 3s response
// header timeout.
func faultsCaddyfile(db, up, down, refusing string) string {
	proxy := func(addr string) string {
		return fmt.Sprintf(`gatewayz
		reverse_proxy %s {
			header_up Authorization "Bearer %s"
			header_down -x-ratelimit-*
			transport http {
				response_header_timeout 3s
			}
		}`, addr, upstreamKey)
	}
	return fmt.Sprintf(`{
	%s
	gatewayz {
		storage bolt %s {
			no_sync
		}
		secret integration-secret-0123456789abcdef
		admin_key %s
	}
}

http://localhost:9080 {
	@api path /auth/* /user/* /admin/* /plans /plans/* /health
	handle @api {
		gatewayz_api
	}
	@down header X-Fault-Upstream down
	handle @down {
		%s
	}
	@refusing header X-Fault-Upstream refusing
	handle @refusing {
		%s
	}
	handle /v1/* {
		%s
	}
}
`, globalOptions, db, testAdminKey, proxy(down), proxy(refusing), proxy(up))
}

// ledger tracks what a user must have: the balance is the initial credits
// minus every charge the usage API reports, and nothing stays reserved.
type faultLedger struct {
	t        *testing.T
	g        *gateway
	key      string
	initial  int64
	requests int64 // usage records so far
	charged  int64 // their credits
}

// settled waits until no reservation is open (a stream settles just
// after its last byte) and the usage records have caught up with the
// balance (they are group-committed a moment later), then returns the
// balance and the usage totals. A mismatch that persists is reported by
// check.
func (l *faultLedger) settled() (credits, requests, charged int64) {
	l.t.Helper()
	for range 200 {
		var reserved int64
		credits, reserved = l.g.balance(l.key)
		requests, charged = l.g.monitor(l.key)
		if reserved == 0 && credits == l.initial-charged {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	if _, reserved := l.g.balance(l.key); reserved != 0 {
		l.t.Errorf("%d credits still reserved", reserved)
	}
	return
}

// check asserts the ledger after one fault: newRecords usage records were
// added (0 for a refusal), and the balance is exact. It returns the credits
// the fault was charged.
func (l *faultLedger) check(what string, newRecords int64) int64 {
	l.t.Helper()
	credits, requests, charged := l.settled()
	if credits != l.initial-charged {
		l.t.Errorf("%s: balance %d, want initial %d - charges %d", what, credits, l.initial, charged)
	}
	if requests-l.requests != newRecords {
		l.t.Errorf("%s: %d new usage records, want %d", what, requests-l.requests, newRecords)
	}
	cost := charged - l.charged
	l.requests, l.charged = requests, charged
	return cost
}

// wantOpenAIError checks an OpenAI-shaped error with the status.
func wantOpenAIError(t *testing.T, what string, r response, status int) {
	t.Helper()
	if r.Status != status {
		t.Errorf("%s: status %d, want %d: %s", what, r.Status, status, r.Body)
		return
	}
	e, _ := r.json()["error"].(map[string]any)
	if e == nil || e["message"] == nil || e["type"] == nil || e["code"] == nil {
		t.Errorf("%s: not an OpenAI error body: %s", what, r.Body)
	}
	for _, internal := range []string{"127.0.0.1", "dial tcp", "connection refused", "EOF", "timeout awaiting"} {
		if strings.Contains(string(r.Body), internal) {
			t.Errorf("%s: internal error text %q in the body: %s", what, internal, r.Body)
		}
	}
}

func TestUpstreamFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("caddytest integration test")
	}
	up := startFaultUpstream(t)
	db := t.TempDir() + "/gatewayz.db"
	tester := caddytest.NewTester(t)
	tester.InitServer(faultsCaddyfile(db, strings.TrimPrefix(up.URL, "http://"), closedPort(t), refusingListener(t)), "caddyfile")
	g := &gateway{t: t, tester: tester, DBPath: db}
	reg := g.do("POST", "/auth/register", map[string]any{"username": "faults", "email": "faults@example.com", "initial_credits": 1_000_000},
		adminAuth()).mustStatus(t, 200, "register").json()
	key := reg["api_key"].(string)
	// A plan far above the trial's daily token limit: the "overuse" fault
	// alone reports 100004 tokens.
	const big = 1_000_000_000
	plan := g.do("POST", "/admin/plans", map[string]any{"name": "faults", "daily_request_limit": big, "monthly_request_limit": big,
		"daily_token_limit": big, "monthly_token_limit": big, "price_per_month": 0}, adminAuth()).mustStatus(t, 200, "plan").json()
	planID := plan["plan"].(map[string]any)["id"]
	g.do("POST", "/admin/assign-plan", map[string]any{"user_id": reg["user_id"], "plan_id": planID}, adminAuth()).mustStatus(t, 200, "assign plan")
	l := &faultLedger{t: t, g: g, key: key, initial: 1_000_000}
	auth := bearer(key)
	chat := func(model string, stream bool) map[string]any {
		b := chatBody(model)
		if stream {
			b["stream"] = true
		}
		return b
	}

	r := g.do("POST", "/v1/chat/completions", chat("ok", false), auth).mustStatus(t, 200, "ok")
	if cost := l.check("ok", 1); cost != 10 {
		t.Errorf("ok: charged %d, want 10", cost)
	}

	// Refusals of every kind: OpenAI shape, nothing charged, no record.
	r = g.do("POST", "/v1/chat/completions", chat("ok", false), auth, "X-Fault-Upstream: down")
	wantOpenAIError(t, "upstream down", r, 502)
	l.check("upstream down", 0)

	r = g.do("POST", "/v1/chat/completions", chat("ok", false), auth, "X-Fault-Upstream: refusing")
	if r.Status != 502 && r.Status != 504 {
		t.Errorf("upstream refusing: status %d", r.Status)
	}
	wantOpenAIError(t, "upstream refusing", r, r.Status)
	l.check("upstream refusing", 0)

	r = g.do("POST", "/v1/chat/completions", chat("slow", false), auth)
	if r.Status != 504 && r.Status != 502 {
		t.Errorf("slow upstream: status %d, want 504 (or 502)", r.Status)
	}
	wantOpenAIError(t, "slow upstream", r, r.Status)
	l.check("slow upstream", 0)

	r = g.do("POST", "/v1/chat/completions", chat("e500", false), auth)
	wantOpenAIError(t, "upstream 500", r, 500)
	l.check("upstream 500", 0)

	r = g.do("POST", "/v1/chat/completions", chat("e503html", false), auth)
	wantOpenAIError(t, "upstream 503 html", r, 503)
	l.check("upstream 503 html", 0)

	r = g.do("POST", "/v1/chat/completions", chat("e429", false), auth)
	wantOpenAIError(t, "upstream 429", r, 429)
	if ra := r.Header.Get("Retry-After"); ra != "7" {
		t.Errorf("upstream 429: Retry-After %q, want the upstream's 7", ra)
	}
	l.check("upstream 429", 0)

	r = g.do("POST", "/v1/chat/completions", chat("e429", true), auth)
	wantOpenAIError(t, "upstream 429 on a stream", r, 429)
	l.check("upstream 429 on a stream", 0)

	// Broken bodies: whatever the policy charges, the ledger stays exact
	// and the process keeps serving.
	r = g.do("POST", "/v1/chat/completions", chat("malformed", false), auth)
	if r.Status >= 500 && r.Status != 502 {
		t.Errorf("malformed JSON: status %d", r.Status)
	}
	t.Logf("malformed JSON: status %d, charged %d", r.Status, l.check("malformed JSON", l.requestsDelta()))

	faultTruncated(t, g, key)
	t.Logf("truncated JSON: charged %d", l.check("truncated JSON", l.requestsDelta()))

	status, content, done := faultStream(t, g, key, "cut")
	if status != 200 || done || !strings.Contains(content, "word") {
		t.Errorf("cut stream: status %d, [DONE] %v, content %q", status, done, content)
	}
	if cost := l.check("cut stream", 1); cost <= 0 || cost > 4+16 {
		t.Errorf("cut stream: charged %d, want an estimate of what was streamed (1..%d)", cost, 4+16)
	}

	status, content, done = faultStream(t, g, key, "nousage")
	if status != 200 || !done || strings.Count(content, "word") != 5 {
		t.Errorf("stream without usage: status %d, [DONE] %v, content %q", status, done, content)
	}
	if cost := l.check("stream without usage", 1); cost <= 0 || cost > 4+16 {
		t.Errorf("stream without usage: charged %d, want an estimate (1..%d)", cost, 4+16)
	}

	r = g.do("POST", "/v1/chat/completions", chat("huge", false), auth).mustStatus(t, 200, "huge JSON")
	if len(r.Body) < 6<<20 {
		t.Errorf("huge JSON: client got %d bytes", len(r.Body))
	}
	if cost := l.check("huge JSON", 1); cost != 10 {
		t.Errorf("huge JSON: charged %d, want the usage at its end (10)", cost)
	}

	status, content, done = faultStream(t, g, key, "hugestream")
	if status != 200 || !done || len(content) < 6<<20 {
		t.Errorf("huge stream: status %d, [DONE] %v, %d bytes of content", status, done, len(content))
	}
	if cost := l.check("huge stream", 1); cost != 1504 {
		t.Errorf("huge stream: charged %d, want the reported usage 1504", cost)
	}

	g.do("POST", "/v1/chat/completions", chat("overuse", false), auth).mustStatus(t, 200, "overuse")
	t.Logf("usage beyond the reservation: charged %d", l.check("usage beyond the reservation", 1))

	// Still serving, still exact.
	g.do("POST", "/v1/chat/completions", chat("ok", false), auth).mustStatus(t, 200, "ok at the end")
	if cost := l.check("ok at the end", 1); cost != 10 {
		t.Errorf("ok at the end: charged %d, want 10", cost)
	}
}

// requestsDelta is the number of usage records added since the last
// check (for faults where the policy may or may not bill).
func (l *faultLedger) requestsDelta() int64 {
	l.t.Helper()
	_, requests, _ := l.settled()
	return requests - l.requests
}

// faultTruncated sends the request whose upstream body is cut short; the
// client sees an error or a short body, never a complete one.
func faultTruncated(t *testing.T, g *gateway, key string) {
	t.Helper()
	req, _ := http.NewRequest("POST", gatewayBase+"/v1/chat/completions",
		strings.NewReader(`{"model":"truncated","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.tester.Client.Do(req)
	if err != nil {
		return // the connection was aborted before the headers: fine
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode == 200 && jsonUnmarshalLoose(b, &map[string]any{}) == nil {
		t.Errorf("truncated upstream body reached the client as complete JSON: %s", b)
	}
}

// faultStream reads a streamed completion and returns the status, the
// concatenated data lines and whether [DONE] arrived.
func faultStream(t *testing.T, g *gateway, key, model string) (int, string, bool) {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hello"}]}`, model)
	req, _ := http.NewRequest("POST", gatewayBase+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.tester.Client.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", model, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	done := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "data: [DONE]" {
			done = true
		}
		b.WriteString(line)
	}
	return resp.StatusCode, b.String(), done
}

func jsonUnmarshalLoose(b []byte, v any) error { return json.Unmarshal(b, v) }
