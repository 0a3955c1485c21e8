package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// Inference endpoints the gateway meters.
const (
	endpointChat        = "chat"
	endpointCompletions = "completions"
	endpointEmbeddings  = "embeddings"
)

// Request validation bounds.
const (
	// maxTokensLimit bounds max_tokens so that cost arithmetic (tokens ×
	// per-1K price × choices) cannot overflow int64.
	maxTokensLimit = 1<<31 - 1
	// maxChoices bounds n / best_of (OpenAI allows up to 128).
	maxChoices = 128
)

// inferenceRequest is what the gateway needs to know about an inference
// request to meter it. The body is kept as raw JSON: only the fields the
// gateway changes (max_tokens, stream_options) are rewritten, every other
// field goes upstream byte for byte (modulo key order when rewritten).
type inferenceRequest struct {
	Endpoint string // endpointChat, endpointCompletions or endpointEmbeddings
	Model    string
	Stream   bool
	// MaxTokens is the client's completion cap per choice (max_tokens or
	// max_completion_tokens, the larger when both are sent); 0 means absent.
	MaxTokens int64
	// PromptTokens is the estimate of the prompt (see estimate.go).
	PromptTokens int64
	// ClientIncludeUsage is stream_options.include_usage as the client sent it.
	ClientIncludeUsage bool

	// choices is how many completions the upstream generates (n, or
	// best_of for legacy completions when larger); at least 1.
	choices int64
	// maxTokensKeys lists the cap fields the client sent.
	maxTokensKeys []string
	raw           []byte
	fields        map[string]json.RawMessage
	dirty         bool
}

// readInference reads and validates the body of an inference request,
// bounded by maxBody bytes, and leaves r.Body readable again with the same
// bytes. Malformed JSON and validation failures give a 400 in OpenAI's
// invalid_request_error shape; a body over maxBody gives 413.
func readInference(w http.ResponseWriter, r *http.Request, endpoint string, maxBody int64) (*inferenceRequest, *gatewayError) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, errBadRequest("request body is required")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	_ = r.Body.Close()
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large",
				fmt.Sprintf("request body exceeds %d bytes", maxBody))
		}
		return nil, errBadRequest("could not read the request body")
	}
	// Whatever happens next, the body stays readable with the same bytes.
	setBody(r, body)
	ir, gerr := parseInference(body, endpoint)
	if gerr != nil {
		return nil, gerr
	}
	return ir, nil
}

