package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	aoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// Agent traffic through the gateway process: the official Anthropic SDK
// (x-api-key) on /v1/messages and the OpenAI SDK's Responses client on
// /v1/responses, against the mock upstream reporting prompt caching.
//
// The mock's 12 prompt tokens are 8 read from the cache and 2 written to
// it (the Responses API reports only the 8 read). Prices in credits per
// 1K tokens: prompt 1000, completion 2000, cache read 100, cache write
// 1500; so, rounded up once per request:
//
//	messages JSON:    2 + 0.8 + 3 + 20×2 = 45.8 -> 46
//	messages stream:  2 + 0.8 + 3 + 16×2 = 37.8 -> 38
//	responses JSON:   4 + 0.8 + 20×2     = 44.8 -> 45
//	responses stream: 4 + 0.8 + 16×2     = 36.8 -> 37
const (
	agentCached     = 8
	agentCacheWrite = 2
	agentPrice      = "price mock-model 1000 2000 100 1500"
	messagesJSON    = 46
	messagesStream  = 38
	responsesJSON   = 45
	responsesStream = 37
)

// agentCost is the cost at those prices of an answer whose prompt side is
// as the mock reports it, with completion output tokens.
func agentCost(anthropicShape bool, completion int64) int64 {
	milli := int64(mockPrompt-agentCached)*1000 + agentCached*100 + completion*2000
	if anthropicShape {
		milli = int64(mockPrompt-agentCached-agentCacheWrite)*1000 + agentCached*100 + agentCacheWrite*1500 + completion*2000
	}
	return (milli + 999) / 1000
}

func anthropicClient(g *Gateway, key string) anthropic.Client {
	return anthropic.NewClient(aoption.WithBaseURL(g.URL+"/"), aoption.WithAPIKey(key),
		aoption.WithMaxRetries(0), aoption.WithRequestTimeout(30*time.Second))
}

func messageParams(maxTokens int64) anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "mock-model",
		MaxTokens: maxTokens,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hello"))},
	}
}

// anthropicError asserts that err is the Anthropic SDK's typed error with
// the status and error type.
func anthropicError(t *testing.T, what string, err error, status int, typ string) {
	t.Helper()
	var e *anthropic.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: want *anthropic.Error, got %T %v", what, err, err)
	}
	if e.StatusCode != status || string(e.Type()) != typ {
		t.Fatalf("%s: status %d type %q, want %d %q (%s)", what, e.StatusCode, e.Type(), status, typ, e.RawJSON())
	}
}

