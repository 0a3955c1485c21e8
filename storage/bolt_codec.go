package storage

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Binary encodings of the records every settlement writes (since
// migrateRollups): usage records and ledger entries are varints instead of
// JSON, the model and endpoint of a stored usage record are ids of the
// name dictionary (see bolt_names.go) and a UUID request id is its 16
// bytes. A binary record
// starts with recBinary; older records are JSON (they start with '{') and
// are read as they are, so nothing is rewritten by the upgrade: they age
// out with the usage detail retention.

const recBinary = 0x01

// Usage record flags.
const (
	usageEstimated = 1 << iota
	usageUUID      // the request id is a lowercase UUID, stored as 16 bytes
	usageNameIDs   // model and endpoint are name ids (stored), else strings (logged)
)

// usageNames are the name ids of a stored record's model and endpoint.
type usageNames struct{ model, endpoint uint32 }

// timeEncodable reports whether t is in the years 0-9999, the times a
// usage record may carry (what RFC 3339 and JSON take).
func timeEncodable(t time.Time) bool {
	y := t.Year()
	return y >= 0 && y <= 9999
}

const hexDigits = "0123456789abcdef"

// appendUsageBinary appends r. With names, model and endpoint are written
// as their ids (the stored form), else as strings (the form logged in the
// write-ahead log, before ids are given). The time is written as seconds
// after base (the start of the record's day bucket when stored, the Unix
// epoch when logged) and nanoseconds; the user id is not written (the key
// and the op carry it).
func appendUsageBinary(b []byte, r *UsageRecord, base time.Time, names *usageNames) []byte {
	var flags byte
	if r.Estimated {
		flags |= usageEstimated
	}
	uuid, isUUID := parseUUID(r.RequestID)
	if isUUID {
		flags |= usageUUID
	}
	if names != nil {
		flags |= usageNameIDs
	}
	b = append(b, recBinary, flags)
	b = binary.AppendVarint(b, r.KeyID)
	if names != nil {
		b = binary.AppendUvarint(b, uint64(names.model))
		b = binary.AppendUvarint(b, uint64(names.endpoint))
	} else {
		b = appendString(b, r.Model)
		b = appendString(b, r.Endpoint)
	}
	b = binary.AppendVarint(b, r.PromptTokens)
	b = binary.AppendVarint(b, r.CompletionTokens)
	b = binary.AppendVarint(b, r.TotalTokens-r.PromptTokens-r.CompletionTokens)
	b = binary.AppendVarint(b, r.CachedTokens)
	b = binary.AppendVarint(b, r.CacheWriteTokens)
	b = binary.AppendVarint(b, r.Credits)
	b = binary.AppendVarint(b, int64(r.Status))
	b = binary.AppendVarint(b, r.Time.Unix()-base.Unix())
	b = binary.AppendUvarint(b, uint64(r.Time.Nanosecond()))
	if isUUID {
		return append(b, uuid[:]...)
	}
	return appendString(b, r.RequestID)
}

// decodeUsage decodes a usage record of user userID, binary (see
// appendUsageBinary) or JSON. name resolves name ids.
func decodeUsage(v []byte, userID int64, base time.Time, name func(uint32) (string, error)) (UsageRecord, error) {
	var r UsageRecord
	if len(v) > 0 && v[0] == '{' {
		if err := jsonUnmarshal(v, &r); err != nil {
			return r, err
		}
		r.Time = r.Time.UTC()
		return r, nil
	}
	rd := walReader{b: v}
	if rd.byte() != recBinary {
		return r, errCorruptRecord
	}
	flags := rd.byte()
	r.UserID = userID
	r.KeyID = rd.varint()
	if flags&usageNameIDs != 0 {
		m, e := rd.uvarint(), rd.uvarint()
		if rd.err != nil || m > 1<<32-1 || e > 1<<32-1 {
			return r, errCorruptRecord
		}
		var err error
		if r.Model, err = name(uint32(m)); err != nil {
			return r, err
		}
		if r.Endpoint, err = name(uint32(e)); err != nil {
			return r, err
		}
	} else {
		r.Model, r.Endpoint = string(rd.str()), string(rd.str())
	}
	r.PromptTokens = rd.varint()
	r.CompletionTokens = rd.varint()
	r.TotalTokens = rd.varint() + r.PromptTokens + r.CompletionTokens
	r.CachedTokens = rd.varint()
	r.CacheWriteTokens = rd.varint()
	r.Credits = rd.varint()
	r.Status = int(rd.varint())
	secs := rd.varint()
	nanos := rd.uvarint()
	if nanos >= 1e9 {
		return r, errCorruptRecord
	}
	r.Time = time.Unix(base.Unix()+secs, int64(nanos)).UTC()
	r.Estimated = flags&usageEstimated != 0
	if flags&usageUUID != 0 {
		if len(rd.b) != 16 {
			return r, errCorruptRecord
		}
		r.RequestID = formatUUID(rd.b)
		rd.b = nil
	} else {
		r.RequestID = string(rd.str())
	}
	if rd.err != nil || len(rd.b) != 0 {
		return r, errCorruptRecord
	}
	return r, nil
}

var errCorruptRecord = fmt.Errorf("storage: corrupt record")

// Ledger kinds as one byte; 0 means the kind follows as a string.
var ledgerKindCodes = [...]LedgerKind{1: LedgerGrant, 2: LedgerTopUp, 3: LedgerCharge, 4: LedgerAdjust}

// appendLedgerBinary appends e without its id and user id (the key and
// the bucket hold them).
func appendLedgerBinary(b []byte, e *LedgerEntry) []byte {
	code := byte(0)
	for c, k := range ledgerKindCodes {
		if c > 0 && k == e.Kind {
			code = byte(c)
		}
	}
	b = append(b, recBinary, code)
	if code == 0 {
		b = appendString(b, string(e.Kind))
	}
	b = binary.AppendVarint(b, e.Amount)
	b = binary.AppendVarint(b, e.BalanceAfter)
	b = binary.AppendVarint(b, e.KeyID)
	b = binary.AppendVarint(b, e.Requests)
	b = binary.AppendVarint(b, e.Time.UnixNano())
	b = appendString(b, e.RequestID)
	b = appendString(b, e.IdempotencyKey)
	return appendString(b, e.Note)
}

// decodeLedger decodes the entry id of user userID, binary or JSON.
func decodeLedger(v []byte, id, userID int64) (LedgerEntry, error) {
	var e LedgerEntry
	if len(v) > 0 && v[0] == '{' {
		err := jsonUnmarshal(v, &e)
		e.Time = e.Time.UTC()
		if e.Kind == LedgerCharge && e.Requests == 0 {
			e.Requests = 1 // written one per request
		}
		return e, err
	}
	rd := walReader{b: v}
	if rd.byte() != recBinary {
		return e, errCorruptRecord
	}
	e.ID, e.UserID = id, userID
	code := rd.byte()
	switch {
	case code == 0:
		e.Kind = LedgerKind(rd.str())
	case int(code) < len(ledgerKindCodes):
		e.Kind = ledgerKindCodes[code]
	default:
		return e, errCorruptRecord
	}
	e.Amount = rd.varint()
	e.BalanceAfter = rd.varint()
	e.KeyID = rd.varint()
	e.Requests = rd.varint()
	e.Time = time.Unix(0, rd.varint()).UTC()
	e.RequestID = string(rd.str())
	e.IdempotencyKey = string(rd.str())
	e.Note = string(rd.str())
	if rd.err != nil || len(rd.b) != 0 {
		return e, errCorruptRecord
	}
	return e, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// str reads what appendString wrote.
func (r *walReader) str() []byte {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// parseUUID parses a UUID in its lowercase 36-character form.
func parseUUID(s string) (u [16]byte, ok bool) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, false
	}
	j := 0
	for i := 0; i < 36; {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
			continue
		}
		hi, ok1 := lowerHex(s[i])
		lo, ok2 := lowerHex(s[i+1])
		if !ok1 || !ok2 {
			return u, false
		}
		u[j] = hi<<4 | lo
		j++
		i += 2
	}
	return u, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// formatUUID formats 16 bytes as a lowercase UUID.
func formatUUID(u []byte) string {
	var b [36]byte
	j := 0
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b[j] = '-'
			j++
		}
		b[j], b[j+1] = hexDigits[c>>4], hexDigits[c&0xF]
		j += 2
	}
	return string(b[:])
}
