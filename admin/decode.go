package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"go.uber.org/zap"
)

// defaultMaxBodyBytes caps request bodies when the config sets no limit.
const defaultMaxBodyBytes = 64 << 10

// apiError is a refusal of the management API: written as
// {"detail": Detail, "code": Code} with Status. Detail never carries a key,
// an internal error text or a stack trace.
type apiError struct {
	Status int
	Detail string
	Code   string
}

func (e *apiError) Error() string { return e.Detail }

func newError(status int, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Detail: fmt.Sprintf(format, args...)}
}

// Status code policy: 422 for type and format validation (wrong JSON types,
// malformed JSON, unknown fields, bad email, IP, domain or date, unknown enum
// values, non-numeric ids); 400 where the reference had a deliberate
// business-rule check (invalid action, expiration_days/max_requests <= 0,
// unknown environment_tag, no fields to update, wrong confirmation, credits
// <= 0), so existing clients keep seeing the same status for those.
func errValidation(format string, args ...any) *apiError {
	return newError(http.StatusUnprocessableEntity, "validation_error", format, args...)
}

func errBadRequest(format string, args ...any) *apiError {
	return newError(http.StatusBadRequest, "bad_request", format, args...)
}

func errNotFound(detail string) *apiError {
	return newError(http.StatusNotFound, "not_found", "%s", detail)
}

// notFoundAs turns the store's ErrNotFound into a 404 saying detail and
// returns any other error (or nil) unchanged.
func notFoundAs(err error, detail string) error {
	if errors.Is(err, storage.ErrNotFound) {
		return errNotFound(detail)
	}
	return err
}

func errForbidden(detail string) *apiError {
	return newError(http.StatusForbidden, "forbidden", "%s", detail)
}

func errConflict(format string, args ...any) *apiError {
	return newError(http.StatusConflict, "conflict", format, args...)
}

// writeJSON writes v as a JSON response with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"detail":"Internal server error","code":"internal_error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// writeErr writes e in the {"detail": ...} shape.
func writeErr(w http.ResponseWriter, e *apiError) {
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="gatewayz"`)
	}
	body := map[string]string{"detail": e.Detail}
	if e.Code != "" {
		body["code"] = e.Code
	}
	writeJSON(w, e.Status, body)
}

// fail writes err as a response: an *apiError as it is, store errors as
// their 4xx, anything else as a logged 500 whose body says nothing more.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, storage.ErrNotFound):
		ae = errNotFound("Not found")
	case errors.Is(err, storage.ErrDuplicate):
		ae = errConflict("Already exists")
	case errors.Is(err, storage.ErrInvalid):
		ae = errValidation("Invalid request")
	case errors.Is(err, context.Canceled):
		return // the client went away; nothing to tell it
	case errors.Is(err, storage.ErrClosed), errors.Is(err, storage.ErrUnavailable):
		h.logger.Warn("store unavailable", zap.String("path", r.URL.Path), zap.Error(err))
		ae = newError(http.StatusServiceUnavailable, "unavailable", "Service temporarily unavailable")
	default:
		h.logger.Error("management API request failed",
			zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		ae = newError(http.StatusInternalServerError, "internal_error", "Internal server error")
	}
	writeErr(w, ae)
}

// decodeJSON reads the request body into dst with one set of rules for the
// whole API: at most maxBodyBytes (else 413), one JSON value of the right
// types with no unknown fields and nothing after it (else 422).
func (h *Handler) decodeJSON(w http.ResponseWriter, r *http.Request, dst any) error {
	limit := h.MaxBodyBytes
	if limit <= 0 {
		limit = defaultMaxBodyBytes
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return newError(http.StatusRequestEntityTooLarge, "body_too_large",
				"Request body too large (limit %d bytes)", limit)
		}
		return errValidation("Could not read the request body")
	}
	return decodeBody(body, dst)
}

// decodeRequest decodes the request body into a T for a handler. When the
// body is not acceptable it answers with the decoding error and reports
// false, and the handler returns.
func decodeRequest[T any](h *Handler, w http.ResponseWriter, r *http.Request) (T, bool) {
	var req T
	if err := h.decodeJSON(w, r, &req); err != nil {
		h.fail(w, r, err)
		return req, false
	}
	return req, true
}

// decodeBody is decodeJSON's pure part.
func decodeBody(body []byte, dst any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errValidation("Request body is required (JSON object)")
	}
	if !utf8.Valid(body) {
		// encoding/json would store U+FFFD in place of the bad bytes.
		return errValidation("Request body must be valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err, reflect.TypeOf(dst))
	}
	if _, err := dec.Token(); err != io.EOF {
		return errValidation("Request body must contain a single JSON object")
	}
	return nil
}

// jsonError turns a decoding error into a 422 that names the field, by
// the JSON names the client sent, but never echoes the input. dst is the
// type decoded into.
func jsonError(err error, dst reflect.Type) *apiError {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := jsonFieldPath(dst, typeErr.Field)
		if field == "" {
			return errValidation("Request body must be a JSON object")
		}
		return errValidation("Field %q must be %s", field, describeType(typeErr.Type.String()))
	case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF):
		return errValidation("Malformed JSON in request body")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return errValidation("Unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	return errValidation("Invalid JSON in request body")
}

// jsonFieldPath is a decoding error's field path as the client wrote it:
// encoding/json also names the embedded structs a field was promoted from
// ("userRef.user_id"), by their Go names, which are dropped here.
func jsonFieldPath(t reflect.Type, field string) string {
	var out []string
	for _, seg := range strings.Split(field, ".") {
		for t != nil && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map) {
			t = t.Elem()
		}
		if t == nil || t.Kind() != reflect.Struct {
			out, t = append(out, seg), nil
			continue
		}
		if f, ok := t.FieldByName(seg); ok && f.Anonymous {
			t = f.Type
			continue
		}
		out = append(out, seg)
		t = jsonFieldType(t, seg)
	}
	return strings.Join(out, ".")
}

// jsonFieldType is the type of the field of struct t named name in JSON
// (promoted fields included), or nil.
func jsonFieldType(t reflect.Type, name string) reflect.Type {
	for _, f := range reflect.VisibleFields(t) {
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == name || (tag == "" && strings.EqualFold(f.Name, name)) {
			return f.Type
		}
	}
	return nil
}

func describeType(t string) string {
	switch strings.TrimPrefix(t, "*") {
	case "int", "int64", "int32":
		return "an integer"
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "float64":
		return "a number"
	case "[]string":
		return "a list of strings"
	}
	if strings.HasPrefix(t, "map[") || strings.Contains(t, "Scope") {
		return "an object"
	}
	return "of a different type"
}

// pathID parses a numeric path parameter; anything else is a 422.
func pathID(r *http.Request, name string) (int64, error) {
	s := r.PathValue(name)
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, errValidation("Path parameter %s must be a positive integer", name)
	}
	return id, nil
}

// queryInt parses an optional integer query parameter within [min, max];
// values above max are clamped to max, other bad values are a 422.
func queryInt(r *http.Request, name string, def, min, max int64) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errValidation("Query parameter %s must be an integer", name)
	}
	if v < min {
		return 0, errValidation("Query parameter %s must be at least %d", name, min)
	}
	if v > max {
		v = max
	}
	return v, nil
}
