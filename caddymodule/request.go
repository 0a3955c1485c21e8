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
	endpointMessages    = "messages"  // Anthropic Messages API (messages.go)
	endpointResponses   = "responses" // OpenAI Responses API (responses.go)
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
// request to meter it. The body is kept as raw bytes: only the fields the
// gateway changes (the cap, stream_options) are rewritten, by splicing new
// values into the client's bytes; every other byte goes upstream untouched.
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
	// capKeys are the cap fields the client sent non-null (capMaxTokens,
	// capMaxCompletionTokens bits).
	capKeys uint8
	raw     []byte
	// spans are the values of every occurrence of the top-level fields the
	// gateway may rewrite (with duplicate keys, every occurrence is
	// rewritten, so the upstream sees the new value whichever it reads);
	// end is the offset of the object's closing brace, where absent fields
	// are inserted.
	spans    []fieldSpan
	spansBuf [4]fieldSpan
	end      int

	// rewrites, applied by body()
	newCap   int64
	capField uint8 // the cap fields to set (capKeys, or the one to add)
	usageOn  bool  // set stream_options.include_usage=true
	dirty    bool
	body0    io.ReadCloser // the reader readInference installed

	// reader is body0 (the client's bytes) and upCL backs the
	// Content-Length value of the upstream request's own header, so that
	// neither is a separate allocation. (The metered request holding ir
	// is just within a malloc size class: mind its size when adding.)
	reader bodyReader
	upCL   [1]string
}

// Rewritable fields.
const (
	capMaxTokens           = 1 << 0
	capMaxCompletionTokens = 1 << 1
	fieldStreamOptions     = 1 << 2
	capMaxOutputTokens     = 1 << 3 // the Responses API's cap
)

// fieldSpan is the value of one occurrence of a rewritable field.
type fieldSpan struct {
	field      uint8
	start, end int
}

// readInferenceInto is readInference parsing into ir, which must be zero.
func readInferenceInto(ir *inferenceRequest, w http.ResponseWriter, r *http.Request, endpoint string, maxBody int64) (*inferenceRequest, *gatewayError) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, errBadRequest("request body is required")
	}
	body, err := readBody(w, r, maxBody)
	_ = r.Body.Close()
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large",
				"request body exceeds "+strconv.FormatInt(maxBody, 10)+" bytes")
		}
		return nil, errBadRequest("could not read the request body")
	}
	// Whatever happens next, the body stays readable with the same bytes.
	ir.reader.Reset(body)
	setBody(r, body, &ir.reader, nil)
	ir, gerr := parseInferenceInto(ir, body, endpoint)
	if gerr != nil {
		return nil, gerr
	}
	ir.body0 = r.Body
	return ir, nil
}

// readBody reads the request body, at most maxBody bytes. A body of known
// length is read into a buffer of exactly that size.
func readBody(w http.ResponseWriter, r *http.Request, maxBody int64) ([]byte, error) {
	if n := r.ContentLength; n > 0 && n <= maxBody {
		// The server ends the body after Content-Length bytes.
		body := make([]byte, n)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, err
		}
		return body, nil
	} else if n > maxBody {
		return nil, &http.MaxBytesError{Limit: maxBody}
	}
	return io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
}

