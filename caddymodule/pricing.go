package caddymodule

import (
	"math"
	"math/bits"
	"path"
	"sync/atomic"
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
	// CacheReadPer1K is the price of 1,000 prompt tokens the upstream read
	// from its prompt cache, in credits. Default (absent): the prompt price.
	CacheReadPer1K *int64 `json:"cache_read_per_1k,omitempty"`
	// CacheWritePer1K is the price of 1,000 prompt tokens the upstream
	// wrote to its prompt cache, in credits. Default (absent): the prompt
	// price.
	CacheWritePer1K *int64 `json:"cache_write_per_1k,omitempty"`
}

// defaultPer1K is the reference's price: 1 credit per token.
const defaultPer1K = 1000

// maxPricePer1K bounds a configured price (a billion credits per token),
// so that its nano-credit form fits in 64 bits.
const maxPricePer1K = 1 << 40

func negative(p *int64) bool { return p != nil && *p < 0 }

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// Prices are kept in nano-credits (10⁻⁹ credit) per token: a configured
// price of n credits per 1,000 tokens is n×10⁶, and a price from the
// upstream in USD per token with up to nine decimals converts exactly.
// A request's cost is the sum over its kinds of tokens, rounded up to a
// whole credit once, in 128-bit integer arithmetic.
const (
	nanoPerCredit = 1_000_000_000
	nanoPer1K     = nanoPerCredit / 1000 // a price of 1 credit per 1K tokens, per token
)

// tokenPrices are the prices of one model, in nano-credits per token.
type tokenPrices struct {
	prompt, completion, cacheRead, cacheWrite uint64
}

// defaultTokenPrices is the price of a model no entry matches.
var defaultTokenPrices = tokenPrices{
	prompt: defaultPer1K * nanoPer1K, completion: defaultPer1K * nanoPer1K,
	cacheRead: defaultPer1K * nanoPer1K, cacheWrite: defaultPer1K * nanoPer1K,
}

// maxPromptPrice is the highest of the prompt-side prices: a prompt whose
// cache use is not known yet is reserved at it.
func (tp tokenPrices) maxPromptPrice() uint64 {
	return max(tp.prompt, tp.cacheRead, tp.cacheWrite)
}

// tokenPrices resolves a configured price's defaults.
func (mp ModelPrice) tokenPrices() tokenPrices {
	tp := tokenPrices{
		prompt:     uint64(mp.PromptPer1K) * nanoPer1K,
		completion: uint64(mp.CompletionPer1K) * nanoPer1K,
	}
	tp.cacheRead, tp.cacheWrite = tp.prompt, tp.prompt
	if mp.CacheReadPer1K != nil {
		tp.cacheRead = uint64(*mp.CacheReadPer1K) * nanoPer1K
	}
	if mp.CacheWritePer1K != nil {
		tp.cacheWrite = uint64(*mp.CacheWritePer1K) * nanoPer1K
	}
	return tp
}

// priceEntry is one row of the price table.
type priceEntry struct {
	glob   string
	exact  bool // glob has no wildcard: compared, not matched
	prices tokenPrices
	source string // priceSourceConfig or priceSourceUpstream
}

// PriceSourceUpstream marks a price loaded from the upstream's model list.
const PriceSourceUpstream = "upstream"

// Where a price came from.
const (
	priceSourceConfig   = "config"
	priceSourceUpstream = PriceSourceUpstream
	priceSourceDefault  = "default"
)

// pricing resolves per-model prices; the first matching entry wins. The
// configured entries come first, so they override the upstream's.
type pricing []priceEntry

// priceBook holds the active price table, which an upstream price
// refresh replaces while requests read it.
type priceBook struct {
	table atomic.Pointer[pricing]
}

func newPriceBook(p pricing) *priceBook {
	b := new(priceBook)
	b.table.Store(&p)
	return b
}

// configPricing turns configured prices into a table.
func configPricing(prices []ModelPrice) pricing {
	p := make(pricing, 0, len(prices))
	for _, mp := range prices {
		p = append(p, newPriceEntry(mp.Model, mp.tokenPrices(), priceSourceConfig))
	}
	return p
}

func newPriceEntry(glob string, tp tokenPrices, source string) priceEntry {
	return priceEntry{glob: glob, exact: !hasGlobMeta(glob), prices: tp, source: source}
}

