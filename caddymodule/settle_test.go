package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// TestPlanReservation runs the reservation of one request against a
// balance the way the store does (storage.ReserveAmount, then the cap the
// hold affords), alone and beside other requests of the same user (the
// share rule), and the 402 when the hold cannot be had.
func TestPlanReservation(t *testing.T) {
	p := pricing{{Model: "dear", PromptPer1K: 2000, CompletionPer1K: 3000}}
	m := Metering{}
	m.provisionMetering()
	lower := m
	lower.LowerMaxTokens = true
	chat := func(model string, prompt, maxTok, n int64) *inferenceRequest {
		return &inferenceRequest{Endpoint: endpointChat, Model: model, PromptTokens: prompt, MaxTokens: maxTok, choices: n}
	}
	emb := &inferenceRequest{Endpoint: endpointEmbeddings, Model: "e", PromptTokens: 10, choices: 1}
	tests := []struct {
		name           string
		m              Metering
		ir             *inferenceRequest
		avail          int64
		holds, waiting int64
		credits        int64
		maxTokens      int64
		refusal        string // the 402's code, "" when held
	}{
		{"client cap affordable", m, chat("x", 10, 100, 1), 1000, 0, 0, 110, 0, ""},
		{"client cap × n", m, chat("x", 10, 100, 3), 1000, 0, 0, 310, 0, ""},
		{"client cap unaffordable: 402", m, chat("x", 10, 100, 1), 50, 0, 0, 0, 0, "insufficient_credits"},
		{"client cap lowered", lower, chat("x", 10, 100, 1), 50, 0, 0, 50, 40, ""},
		{"client cap lowered per choice", lower, chat("x", 10, 100, 2), 50, 0, 0, 50, 20, ""},
		{"default cap affordable", m, chat("x", 10, 0, 1), 1_000_000, 0, 0, 10 + defaultMaxTokens, defaultMaxTokens, ""},
		{"default cap lowered to balance", m, chat("x", 10, 0, 1), 500, 0, 0, 500, 490, ""},
		{"exactly prompt + 1", m, chat("x", 10, 0, 1), 11, 0, 0, 11, 1, ""},
		{"prompt only: 402", m, chat("x", 10, 0, 1), 10, 0, 0, 0, 0, "insufficient_credits"},
		{"nothing: 402", m, chat("x", 10, 0, 1), 0, 0, 0, 0, 0, "insufficient_credits"},
		{"priced model", m, chat("dear", 10, 0, 1), 50, 0, 0, 50, 10, ""}, // 20 + 10*3 = 50
		{"embeddings with safety factor", m, emb, 100, 0, 0, 15, 0, ""},
		{"embeddings unaffordable", m, emb, 14, 0, 0, 0, 0, "insufficient_credits"},
		// The share rule: a cap the gateway picks leaves room for the
		// user's other requests, in flight or waiting.
		{"share: one in flight", m, chat("x", 10, 0, 1), 1000, 1, 0, 500, 490, ""},
		{"share: 19 waiting behind", m, chat("x", 10, 0, 1), 1000, 0, 19, 50, 40, ""},
		{"share: in flight and waiting", m, chat("x", 10, 0, 1), 1000, 3, 6, 100, 90, ""},
		{"share below the minimum: the minimum", m, chat("x", 10, 0, 1), 100, 10, 30, 11, 1, ""},
		{"share never raises the worst case", m, chat("x", 10, 0, 1), 1_000_000, 1, 1, 10 + defaultMaxTokens, defaultMaxTokens, ""},
		{"share lowers a client cap only when allowed", lower, chat("x", 10, 100, 1), 100, 1, 0, 50, 40, ""},
		{"client cap is never shared", m, chat("x", 10, 100, 1), 1000, 5, 5, 110, 0, ""},
		{"embeddings are never shared", m, emb, 100, 3, 3, 15, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := tt.m.planReservation(p, tt.ir)
			amount := storage.ReserveAmount(tt.avail, tt.holds, tt.waiting, plan.minCredits, plan.maxCredits)
			if amount > tt.avail {
				gerr := plan.refusal(p, tt.ir, &storage.CreditShortage{Needed: amount, Credits: tt.avail})
				if tt.refusal == "" || gerr.Status != http.StatusPaymentRequired || gerr.Code != tt.refusal {
					t.Fatalf("refused %d > %d available: %+v, want code %q", amount, tt.avail, gerr, tt.refusal)
				}
				return
			}
			if tt.refusal != "" {
				t.Fatalf("held %d, want a 402", amount)
			}
			if got := plan.capFor(p, tt.ir, amount); amount != tt.credits || got != tt.maxTokens {
				t.Fatalf("holds %d with max_tokens %d, want %d and %d (plan %+v)", amount, got, tt.credits, tt.maxTokens, plan)
			}
			if cost := p.cost(tt.ir.Model, tt.ir.PromptTokens, plan.capFor(p, tt.ir, amount)*tt.ir.choices); tt.maxTokens > 0 && cost > amount {
				t.Fatalf("the cap sent costs %d, more than the %d held", cost, amount)
			}
		})
	}
}

