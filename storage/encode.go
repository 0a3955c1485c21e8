package storage

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// Append-style JSON encoders for the two records every settlement writes.
// They produce exactly what encoding/json.Marshal produces for these types
// (field order, omitempty, HTML-safe string escaping, RFC 3339 times), so
// records written either way read the same; encode_test.go checks it. A
// value json.Marshal would refuse (a time outside years 0-9999) falls back
// to json.Marshal for its error.

const hexDigits = "0123456789abcdef"

// jsonSafe[b] reports whether ASCII byte b is copied as is (json.Marshal
// escapes control characters, '"', '\\', and '<', '>', '&' for HTML).
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
	}
	return t
}()

// appendJSONString appends s as a JSON string, escaped as json.Marshal does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// timeEncodable reports whether t encodes as plain RFC 3339 (what
// Time.MarshalJSON accepts).
func timeEncodable(t time.Time) bool {
	if y := t.Year(); y < 0 || y > 9999 {
		return false
	}
	_, off := t.Zone()
	return off > -24*3600 && off < 24*3600 && off%60 == 0
}

func appendJSONTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

func appendField(b []byte, name string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	return append(b, '"', ':')
}

func appendIntField(b []byte, name string, v int64) []byte {
	return strconv.AppendInt(appendField(b, name), v, 10)
}

// appendLedgerEntry appends json.Marshal(e) to b.
func appendLedgerEntry(b []byte, e *LedgerEntry) ([]byte, error) {
	if !timeEncodable(e.Time) {
		v, err := json.Marshal(e)
		return append(b, v...), err
	}
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, e.ID, 10)
	b = appendIntField(b, "user_id", e.UserID)
	b = appendJSONString(appendField(b, "kind"), string(e.Kind))
	b = appendIntField(b, "amount", e.Amount)
	b = appendIntField(b, "balance_after", e.BalanceAfter)
	if e.KeyID != 0 {
		b = appendIntField(b, "key_id", e.KeyID)
	}
	if e.RequestID != "" {
		b = appendJSONString(appendField(b, "request_id"), e.RequestID)
	}
	if e.IdempotencyKey != "" {
		b = appendJSONString(appendField(b, "idempotency_key"), e.IdempotencyKey)
	}
	if e.Note != "" {
		b = appendJSONString(appendField(b, "note"), e.Note)
	}
	b = appendJSONTime(appendField(b, "time"), e.Time)
	return append(b, '}'), nil
}

// appendUsageRecord appends json.Marshal(r) to b.
func appendUsageRecord(b []byte, r *UsageRecord) ([]byte, error) {
	if !timeEncodable(r.Time) {
		v, err := json.Marshal(r)
		return append(b, v...), err
	}
	b = append(b, `{"user_id":`...)
	b = strconv.AppendInt(b, r.UserID, 10)
	b = appendIntField(b, "key_id", r.KeyID)
	b = appendJSONString(appendField(b, "model"), r.Model)
	b = appendIntField(b, "prompt_tokens", r.PromptTokens)
	b = appendIntField(b, "completion_tokens", r.CompletionTokens)
	b = appendIntField(b, "total_tokens", r.TotalTokens)
	b = appendIntField(b, "credits", r.Credits)
	b = appendJSONString(appendField(b, "request_id"), r.RequestID)
	b = appendJSONTime(appendField(b, "timestamp"), r.Time)
	b = appendIntField(b, "status", int64(r.Status))
	b = append(appendField(b, "estimated"), strconv.FormatBool(r.Estimated)...)
	if r.Endpoint != "" {
		b = appendJSONString(appendField(b, "endpoint"), r.Endpoint)
	}
	if r.CachedTokens != 0 {
		b = appendIntField(b, "cached_tokens", r.CachedTokens)
	}
	if r.CacheWriteTokens != 0 {
		b = appendIntField(b, "cache_write_tokens", r.CacheWriteTokens)
	}
	return append(b, '}'), nil
}
