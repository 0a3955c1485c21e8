package caddymodule

import (
	"unicode/utf8"
)

// Token estimation.
//
// The gateway never runs a tokenizer: it estimates token counts from text
// with a byte-class heuristic that is cheap enough to run on every streamed
// delta, and it only relies on the estimate where the upstream reports no
// usage (admission, and streams abandoned before their usage chunk).
//
// Method: every ASCII byte counts as a quarter of a token, rounded up per
// text (ceil(ascii/4)); every non-ASCII character counts as one token (CJK
// scripts tokenize to roughly one token per character in the cl100k/o200k
// vocabularies, accented Latin to about half a token). Each chat message adds
// a fixed overhead of msgOverheadTokens (role, separators) and the reply is
// primed with replyPrimingTokens, as OpenAI's own counting recipe does. An
// image part counts as imagePartTokens (OpenAI's 1024×1024 high-detail tile
// cost, 765 tokens); audio and file parts count as filePartTokens.
//
// Error: for English prose and typical chat the estimate lands within ±25 %
// of the tokenizer's count. Text dense in digits, punctuation or whitespace
// runs (code, JSON, tables) tokenizes worse than 4 bytes per token and can be
// underestimated by up to ~2×; random identifiers and base64 by up to ~3×.
// Non-Latin scripts other than CJK can be off by ±50 %. Images vary from 85
// (low detail) to ~1,100 tokens, so an image is over- or underestimated by up
// to ~9×. Underestimates are harmless to the balance: settlement charges the
// upstream-reported usage, capped at what the user has.
const (
	msgOverheadTokens  = 4
	replyPrimingTokens = 3
	imagePartTokens    = 765
	filePartTokens     = 1000
)

// textCounter accumulates the byte classes of text for estimateTokens.
type textCounter struct {
	ascii int64 // ASCII bytes
	other int64 // non-ASCII characters (runes)
}

// addString counts s.
func (c *textCounter) addString(s string) {
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			c.ascii++
			i++
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		c.other++
		i += size
	}
}

// addBytes counts b (UTF-8).
func (c *textCounter) addBytes(b []byte) {
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			c.ascii++
			i++
			continue
		}
		_, size := utf8.DecodeRune(b[i:])
		c.other++
		i += size
	}
}

// tokens is the estimate for the text counted so far.
func (c textCounter) tokens() int64 {
	return (c.ascii+3)/4 + c.other
}