// TestCreditRefusals: a 402 says whether the balance is too low or the
// user's requests in flight hold the credits (with Retry-After).
func TestCreditRefusals(t *testing.T) {
	m := Metering{}
	m.provisionMetering()
	ir := &inferenceRequest{Endpoint: endpointChat, Model: "x", PromptTokens: 24, choices: 1}
	plan := m.planReservation(nil, ir)
	held := plan.refusal(nil, ir, &storage.CreditShortage{Needed: 25, Credits: 1000, Reserved: 990, Holds: 7})
	if held.Code != "credits_held" || held.RetryAfter < 1 || held.Message != "Insufficient credits right now: 990 credits are held by 7 requests in flight; retry" {
		t.Errorf("held: %+v", held)
	}
	low := plan.refusal(nil, ir, &storage.CreditShortage{Needed: 25, Credits: 20, Reserved: 20, Holds: 1})
	if low.Code != "insufficient_credits" || low.RetryAfter != 0 || !strings.Contains(low.Message, "balance of 20 credits") {
		t.Errorf("balance short: %+v", low)
	}
	capped := &inferenceRequest{Endpoint: endpointChat, Model: "x", PromptTokens: 10, MaxTokens: 100, choices: 1}
	low = m.planReservation(nil, capped).refusal(nil, capped, &storage.CreditShortage{Needed: 110, Credits: 50})
	if !strings.Contains(low.Message, "lower max_tokens to at most 40") {
		t.Errorf("client cap: %+v", low)
	}
	if gone := errCreditsHeld(&storage.CreditShortage{}); gone.Code != "credits_held" || strings.Contains(gone.Message, "0 requests") {
		t.Errorf("held without details: %+v", gone)
	}
}

// setBalance brings a test user's balance to n with an admin adjustment.
func setBalance(t testing.TB, e *testEnv, userID, n int64) {
	t.Helper()
	b, err := e.st.Balance(context.Background(), userID)
	if err != nil {
		t.Fatal(err)
	}
	if d := n - b.Credits; d != 0 {
		if _, _, err := e.st.AddCredits(context.Background(), userID, d, storage.LedgerAdjust, "", "test"); err != nil {
			t.Fatal(err)
		}
	}
}

// meterDo sends one request through the gateway to next and returns the
// recorder and the value the handler panicked with, if any.
func meterDo(t testing.TB, e *testEnv, target, body string, next caddyhttp.HandlerFunc, headers ...string) (rec *httptest.ResponseRecorder, panicked any) {
	t.Helper()
	req := httptest.NewRequest("POST", target, strings.NewReader(body))
	req.RemoteAddr = "192.0.2.10:40000"
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Add(name, strings.TrimSpace(value))
	}
	rec = httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, &caddyhttp.Server{})
	defer func() { panicked = recover() }()
	if err := e.g.ServeHTTP(rec, req, next); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}
	return rec, nil
}