// parseInferenceInto is parseInference filling ir, which must be zero.
func parseInferenceInto(ir *inferenceRequest, body []byte, endpoint string) (*inferenceRequest, *gatewayError) {
	ir.Endpoint, ir.raw, ir.choices = endpoint, body, 1
	ir.spans = ir.spansBuf[:0]
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, errBadRequest("request body is required")
	}
	start := skipSpace(body, 0)
	if body[start] != '{' || !validJSON(body) {
		return nil, errBadRequest("request body must be a JSON object")
	}
	switch endpoint {
	case endpointMessages:
		return parseMessages(ir, body, start)
	case endpointResponses:
		return parseResponses(ir, body, start)
	}
	// The last occurrence of each field wins, as in encoding/json.
	var model, messages, tools, functions, responseFormat, prompt, suffix, input,
		maxTok, maxCompl, nVal, bestOf, stream, streamOpts []byte
	it := objIter{b: body, i: start}
	for it.next() {
		k, v := it.key, it.val
		var dst *[]byte
		var field uint8
		switch {
		case keyIs(k, "model"):
			dst = &model
		case keyIs(k, "messages"):
			dst = &messages
		case keyIs(k, "max_tokens"):
			dst, field = &maxTok, capMaxTokens
		case keyIs(k, "max_completion_tokens"):
			dst, field = &maxCompl, capMaxCompletionTokens
		case keyIs(k, "stream"):
			dst = &stream
		case keyIs(k, "stream_options"):
			dst, field = &streamOpts, fieldStreamOptions
		case keyIs(k, "n"):
			dst = &nVal
		case keyIs(k, "best_of"):
			dst = &bestOf
		case keyIs(k, "tools"):
			dst = &tools
		case keyIs(k, "functions"):
			dst = &functions
		case keyIs(k, "response_format"):
			dst = &responseFormat
		case keyIs(k, "prompt"):
			dst = &prompt
		case keyIs(k, "suffix"):
			dst = &suffix
		case keyIs(k, "input"):
			dst = &input
		default:
			continue
		}
		*dst = v
		if field != 0 {
			ir.spans = append(ir.spans, fieldSpan{field: field, start: it.valStart, end: it.valStart + len(v)})
		}
	}
	ir.end = it.i

	var gerr *gatewayError
	if ir.Model, gerr = parseModel(model); gerr != nil {
		return nil, gerr
	}

	var tc textCounter
	var fixed int64 // tokens counted exactly or by fixed estimates
	switch endpoint {
	case endpointChat:
		if messages == nil || isNull(messages) {
			return nil, errBadRequest("'messages' is required")
		}
		n, gerr := countMessages(messages, &tc)
		if gerr != nil {
			return nil, gerr
		}
		fixed += n + replyPrimingTokens
		for _, v := range [...][]byte{tools, functions, responseFormat} {
			if v != nil && !isNull(v) {
				tc.addBytes(v)
			}
		}
	case endpointCompletions:
		if prompt != nil && !isNull(prompt) {
			n, gerr := countPromptInput(prompt, "prompt", &tc)
			if gerr != nil {
				return nil, gerr
			}
			fixed += n
		}
		if suffix != nil && !isNull(suffix) {
			if suffix[0] != '"' {
				return nil, errBadRequest("'suffix' must be a string")
			}
			countJSONString(suffix[1:len(suffix)-1], &tc)
		}
	case endpointEmbeddings:
		if input == nil || isNull(input) {
			return nil, errBadRequest("'input' is required")
		}
		n, gerr := countPromptInput(input, "input", &tc)
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

	for _, c := range [...]struct {
		name string
		v    []byte
		bit  uint8
	}{{"max_tokens", maxTok, capMaxTokens}, {"max_completion_tokens", maxCompl, capMaxCompletionTokens}} {
		n, ok, gerr := parseCap(c.name, c.v)
		if gerr != nil {
			return nil, gerr
		}
		if !ok {
			continue
		}
		ir.capKeys |= c.bit
		ir.MaxTokens = max(ir.MaxTokens, n)
	}
	for _, c := range [...]struct {
		name string
		v    []byte
	}{{"n", nVal}, {"best_of", bestOf}} {
		if c.v == nil || isNull(c.v) {
			continue
		}
		n, err := parseNonNegInt(c.v)
		if err != nil || n < 1 || n > maxChoices {
			return nil, errBadRequest("'" + c.name + "' must be an integer between 1 and " + strconv.Itoa(maxChoices))
		}
		ir.choices = max(ir.choices, n)
	}
	if ir.Stream, gerr = parseStream(stream); gerr != nil {
		return nil, gerr
	}
	if streamOpts != nil && !isNull(streamOpts) {
		if streamOpts[0] != '{' {
			return nil, errBadRequest("'stream_options' must be an object")
		}
		var iu []byte
		so := objIter{b: streamOpts}
		for so.next() {
			if keyIs(so.key, "include_usage") {
				iu = so.val
			}
		}
		if iu != nil {
			switch string(iu) {
			case "true":
				ir.ClientIncludeUsage = true
			case "false", "null":
			default:
				return nil, errBadRequest("'stream_options.include_usage' must be a boolean")
			}
		}
	}
	return ir, nil
}

