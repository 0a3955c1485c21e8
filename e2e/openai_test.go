package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// Mock upstream usage (bench/mock defaults): every answer reports 12 prompt
// tokens; a JSON answer 20 completion tokens; a stream 16 chunks of
// "hello ", one completion token each. The default price is 1 credit per
// total token.
const (
	mockPrompt     = 12
	mockCompletion = 20
	mockChunks     = 16
	jsonCost       = mockPrompt + mockCompletion
	streamCost     = mockPrompt + mockChunks
)

func sdkClient(g *Gateway, key string, opts ...option.RequestOption) *openai.Client {
	base := []option.RequestOption{
		option.WithBaseURL(g.URL + "/v1/"),
		option.WithAPIKey(key),
		option.WithMaxRetries(0),
		option.WithRequestTimeout(30 * time.Second),
	}
	c := openai.NewClient(append(base, opts...)...)
	return &c
}

func chatParams(maxTokens int64) openai.ChatCompletionNewParams {
	p := openai.ChatCompletionNewParams{
		Model:    "mock-model",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
	}
	if maxTokens > 0 {
		p.MaxTokens = openai.Int(maxTokens)
	}
	return p
}

// apiError asserts that err is the SDK's typed error with the status, and
// returns it.
func apiError(t *testing.T, what string, err error, status int) *openai.Error {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: want *openai.Error with status %d, got %T %v", what, status, err, err)
	}
	if e.StatusCode != status {
		t.Fatalf("%s: status %d, want %d (%s)", what, e.StatusCode, status, e.RawJSON())
	}
	if e.Message == "" || e.Type == "" || e.Code == "" {
		t.Fatalf("%s: error body not in OpenAI shape: %s", what, e.RawJSON())
	}
	return e
}

// wantCredits checks a user's balance and that nothing is left reserved.
// A stream settles just after its last byte reached the client, so the
// check waits (briefly) for the settlement before it compares.
func wantCredits(t *testing.T, api *API, userID, want int64) {
	t.Helper()
	var c Credits
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if c, err = api.UserCredits(userID); err != nil {
			t.Fatal(err)
		}
		if c.Credits == want && c.Reserved == 0 || time.Now().After(deadline) {
			break
		}
	}
	if c.Credits != want || c.Reserved != 0 {
		t.Fatalf("user %d: credits %d reserved %d, want %d reserved 0", userID, c.Credits, c.Reserved, want)
	}
}

