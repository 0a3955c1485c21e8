package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestShippedAccessLog: the access log of Caddyfile.example, as an operator
// runs it. A metered request's entry has the caller's ids, its tokens and
// credits and the gateway's request id, not the x-ratelimit-* counters the
// client receives (the filter deletes them), and no key.
func TestShippedAccessLog(t *testing.T) {
	up, _ := newUpstream(t, mockOptions())
	g := startGateway(t, up.URL, nil)
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("logged", "logged@example.com", 1000)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := api.Chat(u.APIKey, false, 16)
	if err != nil || resp.Status != http.StatusOK {
		t.Fatalf("completion: %v %v", err, resp)
	}
	reqID := resp.Header.Get("X-Request-Id")
	if reqID == "" || resp.Header.Get("X-Ratelimit-Remaining-Requests") == "" || resp.Header.Get("X-Gatewayz-Credits-Remaining") == "" {
		t.Fatalf("the client's headers: %v", resp.Header)
	}
	if err := g.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	var entry struct {
		UserID      string              `json:"user_id"`
		RespHeaders map[string][]string `json:"resp_headers"`
		GatewayUser string              `json:"gatewayz_user_id"`
		GatewayReq  string              `json:"gatewayz_request_id"`
		Credits     *int64              `json:"gatewayz_credits"`
		Completion  *int64              `json:"gatewayz_completion_tokens"`
	}
	var line string
	for _, l := range g.Logs().Lines() {
		if strings.Contains(l, `"handled request"`) && strings.Contains(l, reqID) {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("no access-log entry for request %s", reqID)
	}
	if err := json.Unmarshal([]byte(line), &entry); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	if entry.UserID == "" || entry.GatewayUser != entry.UserID || entry.GatewayReq != reqID || entry.Credits == nil || *entry.Credits <= 0 || entry.Completion == nil {
		t.Errorf("the entry lacks the gateway's fields: %s", line)
	}
	if got := entry.RespHeaders["X-Request-Id"]; len(got) != 1 || got[0] != reqID {
		t.Errorf("resp_headers X-Request-Id = %v, want %s", got, reqID)
	}
	for name := range entry.RespHeaders {
		if strings.HasPrefix(strings.ToLower(name), "x-ratelimit-") {
			t.Errorf("the entry logs %s: %s", name, line)
		}
	}
	if strings.Contains(line, u.APIKey) {
		t.Error("the entry holds the key")
	}
}