func TestAgentSDKs(t *testing.T) {
	opts := mockOptions()
	opts.CachedTokens, opts.CacheWriteTokens = agentCached, agentCacheWrite
	opts.ChunkDelay = 0
	up, _ := newUpstream(t, opts)
	cf := writeCaddyfile(t, func(s string) string {
		return strings.Replace(s, "\tgatewayz {\n", "\tgatewayz {\n\t\t"+agentPrice+"\n", 1)
	})
	g := startGateway(t, up.URL, func(c *Config) {
		c.Caddyfile = cf
		c.Env = append(c.Env, "GATEWAYZ_RESPONSES=on")
	})
	api := NewAPI(g.URL, testAdminKey)
	ctx := t.Context()
	user, err := api.Register("claude", "claude@example.com", 1000)
	if err != nil {
		t.Fatal(err)
	}
	balance := int64(1000)
	wantCredits(t, api, user.ID, balance)

	// A message, with the key in x-api-key.
	ac := anthropicClient(g, user.APIKey)
	msg, err := ac.Messages.New(ctx, messageParams(100))
	if err != nil {
		t.Fatalf("message: %v", err)
	}
	if len(msg.Content) != 1 || msg.Content[0].Text != "This is a mock answer." ||
		msg.Usage.CacheReadInputTokens != agentCached || msg.Usage.OutputTokens != mockCompletion {
		t.Fatalf("message: %+v", msg)
	}
	balance -= messagesJSON
	wantCredits(t, api, user.ID, balance)

	// A stream.
	text, usage := readMessageStream(t, ac, messageParams(100), 0)
	if text != strings.Repeat("hello ", mockChunks) || usage.OutputTokens != mockChunks || usage.CacheReadInputTokens != agentCached {
		t.Fatalf("stream: %q %+v", text, usage)
	}
	balance -= messagesStream
	wantCredits(t, api, user.ID, balance)

	// A stream the client abandons after three deltas: billed for the
	// prompt message_start reported plus an estimate of what was streamed.
	readMessageStream(t, ac, messageParams(100), 3, aoption.WithHeader(mock.HeaderChunkDelay, "200ms"))
	var recs []usageRecord
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if recs = usageRecords(t, api, user.ID); len(recs) == 3 {
			break
		}
	}
	streamed := recs[0].TokensUsed - mockPrompt // estimated from the text that went out
	if len(recs) != 3 || recs[0].CachedTokens != agentCached || recs[0].CacheWriteTokens != agentCacheWrite ||
		streamed < 1 || streamed >= mockChunks {
		t.Fatalf("abandoned stream's usage record: %+v", recs)
	}
	if want := agentCost(true, streamed); recs[0].Cost != want {
		t.Fatalf("abandoned stream charged %d, want %d", recs[0].Cost, want)
	}
	balance -= recs[0].Cost
	wantCredits(t, api, user.ID, balance)

	// A bad key: the SDK's typed authentication error.
	bad := anthropicClient(g, "gw_live_"+strings.Repeat("A", 43))
	_, err = bad.Messages.New(ctx, messageParams(100))
	anthropicError(t, "bad key", err, http.StatusUnauthorized, "authentication_error")

	// No credits: 402, a billing error, and the upstream never called.
	poor, err := api.Register("poor-claude", "poor-claude@example.com", 10)
	if err != nil {
		t.Fatal(err)
	}
	pc := anthropicClient(g, poor.APIKey)
	_, err = pc.Messages.New(ctx, messageParams(100))
	anthropicError(t, "no credits", err, http.StatusPaymentRequired, "billing_error")
	wantCredits(t, api, poor.ID, 10)

	// The Responses API: a response and a stream.
	oc := sdkClient(g, user.APIKey)
	rp := responses.ResponseNewParams{Model: "mock-model", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hello")}}
	resp, err := oc.Responses.New(ctx, rp)
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	if resp.OutputText() != "This is a mock answer." || resp.Usage.InputTokensDetails.CachedTokens != agentCached {
		t.Fatalf("response: %s", resp.RawJSON())
	}
	balance -= responsesJSON
	wantCredits(t, api, user.ID, balance)

	s := oc.Responses.NewStreaming(ctx, rp)
	var out strings.Builder
	var completed responses.Response
	for s.Next() {
		switch ev := s.Current(); ev.Type {
		case "response.output_text.delta":
			out.WriteString(ev.Delta)
		case "response.completed":
			completed = ev.AsResponseCompleted().Response
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("response stream: %v", err)
	}
	_ = s.Close()
	if out.String() != strings.Repeat("hello ", mockChunks) || completed.Usage.OutputTokens != mockChunks {
		t.Fatalf("response stream: %q %+v", out.String(), completed.Usage)
	}
	balance -= responsesStream
	wantCredits(t, api, user.ID, balance)

	// The usage API shows the cached tokens apart.
	recs = usageRecords(t, api, user.ID)
	var cached int64
	for _, r := range recs {
		cached += r.CachedTokens
	}
	if len(recs) != 5 || cached != 5*agentCached {
		t.Fatalf("usage records: %+v", recs)
	}
}

// readMessageStream reads a Messages stream with the SDK, or only its
// first stopAfter text deltas when stopAfter > 0 (then it closes the
// stream, as a client that goes away), and returns the text and the
// accumulated usage.
func readMessageStream(t *testing.T, c anthropic.Client, p anthropic.MessageNewParams, stopAfter int, opts ...aoption.RequestOption) (string, anthropic.Usage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s := c.Messages.NewStreaming(ctx, p, opts...)
	var msg anthropic.Message
	var text strings.Builder
	deltas := 0
	for s.Next() {
		ev := s.Current()
		if err := msg.Accumulate(ev); err != nil {
			t.Fatal(err)
		}
		if d, ok := ev.AsAny().(anthropic.ContentBlockDeltaEvent); ok {
			text.WriteString(d.Delta.Text)
			if deltas++; stopAfter > 0 && deltas == stopAfter {
				cancel()
				_ = s.Close()
				return text.String(), msg.Usage
			}
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("message stream: %v", err)
	}
	_ = s.Close()
	return text.String(), msg.Usage
}

// usageRecord is a row of /admin/monitor's recent_activity: one metered
// request, newest first.
type usageRecord struct {
	UserID           int64 `json:"user_id"`
	TokensUsed       int64 `json:"tokens_used"`
	CachedTokens     int64 `json:"cached_tokens"`
	CacheWriteTokens int64 `json:"cache_write_tokens"`
	Cost             int64 `json:"cost"`
}

// usageRecords lists a user's latest usage records, newest first.
func usageRecords(t *testing.T, api *API, userID int64) []usageRecord {
	t.Helper()
	resp := mustOK(t, "admin monitor")(api.Do("GET", "/admin/monitor", api.AdminKey, nil))
	var out struct {
		Data struct {
			Recent []usageRecord `json:"recent_activity"`
		} `json:"data"`
	}
	if err := jsonUnmarshal(resp.Body, &out); err != nil {
		t.Fatal(fmt.Errorf("admin monitor: %w: %s", err, resp.Body))
	}
	var recs []usageRecord
	for _, r := range out.Data.Recent {
		if r.UserID == userID {
			recs = append(recs, r)
		}
	}
	return recs
}