func balanceOf(t testing.TB, e *testEnv, userID int64) storage.Balance {
	t.Helper()
	b, err := e.st.Balance(context.Background(), userID)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func usageOf(t testing.TB, e *testEnv, userID int64) []storage.UsageRecord {
	t.Helper()
	e.flush(t)
	recs, err := e.st.ListUsage(context.Background(), storage.UsageFilter{UserID: userID})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// upstreamJSON answers a chat completion with the given usage and records
// the body it received.
func upstreamJSON(got *[]byte, prompt, completion int) caddyhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		b, _ := io.ReadAll(r.Body)
		if got != nil {
			*got = b
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "999") // must be corrected by the meter
		_, err := fmt.Fprintf(w, `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, prompt, completion, prompt+completion)
		return err
	}
}

func TestMeteredJSON(t *testing.T) {
	e := newTestEnv(t, func(a *App, _ *Gateway) {
		a.Prices = []ModelPrice{{Model: "dear*", PromptPer1K: 2000, CompletionPer1K: 5000}}
	})
	key, k := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 10_000)

	var sent []byte
	rec, _ := meterDo(t, e, "/v1/chat/completions",
		`{"model":"dear-1","messages":[{"role":"user","content":"hello"}],"max_tokens":20,"logit_bias":{"50256":-100}}`,
		upstreamJSON(&sent, 7, 3), bearer(key), "Accept-Encoding: gzip")
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if got := rec.Header().Get("Content-Length"); got != fmt.Sprint(rec.Body.Len()) {
		t.Fatalf("Content-Length %s for a %d-byte body", got, rec.Body.Len())
	}
	var out struct {
		Usage        map[string]int64 `json:"usage"`
		GatewayUsage gatewayUsage     `json:"gateway_usage"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	cost := int64((7*2000 + 3*5000 + 999) / 1000) // 29
	if out.GatewayUsage.TokensCharged != 10 || out.GatewayUsage.CreditsCharged != cost ||
		out.GatewayUsage.UserBalanceAfter != 10_000-cost || !strings.HasPrefix(out.GatewayUsage.UserAPIKey, k.Prefix) {
		t.Fatalf("gateway_usage %+v", out.GatewayUsage)
	}
	if strings.Contains(rec.Body.String(), key) {
		t.Fatal("plaintext key in the response")
	}
	if rec.Header().Get(hdrCreditsRemaining) != fmt.Sprint(10_000-cost) || rec.Header().Get(hdrRequestID) == "" {
		t.Fatalf("headers %v", rec.Header())
	}
	if b := balanceOf(t, e, k.UserID); b.Credits != 10_000-cost || b.Reserved != 0 {
		t.Fatalf("balance %+v", b)
	}
	// unchanged fields passed through; the client's cap kept
	var up map[string]json.RawMessage
	_ = json.Unmarshal(sent, &up)
	if string(up["max_tokens"]) != "20" || string(up["logit_bias"]) != `{"50256":-100}` {
		t.Fatalf("upstream body %s", sent)
	}
	if e.seen != nil && e.seen.Header.Get("Accept-Encoding") != "" {
		t.Fatal("Accept-Encoding forwarded")
	}
	recs := usageOf(t, e, k.UserID)
	if len(recs) != 1 || recs[0].Credits != cost || recs[0].PromptTokens != 7 || recs[0].CompletionTokens != 3 ||
		recs[0].Estimated || recs[0].Endpoint != endpointChat || recs[0].RequestID != rec.Header().Get(hdrRequestID) || recs[0].Status != 200 {
		t.Fatalf("usage records %+v", recs)
	}
}

// sseUpstream streams a chat completion; when the request asked for
// usage it sends the usage-only chunk. abortAfter > 0 panics like
// reverse_proxy on a client disconnect after that many content events.
func sseUpstream(got *[]byte, abortAfter int) caddyhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		b, _ := io.ReadAll(r.Body)
		if got != nil {
			*got = b
		}
		var req struct {
			StreamOptions struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		_ = json.Unmarshal(b, &req)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		for i, word := range []string{"Hello", " there", ", friend"} {
			if abortAfter > 0 && i == abortAfter {
				panic(http.ErrAbortHandler)
			}
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", word)
			_ = rc.Flush()
		}
		if req.StreamOptions.IncludeUsage {
			io.WriteString(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n")
		}
		io.WriteString(w, "data: [DONE]\n\n")
		return rc.Flush()
	}
}

func TestMeteredStream(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 10_000)

	for _, clientUsage := range []bool{false, true} {
		var sent []byte
		body := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
		if clientUsage {
			body = `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
		}
		before := balanceOf(t, e, k.UserID).Credits
		rec, p := meterDo(t, e, "/v1/chat/completions", body, sseUpstream(&sent, 0), bearer(key))
		if p != nil {
			t.Fatal(p)
		}
		if !strings.Contains(string(sent), `"include_usage":true`) || !strings.Contains(string(sent), `"max_tokens":4096`) {
			t.Fatalf("upstream body %s", sent)
		}
		if !rec.Flushed || !strings.HasSuffix(rec.Body.String(), "data: [DONE]\n\n") {
			t.Fatalf("stream not flushed or not terminated: %q", rec.Body)
		}
		if hasUsage := strings.Contains(rec.Body.String(), `"usage"`); hasUsage != clientUsage {
			t.Fatalf("client usage %v, stream has usage chunk %v", clientUsage, hasUsage)
		}
		// header set before the stream: balance after the reservation hold
		if got := rec.Header().Get(hdrCreditsRemaining); got != fmt.Sprint(before-(4096+estimateText("hi")+msgOverheadTokens+replyPrimingTokens)) {
			t.Fatalf("credits header %q (balance %d)", got, before)
		}
		if b := balanceOf(t, e, k.UserID); b.Credits != before-12 || b.Reserved != 0 {
			t.Fatalf("balance %+v, want %d", b, before-12)
		}
	}
	if recs := usageOf(t, e, k.UserID); len(recs) != 2 || recs[0].Estimated || recs[0].TotalTokens != 12 {
		t.Fatalf("usage %+v", recs)
	}
}

func TestMeteredStreamClientDisconnect(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 10_000)
	rec, p := meterDo(t, e, "/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
		sseUpstream(nil, 2), bearer(key))
	if p != http.ErrAbortHandler {
		t.Fatalf("panic %v not re-raised", p)
	}
	if !strings.Contains(rec.Body.String(), "there") {
		t.Fatalf("stream %q", rec.Body)
	}
	prompt := estimateText("hi") + msgOverheadTokens + replyPrimingTokens
	completion := estimateText("Hello there") // what was streamed
	b := balanceOf(t, e, k.UserID)
	if b.Credits != 10_000-prompt-completion || b.Reserved != 0 {
		t.Fatalf("balance %+v, want %d", b, 10_000-prompt-completion)
	}
	recs := usageOf(t, e, k.UserID)
	if len(recs) != 1 || !recs[0].Estimated || recs[0].CompletionTokens != completion {
		t.Fatalf("usage %+v", recs)
	}
}

func TestMeteredUpstreamErrors(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 10_000)
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}`
	tests := []struct {
		name       string
		next       caddyhttp.HandlerFunc
		status     int
		code       string
		retryAfter string
	}{
		{"500 plain text is wrapped", func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(500)
			io.WriteString(w, "panic: internal stack trace at 10.0.0.3")
			return nil
		}, 500, "upstream_500", ""},
		{"429 OpenAI error passed on with Retry-After", func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Retry-After", "7")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(429)
			io.WriteString(w, `{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}`)
			return nil
		}, 429, "rate_limit_exceeded", "7"},
		{"401 upstream credentials", func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(401)
			io.WriteString(w, `{"error":{"message":"Incorrect API key provided: sk-****abcd","type":"invalid_request_error","code":"invalid_api_key"}}`)
			return nil
		}, 502, "upstream_auth_error", ""},
		{"unreachable upstream", func(w http.ResponseWriter, r *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, errors.New("dial tcp 127.0.0.1:9: connect: connection refused"))
		}, 502, "upstream_unavailable", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, p := meterDo(t, e, "/v1/chat/completions", body, tt.next, bearer(key))
			if p != nil {
				t.Fatal(p)
			}
			wantError(t, rec, tt.status, tt.code, "")
			if strings.Contains(rec.Body.String(), "10.0.0.3") || strings.Contains(rec.Body.String(), "sk-") || strings.Contains(rec.Body.String(), "connection refused") {
				t.Fatalf("internal text leaked: %s", rec.Body)
			}
			if rec.Header().Get("Retry-After") != tt.retryAfter {
				t.Fatalf("Retry-After %q", rec.Header().Get("Retry-After"))
			}
			if rec.Header().Get("Content-Length") != fmt.Sprint(rec.Body.Len()) && rec.Header().Get("Content-Length") != "" {
				t.Fatalf("Content-Length %s for %d bytes", rec.Header().Get("Content-Length"), rec.Body.Len())
			}
			if b := balanceOf(t, e, k.UserID); b.Credits != 10_000 || b.Reserved != 0 {
				t.Fatalf("charged for an upstream error: %+v", b)
			}
		})
	}
	if recs := usageOf(t, e, k.UserID); len(recs) != 0 {
		t.Fatalf("usage recorded for errors: %+v", recs)
	}
}

