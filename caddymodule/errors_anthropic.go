package caddymodule

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// Refusals on the Anthropic routes (/v1/messages and below) are written in
// Anthropic's error shape, so that the Anthropic SDKs raise their typed
// errors: {"type":"error","error":{"type":...,"message":...}}, with the
// same status as the OpenAI-shaped refusal of the other routes.

// isAnthropicPath reports whether p is answered in Anthropic's shapes.
func isAnthropicPath(p string) bool {
	return p == "/v1/messages" || strings.HasPrefix(p, "/v1/messages/")
}

// anthropicErrorType is Anthropic's error type for a status.
func anthropicErrorType(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusUnprocessableEntity:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusPaymentRequired:
		return "billing_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusGatewayTimeout:
		return "timeout_error"
	case http.StatusServiceUnavailable, 529:
		return "overloaded_error"
	}
	if status >= 400 && status < 500 {
		return "invalid_request_error"
	}
	return "api_error"
}

// writeErrorFor writes e in the error shape of the route at path p.
func writeErrorFor(w http.ResponseWriter, p string, e *gatewayError) {
	if !isAnthropicPath(p) {
		writeError(w, e)
		return
	}
	setErrorHeaders(w.Header(), e)
	w.WriteHeader(e.Status)
	_, _ = w.Write(anthropicErrorBody(e))
}

// anthropicErrorBody is e in Anthropic's error shape.
func anthropicErrorBody(e *gatewayError) []byte {
	type detail struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	body, _ := json.Marshal(struct {
		Type  string `json:"type"`
		Error detail `json:"error"`
	}{"error", detail{anthropicErrorType(e.Status), e.Message}})
	return body
}

// isAnthropicError reports whether body is {"type":"error","error":{...}}.
func isAnthropicError(body []byte) bool {
	var v struct {
		Type  string `json:"type"`
		Error *struct {
			Type    *string `json:"type"`
			Message *string `json:"message"`
		} `json:"error"`
	}
	return json.Unmarshal(body, &v) == nil && v.Type == "error" && v.Error != nil && v.Error.Type != nil && v.Error.Message != nil
}

// Anthropic's names of the rate-limit headers.
const (
	hdrAnthropicLimitRequests     = "Anthropic-Ratelimit-Requests-Limit"
	hdrAnthropicRemainingRequests = "Anthropic-Ratelimit-Requests-Remaining"
	hdrAnthropicResetRequests     = "Anthropic-Ratelimit-Requests-Reset"
	hdrAnthropicLimitTokens       = "Anthropic-Ratelimit-Tokens-Limit"
	hdrAnthropicRemainingTokens   = "Anthropic-Ratelimit-Tokens-Remaining"
	hdrAnthropicResetTokens       = "Anthropic-Ratelimit-Tokens-Reset"
)

// setAnthropicRateLimitHeaders repeats the x-ratelimit-* headers set in h
// under Anthropic's names, the resets as RFC 3339 times as Anthropic sends
// them (ours say how long until the reset).
func setAnthropicRateLimitHeaders(h http.Header, now time.Time) {
	for _, m := range [...]struct{ from, to string }{
		{hdrLimitRequests, hdrAnthropicLimitRequests},
		{hdrRemainingRequests, hdrAnthropicRemainingRequests},
		{hdrLimitTokens, hdrAnthropicLimitTokens},
		{hdrRemainingTokens, hdrAnthropicRemainingTokens},
	} {
		if v := headerValue(h, m.from); v != "" {
			h[m.to] = []string{v}
		}
	}
	for _, m := range [...]struct{ from, to string }{
		{hdrResetRequests, hdrAnthropicResetRequests},
		{hdrResetTokens, hdrAnthropicResetTokens},
	} {
		if d, err := time.ParseDuration(headerValue(h, m.from)); err == nil {
			h[m.to] = []string{now.Add(d).UTC().Truncate(time.Second).Format(time.RFC3339)}
		}
	}
}