// TestOpenAISDK drives the gateway, started as a process with
// Caddyfile.example, with the official OpenAI Go SDK, and manages keys
// over plain HTTP as a front end would.
func TestOpenAISDK(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	g := startGateway(t, up.URL, nil)
	api := NewAPI(g.URL, testAdminKey)
	ctx := t.Context()

	// A front end registers a user: the operator's signup grant applies.
	resp := mustOK(t, "register")(api.Do("POST", "/auth/register", "",
		map[string]any{"username": "ada", "email": "ada@example.com", "initial_credits": 999999}))
	reg := resp.JSON()
	key, _ := reg["api_key"].(string)
	if !strings.HasPrefix(key, "gw_live_") {
		t.Fatalf("register: api_key %q", key)
	}
	if reg["credits"] != float64(1000) {
		t.Fatalf("register: credits %v, want the operator's 1000 (client value ignored)", reg["credits"])
	}
	uid := int64(reg["user_id"].(float64))
	balance := int64(1000)

	// Key management over plain HTTP.
	key2, key2ID, err := api.CreateKey(key, map[string]any{"key_name": "sdk", "environment_tag": "live"})
	if err != nil {
		t.Fatal(err)
	}
	list := mustOK(t, "list keys")(api.Do("GET", "/user/api-keys", key, nil))
	if n := list.JSON()["total_keys"]; n != float64(2) {
		t.Fatalf("list keys: total_keys %v, want 2", n)
	}
	if strings.Contains(string(list.Body), key) || strings.Contains(string(list.Body), key2) {
		t.Fatal("key listing shows a full key")
	}
	mustOK(t, "rename key")(api.Do("PUT", fmt.Sprintf("/user/api-keys/%d", key2ID), key,
		map[string]any{"key_name": "sdk-renamed"}))
	rot := mustOK(t, "rotate key")(api.Do("PUT", fmt.Sprintf("/user/api-keys/%d", key2ID), key,
		map[string]any{"action": "rotate"}))
	key3, _ := rot.JSON()["api_key"].(string)
	if !strings.HasPrefix(key3, "gw_live_") || key3 == key2 {
		t.Fatalf("rotate: api_key %q", key3)
	}

	// The rotated key works with the SDK; the old secret does not.
	c3 := sdkClient(g, key3)
	if _, err := c3.Models.List(ctx); err != nil {
		t.Fatalf("models with the rotated key: %v", err)
	}
	_, err = sdkClient(g, key2).Chat.Completions.New(ctx, chatParams(0))
	if e := apiError(t, "old secret after rotation", err, http.StatusUnauthorized); e.Message != "Invalid API key" {
		t.Fatalf("old secret: message %q", e.Message)
	}
	mustOK(t, "delete key")(api.Do("DELETE", fmt.Sprintf("/user/api-keys/%d", key2ID), key,
		map[string]any{"confirmation": "DELETE_KEY"}))
	_, err = c3.Chat.Completions.New(ctx, chatParams(0))
	apiError(t, "deleted key", err, http.StatusUnauthorized)

	// A chat completion.
	c := sdkClient(g, key)
	cc, err := c.Chat.Completions.New(ctx, chatParams(0))
	if err != nil {
		t.Fatalf("chat completion: %v", err)
	}
	if len(cc.Choices) != 1 || cc.Choices[0].Message.Content != "This is a mock answer." {
		t.Fatalf("chat completion: %+v", cc.Choices)
	}
	if cc.Usage.TotalTokens != jsonCost {
		t.Fatalf("usage.total_tokens %d, want %d", cc.Usage.TotalTokens, jsonCost)
	}
	balance -= jsonCost
	wantCredits(t, api, uid, balance)

	// A streamed one, asking for usage: the usage chunk arrives.
	p := chatParams(0)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	content, usage := readStream(t, c, p)
	if content != strings.Repeat("hello ", mockChunks) {
		t.Fatalf("stream content %q", content)
	}
	if usage != streamCost {
		t.Fatalf("stream usage %d, want %d", usage, streamCost)
	}
	balance -= streamCost
	wantCredits(t, api, uid, balance)

	// A stream without include_usage: the gateway still meters it, and
	// strips the usage chunk it asked for.
	content, usage = readStream(t, c, chatParams(0))
	if content != strings.Repeat("hello ", mockChunks) || usage != 0 {
		t.Fatalf("stream without include_usage: content %q usage %d", content, usage)
	}
	balance -= streamCost
	wantCredits(t, api, uid, balance)

	// 401: an unknown key.
	_, err = sdkClient(g, "gw_live_"+strings.Repeat("A", 43)).Chat.Completions.New(ctx, chatParams(0))
	if e := apiError(t, "unknown key", err, http.StatusUnauthorized); e.Message != "Invalid API key" || e.Code != "invalid_api_key" {
		t.Fatalf("unknown key: %s", e.RawJSON())
	}

	// 402: a max_tokens the balance cannot pay.
	poor, err := api.Register("poor", "poor@example.com", 10)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sdkClient(g, poor.APIKey).Chat.Completions.New(ctx, chatParams(500))
	if e := apiError(t, "unaffordable", err, http.StatusPaymentRequired); e.Type != "insufficient_quota" {
		t.Fatalf("402: %s", e.RawJSON())
	}
	wantCredits(t, api, poor.ID, 10)

	// 403: a key restricted to another IP.
	ipKey, _, err := api.CreateKey(key, map[string]any{"key_name": "office only", "ip_allowlist": []string{"203.0.113.7"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = sdkClient(g, ipKey).Chat.Completions.New(ctx, chatParams(0))
	if e := apiError(t, "ip allowlist", err, http.StatusForbidden); e.Message != "IP address not allowed for this API key" {
		t.Fatalf("403: %s", e.RawJSON())
	}

	// 429: a key with max_requests 1, used once.
	oneKey, _, err := api.CreateKey(key, map[string]any{"key_name": "one shot", "max_requests": 1})
	if err != nil {
		t.Fatal(err)
	}
	c1 := sdkClient(g, oneKey)
	if _, err := c1.Chat.Completions.New(ctx, chatParams(0)); err != nil {
		t.Fatalf("first request of a max_requests=1 key: %v", err)
	}
	balance -= jsonCost
	_, err = c1.Chat.Completions.New(ctx, chatParams(0))
	if e := apiError(t, "max_requests", err, http.StatusTooManyRequests); e.Message != "API key request limit reached" {
		t.Fatalf("429: %s", e.RawJSON())
	}

	// Refusals cost nothing; the ledger is exact.
	wantCredits(t, api, uid, balance)
	bal := mustOK(t, "user balance")(api.Do("GET", "/user/balance", key, nil)).JSON()
	if bal["credits"] != float64(balance) {
		t.Fatalf("/user/balance credits %v, want %d", bal["credits"], balance)
	}
}

// readStream reads a streamed chat completion with the SDK and returns the
// concatenated content and the usage total (0 when no usage chunk came).
func readStream(t *testing.T, c *openai.Client, p openai.ChatCompletionNewParams) (string, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s := c.Chat.Completions.NewStreaming(ctx, p)
	defer s.Close()
	var b strings.Builder
	var usage int64
	for s.Next() {
		ch := s.Current()
		for _, choice := range ch.Choices {
			b.WriteString(choice.Delta.Content)
		}
		if ch.Usage.TotalTokens > 0 {
			usage = ch.Usage.TotalTokens
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	return b.String(), usage
}