func TestMeteredInsufficientCredits(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	prompt := estimateText("hi") + msgOverheadTokens + replyPrimingTokens // 8
	setBalance(t, e, k.UserID, prompt+5)

	called := false
	next := func(w http.ResponseWriter, r *http.Request) error {
		called = true
		return upstreamJSON(nil, 1, 1)(w, r)
	}

	// the client's own max_tokens is unaffordable: 402, upstream not called
	rec, _ := meterDo(t, e, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100}`, next, bearer(key))
	wantError(t, rec, http.StatusPaymentRequired, "insufficient_credits", "max_tokens")
	if called {
		t.Fatal("upstream called on 402")
	}
	// no max_tokens: lowered to what the balance affords
	var sent []byte
	rec, _ = meterDo(t, e, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, upstreamJSON(&sent, 1, 1), bearer(key))
	if rec.Code != 200 || !strings.Contains(string(sent), `"max_tokens":5`) {
		t.Fatalf("status %d, upstream body %s", rec.Code, sent)
	}
	// balance now prompt+3: below prompt + 1 after another drain → 402
	setBalance(t, e, k.UserID, prompt)
	called = false
	rec, _ = meterDo(t, e, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, next, bearer(key))
	wantError(t, rec, http.StatusPaymentRequired, "insufficient_credits", "")
	if called {
		t.Fatal("upstream called on 402")
	}
}

// TestMeteringInvariant runs 64 concurrent requests, half streaming, half
// abandoned midway, against a balance that covers only a few: the balance
// never goes below zero, every 200 is billed exactly once, refusals cost
// nothing, and the ledger adds up to the balance.
func TestMeteringInvariant(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	const start = 100
	setBalance(t, e, k.UserID, start)

	var wg sync.WaitGroup
	var mu sync.Mutex
	oks, refused, aborted := 0, 0, 0
	for i := range 64 {
		wg.Go(func() {
			body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`
			next := upstreamJSON(nil, 5, 6)
			if i%2 == 1 {
				body = `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":10}`
				next = sseUpstream(nil, 0)
				if i%4 == 3 {
					next = sseUpstream(nil, 1)
				}
			}
			rec, p := meterDo(t, e, "/v1/chat/completions", body, next, bearer(key))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case p != nil:
				aborted++
			case rec.Code == 200:
				oks++
			case rec.Code == http.StatusPaymentRequired:
				refused++
			default:
				t.Errorf("unexpected status %d: %s", rec.Code, rec.Body)
			}
		})
	}
	wg.Wait()
	b := balanceOf(t, e, k.UserID)
	if b.Credits < 0 || b.Reserved != 0 {
		t.Fatalf("balance %+v", b)
	}
	recs := usageOf(t, e, k.UserID)
	if len(recs) != oks+aborted {
		t.Fatalf("%d usage records for %d successes and %d billed aborts (%d refused)", len(recs), oks, aborted, refused)
	}
	var billed int64
	for _, r := range recs {
		billed += r.Credits
	}
	if billed != start-b.Credits {
		t.Fatalf("records bill %d, balance moved %d", billed, start-b.Credits)
	}
	ledger, err := e.st.Ledger(context.Background(), k.UserID)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, le := range ledger {
		sum += le.Amount
	}
	if sum != b.Credits {
		t.Fatalf("ledger sums to %d, balance %d", sum, b.Credits)
	}
	if oks == 0 || refused == 0 {
		t.Fatalf("expected both successes and refusals: ok %d refused %d aborted %d", oks, refused, aborted)
	}
}

