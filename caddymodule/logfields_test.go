package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap/zapcore"
)

// TestGatewayAccessLogField: a request of a known caller adds exactly one
// field to the access log (each Add or Set of one costs an allocation):
// the caller's ids, and for a request that reached metering its request id
// and charge too; a refusal before metering logs the ids alone.
func TestGatewayAccessLogField(t *testing.T) {
	e := newTestEnv(t, nil)
	key, k := e.newKey(t, "live", nil)
	ids := `"gatewayz_user_id":"` + strconv.FormatInt(k.UserID, 10) + `","gatewayz_key_id":"` + strconv.FormatInt(k.ID, 10) + `","gatewayz_env":"live"`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		metered                  bool // the field carries the request id and the charge
	}{
		{"metered and settled", "POST", "/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`, 200, true},
		{"refused after admission (no model)", "POST", "/v1/chat/completions", `{"messages":[]}`, 400, false},
		{"free route", "GET", "/v1/models", "", 200, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req := httptest.NewRequest(tc.method, tc.path, body)
			req.RemoteAddr = "192.0.2.10:40000"
			req.Header.Set("Authorization", "Bearer "+key)
			rec := httptest.NewRecorder()
			req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, &caddyhttp.Server{Logs: &caddyhttp.ServerLogConfig{}})
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/json")
				_, err := io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`)
				return err
			})
			if err := e.g.ServeHTTP(rec, req, next); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			fields := extraFields(req.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields))
			if len(fields) != 1 {
				t.Fatalf("%d extra access-log fields, want 1: %v", len(fields), fields)
			}
			buf, err := zapcore.NewJSONEncoder(zapcore.EncoderConfig{}).EncodeEntry(zapcore.Entry{}, fields)
			if err != nil {
				t.Fatal(err)
			}
			line := buf.String()
			if !strings.Contains(line, ids) {
				t.Errorf("no caller ids %s in %s", ids, line)
			}
			reqID := `"gatewayz_request_id":"` + rec.Header().Get(hdrRequestID) + `"`
			if got := strings.Contains(line, reqID) && strings.Contains(line, `"gatewayz_credits":6`); got != tc.metered {
				t.Errorf("request id and charge logged: %v, want %v: %s", got, tc.metered, line)
			}
			if !tc.metered && strings.Contains(line, "gatewayz_request_id") {
				t.Errorf("a request id logged without metering: %s", line)
			}
		})
	}
}
