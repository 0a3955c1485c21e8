package integration

// Integration tests of metering (issue #8) through a real Caddy: JSON and
// streaming settlement, the injected usage chunk, upstream errors, client
// disconnects, a reload mid-stream, and the concurrency invariant.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sseUpstream is an OpenAI-compatible upstream that streams chat
// completions. The model name selects a behaviour:
//   - "hold": one event, then waits for release before finishing;
//   - "late": the header alone, then waits for release before the events;
//   - "abandon": two events, then waits until the request is cancelled;
//   - "err500" / "err429": an error response;
//   - anything else: three events, the usage chunk when asked, [DONE].
//
// Non-streaming requests get a JSON completion with usage 4+6.
type sseUpstream struct {
	*httptest.Server
	release  chan struct{}
	started  chan struct{}
	mu       sync.Mutex
	bodies   [][]byte
	canceled chan struct{}
}

func startSSEUpstream(t *testing.T) *sseUpstream {
	t.Helper()
	u := &sseUpstream{release: make(chan struct{}), started: make(chan struct{}, 64), canceled: make(chan struct{}, 64)}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	return u
}

func (u *sseUpstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.bodies = append(u.bodies, body)
	u.mu.Unlock()
	var req struct {
		Model         string `json:"model"`
		Stream        bool   `json:"stream"`
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	_ = json.Unmarshal(body, &req)
	switch req.Model {
	case "err500":
		w.WriteHeader(500)
		io.WriteString(w, "upstream exploded at /srv/secret/path.py line 12")
		return
	case "err429":
		w.Header().Set("Retry-After", "9")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(429)
		io.WriteString(w, `{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}`)
		return
	}
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"c1","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}`, req.Model)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	rc := http.NewResponseController(w)
	event := func(content string) {
		fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":null}]}\n\n", content)
		_ = rc.Flush()
	}
	if req.Model == "late" {
		_ = rc.Flush() // the header alone
		u.started <- struct{}{}
		<-u.release
	}
	event("Hello")
	u.started <- struct{}{}
	switch req.Model {
	case "hold":
		<-u.release
	case "abandon":
		event(" there")
		<-r.Context().Done()
		u.canceled <- struct{}{}
		return
	}
	event(" there")
	event(", friend")
	if req.StreamOptions.IncludeUsage {
		io.WriteString(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n")
	}
	io.WriteString(w, "data: [DONE]\n\n")
	_ = rc.Flush()
}

// upstreamBodies returns what the upstream received.
func (u *sseUpstream) upstreamBodies() [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.bodies...)
}

func (u *sseUpstream) hostPort() string { return strings.TrimPrefix(u.URL, "http://") }

// balance reads GET /user/balance.
func (g *gateway) balance(key string) (credits, reserved int64) {
	g.t.Helper()
	out := g.do("GET", "/user/balance", nil, bearer(key)).mustStatus(g.t, 200, "balance").json()
	c, _ := out["credits"].(float64)
	r, _ := out["reserved"].(float64)
	return int64(c), int64(r)
}

// monitor reads the usage totals of GET /user/monitor.
func (g *gateway) monitor(key string) (requests, credits int64) {
	g.t.Helper()
	out := g.do("GET", "/user/monitor", nil, bearer(key)).mustStatus(g.t, 200, "monitor").json()
	m, _ := out["usage_metrics"].(map[string]any)
	r, _ := m["total_requests"].(float64)
	c, _ := m["total_credits"].(float64)
	return int64(r), int64(c)
}

func streamBody(model string, clientUsage bool) map[string]any {
	b := map[string]any{"model": model, "stream": true, "max_tokens": 16, "messages": []map[string]any{{"role": "user", "content": "hello"}}}
	if clientUsage {
		b["stream_options"] = map[string]any{"include_usage": true}
	}
	return b
}