func TestMeteringCaddyfile(t *testing.T) {
	g := new(Gateway)
	d := caddyfile.NewTestDispenser(`gatewayz {
		max_body_size 1MB
		default_max_tokens 512
		min_completion_tokens 8
		lower_max_tokens
		max_tokens_field max_completion_tokens
		embeddings_reserve_percent 200
		max_response_buffer 2MiB
		settle_timeout 3s
		credit_wait 250ms
	}`)
	if err := g.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if g.CreditWait == nil || *g.CreditWait != caddy.Duration(250*time.Millisecond) {
		t.Fatalf("credit_wait = %v", g.CreditWait)
	}
	g.CreditWait = nil
	want := Metering{DefaultMaxTokens: 512, MinCompletionTokens: 8, LowerMaxTokens: true, MaxTokensField: "max_completion_tokens",
		EmbeddingsReservePercent: 200, MaxResponseBuffer: 2 << 20, SettleTimeout: caddy.Duration(3 * time.Second)}
	if g.Metering != want {
		t.Fatalf("parsed %+v, want %+v", g.Metering, want)
	}
	if err := g.validateMetering(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		"gatewayz {\n default_max_tokens 0\n}",
		"gatewayz {\n default_max_tokens -5\n}",
		"gatewayz {\n min_completion_tokens\n}",
		"gatewayz {\n lower_max_tokens maybe\n}",
		"gatewayz {\n max_response_buffer lots\n}",
		"gatewayz {\n settle_timeout never\n}",
		"gatewayz {\n credit_wait -1s\n}",
		"gatewayz {\n credit_wait\n}",
	} {
		if err := new(Gateway).UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	negative := caddy.Duration(-time.Second)
	for _, bad := range []Metering{{MaxTokensField: "tokens"}, {MinCompletionTokens: 5000}, {DefaultMaxTokens: 1 << 40}, {CreditWait: &negative}} {
		if err := bad.validateMetering(); err == nil {
			t.Errorf("validated %+v", bad)
		}
	}
	// 0 is "no wait", not "unset": provisioning keeps it; unset gets the default.
	zero := Metering{CreditWait: new(caddy.Duration)}
	if zero.provisionMetering(); *zero.CreditWait != 0 {
		t.Errorf("credit_wait 0 became %v", *zero.CreditWait)
	}
	var unset Metering
	if unset.provisionMetering(); *unset.CreditWait != caddy.Duration(defaultCreditWait) {
		t.Errorf("unset credit_wait became %v", *unset.CreditWait)
	}
}

func TestMeteredEdgeCases(t *testing.T) {
	e := newTestEnv(t, func(_ *App, g *Gateway) { g.MaxResponseBuffer = 256 })
	key, k := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 10_000)
	prompt := estimateText("hi") + msgOverheadTokens + replyPrimingTokens
	chat := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":50}`
	tests := []struct {
		name      string
		body      string
		next      caddyhttp.HandlerFunc
		status    int
		charged   int64
		estimated bool
		records   int
		check     func(t *testing.T, rec *httptest.ResponseRecorder)
	}{
		{"no usage reported: estimated from the content", chat, func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			_, err := io.WriteString(w, `{"choices":[{"message":{"role":"assistant","content":"abcdefgh"}}]}`)
			return err
		}, 200, prompt + 2, true, 1, func(t *testing.T, rec *httptest.ResponseRecorder) {
			if !strings.Contains(rec.Body.String(), `"estimated":true`) {
				t.Errorf("gateway_usage not marked estimated: %s", rec.Body)
			}
		}},
		{"too large to buffer: passed through, billed from the tail", chat, func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			_, err := io.WriteString(w, `{"choices":[{"message":{"content":"`+strings.Repeat("z", 600)+`"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`)
			return err
		}, 200, 7, false, 1, func(t *testing.T, rec *httptest.ResponseRecorder) {
			if strings.Contains(rec.Body.String(), "gateway_usage") || rec.Body.Len() < 600 {
				t.Errorf("overflowing body altered: %d bytes", rec.Body.Len())
			}
		}},
		{"client gone before the upstream answered (499)", chat, func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(499)
			return nil
		}, 499, 0, false, 0, nil},
		{"embeddings", `{"model":"e","input":"abcdefgh"}`, func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			_, err := io.WriteString(w, `{"data":[{"embedding":[0.5]}],"usage":{"prompt_tokens":5,"total_tokens":5}}`)
			return err
		}, 200, 5, false, 1, nil},
		{"stream ended before any event", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`, func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			return nil
		}, 200, 0, false, 0, nil},
	}
	records := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := balanceOf(t, e, k.UserID).Credits
			rec, p := meterDo(t, e, "/v1/"+map[bool]string{true: "embeddings", false: "chat/completions"}[strings.Contains(tt.body, `"input"`)], tt.body, tt.next, bearer(key))
			if p != nil {
				t.Fatal(p)
			}
			if rec.Code != tt.status {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			b := balanceOf(t, e, k.UserID)
			if before-b.Credits != tt.charged || b.Reserved != 0 {
				t.Fatalf("charged %d (reserved %d), want %d", before-b.Credits, b.Reserved, tt.charged)
			}
			recs := usageOf(t, e, k.UserID)
			records += tt.records
			if len(recs) != records {
				t.Fatalf("%d usage records, want %d", len(recs), records)
			}
			if tt.records > 0 && recs[0].Estimated != tt.estimated {
				t.Fatalf("estimated = %v", recs[0].Estimated)
			}
			if tt.check != nil {
				tt.check(t, rec)
			}
		})
	}
}

// TestMeteredStoreClosedMidRequest: a store closed under an in-flight
// request (a reload onto another database) is logged, never a panic; the
// response still reaches the client.
func TestMeteredStoreClosedMidRequest(t *testing.T) {
	e := newTestEnv(t, nil)
	key, _ := e.newKey(t, "", nil)
	next := func(w http.ResponseWriter, r *http.Request) error {
		if err := e.st.Close(); err != nil {
			t.Error(err)
		}
		return upstreamJSON(nil, 1, 1)(w, r)
	}
	rec, p := meterDo(t, e, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}`, next, bearer(key))
	if p != nil {
		t.Fatalf("panicked: %v", p)
	}
	if rec.Code != 200 || strings.Contains(rec.Body.String(), "gateway_usage") || rec.Header().Get("Content-Length") != fmt.Sprint(rec.Body.Len()) {
		t.Fatalf("status %d, body %s", rec.Code, rec.Body)
	}
}

