package caddymodule

import (
	"strconv"
)

// The Anthropic Messages API (POST /v1/messages), what Claude Code and the
// Anthropic SDKs speak. It is metered like chat: the same admission,
// reservation and settlement; only the request's shape, the usage's shape
// and the error shape differ.
//
// Request: model, max_tokens (required: the API refuses a request without
// it, so the gateway does too, and reserves it as the cap), messages
// (content a string or blocks), system (a string or blocks), tools,
// stream. The prompt estimate counts system, messages and tools.

// parseMessages validates a Messages API request body (a valid JSON object
// starting at body[start]) into ir.
func parseMessages(ir *inferenceRequest, body []byte, start int) (*inferenceRequest, *gatewayError) {
	var messages, system, tools []byte
	n, ok, gerr := ir.parseCommon(body, start, "max_tokens", capMaxTokens,
		fieldPick{"messages", &messages}, fieldPick{"system", &system}, fieldPick{"tools", &tools})
	if gerr != nil {
		return nil, gerr
	}
	if !ok || n < 1 {
		return nil, errBadRequest("'max_tokens' is required and must be at least 1")
	}
	ir.MaxTokens, ir.capKeys = n, capMaxTokens

	var tc textCounter
	fixed := int64(replyPrimingTokens)
	if messages == nil || isNull(messages) {
		return nil, errBadRequest("'messages' is required")
	}
	if messages[0] != '[' {
		return nil, errBadRequest("'messages' must be an array of message objects")
	}
	i := 0
	for it := (arrIter{b: messages}); it.next(); i++ {
		if it.val[0] != '{' {
			return nil, errBadRequest("'messages[" + strconv.Itoa(i) + "]' must be an object")
		}
		fixed += msgOverheadTokens
		var content []byte
		for m := (objIter{b: it.val}); m.next(); {
			if keyIs(m.key, "content") {
				content = m.val
			}
		}
		if content == nil || isNull(content) {
			return nil, errBadRequest("'messages[" + strconv.Itoa(i) + "].content' is required")
		}
		n, ok := countAnthropicContent(content, &tc, 0)
		if !ok {
			return nil, errBadRequest("'messages[" + strconv.Itoa(i) + "].content' must be a string or an array of content blocks")
		}
		fixed += n
	}
	if system != nil && !isNull(system) {
		n, ok := countAnthropicContent(system, &tc, 0)
		if !ok {
			return nil, errBadRequest("'system' must be a string or an array of content blocks")
		}
		fixed += n
	}
	if tools != nil && !isNull(tools) {
		tc.addBytes(tools)
	}
	ir.PromptTokens = tc.tokens() + fixed
	return ir, nil
}

// maxBlockDepth bounds the nesting of tool_result content the estimate
// follows; deeper content is counted as raw bytes.
const maxBlockDepth = 4

// countAnthropicContent counts a message's content, or a system prompt: a
// string or an array of content blocks. Text (and thinking) counts as text;
// an image as imagePartTokens, a document as filePartTokens plus its text;
// tool_use counts its name and input; tool_result its content. Blocks of
// other types count their JSON text. It returns the fixed-estimate tokens
// and false when content is neither a string nor an array of objects.
func countAnthropicContent(content []byte, tc *textCounter, depth int) (int64, bool) {
	switch content[0] {
	case '"':
		countJSONString(content[1:len(content)-1], tc)
		return 0, true
	case '[':
	default:
		return 0, false
	}
	var fixed int64
	for it := (arrIter{b: content}); it.next(); {
		block := it.val
		if block[0] != '{' {
			return 0, false
		}
		var typ string
		var text, inner []byte
		for m := (objIter{b: block}); m.next(); {
			switch {
			case keyIs(m.key, "type"):
				typ, _ = decodeString(m.val)
			case keyIs(m.key, "text"), keyIs(m.key, "thinking"):
				if m.val[0] == '"' {
					text = m.val
				}
			case keyIs(m.key, "content"):
				inner = m.val
			}
		}
		if text != nil {
			countJSONString(text[1:len(text)-1], tc)
		}
		switch typ {
		case "text", "thinking":
		case "image":
			fixed += imagePartTokens
		case "document":
			fixed += filePartTokens
		case "tool_result":
			if inner == nil || isNull(inner) {
				continue
			}
			if depth < maxBlockDepth {
				n, ok := countAnthropicContent(inner, tc, depth+1)
				if !ok {
					return 0, false
				}
				fixed += n
			} else {
				tc.addBytes(inner)
			}
		default: // tool_use, redacted_thinking, server tool blocks, ...
			if text == nil {
				tc.addBytes(block)
			}
		}
	}
	return fixed, true
}
