package caddymodule

import (
	"path"
)

// ModelPrice sets the price of one model, or of every model matching a glob,
// in credits per 1,000 tokens. Integer credits per 1,000 tokens keep money
// arithmetic exact while allowing fractional per-token prices.
type ModelPrice struct {
	// Model is a model name or a glob (path.Match syntax, e.g. "gpt-4o*").
	Model string `json:"model,omitempty"`
	// PromptPer1K is the price of 1,000 prompt tokens, in credits.
	PromptPer1K int64 `json:"prompt_per_1k,omitempty"`
	// CompletionPer1K is the price of 1,000 completion tokens, in credits.
	CompletionPer1K int64 `json:"completion_per_1k,omitempty"`
}

// defaultPer1K is the reference's price: 1 credit per token.
const defaultPer1K = 1000

// pricing resolves per-model prices; the first matching entry wins.
type pricing []ModelPrice

// priceFor returns the per-1K prices of model.
func (p pricing) priceFor(model string) (prompt, completion int64) {
	for _, mp := range p {
		if ok, _ := path.Match(mp.Model, model); ok || mp.Model == model {
			return mp.PromptPer1K, mp.CompletionPer1K
		}
	}
	return defaultPer1K, defaultPer1K
}

// cost is the credit cost of a request, rounded up to a whole credit so that
// no usage is ever free. All arithmetic is integer.
func (p pricing) cost(model string, promptTokens, completionTokens int64) int64 {
	pp, cp := p.priceFor(model)
	milli := promptTokens*pp + completionTokens*cp
	if milli <= 0 {
		return 0
	}
	return (milli + 999) / 1000
}

// maxCompletionFor returns the largest completion token count whose cost,
// together with promptTokens, fits in budget credits; -1 when even the prompt
// alone does not fit.
func (p pricing) maxCompletionFor(model string, promptTokens, budget int64) int64 {
	pp, cp := p.priceFor(model)
	left := budget*1000 - promptTokens*pp
	if left < 0 {
		return -1
	}
	if cp <= 0 {
		return 1 << 30
	}
	return left / cp
}
