package mock

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/respjson"
)

func sdk(srv *httptest.Server, a Answer) openai.Client {
	return openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey("k"), option.WithMaxRetries(0),
		option.WithHeader(HeaderAnswer, string(a)))
}

func params(stream, includeUsage bool) openai.ChatCompletionNewParams {
	p := openai.ChatCompletionNewParams{
		Model:     "gpt-test",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		MaxTokens: openai.Int(1024),
	}
	if stream && includeUsage {
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	}
	return p
}

// present fails unless every field was sent with a value; null fails unless
// every one was sent as JSON null.
func present(t *testing.T, what string, fs map[string]respjson.Field) {
	t.Helper()
	for name, f := range fs {
		if !f.Valid() {
			t.Errorf("%s: %s missing or invalid (raw %q)", what, name, f.Raw())
		}
	}
}

func null(t *testing.T, what string, fs map[string]respjson.Field) {
	t.Helper()
	for name, f := range fs {
		if f.Raw() != respjson.Null {
			t.Errorf("%s: %s is %q, want null", what, name, f.Raw())
		}
	}
}

func noExtra(t *testing.T, what string, extra map[string]respjson.Field) {
	t.Helper()
	if len(extra) > 0 {
		t.Errorf("%s: fields the SDK does not know: %v", what, extra)
	}
}

// TestRealisticJSON reads each realistic answer with the OpenAI Go SDK:
// every field the API sends is there, nothing it does not know.
func TestRealisticJSON(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{PromptTokens: 9}))
	defer srv.Close()
	tests := []struct {
		answer         Answer
		finish         string
		minBody        int
		maxBody        int
		content        string
		tool, toolArgs string
	}{
		{AnswerShort, "stop", 600, 1000, shortContent, "", ""},
		{AnswerLong, "stop", 1500, 4000, longContent, "", ""},
		{AnswerTool, "tool_calls", 700, 1400, "", toolName, toolArguments},
	}
	for _, tc := range tests {
		t.Run(string(tc.answer), func(t *testing.T) {
			c := sdk(srv, tc.answer)
			cc, err := c.Chat.Completions.New(context.Background(), params(false, false))
			if err != nil {
				t.Fatal(err)
			}
			raw := cc.RawJSON()
			if len(raw) < tc.minBody || len(raw) > tc.maxBody || !strings.HasPrefix(raw, "{\n  \"id\": ") {
				t.Errorf("body of %d bytes, want %d-%d, indented as OpenAI does:\n%s", len(raw), tc.minBody, tc.maxBody, raw)
			}
			present(t, "completion", map[string]respjson.Field{"id": cc.JSON.ID, "object": cc.JSON.Object, "created": cc.JSON.Created,
				"model": cc.JSON.Model, "choices": cc.JSON.Choices, "usage": cc.JSON.Usage, "service_tier": cc.JSON.ServiceTier,
				"system_fingerprint": cc.JSON.SystemFingerprint})
			noExtra(t, "completion", cc.JSON.ExtraFields)
			if cc.Model != "gpt-test" || len(cc.Choices) != 1 {
				t.Fatalf("model %q, %d choices", cc.Model, len(cc.Choices))
			}
			ch := cc.Choices[0]
			present(t, "choice", map[string]respjson.Field{"index": ch.JSON.Index, "message": ch.JSON.Message, "finish_reason": ch.JSON.FinishReason})
			null(t, "choice", map[string]respjson.Field{"logprobs": ch.JSON.Logprobs})
			noExtra(t, "choice", ch.JSON.ExtraFields)
			msg := ch.Message
			present(t, "message", map[string]respjson.Field{"role": msg.JSON.Role, "annotations": msg.JSON.Annotations})
			null(t, "message", map[string]respjson.Field{"refusal": msg.JSON.Refusal})
			noExtra(t, "message", msg.JSON.ExtraFields)
			if ch.FinishReason != tc.finish || msg.Content != tc.content {
				t.Errorf("finish %q content %q", ch.FinishReason, msg.Content)
			}
			if tc.tool == "" {
				present(t, "message", map[string]respjson.Field{"content": msg.JSON.Content})
			} else {
				null(t, "message", map[string]respjson.Field{"content": msg.JSON.Content})
				if len(msg.ToolCalls) != 1 || msg.ToolCalls[0].Function.Name != tc.tool || msg.ToolCalls[0].Function.Arguments != tc.toolArgs ||
					msg.ToolCalls[0].ID != toolCallID || msg.ToolCalls[0].Type != "function" {
					t.Errorf("tool calls %+v", msg.ToolCalls)
				}
				var args map[string]string
				if err := json.Unmarshal([]byte(msg.ToolCalls[0].Function.Arguments), &args); err != nil || args["location"] == "" {
					t.Errorf("arguments %q: %v", msg.ToolCalls[0].Function.Arguments, err)
				}
			}
			u := cc.Usage
			present(t, "usage", map[string]respjson.Field{"prompt_tokens": u.JSON.PromptTokens, "completion_tokens": u.JSON.CompletionTokens,
				"total_tokens": u.JSON.TotalTokens, "prompt_tokens_details": u.JSON.PromptTokensDetails,
				"completion_tokens_details": u.JSON.CompletionTokensDetails})
			present(t, "prompt_tokens_details", map[string]respjson.Field{"cached_tokens": u.PromptTokensDetails.JSON.CachedTokens,
				"audio_tokens": u.PromptTokensDetails.JSON.AudioTokens})
			d := u.CompletionTokensDetails.JSON
			present(t, "completion_tokens_details", map[string]respjson.Field{"reasoning_tokens": d.ReasoningTokens, "audio_tokens": d.AudioTokens,
				"accepted_prediction_tokens": d.AcceptedPredictionTokens, "rejected_prediction_tokens": d.RejectedPredictionTokens})
			if u.PromptTokens != 9 || u.CompletionTokens < 1 || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
				t.Errorf("usage %s", u.RawJSON())
			}
		})
	}
}

