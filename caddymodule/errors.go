package caddymodule

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// gatewayError is a refusal in the OpenAI error shape:
// {"error":{"message","type","code"}}. Every refusal of the gateway handler
// is built here so that OpenAI SDKs surface it as their typed error.
type gatewayError struct {
	Status     int    // HTTP status
	Type       string // OpenAI error type, e.g. "invalid_request_error"
	Code       string // machine code, e.g. "invalid_api_key"
	Message    string // human message; never contains a key or an internal error text
	RetryAfter int    // seconds; sets Retry-After when positive
}

func (e *gatewayError) Error() string { return e.Message }

// errorf builds a gatewayError.
func errorf(status int, typ, code, msg string) *gatewayError {
	return &gatewayError{Status: status, Type: typ, Code: code, Message: msg}
}

// errDatabaseUnavailable refuses a request the database could not serve
// (storage.ErrUnavailable): it is down or unreachable, and the client may
// retry once it is back.
var errDatabaseUnavailable = errorf(http.StatusServiceUnavailable, "server_error", "service_unavailable",
	"The gateway's database is unavailable right now; retry shortly")

// Common refusals.
func errBadRequest(msg string) *gatewayError {
	return errorf(http.StatusBadRequest, "invalid_request_error", "invalid_request", msg)
}

func errUnauthorized(code, msg string) *gatewayError {
	return errorf(http.StatusUnauthorized, "invalid_request_error", code, msg)
}

func errForbidden(code, msg string) *gatewayError {
	return errorf(http.StatusForbidden, "permission_error", code, msg)
}

func errRateLimited(code, msg string, retryAfter int) *gatewayError {
	e := errorf(http.StatusTooManyRequests, "rate_limit_error", code, msg)
	e.RetryAfter = retryAfter
	return e
}

func errInsufficientCredits(msg string) *gatewayError {
	return errorf(http.StatusPaymentRequired, "insufficient_quota", "insufficient_credits", msg)
}

// writeError writes e as an OpenAI-shaped JSON error. The caller returns nil
// afterwards: returning an error to Caddy as well would write twice.
func writeError(w http.ResponseWriter, e *gatewayError) {
	setErrorHeaders(w.Header(), e)
	body, _ := json.Marshal(struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    string `json:"code"`
		} `json:"error"`
	}{Error: struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	}{e.Message, e.Type, e.Code}})
	w.WriteHeader(e.Status)
	_, _ = w.Write(body)
}

// setErrorHeaders sets the headers of a refusal, whatever its shape.
func setErrorHeaders(h http.Header, e *gatewayError) {
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	if e.Status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="gatewayz"`)
	}
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
}
