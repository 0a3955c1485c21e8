package storage

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"time"
)

// ErrTooMany is returned when a per-user cap (webhooks per user) is
// reached; nothing was stored.
var ErrTooMany = errors.New("limit reached")

// Event is one alert, as a webhook receiver gets it: id (unique, for the
// receiver to drop duplicates), type, creation time, user and data.
type Event struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	CreatedAt time.Time       `json:"created_at"`
	UserID    int64           `json:"user_id"`
	Data      json.RawMessage `json:"data"`
}

// OutboxEvent is an event to store with the deliveries it makes: one per
// operator target in Targets, and one per active webhook of the event's
// user subscribed to its type, unless Webhook names the only webhook it
// goes to (a test ping).
type OutboxEvent struct {
	Event   Event
	Targets []string
	Webhook int64
}

// Delivery states.
const (
	DeliveryPending   = "pending"   // due at DueAt (or being attempted under a lease)
	DeliveryDelivered = "delivered" // the receiver answered 2xx
	DeliveryFailed    = "failed"    // given up: retries exhausted or the webhook is gone
)

// Delivery is one event on its way to one endpoint: an operator target
// ("operator:<id>") or a user's webhook ("webhook:<id>", WebhookID set,
// OwnerID its user).
type Delivery struct {
	ID            int64      `json:"id"`
	Event         Event      `json:"event"`
	Target        string     `json:"target"`
	WebhookID     int64      `json:"webhook_id,omitempty"`
	OwnerID       int64      `json:"owner_id,omitempty"`
	State         string     `json:"state"`
	Attempts      int        `json:"attempts"`
	DueAt         time.Time  `json:"due_at"`
	LastAttemptAt *time.Time `json:"last_attempt_at,omitempty"`
	LastStatus    int        `json:"last_status,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	DeliveredAt   *time.Time `json:"delivered_at,omitempty"`
}

// DeliveryResult is the outcome of one attempt: Delivered, or else retried
// at RetryAt, or given up when RetryAt is zero.
type DeliveryResult struct {
	At        time.Time
	Status    int    // the receiver's HTTP status (0: no answer)
	Error     string // why it failed, for the deliveries views
	Delivered bool
	RetryAt   time.Time
}

// DeliveryFilter selects deliveries, newest first. OwnerID set: only
// deliveries to that user's webhooks (never the operator's targets).
type DeliveryFilter struct {
	OwnerID int64
	Limit   int
}

// Webhook is an endpoint a user registered for their own events. Secret is
// the signing secret encrypted with the server secret (Keyring.Encrypt):
// the plaintext is shown once, at creation.
type Webhook struct {
	ID          int64     `json:"id"`
	UserID      int64     `json:"user_id"`
	URL         string    `json:"url"`
	Events      []string  `json:"events"` // event types; "*" for all
	Description string    `json:"description,omitempty"`
	Secret      string    `json:"secret"`
	IsActive    bool      `json:"is_active"`
	CreatedAt   time.Time `json:"created_at"`
}

// Wants reports whether the webhook subscribes to events of type t (a
// ping goes only to the webhook it tests, see OutboxEvent.Webhook).
func (w *Webhook) Wants(t string) bool {
	return w.IsActive && (slices.Contains(w.Events, "*") || slices.Contains(w.Events, t))
}

// WebhookTarget is the Delivery.Target of a user's webhook.
func WebhookTarget(id int64) string { return "webhook:" + strconv.FormatInt(id, 10) }

// Outbox keeps alert events and their deliveries durably, so that a
// restart or a crash loses none (at-least-once delivery), and the users'
// webhooks.
type Outbox interface {
	// AppendEvents stores events and their deliveries (see OutboxEvent),
	// due at once, in one transaction. An event whose id is stored already
	// is skipped, so writing the same event twice delivers it once.
	AppendEvents(ctx context.Context, events []OutboxEvent) error
	// ClaimDeliveries returns up to limit pending deliveries due at now and
	// leases them until now+lease: no other claim (of this or another
	// node) returns them before the lease ends or FinishDelivery.
	ClaimDeliveries(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Delivery, error)
	// FinishDelivery records the outcome of an attempt of delivery id.
	FinishDelivery(ctx context.Context, id int64, r DeliveryResult) error
	// ListDeliveries returns recent deliveries matching f, newest first.
	ListDeliveries(ctx context.Context, f DeliveryFilter) ([]Delivery, error)
	// PruneOutbox deletes events created before before, with their
	// deliveries whatever their state.
	PruneOutbox(ctx context.Context, before time.Time) (int, error)

	// CreateWebhook stores w (setting its ID and CreatedAt) unless its user
	// has maxPerUser webhooks already (ErrTooMany).
	CreateWebhook(ctx context.Context, w *Webhook, maxPerUser int) error
	GetWebhook(ctx context.Context, id int64) (*Webhook, error)
	// ListWebhooks returns a user's webhooks, oldest first.
	ListWebhooks(ctx context.Context, userID int64) ([]*Webhook, error)
	// DeleteWebhook deletes the user's webhook id (ErrNotFound when it is
	// not theirs). Its pending deliveries fail when attempted.
	DeleteWebhook(ctx context.Context, userID, id int64) error
}

// DefaultDeliveryLimit and MaxDeliveryLimit bound ListDeliveries.
const (
	DefaultDeliveryLimit = 50
	MaxDeliveryLimit     = 500
)

func deliveryLimit(n int) int {
	if n <= 0 {
		return DefaultDeliveryLimit
	}
	return min(n, MaxDeliveryLimit)
}

// ClampDeliveryLimit is the number of deliveries ListDeliveries returns
// for a requested limit.
func ClampDeliveryLimit(n int) int { return deliveryLimit(n) }

// finish applies an attempt's outcome to d.
func (d *Delivery) finish(r DeliveryResult) {
	at := r.At.UTC()
	d.Attempts++
	d.LastAttemptAt = &at
	d.LastStatus = r.Status
	d.LastError = r.Error
	switch {
	case r.Delivered:
		d.State = DeliveryDelivered
		d.DeliveredAt = &at
	case r.RetryAt.IsZero():
		d.State = DeliveryFailed
	default:
		d.State = DeliveryPending
		d.DueAt = r.RetryAt.UTC()
	}
}

// FinishDeliveryState applies an attempt's outcome to d, as every backend
// stores it.
func FinishDeliveryState(d *Delivery, r DeliveryResult) { d.finish(r) }
