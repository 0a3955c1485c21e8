package mock

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Answer selects what a chat completion answers: the tiny answer the
// benchmarks started with, or one shaped and sized as OpenAI's API answers.
type Answer string

const (
	// AnswerTiny is a one-line compact answer (about 250 bytes) whose usage
	// has no details and whose stream chunks carry only id, object,
	// created, model and choices. The default; its size follows the
	// Options (CompletionTokens, StreamChunks, ChunkText, max_tokens).
	AnswerTiny Answer = "tiny"
	// AnswerShort is a one-sentence reply with every field OpenAI sends,
	// pretty-printed as OpenAI prints it (about 800 bytes).
	AnswerShort Answer = "short"
	// AnswerLong is a reply of about 1.5 KB of text (2.5 KB of JSON), one
	// stream chunk per word.
	AnswerLong Answer = "long"
	// AnswerTool is a function tool call (finish_reason "tool_calls"), its
	// arguments streamed in pieces.
	AnswerTool Answer = "tool"
)

// Answers lists every answer, tiny first.
var Answers = []Answer{AnswerTiny, AnswerShort, AnswerLong, AnswerTool}

// ParseAnswer accepts the name of an answer.
func ParseAnswer(s string) (Answer, error) {
	for _, a := range Answers {
		if string(a) == s {
			return a, nil
		}
	}
	return "", fmt.Errorf("unknown answer %q (tiny, short, long or tool)", s)
}

// The realistic answers' fixed parts, as OpenAI's chat completions API
// returns them.
const (
	realisticID          = "chatcmpl-CkVx3mQ9RtZp2LwHs8NcYb4EfGjT1"
	systemFingerprint    = "fp_560af6e559"
	serviceTier          = "default"
	toolCallID           = "call_Xb7Rk2QmPz9sLw4TnVy8HcJd"
	toolName             = "get_current_weather"
	toolArguments        = `{"location":"Paris, France","unit":"celsius"}`
	shortContent         = "Hello! How can I assist you today?"
	longContentParagraph = "Caddy is an extensible web server written in Go. Its configuration is a JSON document, usually " +
		"written as a Caddyfile and adapted to JSON when the server starts, and its modules register themselves at init " +
		"time so that a custom build only needs a blank import for each plugin. A request travels through a route of " +
		"handlers: each one may answer, or call the next one with the same request and a response writer that it may " +
		"wrap. The reverse proxy is such a handler; it chooses an upstream, copies the request with the headers the " +
		"configuration adds or removes, and streams the answer back, flushing immediately when the upstream sends " +
		"server-sent events. "
)

// longContent repeats the paragraph to about 1.5 KB.
var longContent = strings.TrimSpace(strings.Repeat(longContentParagraph, 2))

// Wire shapes, with the fields in the order OpenAI sends them.
type (
	completionJSON struct {
		ID                string          `json:"id"`
		Object            string          `json:"object"`
		Created           int64           `json:"created"`
		Model             string          `json:"model"`
		Choices           []messageChoice `json:"choices"`
		Usage             *usageJSON      `json:"usage,omitempty"`
		ServiceTier       string          `json:"service_tier"`
		SystemFingerprint string          `json:"system_fingerprint"`
	}
	messageChoice struct {
		Index        int             `json:"index"`
		Message      messageJSON     `json:"message"`
		Logprobs     json.RawMessage `json:"logprobs"`
		FinishReason string          `json:"finish_reason"`
	}
	messageJSON struct {
		Role        string          `json:"role"`
		Content     *string         `json:"content"`
		ToolCalls   []toolCallJSON  `json:"tool_calls,omitempty"`
		Refusal     json.RawMessage `json:"refusal"`
		Annotations []any           `json:"annotations"`
	}
	toolCallJSON struct {
		Index    *int         `json:"index,omitempty"` // streams only
		ID       string       `json:"id,omitempty"`
		Type     string       `json:"type,omitempty"`
		Function functionJSON `json:"function"`
	}
	functionJSON struct {
		Name      string `json:"name,omitempty"`
		Arguments string `json:"arguments"`
	}
	usageJSON struct {
		PromptTokens            int                `json:"prompt_tokens"`
		CompletionTokens        int                `json:"completion_tokens"`
		TotalTokens             int                `json:"total_tokens"`
		PromptTokensDetails     promptDetails      `json:"prompt_tokens_details"`
		CompletionTokensDetails completionsDetails `json:"completion_tokens_details"`
	}
	promptDetails struct {
		CachedTokens int `json:"cached_tokens"`
		AudioTokens  int `json:"audio_tokens"`
	}
	completionsDetails struct {
		ReasoningTokens          int `json:"reasoning_tokens"`
		AudioTokens              int `json:"audio_tokens"`
		AcceptedPredictionTokens int `json:"accepted_prediction_tokens"`
		RejectedPredictionTokens int `json:"rejected_prediction_tokens"`
	}
	chunkJSON struct {
		ID                string          `json:"id"`
		Object            string          `json:"object"`
		Created           int64           `json:"created"`
		Model             string          `json:"model"`
		ServiceTier       string          `json:"service_tier"`
		SystemFingerprint string          `json:"system_fingerprint"`
		Choices           []deltaChoice   `json:"choices"`
		Usage             json.RawMessage `json:"usage,omitempty"` // null on every chunk but the last with include_usage
		Obfuscation       string          `json:"obfuscation"`
	}
	deltaChoice struct {
		Index        int             `json:"index"`
		Delta        deltaJSON       `json:"delta"`
		Logprobs     json.RawMessage `json:"logprobs"`
		FinishReason json.RawMessage `json:"finish_reason"`
	}
	deltaJSON struct {
		Role      string          `json:"role,omitempty"`
		Content   json.RawMessage `json:"content,omitempty"`
		ToolCalls []toolCallJSON  `json:"tool_calls,omitempty"`
		Refusal   json.RawMessage `json:"refusal,omitempty"`
	}
)

