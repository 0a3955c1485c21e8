package admin

import (
	"net/http"
	"time"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
)

// publicPrice is a row of GET /pricing: a model (or model glob) and its
// price in credits per 1,000 tokens of each kind.
type publicPrice struct {
	Model           string `json:"model"`
	PromptPer1K     string `json:"prompt_per_1k"`
	CompletionPer1K string `json:"completion_per_1k"`
	CacheReadPer1K  string `json:"cache_read_per_1k"`
	CacheWritePer1K string `json:"cache_write_per_1k"`
}

// pricing shows every user what each model costs (GET /pricing, public):
// the active table, first match wins, "*" (the default) last.
func (h *Handler) pricing(w http.ResponseWriter, r *http.Request) {
	t := h.app.PriceTable()
	rows := make([]publicPrice, 0, len(t.Models))
	for _, m := range t.Models {
		rows = append(rows, publicPrice{m.Model, m.PromptPer1K, m.CompletionPer1K, m.CacheReadPer1K, m.CacheWritePer1K})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"unit":   "credits per 1,000 tokens",
		"data":   rows,
	})
}

// adminPrices shows the active price table with where each price came
// from and its age, and the state of the upstream price loads (GET
// /admin/prices).
func (h *Handler) adminPrices(w http.ResponseWriter, r *http.Request) {
	t := h.app.PriceTable()
	now := h.now()
	age := func(at time.Time) any {
		if at.IsZero() {
			return nil
		}
		return int64(now.Sub(at) / time.Second)
	}
	rows := make([]map[string]any, 0, len(t.Models))
	for _, m := range t.Models {
		row := map[string]any{
			"model": m.Model, "prompt_per_1k": m.PromptPer1K, "completion_per_1k": m.CompletionPer1K,
			"cache_read_per_1k": m.CacheReadPer1K, "cache_write_per_1k": m.CacheWritePer1K,
			"source": m.Source, "age_seconds": nil,
		}
		if m.Source == caddymodule.PriceSourceUpstream {
			row["age_seconds"] = age(t.UpstreamLoadedAt)
		}
		rows = append(rows, row)
	}
	upstream := map[string]any{"enabled": t.UpstreamEnabled, "loaded_at": nil, "age_seconds": age(t.UpstreamLoadedAt),
		"last_attempt": nil, "last_error": t.LastError, "failures": t.Failures}
	if !t.UpstreamLoadedAt.IsZero() {
		upstream["loaded_at"] = t.UpstreamLoadedAt.UTC()
	}
	if !t.LastAttempt.IsZero() {
		upstream["last_attempt"] = t.LastAttempt.UTC()
	}
	writeJSON(w, http.StatusOK, map[string]any{"prices": rows, "upstream": upstream})
}