// parseInference validates body for endpoint; it is the pure core of
// readInference.
func parseInference(body []byte, endpoint string) (*inferenceRequest, *gatewayError) {
	ir := &inferenceRequest{Endpoint: endpoint, raw: body, choices: 1}
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
		n, gerr := countMessages(msgs, &tc)
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
		if err != nil {
			return nil, errBadRequest(fmt.Sprintf("'%s' must be a non-negative integer", k))
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
func countMessages(raw json.RawMessage, tc *textCounter) (int64, *gatewayError) {
	var msgs []map[string]json.RawMessage
	if json.Unmarshal(raw, &msgs) != nil {
		return 0, errBadRequest("'messages' must be an array of message objects")
	}
	var fixed int64
	for i, m := range msgs {
		if m == nil {
			return 0, errBadRequest(fmt.Sprintf("'messages[%d]' must be an object", i))
		}
		fixed += msgOverheadTokens
		if role, ok := m["role"]; ok {
			var s string
			if json.Unmarshal(role, &s) != nil {
				return 0, errBadRequest(fmt.Sprintf("'messages[%d].role' must be a string", i))
			}
		}
		if c, ok := m["content"]; ok && !isNull(c) {
			n, gerr := countContent(c, i, tc)
			if gerr != nil {
				return 0, gerr
			}
			fixed += n
		}
		for _, k := range []string{"name", "tool_calls", "function_call"} {
			if v, ok := m[k]; ok && !isNull(v) {
				tc.addBytes(v)
			}
		}
	}
	return fixed, nil
}

// countContent counts a message's content: a string or an array of parts.
// Text parts are counted; image parts add imagePartTokens; audio and file
// parts add filePartTokens.
func countContent(raw json.RawMessage, i int, tc *textCounter) (int64, *gatewayError) {
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

// countPromptInput counts a completions prompt or an embeddings input: a
// string, an array of strings, an array of token ids, or an array of arrays
// of token ids. Token ids count exactly; it returns their number.
func countPromptInput(raw json.RawMessage, name string, tc *textCounter) (int64, *gatewayError) {
	raw = bytes.TrimSpace(raw)
	bad := errBadRequest(fmt.Sprintf("'%s' must be a string, an array of strings, or an array of token arrays", name))
	if len(raw) == 0 {
		return 0, bad
	}
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0, bad
		}
		tc.addString(s)
		return 0, nil
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return 0, bad
	}
	var tokens int64
	for _, it := range items {
		it = bytes.TrimSpace(it)
		switch {
		case len(it) > 0 && it[0] == '"':
			var s string
			if json.Unmarshal(it, &s) != nil {
				return 0, bad
			}
			tc.addString(s)
		case len(it) > 0 && it[0] == '[':
			var ids []int64
			if json.Unmarshal(it, &ids) != nil {
				return 0, bad
			}
			tokens += int64(len(ids))
		default:
			if _, err := parseNonNegInt(it); err != nil {
				return 0, bad
			}
			tokens++
		}
	}
	return tokens, nil
}

// setMaxTokens sets the completion cap the upstream sees: every cap field
// the client sent, or key when it sent none.
func (ir *inferenceRequest) setMaxTokens(n int64, key string) {
	v := json.RawMessage(strconv.FormatInt(n, 10))
	if len(ir.maxTokensKeys) == 0 {
		if key == "" {
			key = "max_tokens"
		}
		ir.fields[key] = v
	} else {
		for _, k := range ir.maxTokensKeys {
			ir.fields[k] = v
		}
	}
	ir.dirty = true
}

// injectIncludeUsage sets stream_options.include_usage=true on a streaming
// request whose client did not ask for usage, keeping any other
// stream_options. It reports whether it changed the request.
func (ir *inferenceRequest) injectIncludeUsage() bool {
	if !ir.Stream || ir.ClientIncludeUsage {
		return false
	}
	so := map[string]json.RawMessage{}
	if v, ok := ir.fields["stream_options"]; ok && !isNull(v) {
		_ = json.Unmarshal(v, &so) // validated in parseInference
	}
	so["include_usage"] = json.RawMessage("true")
	b, _ := json.Marshal(so)
	ir.fields["stream_options"] = b
	ir.dirty = true
	return true
}

// body returns the request body to send upstream: the client's bytes when
// nothing was rewritten.
func (ir *inferenceRequest) body() []byte {
	if !ir.dirty {
		return ir.raw
	}
	b, err := json.Marshal(ir.fields)
	if err != nil { // cannot happen: every value is valid JSON
		return ir.raw
	}
	return b
}

// apply installs the (possibly rewritten) body on r.
func (ir *inferenceRequest) apply(r *http.Request) {
	setBody(r, ir.body())
}

// setBody makes b the request body and keeps every description of the body
// consistent with it (caddy-notes §2, §5.8): Body, ContentLength, the
// Content-Length header, GetBody, and no chunked transfer encoding.
func setBody(r *http.Request, b []byte) {
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	r.Header.Set("Content-Length", strconv.Itoa(len(b)))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	r.TransferEncoding = nil
}

// isNull reports whether raw is the JSON null literal.
func isNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}

// parseNonNegInt parses a JSON number that must be a non-negative integer
// (no fraction or exponent).
func parseNonNegInt(raw json.RawMessage) (int64, error) {
	n, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, errors.New("negative")
	}
	return n, nil
}