// A free route whose upstream cannot be reached is answered in OpenAI shape
// by the gateway (not with Caddy's empty error page), and returns nil so that
// Caddy logs no error carrying the request's headers.
func TestFreeRouteUpstreamUnavailable(t *testing.T) {
	e := newTestEnv(t, nil)
	key, _ := e.newKey(t, "live", nil)
	req := httptest.NewRequest("GET", "/v1/models", nil)
	req.RemoteAddr = "192.0.2.10:40000"
	req.Header.Set("Authorization", "Bearer "+key)
	rec := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, &caddyhttp.Server{})
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("dial tcp 127.0.0.1:1: connection refused"))
	})
	if err := e.g.ServeHTTP(rec, req, next); err != nil {
		t.Fatalf("ServeHTTP returned %v, want the error answered", err)
	}
	wantError(t, rec, http.StatusBadGateway, "upstream_unavailable", "unavailable")
	if strings.Contains(rec.Body.String(), "connection refused") {
		t.Errorf("internal error text leaked: %s", rec.Body.String())
	}
}

// benchEnv is a gateway whose user can make any number of requests: a plan
// and rate limits far above what a benchmark reaches, and a large balance.
func benchEnv(b *testing.B) (*testEnv, string) {
	b.Helper()
	e := newTestEnv(b, func(a *App, _ *Gateway) {
		a.DefaultLimits = storage.RateLimits{RequestsPerMinute: 1 << 40, TokensPerMinute: 1 << 50}
	})
	e.g.provisionMetering() // as Provision does
	key, k := e.newKey(b, "", nil)
	ctx := context.Background()
	plan := &storage.Plan{Name: "Bench", DailyRequestLimit: 1 << 40, MonthlyRequestLimit: 1 << 40,
		DailyTokenLimit: 1 << 50, MonthlyTokenLimit: 1 << 50, IsActive: true}
	if err := e.st.CreatePlan(ctx, plan); err != nil {
		b.Fatal(err)
	}
	if _, err := e.st.AssignPlan(ctx, k.UserID, plan.ID, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)); err != nil {
		b.Fatal(err)
	}
	setBalance(b, e, k.UserID, 1<<50)
	return e, key
}

