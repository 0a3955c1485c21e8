package caddymodule

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"strconv"
	"unicode/utf8"
)

// usage is the token usage of one request. PromptTokens counts every
// prompt token, those read from or written to the upstream's prompt cache
// included; CacheReadTokens and CacheWriteTokens are the parts of it that
// were, priced at their own rates.
type usage struct {
	PromptTokens     int64
	CompletionTokens int64
	TotalTokens      int64
	CacheReadTokens  int64
	CacheWriteTokens int64
}

// usageJSON is the OpenAI usage object. Counts are decoded as json.Number so
// that a non-integer or negative count is rejected rather than truncated.
type usageJSON struct {
	PromptTokens     json.Number `json:"prompt_tokens"`
	CompletionTokens json.Number `json:"completion_tokens"`
	TotalTokens      json.Number `json:"total_tokens"`
	// Anthropic-compatible names, accepted as fallbacks.
	InputTokens  json.Number `json:"input_tokens"`
	OutputTokens json.Number `json:"output_tokens"`
	// Prompt cache counts (see usageFields).
	CacheReadInputTokens     json.Number       `json:"cache_read_input_tokens"`
	CacheCreationInputTokens json.Number       `json:"cache_creation_input_tokens"`
	PromptTokensDetails      *cacheDetailsJSON `json:"prompt_tokens_details"`
	InputTokensDetails       *cacheDetailsJSON `json:"input_tokens_details"`
}

// cacheDetailsJSON is a *_tokens_details object.
type cacheDetailsJSON struct {
	CachedTokens     json.Number `json:"cached_tokens"`
	CacheWriteTokens json.Number `json:"cache_write_tokens"`
}

// normalize turns a decoded usage object into counts (see
// usageFields.normalize).
func (u usageJSON) normalize() (usage, bool) {
	b := func(n json.Number) []byte {
		if n == "" {
			return nil
		}
		return []byte(n)
	}
	f := usageFields{prompt: b(u.PromptTokens), completion: b(u.CompletionTokens), total: b(u.TotalTokens),
		input: b(u.InputTokens), output: b(u.OutputTokens),
		cacheReadExtra: b(u.CacheReadInputTokens), cacheWriteExtra: b(u.CacheCreationInputTokens)}
	for i, d := range [...]*cacheDetailsJSON{u.PromptTokensDetails, u.InputTokensDetails} {
		if d != nil {
			f.details[i] = cacheDetails{b(d.CachedTokens), b(d.CacheWriteTokens)}
		}
	}
	return f.normalize()
}

// usageFields are the counts of a usage object as their JSON number text
// (the contents of a quoted count included); nil when absent. It is what
// decoding into usageJSON gives, without allocating.
//
// The cache counts come in two conventions: OpenAI's and the Responses
// API's prompt_tokens_details / input_tokens_details.cached_tokens (and
// cache_write_tokens) are parts of the prompt count; Anthropic's
// cache_read_input_tokens and cache_creation_input_tokens are counted
// beside input_tokens, not in it.
type usageFields struct {
	prompt, completion, total, input, output []byte
	cacheReadExtra, cacheWriteExtra          []byte // beside the prompt count (Anthropic)
	// details are prompt_tokens_details and input_tokens_details, whose
	// counts are parts of the prompt count.
	details [2]cacheDetails
}

// cacheDetails are the cache counts of a *_tokens_details object.
type cacheDetails struct {
	cached, cacheWrite []byte
}

// normalize turns a decoded usage object into counts. It reports false when
// the object has no usable count (all absent, negative or non-integer). A
// total_tokens above prompt+completion (providers that count hidden tokens
// only in the total) is billed as completion, so the charge always covers the
// reported total, as the reference charges total_tokens.
func (u usageFields) normalize() (usage, bool) {
	num := func(primary, fallback []byte) (int64, bool) {
		if v, ok := parseCount(primary); ok {
			return v, true
		}
		return parseCount(fallback)
	}
	p, okP := num(u.prompt, u.input)
	c, okC := num(u.completion, u.output)
	t, okT := num(u.total, nil)
	readX, okRX := num(u.cacheReadExtra, nil)
	writeX, okWX := num(u.cacheWriteExtra, nil)
	if !okP && !okC && !okT && !okRX && !okWX {
		return usage{}, false
	}
	var read, write int64
	if okRX || okWX { // Anthropic: the cache counts add to input_tokens
		p += readX + writeX
		read, write = readX, writeX
	} else {
		read, _ = num(u.details[0].cached, u.details[1].cached)
		write, _ = num(u.details[0].cacheWrite, u.details[1].cacheWrite)
	}
	if okT && t > p+c {
		if !okP && !okC {
			// Only a total: bill it as prompt (embeddings report this shape).
			p = t
		} else {
			c = t - p
		}
	}
	read = min(read, p)
	write = min(write, p-read)
	return usage{PromptTokens: p, CompletionTokens: c, TotalTokens: p + c, CacheReadTokens: read, CacheWriteTokens: write}, true
}

