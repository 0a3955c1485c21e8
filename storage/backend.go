package storage

import (
	"encoding/json"
	"fmt"
	"time"
)

// What every backend does the same way: the audit chain's hashing, the
// hashes a key is found by, the normal form of an email.

// SealAudit returns e as entry id of the audit chain, following the entry
// whose hash is prev: API keys in its details masked, its links set, in the
// exact form that is stored and whose canonical JSON its Hash covers. A
// backend keeping times at a coarser precision truncates e.Time first, so
// that what it hashes is what it reads back.
func SealAudit(e AuditEntry, id int64, prev string) (AuditEntry, error) {
	if e.Details != nil {
		e.Details = redactMap(e.Details)
	}
	e.ID, e.PrevHash, e.Hash = id, prev, ""
	canon, err := canonicalAudit(e)
	if err != nil {
		return AuditEntry{}, fmt.Errorf("storage: audit details do not encode: %w", ErrInvalid)
	}
	// Store exactly the canonical form (plus the hash).
	var stored AuditEntry
	if err := json.Unmarshal(canon, &stored); err != nil {
		return AuditEntry{}, err
	}
	stored.Hash = auditHash(prev, canon)
	return stored, nil
}

// CheckAuditLink checks that e, read back as entry id, follows the entry
// whose hash is prev and matches its own hash (ErrAuditChainBroken if not).
func CheckAuditLink(e AuditEntry, id int64, prev string) error {
	if e.ID != id || e.PrevHash != prev {
		return fmt.Errorf("audit entry %d: link to previous entry broken: %w", id, ErrAuditChainBroken)
	}
	canon, err := canonicalAudit(e)
	if err != nil {
		return fmt.Errorf("audit entry %d: %w", id, ErrAuditChainBroken)
	}
	if auditHash(prev, canon) != e.Hash {
		return fmt.Errorf("audit entry %d: content does not match its hash: %w", id, ErrAuditChainBroken)
	}
	return nil
}

// IndexedHashes returns the hashes k must be found by at now: its hash, and
// its previous hash while the rotation grace lasts.
func IndexedHashes(k *APIKey, now time.Time) [][]byte { return indexedHashes(k, now) }

// AllHashes returns every hash k may be indexed under (its current and
// previous hash), the ones that must stop resolving when it goes.
func AllHashes(k *APIKey) [][]byte { return allHashes(k) }

// NormalizeEmail is the form in which emails are unique (trimmed, lower
// case).
func NormalizeEmail(email string) string { return normEmail(email) }