// benchMetered sends the request through the whole metered ServeHTTP
// (admission, body parse and rewrite, reservation, the meter, settlement)
// to next, as the benchmark's load generator does. The settlement's store
// encoding is included; its group commit runs in the background.
func benchMetered(b *testing.B, body string, next caddyhttp.HandlerFunc, check func(*httptest.ResponseRecorder)) {
	e, key := benchEnv(b)
	auth := "Bearer " + key
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
		req.RemoteAddr = "192.0.2.10:40000"
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, &caddyhttp.Server{})
		if err := e.g.ServeHTTP(rec, req, next); err != nil {
			b.Fatal(err)
		}
		if rec.Code != 200 {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		check(rec)
	}
	b.StopTimer()
	e.flush(b)
}

// The upstream answers of bench/mock (encoding/json of maps: keys sorted).
const (
	benchJSONBody   = `{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}`
	benchStreamBody = `{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64,"stream":true}`
	benchJSONAnswer = `{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"This is a mock answer.","role":"assistant"}}],"created":1735689600,"id":"chatcmpl-mock","model":"mock-model","object":"chat.completion","usage":{"completion_tokens":20,"prompt_tokens":12,"total_tokens":32}}`
	benchFirstChunk = "data: {\"choices\":[{\"delta\":{\"content\":\"hello \",\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0}],\"created\":1735689600,\"id\":\"chatcmpl-mock\",\"model\":\"mock-model\",\"object\":\"chat.completion.chunk\"}\n\n"
	benchChunk      = "data: {\"choices\":[{\"delta\":{\"content\":\"hello \"},\"finish_reason\":null,\"index\":0}],\"created\":1735689600,\"id\":\"chatcmpl-mock\",\"model\":\"mock-model\",\"object\":\"chat.completion.chunk\"}\n\n"
	benchLastChunk  = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"created\":1735689600,\"id\":\"chatcmpl-mock\",\"model\":\"mock-model\",\"object\":\"chat.completion.chunk\"}\n\n"
	benchUsageChunk = "data: {\"choices\":[],\"created\":1735689600,\"id\":\"chatcmpl-mock\",\"model\":\"mock-model\",\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":16,\"prompt_tokens\":12,\"total_tokens\":28}}\n\n"
)

func BenchmarkMeteredJSON(b *testing.B) {
	answer := []byte(benchJSONAnswer)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
		_, err := w.Write(answer)
		return err
	})
	benchMetered(b, benchJSONBody, next, func(rec *httptest.ResponseRecorder) {
		if !bytes.Contains(rec.Body.Bytes(), []byte(`"gateway_usage":{"tokens_charged":32,`)) {
			b.Fatalf("answer %s", rec.Body)
		}
	})
}