// TestRealisticStream reads each realistic stream with the SDK, with and
// without include_usage: every chunk carries what OpenAI's chunks carry,
// and the accumulated answer is the JSON answer.
func TestRealisticStream(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{PromptTokens: 9}))
	defer srv.Close()
	for _, a := range Answers[1:] {
		for _, includeUsage := range []bool{false, true} {
			name := string(a)
			if includeUsage {
				name += "/include_usage"
			}
			t.Run(name, func(t *testing.T) {
				c := sdk(srv, a)
				want, err := c.Chat.Completions.New(context.Background(), params(false, false))
				if err != nil {
					t.Fatal(err)
				}
				s := c.Chat.Completions.NewStreaming(context.Background(), params(true, includeUsage))
				var acc openai.ChatCompletionAccumulator
				var chunks []openai.ChatCompletionChunk
				for s.Next() {
					ch := s.Current()
					if !acc.AddChunk(ch) {
						t.Fatalf("accumulator refused chunk %d: %s", len(chunks), ch.RawJSON())
					}
					chunks = append(chunks, ch)
				}
				if err := s.Err(); err != nil {
					t.Fatal(err)
				}
				if len(chunks) < 3 {
					t.Fatalf("%d chunks", len(chunks))
				}
				last := len(chunks) - 1
				for i, ch := range chunks {
					what := fmt.Sprintf("chunk %d", i)
					present(t, what, map[string]respjson.Field{"id": ch.JSON.ID, "object": ch.JSON.Object, "created": ch.JSON.Created,
						"model": ch.JSON.Model, "service_tier": ch.JSON.ServiceTier, "system_fingerprint": ch.JSON.SystemFingerprint,
						"choices": ch.JSON.Choices, "obfuscation": ch.JSON.Obfuscation})
					noExtra(t, what, ch.JSON.ExtraFields)
					switch {
					case includeUsage && i == last:
						if len(ch.Choices) != 0 || !ch.JSON.Usage.Valid() {
							t.Errorf("usage chunk %s", ch.RawJSON())
						}
						continue
					case includeUsage:
						null(t, what, map[string]respjson.Field{"usage": ch.JSON.Usage})
					default:
						if ch.JSON.Usage.Raw() != "" {
							t.Errorf("%s: usage %q without include_usage", what, ch.JSON.Usage.Raw())
						}
					}
					if len(ch.Choices) != 1 {
						t.Fatalf("%s: %d choices", what, len(ch.Choices))
					}
					cc := ch.Choices[0]
					null(t, what, map[string]respjson.Field{"logprobs": cc.JSON.Logprobs})
					finalChunk := includeUsage && i == last-1 || !includeUsage && i == last
					if finalChunk != cc.JSON.FinishReason.Valid() {
						t.Errorf("%s: finish_reason %q", what, cc.JSON.FinishReason.Raw())
					}
					if !finalChunk {
						null(t, what, map[string]respjson.Field{"finish_reason": cc.JSON.FinishReason})
					}
				}
				got := acc.Choices[0]
				wantCh := want.Choices[0]
				if got.Message.Content != wantCh.Message.Content || got.FinishReason != wantCh.FinishReason {
					t.Errorf("accumulated %q (%s), JSON answer %q (%s)", got.Message.Content, got.FinishReason, wantCh.Message.Content, wantCh.FinishReason)
				}
				if len(wantCh.Message.ToolCalls) > 0 {
					if len(got.Message.ToolCalls) != 1 || got.Message.ToolCalls[0].Function.Name != toolName ||
						got.Message.ToolCalls[0].Function.Arguments != wantCh.Message.ToolCalls[0].Function.Arguments {
						t.Errorf("accumulated tool calls %+v", got.Message.ToolCalls)
					}
				}
				if includeUsage && (acc.Usage.CompletionTokens != want.Usage.CompletionTokens || acc.Usage.TotalTokens != want.Usage.TotalTokens ||
					!chunks[last].Usage.CompletionTokensDetails.JSON.ReasoningTokens.Valid() ||
					!chunks[last].Usage.PromptTokensDetails.JSON.CachedTokens.Valid()) {
					t.Errorf("stream usage %+v, JSON usage %+v", acc.Usage, want.Usage)
				}
			})
		}
	}
}