// parseCount parses a count's number text: an integer from 0 to 2⁴⁰;
// false when absent (nil) or anything else.
func parseCount(n []byte) (int64, bool) {
	if n == nil {
		return 0, false
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || v < 0 || v > 1<<40 {
		return 0, false
	}
	return v, true
}

// decodeUsageObject decodes the valid JSON object obj into u as
// json.Unmarshal into usageJSON does (merging into what u holds, as a
// decode into an existing struct does): keys match case-insensitively, the
// last occurrence wins, null leaves a count as it was; a count that is
// neither a number nor a string holding one is an error.
func decodeUsageObject(obj []byte, u *usageFields) bool {
	for it := (objIter{b: obj}); it.next(); {
		if !decodeUsageMember(it.key, it.val, u) {
			return false
		}
	}
	return true
}

// decodeUsageMember decodes one member of a usage object (its raw key and
// its valid value) into u, as decodeUsageObject does.
func decodeUsageMember(key, val []byte, u *usageFields) bool {
	var dst *[]byte
	switch k := newFoldKey(key); {
	case k.is("prompt_tokens"):
		dst = &u.prompt
	case k.is("completion_tokens"):
		dst = &u.completion
	case k.is("total_tokens"):
		dst = &u.total
	case k.is("input_tokens"):
		dst = &u.input
	case k.is("output_tokens"):
		dst = &u.output
	case k.is("cache_read_input_tokens"):
		dst = &u.cacheReadExtra
	case k.is("cache_creation_input_tokens"):
		dst = &u.cacheWriteExtra
	case k.is("prompt_tokens_details"):
		return decodeCacheDetails(val, &u.details[0])
	case k.is("input_tokens_details"):
		return decodeCacheDetails(val, &u.details[1])
	default:
		return true
	}
	return decodeCount(val, dst)
}

// decodeValidUsageObject is decodeUsageObject on an object not yet
// validated: it validates obj as validJSON does in the same pass over its
// members and reports false when obj is not valid JSON, not an object
// starting at obj[0], or not decodable. It never reports true where
// validJSON(obj) && decodeUsageObject(obj, u) would not, and decodes the
// same members in the same order (every false is the same refusal to the
// caller, whatever the member that caused it).
func decodeValidUsageObject(obj []byte, u *usageFields) bool {
	if len(obj) == 0 || obj[0] != '{' {
		return false
	}
	i := skipSpace(obj, 1)
	if i < len(obj) && obj[i] == '}' {
		return skipSpace(obj, i+1) == len(obj)
	}
	for {
		if i >= len(obj) || obj[i] != '"' {
			return false
		}
		ke := scanString(obj, i) // just past the closing quote
		if ke < 0 {
			return false
		}
		key := obj[i+1 : ke-1]
		j := skipSpace(obj, ke)
		if j >= len(obj) || obj[j] != ':' {
			return false
		}
		vs := skipSpace(obj, j+1)
		ve := validValue(obj, vs, 1)
		if ve < 0 || !decodeUsageMember(key, obj[vs:ve], u) {
			return false
		}
		i = skipSpace(obj, ve)
		if i >= len(obj) {
			return false
		}
		switch obj[i] {
		case ',':
			i = skipSpace(obj, i+1)
		case '}':
			return skipSpace(obj, i+1) == len(obj)
		default:
			return false
		}
	}
}

// decodeCount reads a count as encoding/json decodes a json.Number: null
// leaves dst as it was; a number or a string holding one is kept; anything
// else is an error.
func decodeCount(v []byte, dst *[]byte) bool {
	switch c := v[0]; {
	case c == 'n': // null
	case c == '-' || (c >= '0' && c <= '9'):
		*dst = v
	case c == '"':
		inner := v[1 : len(v)-1]
		if bytes.IndexByte(inner, '\\') >= 0 {
			s, _ := decodeString(v)
			inner = []byte(s)
		}
		if len(inner) == 0 || scanNumber(inner, 0) != len(inner) {
			return false
		}
		*dst = inner
	default:
		return false
	}
	return true
}

// decodeCacheDetails reads cached_tokens and cache_write_tokens of a
// prompt_tokens_details or input_tokens_details object as encoding/json
// decodes it into a pointer to a struct of those two json.Numbers: null
// forgets what an earlier occurrence gave, an object merges into it.
func decodeCacheDetails(v []byte, u *cacheDetails) bool {
	switch v[0] {
	case 'n':
		*u = cacheDetails{}
		return true
	case '{':
	default:
		return false
	}
	for it := (objIter{b: v}); it.next(); {
		var dst *[]byte
		switch k := newFoldKey(it.key); {
		case k.is("cached_tokens"):
			dst = &u.cached
		case k.is("cache_write_tokens"):
			dst = &u.cacheWrite
		default:
			continue
		}
		if !decodeCount(it.val, dst) {
			return false
		}
	}
	return true
}

// decodeUsage decodes a usage object span (not yet validated).
func decodeUsage(obj []byte) (usage, bool) {
	var u usageFields
	if !decodeValidUsageObject(obj, &u) {
		return usage{}, false
	}
	return u.normalize()
}

// usageFromJSON extracts the top-level "usage" object of a JSON response
// body. It never decodes the whole body: one byte pass (string-aware,
// tracking nesting) finds the top-level "usage" key, and only that object
// is decoded. With duplicate keys the last one wins, as in encoding/json.
// The key must be spelled exactly "usage" (encoding/json would also accept
// other cases and escaped spellings; no upstream sends those).
func usageFromJSON(body []byte) (usage, bool) {
	u, ok, _ := answerUsage(body)
	return u, ok
}

// answerUsage is usageFromJSON that also returns valueEnd(body, 0), the
// end of the body's first top-level value, found by the same pass: what
// appendGatewayUsageEnd needs to know, so that a buffered answer is walked
// once to be both read and rewritten.
func answerUsage(body []byte) (u usage, ok bool, end int) {
	start, uEnd, end := topLevelUsage(body)
	if start < 0 {
		return usage{}, false, end
	}
	u, ok = decodeUsage(body[start:uEnd])
	return u, ok, end
}

// topLevelUsage returns the bounds of the object value of the last
// top-level "usage" key of the JSON object b, or -1, -1; and first, which
// is valueEnd(b, 0) (the walk is the same: the usage object it skips is
// balanced, and valueEnd fails where the walk stops early).
func topLevelUsage(b []byte) (start, end, first int) {
	start, end, first = -1, -1, -1
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			e := stringEnd(b, i+1)
			if e < 0 {
				return -1, -1, first
			}
			if depth == 1 && e-i-1 == len("usage") && string(b[i+1:e]) == "usage" {
				j := skipSpace(b, e+1)
				if j < len(b) && b[j] == ':' {
					j = skipSpace(b, j+1)
					if j < len(b) && b[j] == '{' {
						k := valueEnd(b, j)
						if k < 0 {
							return -1, -1, first
						}
						start, end = j, k
						i = k - 1
						continue
					}
					start, end = -1, -1 // a later non-object usage wins
				}
			}
			i = e
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 && first < 0 {
				first = i + 1
			}
		}
	}
	return start, end, first
}

