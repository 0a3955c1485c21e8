package caddymodule

import "testing"

func TestPricingCost(t *testing.T) {
	p := pricing{
		{Model: "gpt-4o*", PromptPer1K: 2500, CompletionPer1K: 10000},
		{Model: "cheap", PromptPer1K: 1, CompletionPer1K: 1},
	}
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
	p := pricing{{Model: "m", PromptPer1K: 2000, CompletionPer1K: 3000}}
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
