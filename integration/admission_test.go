package integration

// Integration tests of admission under concurrency (issue #16) through a
// real Caddy: requests of one user that the balance can pay are never
// refused because their siblings hold the credits for a moment; they wait
// for them in arrival order (credit_wait), and a cap the gateway picks
// leaves room for the others (the share rule). The balance never goes
// below zero and every success is billed exactly once.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pacedUpstream is an OpenAI-compatible upstream that takes 20-50 ms per
// request, as a model server does, and bills what the model name says:
// "t<N>" reports N total tokens (a fixed prompt of tokens/3, the rest
// completion), the completion cut to the request's max_tokens (or
// max_completion_tokens) when that is smaller. "hold-t<N>" answers only
// after release is closed (or when the client leaves), so its reservation
// stays in flight.
type pacedUpstream struct {
	*httptest.Server
	release chan struct{}
	held    chan struct{} // one token per "hold" request that arrived
	n       atomic.Int64
}

func startPacedUpstream(t *testing.T) *pacedUpstream {
	t.Helper()
	u := &pacedUpstream{release: make(chan struct{}), held: make(chan struct{}, 16)}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	return u
}

func (u *pacedUpstream) hostPort() string { return strings.TrimPrefix(u.URL, "http://") }

func (u *pacedUpstream) serve(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model               string `json:"model"`
		Stream              bool   `json:"stream"`
		MaxTokens           int64  `json:"max_tokens"`
		MaxCompletionTokens int64  `json:"max_completion_tokens"`
	}
	body, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(body, &req)
	model, hold := strings.CutPrefix(req.Model, "hold-")
	if hold {
		u.held <- struct{}{}
		select {
		case <-u.release:
		case <-r.Context().Done():
			return
		}
	}
	delay := time.Duration(20+u.n.Add(1)*7%31) * time.Millisecond
	select {
	case <-time.After(delay):
	case <-r.Context().Done():
		return
	}
	total, _ := strconv.ParseInt(strings.TrimPrefix(model, "t"), 10, 64)
	prompt := total / 3
	completion := total - prompt
	if c := max(req.MaxTokens, req.MaxCompletionTokens); c > 0 && c < completion {
		completion = c
	}
	usage := fmt.Sprintf(`{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}`, prompt, completion, prompt+completion)
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"c1","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":%s}`, req.Model, usage)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	rc := http.NewResponseController(w)
	fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n")
	_ = rc.Flush()
	fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":%s}\n\ndata: [DONE]\n\n", usage)
	_ = rc.Flush()
}

// uncappedChat is a chat request without max_tokens: the gateway picks
// the cap.
func uncappedChat(model string, stream bool) map[string]any {
	return map[string]any{"model": model, "stream": stream, "messages": []map[string]any{{"role": "user", "content": "hello"}}}
}

// burst sends n copies of body at once with key and returns the statuses
// and bodies by status.
func burst(t *testing.T, g *gateway, n int, body map[string]any, key string) map[int][]string {
	t.Helper()
	var mu sync.Mutex
	out := make(map[int][]string)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r := doRequest(t, g.tester.Client, "POST", gatewayBase+"/v1/chat/completions", body, bearer(key))
			mu.Lock()
			out[r.Status] = append(out[r.Status], string(r.Body))
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// settledBalance waits until nothing is reserved and returns the balance.
func settledBalance(t *testing.T, g *gateway, key string) int64 {
	t.Helper()
	var c int64
	waitFor(t, "every reservation settled", func() bool {
		var res int64
		c, res = g.balance(key)
		return res == 0
	})
	return c
}

// wantBilled checks that the usage records count ok successes and add up
// to what the balance lost from start.
func wantBilled(t *testing.T, g *gateway, key string, start int64, ok int) int64 {
	t.Helper()
	c := settledBalance(t, g, key)
	if c < 0 {
		t.Fatalf("balance %d below zero", c)
	}
	n, credits := g.monitor(key)
	if int(n) != ok || credits != start-c {
		t.Fatalf("%d usage records billing %d credits for %d successes; the balance lost %d", n, credits, ok, start-c)
	}
	return c
}

// TestAdmissionConcurrentUncapped: 1,000 credits and 20 concurrent
// 10-token requests without max_tokens: the first holds what the balance
// affords, the others wait for it and then share; all succeed, billed
// exactly.
func TestAdmissionConcurrentUncapped(t *testing.T) {
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("agent@example.com")
	got := burst(t, g, 20, uncappedChat("t10", false), key)
	if len(got[200]) != 20 {
		t.Fatalf("statuses %v", got)
	}
	if c := wantBilled(t, g, key, 1000, 20); c != 1000-200 {
		t.Fatalf("balance %d, want %d", c, 1000-200)
	}
}

// TestAdmissionConcurrentStreams: 8 concurrent 25-token streams without
// max_tokens all succeed and are billed.
func TestAdmissionConcurrentStreams(t *testing.T) {
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("streams@example.com")
	var wg sync.WaitGroup
	var ok atomic.Int64
	for range 8 {
		wg.Go(func() {
			status, _, body := readStream(t, g, uncappedChat("t25", true), key)
			if status != 200 || !strings.HasSuffix(body, "data: [DONE]\n\n") {
				t.Errorf("stream: %d %q", status, body)
				return
			}
			ok.Add(1)
		})
	}
	wg.Wait()
	if c := wantBilled(t, g, key, 1000, int(ok.Load())); ok.Load() != 8 || c != 1000-8*25 {
		t.Fatalf("%d streams ok, balance %d", ok.Load(), c)
	}
}

// TestAdmissionMaxRequestsUnderLoad: a key with max_requests 5 hit by 20
// concurrent requests answers 200 five times and 429 otherwise, never 402.
func TestAdmissionMaxRequestsUnderLoad(t *testing.T) {
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	owner, _ := g.registerUser("capped@example.com")
	capped, _ := g.createKey(owner, map[string]any{"key_name": "five", "max_requests": 5})
	got := burst(t, g, 20, uncappedChat("t10", false), capped)
	if len(got[200]) != 5 || len(got[429]) != 15 || len(got) != 2 {
		t.Fatalf("statuses %v", got)
	}
	wantBilled(t, g, owner, 1000, 5)
}

// TestAdmissionScarceCredits: 100 credits and 40 concurrent 30-token
// requests. Those the balance pays succeed (with a cap that leaves room
// for the others), the rest get 402 once the balance is short or their
// wait ends; the balance never goes below zero and the usage records add
// up to what it lost.
func TestAdmissionScarceCredits(t *testing.T) {
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), AppOptions: "signup_credits 100", GatewayBlock: "credit_wait 2s"})
	key, _ := g.registerUser("scarce@example.com")
	got := burst(t, g, 40, uncappedChat("t30", false), key)
	if len(got[200]) == 0 || len(got[402]) == 0 || len(got[200])+len(got[402]) != 40 {
		t.Fatalf("statuses %v", got)
	}
	for _, body := range got[402] {
		if !strings.Contains(body, "insufficient_credits") && !strings.Contains(body, "credits_held") {
			t.Fatalf("402 body %s", body)
		}
	}
	wantBilled(t, g, key, 100, len(got[200]))
}

// holdCredits starts a request without max_tokens that holds the whole
// balance until up.release is closed, and returns its outcome channel.
func holdCredits(t *testing.T, g *gateway, up *pacedUpstream, key string) <-chan response {
	t.Helper()
	done := make(chan response, 1)
	go func() {
		done <- doRequest(t, g.tester.Client, "POST", gatewayBase+"/v1/chat/completions", uncappedChat("hold-t10", false), bearer(key))
	}()
	<-up.held
	return done
}

// metric returns the value of an unlabelled sample of Caddy's metrics, or
// a labelled one when name carries its labels.
func (g *gateway) metric(name string) float64 {
	g.t.Helper()
	body := string(g.do("GET", "/metrics", nil).mustStatus(g.t, 200, "metrics").Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestAdmissionWaitWokenByTopUp: a request that waits for credits a
// sibling holds is admitted as soon as a top-up arrives, without the
// sibling finishing; the wait shows in the access log and the metrics.
func TestAdmissionWaitWokenByTopUp(t *testing.T) {
	up := startPacedUpstream(t)
	logFile := filepath.Join(t.TempDir(), "access.log")
	g := startGateway(t, gatewayConfig{
		Upstream:     up.hostPort(),
		ServerBlock:  "metrics",
		GatewayBlock: "credit_wait 1m",
		SiteOptions:  fmt.Sprintf(accessLogFilter, logFile) + "\n\thandle /metrics {\n\t\tmetrics\n\t}",
	})
	key, uid := g.registerUser("topup@example.com")
	admitted := g.metric(`gatewayz_credit_waits_total{outcome="admitted"}`) // the collectors are the process's
	holder := holdCredits(t, g, up, key)
	waiter := make(chan response, 1)
	go func() {
		waiter <- doRequest(t, g.tester.Client, "POST", gatewayBase+"/v1/chat/completions", uncappedChat("t10", false), bearer(key))
	}()
	waitFor(t, "the second request waiting", func() bool { return g.metric("gatewayz_credit_waiting") == 1 })
	g.do("POST", "/admin/add_credits", map[string]any{"user_id": uid, "credits": 50}, adminAuth()).mustStatus(t, 200, "top-up")
	r := <-waiter
	r.mustStatus(t, 200, "the waiting request after the top-up")
	close(up.release)
	(<-holder).mustStatus(t, 200, "the holder")
	wantBilled(t, g, key, 1050, 2)
	if v := g.metric(`gatewayz_credit_waits_total{outcome="admitted"}`) - admitted; v != 1 {
		t.Errorf("admitted waits = %v", v)
	}
	var logs string
	waitFor(t, "the waiting request's access-log line", func() bool {
		b, _ := os.ReadFile(logFile)
		logs = string(b)
		return strings.Contains(logs, `"gatewayz_request_id":"`+r.Header.Get("X-Request-Id")+`"`)
	})
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, r.Header.Get("X-Request-Id")) && !strings.Contains(line, `"gatewayz_credit_wait":`) {
			t.Errorf("the wait is not in the access log: %s", line)
		}
	}
}

// TestAdmissionWaiterDisconnects: a client that leaves while waiting for
// credits is dropped at once: nothing is held or charged for it.
func TestAdmissionWaiterDisconnects(t *testing.T) {
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{
		Upstream:     up.hostPort(),
		ServerBlock:  "metrics",
		GatewayBlock: "credit_wait 1m",
		SiteOptions:  "handle /metrics {\n\t\tmetrics\n\t}",
	})
	key, _ := g.registerUser("leaver2@example.com")
	gone := g.metric(`gatewayz_credit_waits_total{outcome="client_gone"}`) // the collectors are the process's
	holder := holdCredits(t, g, up, key)

	ctx, cancel := context.WithCancel(context.Background())
	js, _ := json.Marshal(uncappedChat("t10", false))
	req, _ := http.NewRequestWithContext(ctx, "POST", gatewayBase+"/v1/chat/completions", strings.NewReader(string(js)))
	req.Header.Set("Authorization", "Bearer "+key)
	failed := make(chan error, 1)
	go func() {
		resp, err := g.tester.Client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		failed <- err
	}()
	waitFor(t, "the second request waiting", func() bool { return g.metric("gatewayz_credit_waiting") == 1 })
	cancel()
	if err := <-failed; err == nil {
		t.Fatal("the cancelled request got an answer")
	}
	waitFor(t, "the waiter dropped", func() bool {
		return g.metric("gatewayz_credit_waiting") == 0 && g.metric(`gatewayz_credit_waits_total{outcome="client_gone"}`) == gone+1
	})
	close(up.release)
	(<-holder).mustStatus(t, 200, "the holder")
	if c := wantBilled(t, g, key, 1000, 1); c != 1000-10 {
		t.Fatalf("balance %d: the dropped waiter was charged", c)
	}
}

// TestAdmissionHeldRefusal: with credit_wait 0 a request whose credits a
// sibling holds answers 402 at once, and with a bound it answers so when
// the bound ends; either says that the credits are held, with
// Retry-After, and costs nothing. A balance that is too low says that
// instead, without Retry-After.
func TestAdmissionHeldRefusal(t *testing.T) {
	for _, wait := range []string{"0", "100ms"} {
		t.Run("credit_wait "+wait, func(t *testing.T) {
			up := startPacedUpstream(t)
			g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), GatewayBlock: "credit_wait " + wait})
			key, _ := g.registerUser("held@example.com")
			holder := holdCredits(t, g, up, key)
			r := g.do("POST", "/v1/chat/completions", uncappedChat("t10", false), bearer(key))
			wantRefusal(t, r, 402, "credits_held", "1000 credits are held by 1 requests in flight; retry", "held credits")
			if r.Header.Get("Retry-After") == "" {
				t.Error("a 402 for held credits carries no Retry-After")
			}
			close(up.release)
			(<-holder).mustStatus(t, 200, "the holder")
			wantBilled(t, g, key, 1000, 1)

			big := map[string]any{"model": "t10", "max_tokens": 5000, "messages": []map[string]any{{"role": "user", "content": "hello"}}}
			r = g.do("POST", "/v1/chat/completions", big, bearer(key))
			wantRefusal(t, r, 402, "insufficient_credits", "the balance is 990", "balance too low")
			if r.Header.Get("Retry-After") != "" {
				t.Error("a 402 for a low balance carries Retry-After")
			}
		})
	}
}

// TestAdmissionBillingFieldValidation: billing fields with wrong values
// are refused with 400 before anything is held or forwarded.
func TestAdmissionBillingFieldValidation(t *testing.T) {
	up := startPacedUpstream(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort()})
	key, _ := g.registerUser("fields@example.com")
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	for _, body := range []string{
		`{"model":"t10",` + msgs + `,"max_tokens":0}`,
		`{"model":"t10",` + msgs + `,"max_completion_tokens":0}`,
		`{"model":"t10",` + msgs + `,"n":129}`,
		`{"model":"t10",` + msgs + `,"stream":"true"}`,
		`{"model":"t10",` + msgs + `,"stream_options":true}`,
		`{"model":"t10","messages":[]}`,
		`{"model":"t10","messages":[{}]}`,
		`{"model":"t10","messages":[{"role":"user"}]}`,
	} {
		r := g.do("POST", "/v1/chat/completions", body, bearer(key))
		r.mustStatus(t, 400, body)
		if e, _ := r.json()["error"].(map[string]any); e["type"] != "invalid_request_error" {
			t.Errorf("%s: %s", body, r.Body)
		}
	}
	if n := up.n.Load(); n != 0 {
		t.Fatalf("%d invalid requests reached the upstream", n)
	}
	if c := wantBilled(t, g, key, 1000, 0); c != 1000 {
		t.Fatalf("balance %d", c)
	}
}