// valueEnd returns the index just past the object or array starting at i,
// or -1 when it is not closed.
func valueEnd(b []byte, i int) int {
	depth := 0
	for ; i < len(b); i++ {
		switch b[i] {
		case '"':
			e := stringEnd(b, i+1)
			if e < 0 {
				return -1
			}
			i = e
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}

// usageKey is the byte pattern the scanners look for.
var usageKey = []byte(`"usage"`)

// hasUsageObject reports whether b contains "usage" followed by ':' and an
// object (not null), by byte scan only.
func hasUsageObject(b []byte) bool {
	for i := 0; ; {
		k := bytes.Index(b[i:], usageKey)
		if k < 0 {
			return false
		}
		i += k
		if usageObjectAfter(b, i) >= 0 {
			return true
		}
		// "usage" overlaps itself only at its quotes: the next candidate
		// starts at the closing quote at the earliest.
		i += len(usageKey) - 1
	}
}

// usageObjectAt returns the offset of the '{' of the last "usage": {…}
// object in b, or -1.
func usageObjectAt(b []byte) int {
	last := -1
	for i := 0; ; {
		k := bytes.Index(b[i:], usageKey)
		if k < 0 {
			return last
		}
		i += k
		if j := usageObjectAfter(b, i); j >= 0 {
			last = j
		}
		i += len(usageKey) - 1
	}
}

// usageObjectAfter returns the offset of the '{' when the "usage" at i is
// followed by ':' and an object, or -1.
func usageObjectAfter(b []byte, i int) int {
	j := skipSpace(b, i+len(usageKey))
	if j < len(b) && b[j] == ':' {
		j = skipSpace(b, j+1)
		if j < len(b) && b[j] == '{' {
			return j
		}
	}
	return -1
}

// usageFromTail extracts usage from the tail of a response body too large
// to buffer: it decodes the last "usage":{…} object found in tail.
func usageFromTail(tail []byte) (usage, bool) {
	i := usageObjectAt(tail)
	if i < 0 {
		return usage{}, false
	}
	end := valueEnd(tail, i)
	if end < 0 {
		return usage{}, false
	}
	return decodeUsage(tail[i:end])
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// gatewayUsage is the block added to JSON responses, as the reference did.
type gatewayUsage struct {
	TokensCharged    int64  `json:"tokens_charged"`
	CreditsCharged   int64  `json:"credits_charged"`
	UserBalanceAfter int64  `json:"user_balance_after"`
	UserAPIKey       string `json:"user_api_key"`
	Estimated        bool   `json:"estimated,omitempty"`
	CachedTokens     int64  `json:"cached_tokens,omitempty"`
	CacheWriteTokens int64  `json:"cache_write_tokens,omitempty"`
}

// gatewayUsageCut is where the gateway_usage block goes into body: the
// new body is body[:keep] followed by appendGatewayUsageTail's bytes. It
// fails (false) unless body is one object, ending at end, with optional
// whitespace around it.
func gatewayUsageCut(body []byte, end int) (keep int, ok bool) {
	trimmed := bytes.TrimRight(body, " \t\r\n")
	start := skipSpace(trimmed, 0)
	if len(trimmed)-start < 2 || trimmed[start] != '{' || trimmed[len(trimmed)-1] != '}' ||
		end != len(trimmed) {
		return 0, false
	}
	return len(trimmed) - 1, true
}

// appendGatewayUsageTail appends to dst what follows body[:keep] (keep from
// gatewayUsageCut) in the rewritten body: the gateway_usage member, the
// object's closing brace and the body's trailing whitespace. A buffered
// answer is then sent as its two parts, without a copy of the whole body.
func appendGatewayUsageTail(dst, body []byte, keep int, gu gatewayUsage) []byte {
	out := dst
	if skipSpace(body, skipSpace(body, 0)+1) != keep {
		out = append(out, ',')
	}
	out = append(out, `"gateway_usage":{"tokens_charged":`...)
	out = strconv.AppendInt(out, gu.TokensCharged, 10)
	out = append(out, `,"credits_charged":`...)
	out = strconv.AppendInt(out, gu.CreditsCharged, 10)
	out = append(out, `,"user_balance_after":`...)
	out = strconv.AppendInt(out, gu.UserBalanceAfter, 10)
	out = append(out, `,"user_api_key":`...)
	out = appendJSONString(out, gu.UserAPIKey)
	if gu.Estimated {
		out = append(out, `,"estimated":true`...)
	}
	if gu.CachedTokens > 0 {
		out = append(out, `,"cached_tokens":`...)
		out = strconv.AppendInt(out, gu.CachedTokens, 10)
	}
	if gu.CacheWriteTokens > 0 {
		out = append(out, `,"cache_write_tokens":`...)
		out = strconv.AppendInt(out, gu.CacheWriteTokens, 10)
	}
	out = append(out, "}}"...)
	return append(out, body[keep+1:]...)
}

// appendJSONString appends s as a JSON string literal, escaped as
// encoding/json does (invalid UTF-8 becomes U+FFFD).
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c == '\b':
				dst = append(dst, '\\', 'b')
			case c == '\f':
				dst = append(dst, '\\', 'f')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// isGeneratedTextKey reports whether a JSON key's string values are
// generated text: chat content and deltas, legacy completions text,
// tool-call arguments, reasoning and refusals.
func isGeneratedTextKey(k []byte) bool {
	switch string(k) {
	case "content", "text", "arguments", "reasoning", "reasoning_content", "refusal":
		return true
	}
	return false
}

// countGeneratedText adds to tc the characters of every string value whose
// key is a generated-text key (isGeneratedTextKey), anywhere in the JSON
// text b. It is a single byte pass without decoding (jumping from quote to
// quote); escapes count as the character they stand for.
// It never fails: malformed input simply counts less.
func countGeneratedText(b []byte, tc *textCounter) {
	scanGenerated(b, tc)
}

// scanGenerated is countGeneratedText that also answers hasUsageObject(b)
// from the same pass, when it can: exact is false when the pass skipped an
// escaped quote (a quote the raw "usage" match may start or end at), and
// then usageObj is to be found with hasUsageObject.
//
// Every other quote of b bounds a string the pass walks over, so two
// consecutive ones enclose either a string's contents or the bytes between
// two strings: a raw "usage" is one of those spans.
func scanGenerated(b []byte, tc *textCounter) (usageObj, exact bool) {
	return scanGeneratedFrom(b, 0, -1, tc, nil)
}

// textSpan is where the contents of a JSON string lie in a scanned text:
// b[open:close], with its closing quote at close.
type textSpan struct{ open, close int }

// firstText is the first generated-text string a scan counted, and what
// tc held once it was counted; and the last string the scan walked over
// when that one is the value of a key without generated text, its open 0
// when it is not (see eventShape.last).
type firstText struct {
	span    textSpan
	through textCounter
	last    textSpan
}

// scanGeneratedFrom is scanGenerated resumed at offset i, where prevClose
// is the closing quote of the last string walked over (-1: none). When
// first is not nil, it receives the first generated-text string counted
// (first.span.open stays -1 when there is none).
func scanGeneratedFrom(b []byte, i, prevClose int, tc *textCounter, first *firstText) (usageObj, exact bool) {
	exact = true
	isUsage := func(open, close int) bool {
		return !usageObj && close-open == len(usageKey)-1 && string(b[open+1:close]) == "usage" &&
			usageObjectAfter(b, open) >= 0
	}
	for {
		q := indexQuote(b, i)
		if q < 0 {
			return usageObj, exact
		}
		if prevClose >= 0 && isUsage(prevClose, q) {
			usageObj = true
		}
		if first != nil {
			first.last = textSpan{} // until a value string of a key without text is walked
		}
		kStart := q + 1
		kEnd, esc := stringEndEsc(b, kStart)
		if esc {
			exact = false
		}
		if kEnd < 0 {
			return usageObj, exact
		}
		if isUsage(q, kEnd) {
			usageObj = true
		}
		prevClose = kEnd
		j := skipSpace(b, kEnd+1)
		if j >= len(b) || b[j] != ':' {
			i = kEnd + 1 // a string value, not a key
			continue
		}
		j = skipSpace(b, j+1)
		if j >= len(b) || b[j] != '"' {
			i = j
			continue
		}
		vEnd, esc := stringEndEsc(b, j+1)
		if esc {
			exact = false
		}
		if vEnd < 0 {
			return usageObj, exact
		}
		if isUsage(j, vEnd) {
			usageObj = true
		}
		prevClose = vEnd
		if isGeneratedTextKey(b[kStart:kEnd]) {
			countJSONString(b[j+1:vEnd], tc)
			if first != nil && first.span.open < 0 {
				first.span, first.through = textSpan{open: j + 1, close: vEnd}, *tc
			}
		} else if first != nil {
			first.last = textSpan{open: j + 1, close: vEnd}
		}
		i = vEnd + 1
	}
}

// The scanners below look for quotes and backslashes eight bytes at a time
// (SWAR): JSON keys, ids and the gaps between strings are short, and there a
// word loop beats a call to bytes.IndexByte. Past longRun bytes without a
// match they hand the rest to bytes.IndexByte (SIMD).
const (
	swarOnes  = 0x0101010101010101
	swarHighs = 0x8080808080808080
	swarQuote = '"' * swarOnes
	swarSlash = '\\' * swarOnes
	longRun   = 32
)

// zeroBytes flags the zero bytes of x: the lowest flag is exact (flags
// above a zero byte may be spurious), which is all the scanners use.
func zeroBytes(x uint64) uint64 {
	return (x - swarOnes) &^ x & swarHighs
}

// indexQuote returns the index of the first '"' at or after i (i <=
// len(b)), or -1.
func indexQuote(b []byte, i int) int {
	for n := min(len(b), i+longRun); i+8 <= n; i += 8 {
		if m := zeroBytes(binary.LittleEndian.Uint64(b[i:]) ^ swarQuote); m != 0 {
			return i + bits.TrailingZeros64(m)>>3
		}
	}
	if q := bytes.IndexByte(b[i:], '"'); q >= 0 {
		return i + q
	}
	return -1
}

// stringEnd returns the index of the closing quote of the JSON string whose
// contents start at i, or -1. A backslash escapes the byte after it.
func stringEnd(b []byte, i int) int {
	e, _ := stringEndEsc(b, i)
	return e
}

// stringEndEsc is stringEnd that also reports whether an escaped quote was
// skipped.
func stringEndEsc(b []byte, i int) (end int, escQuote bool) {
	plain := 0 // words in a row without a quote or backslash
	for i+8 <= len(b) {
		x := binary.LittleEndian.Uint64(b[i:])
		m := zeroBytes(x^swarQuote) | zeroBytes(x^swarSlash)
		if m == 0 {
			i += 8
			if plain++; plain == longRun/8 {
				return stringEndLong(b, i, escQuote)
			}
			continue
		}
		plain = 0
		i += bits.TrailingZeros64(m) >> 3
		if b[i] == '"' {
			return i, escQuote
		}
		if i+1 < len(b) && b[i+1] == '"' {
			escQuote = true
		}
		i += 2
	}
	for i < len(b) {
		switch b[i] {
		case '"':
			return i, escQuote
		case '\\':
			if i+1 < len(b) && b[i+1] == '"' {
				escQuote = true
			}
			i += 2
		default:
			i++
		}
	}
	return -1, escQuote
}

// stringEndLong is stringEndEsc with bytes.IndexByte, for long strings.
func stringEndLong(b []byte, i int, escQuote bool) (int, bool) {
	for i < len(b) {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return -1, escQuote
		}
		e := i + q
		for {
			k := bytes.IndexByte(b[i:e], '\\')
			if k < 0 {
				return e, escQuote
			}
			i += k + 2
			if i > e { // the quote at e was escaped: look further
				escQuote = true
				break
			}
		}
	}
	return -1, escQuote
}

// countJSONString counts the characters of the contents of a JSON string
// as encoding/json decodes them: \n counts one ASCII byte, \uXXXX one
// character (a surrogate pair one, a lone surrogate one U+FFFD), an
// invalid UTF-8 byte one U+FFFD.
func countJSONString(s []byte, tc *textCounter) {
	for i := 0; i < len(s); {
		if s[i] == '\\' && i+1 < len(s) {
			if s[i+1] == 'u' && i+6 <= len(s) {
				v := hex4(s[i+2 : i+6])
				switch {
				case v < 0:
					tc.other++ // not valid JSON: count something
				case v < 0x80:
					tc.ascii++
				case v >= 0xD800 && v < 0xDC00 && i+12 <= len(s) && s[i+6] == '\\' && s[i+7] == 'u':
					tc.other++
					if lo := hex4(s[i+8 : i+12]); lo >= 0xDC00 && lo <= 0xDFFF {
						i += 6 // the pair is one character
					}
				default:
					tc.other++
				}
				i += 6
				continue
			}
			tc.ascii++
			i += 2
			continue
		}
		j := i
		if s[j] == '\\' { // a lone backslash at the end
			j++
		}
		if k := bytes.IndexByte(s[j:], '\\'); k >= 0 {
			j += k
		} else {
			j = len(s)
		}
		countUTF8(s[i:j], tc)
		i = j
	}
}

// add adds the counts of o.
func (c *textCounter) add(o textCounter) {
	c.ascii += o.ascii
	c.other += o.other
}

// countUTF8 counts b as textCounter.addBytes does (ASCII bytes, and other
// characters as utf8.DecodeRune steps over them), eight ASCII bytes at a
// time.
func countUTF8(b []byte, tc *textCounter) {
	const high = 0x8080808080808080
	ascii, other := int64(0), int64(0)
	for i := 0; i < len(b); {
		for i+8 <= len(b) && binary.LittleEndian.Uint64(b[i:])&high == 0 {
			i += 8
			ascii += 8
		}
		if i >= len(b) {
			break
		}
		if b[i] < utf8.RuneSelf {
			ascii++
			i++
			continue
		}
		_, size := utf8.DecodeRune(b[i:])
		other++
		i += size
	}
	tc.ascii += ascii
	tc.other += other
}

// hex4 decodes four hex digits, or returns -1.
func hex4(b []byte) int {
	v := 0
	for _, c := range b {
		h := hexVal(c)
		if h < 0 {
			return -1
		}
		v = v<<4 | h
	}
	return v
}
