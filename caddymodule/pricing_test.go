package caddymodule

import (
	"math"
	"testing"
)

func TestPricingCost(t *testing.T) {
	p := configPricing([]ModelPrice{
		{Model: "gpt-4o*", PromptPer1K: 2500, CompletionPer1K: 10000},
		{Model: "cheap", PromptPer1K: 1, CompletionPer1K: 1},
	})
	tests := []struct {
		model              string
		prompt, completion int64
		want               int64
	}{
		{"unknown-model", 10, 5, 15}, // default: 1 credit per token
		{"gpt-4o-mini", 10, 5, 75},   // 25 + 50
		{"gpt-4o", 1, 0, 3},          // 2.5 rounds up
		{"cheap", 1, 1, 1},           // 0.002 rounds up to 1
		{"cheap", 0, 0, 0},
		{"unknown-model", 0, 0, 0},
	}
	for _, tt := range tests {
		if got := p.cost(tt.model, tt.prompt, tt.completion); got != tt.want {
			t.Errorf("cost(%q, %d, %d) = %d, want %d", tt.model, tt.prompt, tt.completion, got, tt.want)
		}
	}
}

func TestPricingMaxCompletion(t *testing.T) {
	p := configPricing([]ModelPrice{{Model: "m", PromptPer1K: 2000, CompletionPer1K: 3000}})
	tests := []struct {
		model          string
		prompt, budget int64
		want           int64
	}{
		{"other", 10, 100, 90},
		{"other", 100, 100, 0},
		{"other", 101, 100, -1},
		{"m", 10, 100, 26}, // (100000-20000)/3000
		{"m", 50, 100, 0},
		{"m", 51, 100, -1},
	}
	for _, tt := range tests {
		got := p.maxCompletionFor(tt.model, tt.prompt, tt.budget)
		if got != tt.want {
			t.Errorf("maxCompletionFor(%q, %d, %d) = %d, want %d", tt.model, tt.prompt, tt.budget, got, tt.want)
		}
		if got >= 0 && p.cost(tt.model, tt.prompt, got) > tt.budget {
			t.Errorf("maxCompletionFor(%q) = %d costs %d > budget %d", tt.model, got, p.cost(tt.model, tt.prompt, got), tt.budget)
		}
	}
}

func TestPricingCacheAware(t *testing.T) {
	read, write := int64(100), int64(1250)
	zero := int64(0)
	p := configPricing([]ModelPrice{
		{Model: "claude-*", PromptPer1K: 1000, CompletionPer1K: 5000, CacheReadPer1K: &read, CacheWritePer1K: &write},
		{Model: "free-cache", PromptPer1K: 1000, CompletionPer1K: 1000, CacheReadPer1K: &zero},
		{Model: "plain", PromptPer1K: 2000, CompletionPer1K: 2000},
	})
	tests := []struct {
		model string
		u     usage
		want  int64
	}{
		// 1000 plain + 10000 read + 2000 written + 100 completion:
		// 1000 + 1000 + 2500 + 500 credits.
		{"claude-x", usage{PromptTokens: 13000, CacheReadTokens: 10000, CacheWriteTokens: 2000, CompletionTokens: 100}, 5000},
		// Rounded up once over the sum, not per kind: 0.1 + 0.1 + 5 = 5.2 -> 6.
		{"claude-x", usage{PromptTokens: 2, CacheReadTokens: 1, CompletionTokens: 1}, 7},
		{"claude-x", usage{PromptTokens: 1, CacheReadTokens: 1}, 1},
		{"free-cache", usage{PromptTokens: 500, CacheReadTokens: 500}, 0},
		// No cache prices: cached tokens cost the prompt price.
		{"plain", usage{PromptTokens: 10, CacheReadTokens: 10, CacheWriteTokens: 0}, 20},
		{"unknown", usage{PromptTokens: 10, CacheReadTokens: 4, CacheWriteTokens: 4, CompletionTokens: 3}, 13},
		// Cache counts beyond the prompt do not make it cheaper or dearer than the prompt.
		{"claude-x", usage{PromptTokens: 1000, CacheReadTokens: 1000, CacheWriteTokens: 1000}, 100},
	}
	for _, tt := range tests {
		if got := p.usageCost(tt.model, tt.u); got != tt.want {
			t.Errorf("usageCost(%q, %+v) = %d, want %d", tt.model, tt.u, got, tt.want)
		}
	}
	// The reservation holds the prompt at the highest prompt-side price.
	if got := p.reserveCost("claude-x", 1000, 100); got != 1250+500 {
		t.Errorf("reserveCost = %d, want 1750", got)
	}
	if got := p.maxCompletionFor("claude-x", 1000, 1750); got != 100 {
		t.Errorf("maxCompletionFor = %d, want 100", got)
	}
}

func TestPricingNoOverflow(t *testing.T) {
	p := configPricing([]ModelPrice{{Model: "dear", PromptPer1K: maxPricePer1K, CompletionPer1K: maxPricePer1K}})
	if got := p.usageCost("dear", usage{PromptTokens: 1 << 40, CompletionTokens: 1 << 40}); got != math.MaxInt64 {
		t.Errorf("usageCost saturates: got %d", got)
	}
	if got := p.maxCompletionFor("unknown", 0, math.MaxInt64); got != 1<<30 {
		t.Errorf("maxCompletionFor(huge budget) = %d", got)
	}
}