// fieldPick asks parseCommon for the value of a top-level field.
type fieldPick struct {
	name string
	dst  *[]byte
}

// parseCommon walks the top-level members of the JSON object at
// body[start] for the requests whose only rewritten field is their cap
// (capName, recorded as capBit): it sets ir's model and stream, returns
// the cap (ok false when absent), and stores the picked fields' values
// (the last occurrence wins, as in encoding/json).
func (ir *inferenceRequest) parseCommon(body []byte, start int, capName string, capBit uint8, picks ...fieldPick) (capVal int64, ok bool, gerr *gatewayError) {
	var model, capRaw, stream []byte
	it := objIter{b: body, i: start}
	for it.next() {
		k, v := it.key, it.val
		switch {
		case keyIs(k, "model"):
			model = v
		case keyIs(k, capName):
			capRaw = v
			ir.spans = append(ir.spans, fieldSpan{field: capBit, start: it.valStart, end: it.valStart + len(v)})
		case keyIs(k, "stream"):
			stream = v
		default:
			for _, p := range picks {
				if keyIs(k, p.name) {
					*p.dst = v
				}
			}
		}
	}
	ir.end = it.i
	if ir.Model, gerr = parseModel(model); gerr != nil {
		return 0, false, gerr
	}
	if capVal, ok, gerr = parseCap(capName, capRaw); gerr != nil {
		return 0, false, gerr
	}
	if ir.Stream, gerr = parseStream(stream); gerr != nil {
		return 0, false, gerr
	}
	return capVal, ok, nil
}

// parseModel validates the model field.
func parseModel(model []byte) (string, *gatewayError) {
	if model == nil || isNull(model) {
		return "", errBadRequest("'model' is required")
	}
	m, ok := decodeString(model)
	if !ok {
		return "", errBadRequest("'model' must be a string")
	}
	if m == "" {
		return "", errBadRequest("'model' must not be empty")
	}
	return m, nil
}

// parseStream validates the stream field (absent or null: false).
func parseStream(stream []byte) (bool, *gatewayError) {
	if stream == nil || isNull(stream) {
		return false, nil
	}
	switch string(stream) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, errBadRequest("'stream' must be a boolean")
}

// parseCap validates a completion cap field: an integer from 1 to
// maxTokensLimit; ok is false when absent or null.
func parseCap(name string, v []byte) (n int64, ok bool, gerr *gatewayError) {
	if v == nil || isNull(v) {
		return 0, false, nil
	}
	n, err := parseNonNegInt(v)
	if err != nil || n < 1 {
		return 0, false, errBadRequest("'" + name + "' must be an integer of at least 1")
	}
	if n > maxTokensLimit {
		return 0, false, errBadRequest("'" + name + "' is too large")
	}
	return n, true, nil
}