func TestMeteringJSON(t *testing.T) {
	up := startSSEUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("json@example.com")

	r := g.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini"), bearer(key)).mustStatus(t, 200, "chat")
	if cl := r.Header.Get("Content-Length"); cl != strconv.Itoa(len(r.Body)) {
		t.Fatalf("Content-Length %q for %d bytes", cl, len(r.Body))
	}
	gu, _ := r.json()["gateway_usage"].(map[string]any)
	if gu["tokens_charged"] != float64(10) || gu["user_balance_after"] != float64(990) || !strings.HasSuffix(fmt.Sprint(gu["user_api_key"]), "…") {
		t.Fatalf("gateway_usage %v", gu)
	}
	if r.Header.Get("X-Request-Id") == "" || r.Header.Get("X-Gatewayz-Credits-Remaining") != "990" {
		t.Fatalf("headers %v", r.Header)
	}
	if c, res := g.balance(key); c != 990 || res != 0 {
		t.Fatalf("balance %d reserved %d", c, res)
	}
	// the client's fields reach the upstream; its key does not
	bodies := up.upstreamBodies()
	if !strings.Contains(string(bodies[0]), `"max_tokens":16`) || strings.Contains(string(bodies[0]), key) {
		t.Fatalf("upstream body %s", bodies[0])
	}

	// embeddings: the fake upstream of the harness reports 4 tokens
	emb := startFakeOpenAI(t)
	g.reload(gatewayConfig{DBPath: g.DBPath, Upstream: emb.hostPort()})
	g.do("POST", "/v1/embeddings", map[string]any{"model": "e", "input": "abc"}, bearer(key)).mustStatus(t, 200, "embeddings")
	if c, _ := g.balance(key); c != 986 {
		t.Fatalf("balance after embeddings %d", c)
	}
	if n, credits := g.monitor(key); n != 2 || credits != 14 {
		t.Fatalf("monitor: %d requests, %d credits", n, credits)
	}
	// /v1/models is free
	g.do("GET", "/v1/models", nil, bearer(key)).mustStatus(t, 200, "models")
	if c, _ := g.balance(key); c != 986 {
		t.Fatalf("models charged: %d", c)
	}
}

// readStream reads an SSE response to the end.
func readStream(t *testing.T, g *gateway, body any, key string) (int, http.Header, string) {
	t.Helper()
	js, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", gatewayBase+"/v1/chat/completions", strings.NewReader(string(js)))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func TestMeteringStream(t *testing.T) {
	up := startSSEUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("stream@example.com")

	for i, clientUsage := range []bool{false, true} {
		status, h, body := readStream(t, g, streamBody("m", clientUsage), key)
		if status != 200 || !strings.HasSuffix(body, "data: [DONE]\n\n") || !strings.Contains(body, "friend") {
			t.Fatalf("stream %d: %d %q", i, status, body)
		}
		if strings.Contains(body, `"usage"`) != clientUsage {
			t.Fatalf("client usage %v but stream %q", clientUsage, body)
		}
		// the header went out before the stream: balance after the hold
		if h.Get("X-Gatewayz-Credits-Remaining") == "" || h.Get("X-Request-Id") == "" {
			t.Fatalf("headers %v", h)
		}
		if c, res := g.balance(key); c != 1000-12*int64(i+1) || res != 0 {
			t.Fatalf("after stream %d: balance %d reserved %d", i, c, res)
		}
	}
	for _, b := range up.upstreamBodies() {
		if !strings.Contains(string(b), `"include_usage":true`) {
			t.Fatalf("usage not requested upstream: %s", b)
		}
	}
	if n, credits := g.monitor(key); n != 2 || credits != 24 {
		t.Fatalf("monitor: %d requests, %d credits", n, credits)
	}
}

// A stream's header waits for its first event, but not for long: an
// upstream that sends its header and then nothing still gets it to the
// client (after lateHeaderDelay), and the stream is metered as usual.
func TestMeteringStreamHeaderBeforeFirstEvent(t *testing.T) {
	up := startSSEUpstream(t)
	var released sync.Once
	release := func() { released.Do(func() { close(up.release) }) }
	t.Cleanup(release) // before the upstream's Close, which waits for its handler
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("late@example.com")

	js, _ := json.Marshal(streamBody("late", false))
	req, _ := http.NewRequest("POST", gatewayBase+"/v1/chat/completions", strings.NewReader(string(js)))
	req.Header.Set("Authorization", "Bearer "+key)
	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := g.tester.Client.Do(req)
		got <- result{resp, err}
	}()
	<-up.started // the upstream sent its header and holds the events back
	var res result
	select {
	case res = <-got:
	case <-time.After(30 * time.Second): // the header is due after about a second
		t.Fatal("no response header while the upstream sent no event")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	defer res.resp.Body.Close()
	if res.resp.StatusCode != 200 || res.resp.Header.Get("X-Request-Id") == "" {
		t.Fatalf("response %d %v", res.resp.StatusCode, res.resp.Header)
	}
	release()
	body, err := io.ReadAll(res.resp.Body)
	if err != nil || !strings.HasPrefix(string(body), "data: ") || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Fatalf("body %q, %v", body, err)
	}
	if c, reserved := g.balance(key); c != 1000-12 || reserved != 0 {
		t.Fatalf("balance %d reserved %d", c, reserved)
	}
}

