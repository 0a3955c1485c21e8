package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"go.etcd.io/bbolt"
)

var kAuditHead = []byte("audit_head") // meta: id (8 bytes) + hash of the last entry

// auditExportChunk is how many entries ExportAudit reads per transaction.
var auditExportChunk = 1000

// canonicalAudit returns the bytes an entry's hash covers: its JSON with
// Hash empty, normalized by one decode/encode round trip so that the stored
// form re-encodes identically (map keys sorted, numbers as decoded).
func canonicalAudit(e AuditEntry) ([]byte, error) {
	e.Hash = ""
	data, err := json.Marshal(&e)
	if err != nil {
		return nil, err
	}
	var n AuditEntry
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, err
	}
	return json.Marshal(&n)
}

func auditHash(prev string, canonical []byte) string {
	h := sha256.New()
	h.Write([]byte(prev))
	h.Write(canonical)
	return hex.EncodeToString(h.Sum(nil))
}

// AppendAudit stores e at the end of the hash chain. Any string in Details
// that contains a well-formed API key is masked first, so no key reaches
// the log in plaintext.
func (s *BoltStore) AppendAudit(ctx context.Context, e *AuditEntry) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	if e == nil || e.Action == "" {
		return fmt.Errorf("storage: audit entry needs an action: %w", ErrInvalid)
	}
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	ne := *e
	if ne.Time.IsZero() {
		ne.Time = s.now()
	}
	ne.Time = ne.Time.UTC().Round(0)
	err := s.update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bAudit)
		prev := ""
		if k, v := b.Cursor().Last(); k != nil {
			var last AuditEntry
			if err := jsonUnmarshal(v, &last); err != nil {
				return err
			}
			prev = last.Hash
		}
		id, err := nextID(b)
		if err != nil {
			return err
		}
		stored, err := SealAudit(ne, id, prev)
		if err != nil {
			return err
		}
		ne = stored
		if err := putJSON(b, id8(id), &stored); err != nil {
			return err
		}
		head := append(id8(id), stored.Hash...)
		return tx.Bucket(bMeta).Put(kAuditHead, head)
	})
	if err != nil {
		return err
	}
	*e = ne
	return nil
}

// ListAudit returns entries matching f, newest first.
func (s *BoltStore) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	var out []AuditEntry
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bAudit).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			var e AuditEntry
			if err := jsonUnmarshal(v, &e); err != nil {
				return err
			}
			if !auditMatches(&e, &f) {
				continue
			}
			out = append(out, e)
			if f.Limit > 0 && len(out) >= f.Limit {
				break
			}
		}
		return nil
	})
	return out, err
}

func auditMatches(e *AuditEntry, f *AuditFilter) bool {
	if f.UserID != 0 && e.UserID != f.UserID {
		return false
	}
	if f.KeyID != 0 && e.KeyID != f.KeyID {
		return false
	}
	if f.Action != "" || len(f.Actions) > 0 {
		ok := e.Action == f.Action
		for _, a := range f.Actions {
			ok = ok || e.Action == a
		}
		if !ok {
			return false
		}
	}
	if !f.Since.IsZero() && e.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && e.Time.After(f.Until) {
		return false
	}
	return true
}

// VerifyAudit walks the chain from the first entry and checks every link
// and hash, and that the last entry is the recorded head (so removing the
// newest entries is detected too).
func (s *BoltStore) VerifyAudit(ctx context.Context) (int, error) {
	n := 0
	err := s.view(func(tx *bbolt.Tx) error {
		prev := ""
		var lastID int64
		c := tx.Bucket(bAudit).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			id := int64(binary.BigEndian.Uint64(k))
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("audit entry %d does not decode: %w", id, ErrAuditChainBroken)
			}
			if err := CheckAuditLink(e, id, prev); err != nil {
				return err
			}
			prev, lastID = e.Hash, id
			n++
		}
		head := tx.Bucket(bMeta).Get(kAuditHead)
		switch {
		case head == nil && n == 0:
		case head == nil || len(head) < 8:
			return fmt.Errorf("audit head record missing: %w", ErrAuditChainBroken)
		case int64(binary.BigEndian.Uint64(head)) != lastID || !bytes.Equal(head[8:], []byte(prev)):
			return fmt.Errorf("audit chain ends at entry %d, but the head is entry %d: %w",
				lastID, int64(binary.BigEndian.Uint64(head)), ErrAuditChainBroken)
		}
		return nil
	})
	return n, err
}

// ExportAudit writes the chain as JSON lines, oldest first. Entries are
// read in chunks, so a slow writer never holds a read transaction open
// (which could stall the group committer when the file grows).
func (s *BoltStore) ExportAudit(ctx context.Context, w io.Writer) error {
	var after []byte
	var buf bytes.Buffer
	for {
		if err := ctxErr(ctx); err != nil {
			return err
		}
		buf.Reset()
		n := 0
		err := s.view(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bAudit).Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
			for ; k != nil && n < auditExportChunk; k, v = c.Next() {
				buf.Write(v)
				buf.WriteByte('\n')
				after = append(after[:0], k...)
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
	}
}

// redactMap returns a copy of m with well-formed API keys inside string
// values replaced by their masked form.
func redactMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = redactValue(v)
	}
	return out
}

func redactValue(v any) any {
	switch x := v.(type) {
	case string:
		return RedactKeys(x)
	case map[string]any:
		return redactMap(x)
	case []any:
		o := make([]any, len(x))
		for i := range x {
			o[i] = redactValue(x[i])
		}
		return o
	case []string:
		o := make([]string, len(x))
		for i := range x {
			o[i] = RedactKeys(x[i])
		}
		return o
	}
	return v
}

// RedactKeys replaces every well-formed API key inside s by its masked
// form (MaskKey).
func RedactKeys(s string) string {
	if !strings.Contains(s, "gw_") {
		return s
	}
	var b strings.Builder
	i := 0
	for i < len(s) {
		j := strings.Index(s[i:], "gw_")
		if j < 0 {
			break
		}
		j += i
		replaced := false
		for _, p := range [...]string{"gw_live_", "gw_test_", "gw_staging_", "gw_dev_"} {
			end := j + len(p) + keySecretLen
			if end > len(s) || !strings.HasPrefix(s[j:], p) {
				continue
			}
			if _, ok := ParseKey(s[j:end]); ok {
				b.WriteString(s[i:j])
				b.WriteString(MaskKey(s[j:end]))
				i = end
				replaced = true
			}
			break
		}
		if !replaced {
			b.WriteString(s[i : j+3])
			i = j + 3
		}
	}
	b.WriteString(s[i:])
	return b.String()
}
