package admin

import (
	"testing"
)

func TestPricingRoutes(t *testing.T) {
	h, _ := newTestHandler(t, testAdminKey)
	status, body, _ := call(t, h, "GET", "/pricing", "", nil)
	if status != 200 || body["unit"] != "credits per 1,000 tokens" {
		t.Fatalf("GET /pricing: %d %v", status, body)
	}
	rows := body["data"].([]any)
	last := rows[len(rows)-1].(map[string]any)
	if last["model"] != "*" || last["prompt_per_1k"] != "1000" || last["cache_read_per_1k"] != "1000" || last["source"] != nil {
		t.Fatalf("default row %v", last)
	}
	if status, _, _ := call(t, h, "GET", "/admin/prices", "", nil); status != 401 {
		t.Fatalf("GET /admin/prices without the admin key: %d", status)
	}
	status, body, _ = call(t, h, "GET", "/admin/prices", testAdminKey, nil)
	if status != 200 {
		t.Fatalf("GET /admin/prices: %d %v", status, body)
	}
	prices := body["prices"].([]any)
	if row := prices[len(prices)-1].(map[string]any); row["source"] != "default" || row["age_seconds"] != nil {
		t.Fatalf("default row %v", row)
	}
	if up := body["upstream"].(map[string]any); up["enabled"] != false || up["failures"] != float64(0) {
		t.Fatalf("upstream %v", up)
	}
}