// countMessages validates a chat messages array and counts its text into tc;
// it returns the fixed-estimate tokens (per-message overhead, images). The
// array must hold at least one message; each is an object with a string
// role and a content, which an assistant turn may replace by tool_calls
// (or the legacy function_call).
func countMessages(raw []byte, tc *textCounter) (int64, *gatewayError) {
	errShape := func() *gatewayError { return errBadRequest("'messages' must be a non-empty array of message objects") }
	if raw[0] != '[' {
		return 0, errShape()
	}
	// One pass: a message is looked at as it comes; an element that is
	// not an object is reported before any message's own error, as if
	// every element had been checked first.
	var fixed int64
	i := 0
	for it := (arrIter{b: raw}); it.next(); i++ {
		if it.val[0] != '{' {
			return 0, errShape()
		}
		n, gerr := countMessage(it.val, i, tc)
		if gerr != nil {
			for it.next() {
				if it.val[0] != '{' {
					return 0, errShape()
				}
			}
			return 0, gerr
		}
		fixed += msgOverheadTokens + n
	}
	if i == 0 {
		return 0, errShape()
	}
	return fixed, nil
}

// countMessage validates message i (an object) and counts its text into
// tc; it returns its fixed-estimate tokens (images) beyond the per-message
// overhead.
func countMessage(msg []byte, i int, tc *textCounter) (int64, *gatewayError) {
	var role, content, name, toolCalls, functionCall []byte
	for m := (objIter{b: msg}); m.next(); {
		switch {
		case keyIs(m.key, "role"):
			role = m.val
		case keyIs(m.key, "content"):
			content = m.val
		case keyIs(m.key, "name"):
			name = m.val
		case keyIs(m.key, "tool_calls"):
			toolCalls = m.val
		case keyIs(m.key, "function_call"):
			functionCall = m.val
		}
	}
	at := func() string { return "'messages[" + strconv.Itoa(i) + "]" } // only for an error
	if role == nil || role[0] != '"' {
		return 0, errBadRequest(at() + ".role' must be a string")
	}
	var fixed int64
	if content != nil && !isNull(content) {
		n, gerr := countContent(content, i, tc)
		if gerr != nil {
			return 0, gerr
		}
		fixed = n
	} else if r, _ := decodeString(role); r != "assistant" || (isAbsent(toolCalls) && isAbsent(functionCall)) {
		return 0, errBadRequest(at() + ".content' is required (an assistant turn may send tool_calls instead)")
	}
	for _, v := range [...][]byte{name, toolCalls, functionCall} {
		if !isAbsent(v) {
			tc.addBytes(v)
		}
	}
	return fixed, nil
}

// isAbsent reports whether a field's value is missing or null.
func isAbsent(v []byte) bool { return v == nil || isNull(v) }

// contentPart is what countContent reads of a content part. Fields match
// case-insensitively, as encoding/json matches struct fields.
type contentPart struct {
	typ     string
	text    []byte // the string literal, nil when absent or null
	refusal []byte
}

// decodePart reads a content part (an object or null); it reports false
// when a field has the wrong type.
func decodePart(v []byte) (p contentPart, ok bool) {
	if v[0] != '{' {
		return p, true // null: an empty part
	}
	for it := (objIter{b: v}); it.next(); {
		val := it.val
		var dst *[]byte
		switch {
		case keyFold(it.key, "type"):
			switch {
			case val[0] == '"':
				s, _ := decodeString(val)
				p.typ = s
			case isNull(val): // leaves the field as it was
			default:
				return p, false
			}
			continue
		case keyFold(it.key, "text"):
			dst = &p.text
		case keyFold(it.key, "refusal"):
			dst = &p.refusal
		default:
			continue
		}
		switch {
		case val[0] == '"':
			*dst = val
		case isNull(val):
			*dst = nil
		default:
			return p, false
		}
	}
	return p, true
}