var jsonNull = json.RawMessage("null")

// shaped are the precomputed bodies of one realistic answer for one model.
type shaped struct {
	json, jsonNoUsage []byte
	// events are the SSE events before [DONE]: without include_usage, and
	// with it (usage null on each, then the usage-only chunk).
	events, eventsWithUsage [][]byte
	// completion is usage.completion_tokens: the pieces streamed after
	// the role chunk.
	completion int
}

// pieces splits text as a stream delivers it: one word (with its leading
// space) per chunk, about one token each.
func pieces(text string) []string {
	var out []string
	start := 0
	for i := 1; i < len(text); i++ {
		if text[i] == ' ' {
			out = append(out, text[start:i])
			start = i
		}
	}
	return append(out, text[start:])
}

// buildShaped renders answer a for model. promptTokens is usage.prompt_tokens;
// completion_tokens is the number of stream pieces.
func buildShaped(a Answer, model string, promptTokens int) *shaped {
	var (
		content   *string
		toolCalls []toolCallJSON
		parts     []string
		finish    = "stop"
	)
	switch a {
	case AnswerShort:
		s := shortContent
		content, parts = &s, pieces(s)
	case AnswerLong:
		s := longContent
		content, parts = &s, pieces(s)
	case AnswerTool:
		toolCalls = []toolCallJSON{{ID: toolCallID, Type: "function", Function: functionJSON{Name: toolName, Arguments: toolArguments}}}
		parts = argumentPieces(toolArguments)
		finish = "tool_calls"
	default:
		panic("buildShaped: not a realistic answer: " + string(a))
	}
	usage := &usageJSON{PromptTokens: promptTokens, CompletionTokens: len(parts), TotalTokens: promptTokens + len(parts)}
	full := completionJSON{
		ID: realisticID, Object: "chat.completion", Created: created, Model: model,
		Choices: []messageChoice{{
			Message:  messageJSON{Role: "assistant", Content: content, ToolCalls: toolCalls, Refusal: jsonNull, Annotations: []any{}},
			Logprobs: jsonNull, FinishReason: finish,
		}},
		Usage: usage, ServiceTier: serviceTier, SystemFingerprint: systemFingerprint,
	}
	s := &shaped{completion: len(parts), json: mustIndent(full)}
	full.Usage = nil
	s.jsonNoUsage = mustIndent(full)

	// The deltas: the role first (with the tool call's id and name), then
	// one piece each, then the finish reason.
	zero := 0
	var deltas []deltaJSON
	if a == AnswerTool {
		first := toolCallJSON{Index: &zero, ID: toolCallID, Type: "function", Function: functionJSON{Name: toolName}}
		deltas = append(deltas, deltaJSON{Role: "assistant", Content: jsonNull, ToolCalls: []toolCallJSON{first}, Refusal: jsonNull})
		for _, p := range parts {
			deltas = append(deltas, deltaJSON{ToolCalls: []toolCallJSON{{Index: &zero, Function: functionJSON{Arguments: p}}}})
		}
	} else {
		deltas = append(deltas, deltaJSON{Role: "assistant", Content: json.RawMessage(`""`), Refusal: jsonNull})
		for _, p := range parts {
			deltas = append(deltas, deltaJSON{Content: mustJSON(p)})
		}
	}
	chunk := func(i int, d deltaJSON, finishReason json.RawMessage, withUsage bool) []byte {
		c := chunkJSON{
			ID: realisticID, Object: "chat.completion.chunk", Created: created, Model: model,
			ServiceTier: serviceTier, SystemFingerprint: systemFingerprint,
			Choices:     []deltaChoice{{Delta: d, Logprobs: jsonNull, FinishReason: finishReason}},
			Obfuscation: obfuscation(i),
		}
		if withUsage {
			c.Usage = jsonNull
		}
		return sseEvent(c)
	}
	for _, withUsage := range []bool{false, true} {
		var evs [][]byte
		for i, d := range deltas {
			evs = append(evs, chunk(i, d, jsonNull, withUsage))
		}
		evs = append(evs, chunk(len(deltas), deltaJSON{}, mustJSON(finish), withUsage))
		if withUsage {
			evs = append(evs, sseEvent(chunkJSON{
				ID: realisticID, Object: "chat.completion.chunk", Created: created, Model: model,
				ServiceTier: serviceTier, SystemFingerprint: systemFingerprint,
				Choices: []deltaChoice{}, Usage: mustJSON(usage), Obfuscation: obfuscation(len(deltas) + 1),
			}))
			s.eventsWithUsage = evs
		} else {
			s.events = evs
		}
	}
	return s
}

// argumentPieces splits tool call arguments as OpenAI streams them: a few
// characters at a time.
func argumentPieces(args string) []string {
	var out []string
	for len(args) > 0 {
		n := min(4, len(args))
		out = append(out, args[:n])
		args = args[n:]
	}
	return out
}

// obfuscation is the random padding OpenAI adds to each stream chunk (so
// that chunk sizes do not reveal token lengths); fixed here per index.
func obfuscation(i int) string {
	const alphabet = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
	n := 2 + i*7%11
	b := make([]byte, n)
	for j := range b {
		b[j] = alphabet[(i*13+j*5)%len(alphabet)]
	}
	return string(b)
}

// mustIndent renders v as OpenAI renders non-streamed answers: indented by
// two spaces.
func mustIndent(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return b
}