func TestMeteringUpstreamErrors(t *testing.T) {
	up := startSSEUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("errors@example.com")

	r := g.do("POST", "/v1/chat/completions", chatBody("err500"), bearer(key))
	wantRefusal(t, r, 500, "upstream_500", "upstream error", "upstream 500")
	if strings.Contains(string(r.Body), "secret") {
		t.Fatalf("upstream internals leaked: %s", r.Body)
	}
	r = g.do("POST", "/v1/chat/completions", chatBody("err429"), bearer(key))
	wantRefusal(t, r, 429, "rate_limit_exceeded", "Rate limit reached", "upstream 429")
	if r.Header.Get("Retry-After") != "9" {
		t.Fatalf("Retry-After %q", r.Header.Get("Retry-After"))
	}
	// nothing listens on the default upstream of the harness: 502, refunded
	g.reload(gatewayConfig{DBPath: g.DBPath})
	r = g.do("POST", "/v1/chat/completions", chatBody("m"), bearer(key))
	wantRefusal(t, r, 502, "upstream_unavailable", "unavailable", "connection refused")
	if strings.Contains(string(r.Body), "127.0.0.1") || strings.Contains(string(r.Body), "refused") {
		t.Fatalf("internal error text leaked: %s", r.Body)
	}
	if c, res := g.balance(key); c != 1000 || res != 0 {
		t.Fatalf("errors charged: balance %d reserved %d", c, res)
	}
	if n, _ := g.monitor(key); n != 0 {
		t.Fatalf("%d usage records for errors", n)
	}
}

func TestMeteringClientDisconnect(t *testing.T) {
	up := startSSEUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("leaver@example.com")

	ctx, cancel := context.WithCancel(context.Background())
	js, _ := json.Marshal(streamBody("abandon", false))
	req, _ := http.NewRequestWithContext(ctx, "POST", gatewayBase+"/v1/chat/completions", strings.NewReader(string(js)))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := g.tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// read both events, then leave
	br := bufio.NewReader(resp.Body)
	seen := ""
	for !strings.Contains(seen, "there") {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended early: %v (%q)", err, seen)
		}
		seen += line
	}
	cancel()
	resp.Body.Close()
	<-up.canceled // the upstream saw the disconnect

	// billed: prompt estimate ("hello": 2 + 4 per message + 3 priming) plus
	// the streamed text ("Hello there": 3), marked estimated
	waitFor(t, "settlement of the abandoned stream", func() bool {
		c, res := g.balance(key)
		return c == 1000-12 && res == 0
	})
	if n, credits := g.monitor(key); n != 1 || credits != 12 {
		t.Fatalf("monitor: %d requests, %d credits", n, credits)
	}
}

func TestMeteringReloadMidStream(t *testing.T) {
	up := startSSEUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("reload@example.com")

	type result struct {
		status int
		body   string
	}
	done := make(chan result, 1)
	go func() {
		js, _ := json.Marshal(streamBody("hold", false))
		req, _ := http.NewRequest("POST", gatewayBase+"/v1/chat/completions", strings.NewReader(string(js)))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(b)}
	}()
	<-up.started
	// reload onto the same database while the stream is open: the old
	// handler's Cleanup runs before the stream ends
	g.reload(gatewayConfig{DBPath: g.DBPath, Upstream: up.hostPort(), AppOptions: "signup_credits 5"})
	close(up.release)
	res := <-done
	if res.status != 200 || !strings.HasSuffix(res.body, "data: [DONE]\n\n") || strings.Contains(res.body, `"usage"`) {
		t.Fatalf("stream across the reload: %d %q", res.status, res.body)
	}
	waitFor(t, "settlement", func() bool { _, r := g.balance(key); return r == 0 })
	if c, _ := g.balance(key); c != 1000-12 {
		t.Fatalf("balance %d, want %d (settled exactly once)", c, 1000-12)
	}
	if n, credits := g.monitor(key); n != 1 || credits != 12 {
		t.Fatalf("monitor: %d requests, %d credits", n, credits)
	}
}