// TestTinyIsUnchanged holds the tiny answer, the default, to the bytes the
// benchmarks have always measured.
func TestTinyIsUnchanged(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{}))
	defer srv.Close()
	const tiny = `{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"This is a mock answer.","role":"assistant"}}],` +
		`"created":1735689600,"id":"chatcmpl-mock","model":"mock-model","object":"chat.completion",` +
		`"usage":{"completion_tokens":20,"prompt_tokens":12,"total_tokens":32}}`
	for _, hdr := range []map[string]string{nil, {HeaderAnswer: "tiny"}, {HeaderAnswer: "no-such-answer"}} {
		resp := post(t, srv, "/v1/chat/completions", `{"model":"mock-model","max_tokens":64}`, hdr)
		b, _ := io.ReadAll(resp.Body)
		if string(b) != tiny {
			t.Fatalf("headers %v: %s", hdr, b)
		}
	}
	resp := post(t, srv, "/v1/chat/completions", `{"model":"mock-model","stream":true}`, nil)
	b, _ := io.ReadAll(resp.Body)
	const first = `data: {"choices":[{"delta":{"content":"hello ","role":"assistant"},"finish_reason":null,"index":0}],"created":1735689600,"id":"chatcmpl-mock","model":"mock-model","object":"chat.completion.chunk"}`
	if !strings.HasPrefix(string(b), first+"\n\n") || strings.Count(string(b), "\n\n") != 16+1+1 {
		t.Fatalf("tiny stream:\n%s", b)
	}
}

// TestRealisticFaults: the fault headers apply to the realistic answers too.
func TestRealisticFaults(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{}))
	defer srv.Close()
	resp := post(t, srv, "/v1/chat/completions", `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
		map[string]string{HeaderAnswer: "long", HeaderCutAfter: "3"})
	events, err := readStream(t, resp.Body)
	if err == nil || len(events) != 3 {
		t.Fatalf("cut stream: err %v, %d events", err, len(events))
	}
	resp = post(t, srv, "/v1/chat/completions", `{"model":"m"}`, map[string]string{HeaderAnswer: "short", HeaderNoUsage: "1"})
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || strings.Contains(string(b), "usage") || !strings.Contains(string(b), "system_fingerprint") {
		t.Fatalf("no usage: %s", b)
	}
	resp = post(t, srv, "/v1/chat/completions", `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
		map[string]string{HeaderAnswer: "tool", HeaderNoUsage: "1"})
	b, _ = io.ReadAll(resp.Body)
	if strings.Contains(string(b), `"usage"`) || !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
		t.Fatalf("no usage stream: %s", b)
	}
}

func TestParseAnswer(t *testing.T) {
	for _, a := range Answers {
		if got, err := ParseAnswer(string(a)); err != nil || got != a {
			t.Fatalf("%s: %v %v", a, got, err)
		}
	}
	for _, s := range []string{"", "Short", "huge"} {
		if _, err := ParseAnswer(s); err == nil {
			t.Fatalf("%q accepted", s)
		}
	}
}

func TestPieces(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"Hello", []string{"Hello"}},
		{"Hello! How are you?", []string{"Hello!", " How", " are", " you?"}},
		{"a  b", []string{"a", " ", " b"}},
	}
	for _, tc := range tests {
		got := pieces(tc.in)
		if strings.Join(got, "|") != strings.Join(tc.want, "|") || strings.Join(got, "") != tc.in {
			t.Errorf("pieces(%q) = %q", tc.in, got)
		}
	}
	if got := strings.Join(argumentPieces(toolArguments), ""); got != toolArguments {
		t.Errorf("argument pieces join to %q", got)
	}
}