// countContent counts a message's content: a string or an array of parts.
// Text parts are counted; image parts add imagePartTokens; audio and file
// parts add filePartTokens.
func countContent(raw []byte, i int, tc *textCounter) (int64, *gatewayError) {
	if raw[0] == '"' {
		countJSONString(raw[1:len(raw)-1], tc)
		return 0, nil
	}
	errShape := func() *gatewayError {
		return errBadRequest("'messages[" + strconv.Itoa(i) + "].content' must be a string or an array of content parts")
	}
	if raw[0] != '[' {
		return 0, errShape()
	}
	for it := (arrIter{b: raw}); it.next(); {
		if c := it.val[0]; c != '{' && c != 'n' {
			return 0, errShape()
		}
		if _, ok := decodePart(it.val); !ok {
			return 0, errShape()
		}
	}
	var fixed int64
	j := 0
	for it := (arrIter{b: raw}); it.next(); j++ {
		p, _ := decodePart(it.val)
		switch p.typ {
		case "text":
			if p.text == nil {
				return 0, errBadRequest("'messages[" + strconv.Itoa(i) + "].content[" + strconv.Itoa(j) + "].text' is required")
			}
			countJSONString(p.text[1:len(p.text)-1], tc)
		case "refusal":
			if p.refusal != nil {
				countJSONString(p.refusal[1:len(p.refusal)-1], tc)
			}
		case "image_url", "image", "input_image":
			fixed += imagePartTokens
		case "":
			return 0, errBadRequest("'messages[" + strconv.Itoa(i) + "].content[" + strconv.Itoa(j) + "].type' is required")
		default: // input_audio, file, and future part types
			fixed += filePartTokens
		}
	}
	return fixed, nil
}

// countPromptInput counts a completions prompt or an embeddings input: a
// string, an array of strings, an array of token ids, or an array of arrays
// of token ids. Token ids count exactly; it returns their number.
func countPromptInput(raw []byte, name string, tc *textCounter) (int64, *gatewayError) {
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
	ir.newCap = n
	ir.capField = ir.capKeys
	if ir.capField == 0 {
		ir.capField = capMaxTokens
		switch {
		case ir.Endpoint == endpointResponses:
			ir.capField = capMaxOutputTokens
		case key == maxTokensFieldCompletionOnly:
			ir.capField = capMaxCompletionTokens
		}
	}
	ir.dirty = true
}

// injectIncludeUsage sets stream_options.include_usage=true on a streaming
// request whose client did not ask for usage, keeping any other
// stream_options. It reports whether it changed the request.
func (ir *inferenceRequest) injectIncludeUsage() bool {
	if !ir.Stream || ir.ClientIncludeUsage || ir.Endpoint == endpointMessages || ir.Endpoint == endpointResponses {
		return false // their streams always end with the usage
	}
	ir.usageOn = true
	ir.dirty = true
	return true
}

// body returns the request body to send upstream: the client's bytes when
// nothing was rewritten, else the client's bytes with the new values
// spliced in (every occurrence of a rewritten field replaced; a field the
// client did not send added before the closing brace).
func (ir *inferenceRequest) body() []byte {
	if !ir.dirty {
		return ir.raw
	}
	raw := ir.raw
	out := make([]byte, 0, len(raw)+64)
	pos := 0
	var seen uint8
	for _, sp := range ir.spans { // in body order
		switch {
		case sp.field&ir.capField != 0:
			out = append(out, raw[pos:sp.start]...)
			out = strconv.AppendInt(out, ir.newCap, 10)
		case sp.field == fieldStreamOptions && ir.usageOn:
			out = append(out, raw[pos:sp.start]...)
			out = ir.appendStreamOptionsWithUsage(out)
		default:
			continue
		}
		seen |= sp.field
		pos = sp.end
	}
	out = append(out, raw[pos:ir.end]...)
	empty := skipSpace(raw, skipSpace(raw, 0)+1) == ir.end
	add := func(name string) {
		if !empty {
			out = append(out, ',')
		}
		empty = false
		out = append(out, '"')
		out = append(out, name...)
		out = append(out, '"', ':')
	}
	for _, c := range [...]struct {
		bit  uint8
		name string
	}{{capMaxTokens, "max_tokens"}, {capMaxCompletionTokens, "max_completion_tokens"}, {capMaxOutputTokens, "max_output_tokens"}} {
		if ir.capField&c.bit != 0 && seen&c.bit == 0 {
			add(c.name)
			out = strconv.AppendInt(out, ir.newCap, 10)
		}
	}
	if ir.usageOn && seen&fieldStreamOptions == 0 {
		add("stream_options")
		out = ir.appendStreamOptionsWithUsage(out)
	}
	return append(out, raw[ir.end:]...)
}

