package caddymodule

import (
	"strconv"
	"strings"
)

// The OpenAI Responses API (POST /v1/responses), what Codex and the newer
// OpenAI SDKs speak, for OpenAI-compatible upstreams that serve it (the
// handler's `responses` option; off, the route is a 404 like any unknown
// one). It is metered like chat.
//
// Request: model, input (a string or an array of items), instructions,
// max_output_tokens (the reservation cap; when absent, the default cap is
// reserved and sent, as for chat), tools, stream. Stored-response fields
// (previous_response_id, store, ...) pass through untouched. Usage:
// usage.input_tokens (cached ones in input_tokens_details.cached_tokens)
// and usage.output_tokens, in the body or in a stream's response.completed
// event.

// parseResponses validates a Responses API request body (a valid JSON
// object starting at body[start]) into ir.
func parseResponses(ir *inferenceRequest, body []byte, start int) (*inferenceRequest, *gatewayError) {
	var input, instructions, tools []byte
	n, ok, gerr := ir.parseCommon(body, start, "max_output_tokens", capMaxOutputTokens,
		fieldPick{"input", &input}, fieldPick{"instructions", &instructions}, fieldPick{"tools", &tools})
	if gerr != nil {
		return nil, gerr
	}
	if ok {
		ir.MaxTokens, ir.capKeys = n, capMaxOutputTokens
	}

	var tc textCounter
	fixed := int64(replyPrimingTokens)
	switch {
	case input == nil || isNull(input):
		if instructions == nil || isNull(instructions) {
			return nil, errBadRequest("'input' is required")
		}
	case input[0] == '"':
		fixed += msgOverheadTokens
		countJSONString(input[1:len(input)-1], &tc)
	case input[0] == '[':
		i := 0
		for it := (arrIter{b: input}); it.next(); i++ {
			n, ok := countResponseItem(it.val, &tc)
			if !ok {
				return nil, errBadRequest("'input[" + strconv.Itoa(i) + "]' must be an input item object")
			}
			fixed += n
		}
	default:
		return nil, errBadRequest("'input' must be a string or an array of input items")
	}
	if instructions != nil && !isNull(instructions) {
		if instructions[0] != '"' {
			return nil, errBadRequest("'instructions' must be a string")
		}
		fixed += msgOverheadTokens
		countJSONString(instructions[1:len(instructions)-1], &tc)
	}
	if tools != nil && !isNull(tools) {
		tc.addBytes(tools)
	}
	ir.PromptTokens = tc.tokens() + fixed
	return ir, nil
}

// countResponseItem counts one input item: a message (content a string or
// parts: text, images as imagePartTokens, files as filePartTokens), or any
// other item (function calls and their outputs, reasoning, ...) by its
// JSON text. It returns the fixed-estimate tokens, and false when the item
// is not an object.
func countResponseItem(item []byte, tc *textCounter) (int64, bool) {
	if item[0] != '{' {
		return 0, false
	}
	var content []byte
	for m := (objIter{b: item}); m.next(); {
		if keyIs(m.key, "content") {
			content = m.val
		}
	}
	fixed := int64(msgOverheadTokens)
	switch {
	case content == nil || isNull(content):
		tc.addBytes(item)
	case content[0] == '"':
		countJSONString(content[1:len(content)-1], tc)
	case content[0] == '[':
		for it := (arrIter{b: content}); it.next(); {
			part := it.val
			if part[0] != '{' {
				tc.addBytes(part)
				continue
			}
			var typ string
			var text []byte
			for m := (objIter{b: part}); m.next(); {
				switch {
				case keyIs(m.key, "type"):
					typ, _ = decodeString(m.val)
				case keyIs(m.key, "text"):
					if m.val[0] == '"' {
						text = m.val
					}
				}
			}
			switch {
			case text != nil:
				countJSONString(text[1:len(text)-1], tc)
			case typ == "input_image":
				fixed += imagePartTokens
			case typ == "input_file" || typ == "input_audio":
				fixed += filePartTokens
			default:
				tc.addBytes(part)
			}
		}
	default:
		tc.addBytes(content)
	}
	return fixed, true
}

// isResponseRetrieval reports whether p is a stored response's path
// (/v1/responses/{id} and below, e.g. its input_items): free reads that
// bill nothing, since the response was billed when it was made.
func isResponseRetrieval(p string) bool {
	id, ok := strings.CutPrefix(p, "/v1/responses/")
	return ok && id != ""
}
