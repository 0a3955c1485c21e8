package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
)

// refRequest is what parseInferenceRef reports.
type refRequest struct {
	Endpoint           string
	Model              string
	Stream             bool
	MaxTokens          int64
	PromptTokens       int64
	ClientIncludeUsage bool
	choices            int64
	maxTokensKeys      []string
	fields             map[string]json.RawMessage
}

// parseInferenceRef is the previous parseInference (encoding/json into
// maps), kept as the reference the byte-level parser must agree with.
func parseInferenceRef(body []byte, endpoint string) (*refRequest, *gatewayError) {
	ir := &refRequest{Endpoint: endpoint, choices: 1}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, errBadRequest("request body is required")
	}
	if err := json.Unmarshal(body, &ir.fields); err != nil || ir.fields == nil {
		return nil, errBadRequest("request body must be a JSON object")
	}
	f := ir.fields

	model, ok := f["model"]
	if !ok || isNull(model) {
		return nil, errBadRequest("'model' is required")
	}
	if err := json.Unmarshal(model, &ir.Model); err != nil {
		return nil, errBadRequest("'model' must be a string")
	}
	if ir.Model == "" {
		return nil, errBadRequest("'model' must not be empty")
	}

	var tc textCounter
	var fixed int64 // tokens counted exactly or by fixed estimates
	switch endpoint {
	case endpointChat:
		msgs, ok := f["messages"]
		if !ok || isNull(msgs) {
			return nil, errBadRequest("'messages' is required")
		}
		n, gerr := countMessagesRef(msgs, &tc)
		if gerr != nil {
			return nil, gerr
		}
		fixed += n + replyPrimingTokens
		for _, k := range []string{"tools", "functions", "response_format"} {
			if v, ok := f[k]; ok && !isNull(v) {
				tc.addBytes(v)
			}
		}
	case endpointCompletions:
		if p, ok := f["prompt"]; ok && !isNull(p) {
			n, gerr := countPromptInput(p, "prompt", &tc)
			if gerr != nil {
				return nil, gerr
			}
			fixed += n
		}
		if s, ok := f["suffix"]; ok && !isNull(s) {
			var str string
			if json.Unmarshal(s, &str) != nil {
				return nil, errBadRequest("'suffix' must be a string")
			}
			tc.addString(str)
		}
	case endpointEmbeddings:
		in, ok := f["input"]
		if !ok || isNull(in) {
			return nil, errBadRequest("'input' is required")
		}
		n, gerr := countPromptInput(in, "input", &tc)
		if gerr != nil {
			return nil, gerr
		}
		fixed += n
	default:
		return nil, errBadRequest("unsupported endpoint")
	}
	ir.PromptTokens = tc.tokens() + fixed

	if endpoint == endpointEmbeddings {
		return ir, nil
	}

	for _, k := range []string{"max_tokens", "max_completion_tokens"} {
		v, ok := f[k]
		if !ok || isNull(v) {
			continue
		}
		n, err := parseNonNegInt(v)
		if err != nil || n < 1 {
			return nil, errBadRequest(fmt.Sprintf("'%s' must be an integer of at least 1", k))
		}
		if n > maxTokensLimit {
			return nil, errBadRequest(fmt.Sprintf("'%s' is too large", k))
		}
		ir.maxTokensKeys = append(ir.maxTokensKeys, k)
		ir.MaxTokens = max(ir.MaxTokens, n)
	}
	for _, k := range []string{"n", "best_of"} {
		v, ok := f[k]
		if !ok || isNull(v) {
			continue
		}
		n, err := parseNonNegInt(v)
		if err != nil || n < 1 || n > maxChoices {
			return nil, errBadRequest(fmt.Sprintf("'%s' must be an integer between 1 and %d", k, maxChoices))
		}
		ir.choices = max(ir.choices, n)
	}
	if v, ok := f["stream"]; ok && !isNull(v) {
		if json.Unmarshal(v, &ir.Stream) != nil {
			return nil, errBadRequest("'stream' must be a boolean")
		}
	}
	if v, ok := f["stream_options"]; ok && !isNull(v) {
		var so map[string]json.RawMessage
		if json.Unmarshal(v, &so) != nil {
			return nil, errBadRequest("'stream_options' must be an object")
		}
		if iu, ok := so["include_usage"]; ok && !isNull(iu) {
			if json.Unmarshal(iu, &ir.ClientIncludeUsage) != nil {
				return nil, errBadRequest("'stream_options.include_usage' must be a boolean")
			}
		}
	}
	return ir, nil
}

// countMessages validates a chat messages array and counts its text into tc;
// it returns the fixed-estimate tokens (per-message overhead, images).
func countMessagesRef(raw json.RawMessage, tc *textCounter) (int64, *gatewayError) {
	var msgs []map[string]json.RawMessage
	isNil := func(m map[string]json.RawMessage) bool { return m == nil }
	if json.Unmarshal(raw, &msgs) != nil || len(msgs) == 0 || slices.ContainsFunc(msgs, isNil) {
		return 0, errBadRequest("'messages' must be a non-empty array of message objects")
	}
	present := func(m map[string]json.RawMessage, k string) bool {
		v, ok := m[k]
		return ok && !isNull(v)
	}
	var fixed int64
	for i, m := range msgs {
		fixed += msgOverheadTokens
		var role string
		if !present(m, "role") || json.Unmarshal(m["role"], &role) != nil {
			return 0, errBadRequest(fmt.Sprintf("'messages[%d].role' must be a string", i))
		}
		if present(m, "content") {
			n, gerr := countContentRef(m["content"], i, tc)
			if gerr != nil {
				return 0, gerr
			}
			fixed += n
		} else if role != "assistant" || !(present(m, "tool_calls") || present(m, "function_call")) {
			return 0, errBadRequest(fmt.Sprintf("'messages[%d].content' is required (an assistant turn may send tool_calls instead)", i))
		}
		for _, k := range []string{"name", "tool_calls", "function_call"} {
			if present(m, k) {
				tc.addBytes(m[k])
			}
		}
	}
	return fixed, nil
}

// countContent counts a message's content: a string or an array of parts.
// Text parts are counted; image parts add imagePartTokens; audio and file
// parts add filePartTokens.
func countContentRef(raw json.RawMessage, i int, tc *textCounter) (int64, *gatewayError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0, errBadRequest(fmt.Sprintf("'messages[%d].content' is not a valid string", i))
		}
		tc.addString(s)
		return 0, nil
	}
	var parts []struct {
		Type    string  `json:"type"`
		Text    *string `json:"text"`
		Refusal *string `json:"refusal"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return 0, errBadRequest(fmt.Sprintf("'messages[%d].content' must be a string or an array of content parts", i))
	}
	var fixed int64
	for j, p := range parts {
		switch p.Type {
		case "text":
			if p.Text == nil {
				return 0, errBadRequest(fmt.Sprintf("'messages[%d].content[%d].text' is required", i, j))
			}
			tc.addString(*p.Text)
		case "refusal":
			if p.Refusal != nil {
				tc.addString(*p.Refusal)
			}
		case "image_url", "image", "input_image":
			fixed += imagePartTokens
		case "":
			return 0, errBadRequest(fmt.Sprintf("'messages[%d].content[%d].type' is required", i, j))
		default: // input_audio, file, and future part types
			fixed += filePartTokens
		}
	}
	return fixed, nil
}