// BenchmarkMeteredStream is a stream of 16 content events, flushed one by
// one, whose client did not ask for usage: the gateway injects
// include_usage and strips the usage event again.
func BenchmarkMeteredStream(b *testing.B) {
	first, chunk, last, usageEv := []byte(benchFirstChunk), []byte(benchChunk), []byte(benchLastChunk), []byte(benchUsageChunk)
	done := []byte("data: [DONE]\n\n")
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		for i := range 16 {
			c := chunk
			if i == 0 {
				c = first
			}
			if _, err := w.Write(c); err != nil {
				return err
			}
			if err := rc.Flush(); err != nil {
				return err
			}
		}
		_, _ = w.Write(last)
		if bytes.Contains(body, []byte(`"include_usage":true`)) {
			_, _ = w.Write(usageEv)
		}
		_, _ = w.Write(done)
		return rc.Flush()
	})
	benchMetered(b, benchStreamBody, next, func(rec *httptest.ResponseRecorder) {
		if bytes.Contains(rec.Body.Bytes(), []byte(`"usage"`)) || !bytes.HasSuffix(rec.Body.Bytes(), done) {
			b.Fatalf("stream %s", rec.Body)
		}
	})
}

// The gateway rewrites the body and drops Accept-Encoding on the request it
// hands to reverse_proxy only: the client's request, which the access log
// writes, keeps its headers and length.
func TestUpstreamRequestLeavesClientRequest(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "", nil)
	setBalance(t, e, k.UserID, 1_000_000)
	body := `{"model":"m","messages":[{"role":"user","content":"hello"}]}`
	for _, gzip := range []bool{false, true} {
		req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Length", strconv.Itoa(len(body)))
		if gzip {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		rec := httptest.NewRecorder()
		req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, &caddyhttp.Server{})
		var sent []byte
		var upHeader http.Header
		next := upstreamJSON(&sent, 5, 2)
		err := e.g.ServeHTTP(rec, req, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			upHeader = r.Header.Clone()
			return next(w, r)
		}))
		if err != nil || rec.Code != 200 {
			t.Fatalf("gzip=%v: %v, status %d: %s", gzip, err, rec.Code, rec.Body)
		}
		if upHeader.Get("Accept-Encoding") != "" {
			t.Fatalf("gzip=%v: Accept-Encoding forwarded", gzip)
		}
		if string(sent) == body {
			t.Fatalf("gzip=%v: body not rewritten (max_tokens not set): %s", gzip, sent)
		}
		if upHeader.Get("Content-Length") != strconv.Itoa(len(sent)) {
			t.Fatalf("gzip=%v: upstream Content-Length %q for %d bytes", gzip, upHeader.Get("Content-Length"), len(sent))
		}
		if req.Header.Get("Content-Length") != strconv.Itoa(len(body)) || req.ContentLength != int64(len(body)) {
			t.Fatalf("gzip=%v: client request length changed: %q %d", gzip, req.Header.Get("Content-Length"), req.ContentLength)
		}
		if got := req.Header.Get("Accept-Encoding"); gzip && got != "gzip" {
			t.Fatalf("client request lost Accept-Encoding: %q", got)
		}
	}
}

// The request id is the {http.request.uuid} placeholder: the gateway sets
// a fresh UUID when nothing made one yet, and keeps Caddy's when a handler
// before it used the placeholder.
func TestRequestIDIsThePlaceholder(t *testing.T) {
	uuidForm := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	newReq := func() *http.Request {
		r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
		return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), httptest.NewRecorder(), &caddyhttp.Server{})
	}

	r := newReq()
	id := requestID(r)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if got, _ := repl.GetString("http.request.uuid"); got != id || !uuidForm.MatchString(id) {
		t.Fatalf("requestID = %q, placeholder %q", id, got)
	}
	if again := requestID(newReq()); again == id {
		t.Fatal("two requests got the same id")
	}

	r = newReq()
	repl = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	caddys, _ := repl.GetString("http.request.uuid") // e.g. a header directive before the gateway
	if got := requestID(r); got != caddys || got == "" {
		t.Fatalf("requestID = %q, want Caddy's %q", got, caddys)
	}

	if got := requestID(httptest.NewRequest("GET", "/", nil)); !uuidForm.MatchString(got) {
		t.Fatalf("without a replacer: %q", got)
	}
}

// requestID returns the request's id, which is also its
// {http.request.uuid} placeholder, so the access log, the usage record and
// the x-request-id header agree: the id Caddy made already when something
// before the gateway used the placeholder, else a new random UUID set as
// the placeholder's value. Setting it is cheaper than asking Caddy for one
// (a walk through the replacer's providers, plus an access-log field that
// gatewayz_request_id already carries).
func requestID(r *http.Request) string {
	rc := newRequestCtx(r)
	return rc.requestID()
}