// TestMeteringInvariant: 64 concurrent requests, half streaming, against a
// balance that covers only a few. The balance never goes below zero, every
// 200 is billed exactly once, refusals cost nothing, and the usage records
// add up to what the balance lost.
func TestMeteringInvariant(t *testing.T) {
	up := startSSEUpstream(t)
	const start = 60
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: fmt.Sprintf("signup_credits %d", start)})
	key, _ := g.registerUser("race@example.com")

	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := range 64 {
		wg.Go(func() {
			var status int
			var body string
			if i%2 == 0 {
				r := doRequest(t, g.tester.Client, "POST", gatewayBase+"/v1/chat/completions", chatBody("m"), bearer(key))
				status, body = r.Status, string(r.Body)
			} else {
				status, _, body = readStream(t, g, streamBody("m", false), key)
			}
			mu.Lock()
			defer mu.Unlock()
			switch status {
			case 200:
				ok++
			case http.StatusPaymentRequired:
				refused++
			default:
				t.Errorf("status %d: %s", status, body)
			}
		})
	}
	wg.Wait()
	c, res := g.balance(key)
	if c < 0 || res != 0 {
		t.Fatalf("balance %d reserved %d", c, res)
	}
	n, credits := g.monitor(key)
	if int(n) != ok {
		t.Fatalf("%d usage records for %d successes", n, ok)
	}
	if credits != start-c {
		t.Fatalf("usage bills %d, balance lost %d", credits, start-c)
	}
	if ok == 0 || refused == 0 || ok+refused != 64 {
		t.Fatalf("ok %d refused %d", ok, refused)
	}
}

// TestMeteringAccessLogAndMetrics: the access-log entry of a metered
// request carries its tokens, credits and request id, and the metering
// collectors are served by Caddy's metrics endpoint.
func TestMeteringAccessLogAndMetrics(t *testing.T) {
	up := startSSEUpstream(t)
	logFile := filepath.Join(t.TempDir(), "access.log")
	g := startGateway(t, gatewayConfig{
		Upstream:    up.hostPort(),
		ServerBlock: "metrics",
		SiteOptions: fmt.Sprintf(accessLogFilter, logFile) + "\n\thandle /metrics {\n\t\tmetrics\n\t}",
	})
	key, _ := g.registerUser("logged@example.com")
	r := g.do("POST", "/v1/chat/completions", chatBody("m"), bearer(key)).mustStatus(t, 200, "chat")
	reqID := r.Header.Get("X-Request-Id")

	var logs string
	waitFor(t, "the access-log line of the completion", func() bool {
		b, _ := os.ReadFile(logFile)
		logs = string(b)
		return strings.Contains(logs, `"uri":"/v1/chat/completions"`)
	})
	for _, want := range []string{`"gatewayz_prompt_tokens":4`, `"gatewayz_completion_tokens":6`, `"gatewayz_credits":10`,
		`"gatewayz_estimated":false`, `"gatewayz_request_id":"` + reqID + `"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("access log lacks %s:\n%s", want, logs)
		}
	}
	m := g.do("GET", "/metrics", nil).mustStatus(t, 200, "metrics")
	for _, want := range []string{`gatewayz_requests_total{endpoint="chat",outcome="ok"}`, `gatewayz_tokens_total{endpoint="chat",kind="completion"}`,
		`gatewayz_credits_charged_total{endpoint="chat"}`, `gatewayz_open_reservations 0`, `gatewayz_upstream_latency_seconds_count{endpoint="chat"}`} {
		if !strings.Contains(string(m.Body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(string(m.Body), key) || strings.Contains(string(m.Body), "user_id") {
		t.Error("per-user data in metrics")
	}
}
