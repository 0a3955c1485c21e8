// Package alerts turns changes of balances, keys and budgets into events
// and delivers them by signed webhooks through the store's outbox.
//
// The request path only computes whether a change crossed a threshold
// (pure functions, crossing.go) and hands an event to the Hub without
// blocking; the Hub writes events to the outbox in small batches and a
// delivery worker, off the request path, POSTs them, signed (signature.go),
// with retries (backoff.go) and, for users' endpoints, behind an SSRF guard
// (guard.go).
package alerts

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Event types.
const (
	BalanceLow         = "balance.low"
	BalanceDepleted    = "balance.depleted"
	KeyBudgetWarning   = "key.budget_warning"
	KeyBudgetReached   = "key.budget_reached"
	KeyExpiring        = "key.expiring"
	CreditsAdded       = "credits.added"
	SecurityAlert      = "security.alert"
	Ping               = "ping"
	AllEvents          = "*"
	maxEventsPerFilter = 16
)

// Types lists the event types an endpoint may subscribe to, in the order
// the documentation gives them.
var Types = []string{BalanceLow, BalanceDepleted, KeyBudgetWarning, KeyBudgetReached, KeyExpiring, CreditsAdded, SecurityAlert, Ping}

// ValidType reports whether t is an event type (or "*", every type).
func ValidType(t string) bool { return t == AllEvents || slices.Contains(Types, t) }

// NewEvent returns an event of type typ for user uid with a fresh random
// id; data is encoded as the event's data (nil: {}).
func NewEvent(typ string, uid int64, data any, now time.Time) storage.Event {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return newEvent("evt_"+hex.EncodeToString(b[:]), typ, uid, data, now)
}

// StableEvent is NewEvent with an id derived from key: the same key gives
// the same id, so every node (and every scan) that notices the same thing
// stores it once (the outbox skips an id it has).
func StableEvent(key, typ string, uid int64, data any, now time.Time) storage.Event {
	sum := sha256.Sum256([]byte(typ + "|" + key))
	return newEvent("evt_"+hex.EncodeToString(sum[:16]), typ, uid, data, now)
}

func newEvent(id, typ string, uid int64, data any, now time.Time) storage.Event {
	raw := json.RawMessage(`{}`)
	if data != nil {
		if b, err := json.Marshal(data); err == nil {
			raw = b
		}
	}
	return storage.Event{ID: id, Type: typ, UserID: uid, CreatedAt: now.UTC(), Data: raw}
}
