package admin

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/gatewayz/caddy-gatewayz/alerts"
)

func TestValidateWebhook(t *testing.T) {
	str := func(s string) *string { return &s }
	strict := alerts.Guard{}
	tests := []struct {
		name    string
		req     webhookRequest
		guard   alerts.Guard
		events  []string
		wantErr string
	}{
		{"defaults to every event", webhookRequest{URL: str("https://hooks.example.com/")}, strict, []string{"*"}, ""},
		{"listed events", webhookRequest{URL: str("https://hooks.example.com/"), Events: []string{"balance.low", "key.expiring"}}, strict, []string{"balance.low", "key.expiring"}, ""},
		{"no url", webhookRequest{}, strict, nil, `"url" is required`},
		{"http refused", webhookRequest{URL: str("http://hooks.example.com/")}, strict, nil, "https"},
		{"http allowed", webhookRequest{URL: str("http://hooks.example.com/")}, alerts.Guard{AllowHTTP: true}, []string{"*"}, ""},
		{"loopback refused", webhookRequest{URL: str("https://127.0.0.1/")}, strict, nil, "loopback"},
		{"loopback allowed", webhookRequest{URL: str("https://127.0.0.1/")}, alerts.Guard{AllowPrivate: true}, []string{"*"}, ""},
		{"unknown event", webhookRequest{URL: str("https://h.example/"), Events: []string{"balance.high"}}, strict, nil, "unknown event type"},
		{"ping is not subscribable", webhookRequest{URL: str("https://h.example/"), Events: []string{"ping"}}, strict, nil, "unknown event type"},
		{"twice", webhookRequest{URL: str("https://h.example/"), Events: []string{"*", "*"}}, strict, nil, "listed twice"},
		{"too many", webhookRequest{URL: str("https://h.example/"), Events: strings.Split(strings.Repeat("*,", 12), ",")}, strict, nil, "at most"},
		{"long description", webhookRequest{URL: str("https://h.example/"), Description: str(strings.Repeat("é", 201))}, strict, nil, "at most 200"},
		{"control character", webhookRequest{URL: str("https://h.example/"), Description: str("a\x07b")}, strict, nil, "description"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := validateWebhook(tc.req, tc.guard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(w.Events, ",") != strings.Join(tc.events, ",") || !w.IsActive {
				t.Fatalf("webhook %+v", w)
			}
		})
	}
}

func TestLowBalanceThreshold(t *testing.T) {
	tests := []struct {
		raw   string
		v     int64
		clear bool
		ok    bool
	}{
		{"0", 0, false, true},
		{"1000", 1000, false, true},
		{" null ", 0, true, true},
		{"-1", 0, false, false},
		{"1.5", 0, false, false},
		{"1e3", 0, false, false},
		{`"10"`, 0, false, false},
		{"true", 0, false, false},
		{"{}", 0, false, false},
		{"99999999999999999999", 0, false, false},
	}
	for _, tc := range tests {
		v, clear, err := lowBalanceThreshold(json.RawMessage(tc.raw))
		if (err == nil) != tc.ok || v != tc.v || clear != tc.clear {
			t.Errorf("lowBalanceThreshold(%s) = %d, %v, %v", tc.raw, v, clear, err)
		}
	}
}

func TestNewWebhookSecret(t *testing.T) {
	a, err := newWebhookSecret()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newWebhookSecret()
	if !strings.HasPrefix(a, "whsec_") || len(a) != len("whsec_")+43 || a == b {
		t.Fatalf("secrets %q %q", a, b)
	}
}