// appendStreamOptionsWithUsage appends the client's last stream_options
// object with include_usage set to true (every occurrence of it), or a new
// object.
func (ir *inferenceRequest) appendStreamOptionsWithUsage(out []byte) []byte {
	var last []byte
	for _, sp := range ir.spans {
		if sp.field == fieldStreamOptions {
			last = ir.raw[sp.start:sp.end]
		}
	}
	if last == nil || last[0] != '{' {
		return append(out, `{"include_usage":true}`...)
	}
	pos, found := 0, false
	it := objIter{b: last}
	for it.next() {
		if keyIs(it.key, "include_usage") {
			out = append(out, last[pos:it.valStart]...)
			out = append(out, "true"...)
			pos, found = it.valStart+len(it.val), true
		}
	}
	if found {
		return append(out, last[pos:]...)
	}
	out = append(out, last[:it.i]...)
	if skipSpace(last, 1) != it.i {
		out = append(out, ',')
	}
	out = append(out, `"include_usage":true`...)
	return append(out, last[it.i:]...)
}

// apply installs the (possibly rewritten) body on r; an unchanged body
// that r still carries unread is left as it is. r's header must be its own
// (not the client request's): its Content-Length value is backed by ir.
func (ir *inferenceRequest) apply(r *http.Request) {
	if !ir.rewritesBody(r) {
		return
	}
	b := ir.body()
	setBody(r, b, newBodyReader(b), &ir.upCL)
}

// rewritesBody reports whether apply(r) replaces r's body (and may set
// its Content-Length header).
func (ir *inferenceRequest) rewritesBody(r *http.Request) bool {
	return ir.dirty || ir.body0 == nil || r.Body != ir.body0 || ir.body0.(*bodyReader).Len() != len(ir.raw)
}

// bodyReader is a request body over bytes.
type bodyReader struct{ bytes.Reader }

func (*bodyReader) Close() error { return nil }

func newBodyReader(b []byte) *bodyReader {
	br := new(bodyReader)
	br.Reset(b)
	return br
}

// setBody makes b the request body, read through br (a reader over b), and
// keeps every description of the body consistent with it (caddy-notes §2,
// §5.8): Body, ContentLength, the Content-Length header, GetBody, and no
// chunked transfer encoding. When cl is not nil, it backs the
// Content-Length value if that has to change.
func setBody(r *http.Request, b []byte, br *bodyReader, cl *[1]string) {
	r.Body = br
	if v := r.Header["Content-Length"]; len(v) != 1 || !isDecimal(v[0], int64(len(b))) {
		n := strconv.Itoa(len(b))
		if cl != nil {
			cl[0] = n
			r.Header["Content-Length"] = cl[:] // canonical key, as Set stores it
		} else {
			r.Header.Set("Content-Length", n)
		}
	}
	r.ContentLength = int64(len(b))
	r.GetBody = func() (io.ReadCloser, error) { return newBodyReader(b), nil }
	r.TransferEncoding = nil
}

// isDecimal reports whether s is exactly the decimal form of n >= 0.
func isDecimal(s string, n int64) bool {
	var buf [20]byte
	return s == string(strconv.AppendInt(buf[:0], n, 10))
}

// isNull reports whether raw is the JSON null literal.
func isNull(raw []byte) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}

// parseNonNegInt parses a JSON number that must be a non-negative integer
// (no fraction or exponent).
func parseNonNegInt(raw []byte) (int64, error) {
	n, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, errors.New("negative")
	}
	return n, nil
}