// hasGlobMeta reports whether s has a path.Match metacharacter.
func hasGlobMeta(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', '\\':
			return true
		}
	}
	return false
}

// lookup returns the entry for model, or nil when none matches.
func (p pricing) lookup(model string) *priceEntry {
	for i := range p {
		e := &p[i]
		if e.glob == model {
			return e
		}
		if !e.exact {
			if ok, _ := path.Match(e.glob, model); ok {
				return e
			}
		}
	}
	return nil
}

// priceFor returns the prices of model.
func (p pricing) priceFor(model string) tokenPrices {
	if e := p.lookup(model); e != nil {
		return e.prices
	}
	return defaultTokenPrices
}

// cost is the credit cost of a request, rounded up to a whole credit so that
// no usage is ever free. All arithmetic is integer.
func (p pricing) cost(model string, promptTokens, completionTokens int64) int64 {
	return p.usageCost(model, usage{PromptTokens: promptTokens, CompletionTokens: completionTokens})
}

// usageCost is the credit cost of u: its cache reads and writes at their
// own prices, the rest of its prompt at the prompt price, its completion
// at the completion price; the sum rounded up to a whole credit, once.
func (p pricing) usageCost(model string, u usage) int64 {
	tp := p.priceFor(model)
	prompt := nonNeg(u.PromptTokens)
	read := min(nonNeg(u.CacheReadTokens), prompt)
	write := min(nonNeg(u.CacheWriteTokens), prompt-read)
	plain := prompt - read - write
	var acc u128
	acc.addMul(plain, tp.prompt)
	acc.addMul(read, tp.cacheRead)
	acc.addMul(write, tp.cacheWrite)
	acc.addMul(nonNeg(u.CompletionTokens), tp.completion)
	return acc.creditsRoundedUp()
}

// reserveCost is the worst-case cost of a request: its prompt at the
// highest prompt-side price (the cache use is known only afterwards).
func (p pricing) reserveCost(model string, promptTokens, completionTokens int64) int64 {
	tp := p.priceFor(model)
	var acc u128
	acc.addMul(nonNeg(promptTokens), tp.maxPromptPrice())
	acc.addMul(nonNeg(completionTokens), tp.completion)
	return acc.creditsRoundedUp()
}

// maxCompletionFor returns the largest completion token count whose
// worst-case cost (reserveCost), together with promptTokens, fits in
// budget credits; -1 when even the prompt alone does not fit.
func (p pricing) maxCompletionFor(model string, promptTokens, budget int64) int64 {
	tp := p.priceFor(model)
	var left, promptCost u128
	left.addMul(nonNeg(budget), nanoPerCredit)
	promptCost.addMul(nonNeg(promptTokens), tp.maxPromptPrice())
	if budget < 0 || left.less(promptCost) {
		return -1
	}
	left.sub(promptCost)
	if tp.completion == 0 {
		return 1 << 30
	}
	if left.hi >= tp.completion { // the quotient does not fit in 64 bits
		return 1 << 30
	}
	q, _ := bits.Div64(left.hi, left.lo, tp.completion)
	return int64(min(q, 1<<30))
}

func nonNeg(n int64) uint64 {
	if n < 0 {
		return 0
	}
	return uint64(n)
}

// u128 is an unsigned 128-bit sum of nano-credits.
type u128 struct{ hi, lo uint64 }

func (a *u128) addMul(x, y uint64) {
	hi, lo := bits.Mul64(x, y)
	var c uint64
	a.lo, c = bits.Add64(a.lo, lo, 0)
	a.hi, _ = bits.Add64(a.hi, hi, c)
}

func (a u128) less(b u128) bool { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo) }

func (a *u128) sub(b u128) {
	var borrow uint64
	a.lo, borrow = bits.Sub64(a.lo, b.lo, 0)
	a.hi, _ = bits.Sub64(a.hi, b.hi, borrow)
}

// creditsRoundedUp is ⌈a / 10⁹⌉, saturated at MaxInt64.
func (a u128) creditsRoundedUp() int64 {
	if a.hi >= nanoPerCredit {
		return math.MaxInt64
	}
	q, r := bits.Div64(a.hi, a.lo, nanoPerCredit)
	if r > 0 {
		q++
	}
	if q > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(q)
}
