package alerts

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"time"
)

// Endpoint is an operator's webhook: it receives every user's events of
// the types in Events (empty or "*": all).
type Endpoint struct {
	URL    string
	Secret string
	Events []string
}

// Target is the endpoint's name in the outbox ("operator:" and a hash of
// its URL): stable across reloads while the URL stays, and not the URL
// itself, which may carry a token.
func (e Endpoint) Target() string {
	sum := sha256.Sum256([]byte(e.URL))
	return "operator:" + hex.EncodeToString(sum[:8])
}

// Wants reports whether the endpoint receives events of type t. A ping
// (a user's test of their own webhook) goes to that webhook only.
func (e Endpoint) Wants(t string) bool {
	if t == Ping {
		return false
	}
	return len(e.Events) == 0 || slices.Contains(e.Events, AllEvents) || slices.Contains(e.Events, t)
}

// Decrypter opens the stored signing secrets of users' webhooks
// (storage.Keyring).
type Decrypter interface {
	Decrypt(tok string) (string, error)
}

// Config is what the Hub runs with; the config being loaded replaces it
// (Hub.Configure).
type Config struct {
	Endpoints []Endpoint
	// LowBalanceThreshold is the default of users' low_balance_threshold
	// (0: off).
	LowBalanceThreshold int64
	Guard               Guard
	Secrets             Decrypter
	// Timeout bounds one delivery attempt (connect, TLS, answer).
	Timeout time.Duration
	// RetryBase and RetryCeiling shape the backoff (RetryDelay); RetryFor
	// is how long after its event a delivery is retried before it fails.
	RetryBase, RetryCeiling, RetryFor time.Duration
	// PollInterval is how often the worker looks for due deliveries when
	// nothing woke it.
	PollInterval time.Duration
	// BatchWindow is the longest an event from the request path waits in
	// memory before the batch holding it is written to the outbox.
	BatchWindow time.Duration
	// ExpiryScan is how often keys are scanned for key.expiring;
	// ExpiryLead is how long before expiration_date it fires.
	ExpiryScan, ExpiryLead time.Duration
	// SecurityBurst refusals of one key within SecurityWindow make a
	// security.alert.
	SecurityBurst  int
	SecurityWindow time.Duration
	// Retention is how long events and their deliveries are kept.
	Retention time.Duration
}

// Defaults.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultRetryBase      = 30 * time.Second
	DefaultRetryCeiling   = time.Hour
	DefaultRetryFor       = 24 * time.Hour
	DefaultPollInterval   = time.Second
	DefaultBatchWindow    = 50 * time.Millisecond
	DefaultExpiryScan     = 10 * time.Minute
	DefaultExpiryLead     = 24 * time.Hour
	DefaultSecurityBurst  = 10
	DefaultSecurityWindow = time.Minute
	DefaultRetention      = 7 * 24 * time.Hour
	// MaxWebhooksPerUser caps the webhooks one user may register.
	MaxWebhooksPerUser = 5
	// MaxResponseBytes is the most of a receiver's answer read.
	MaxResponseBytes = 64 << 10
)

// withDefaults fills unset durations and counts.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Timeout, DefaultTimeout)
	def(&c.RetryBase, DefaultRetryBase)
	def(&c.RetryCeiling, DefaultRetryCeiling)
	def(&c.RetryFor, DefaultRetryFor)
	def(&c.PollInterval, DefaultPollInterval)
	def(&c.BatchWindow, DefaultBatchWindow)
	def(&c.ExpiryScan, DefaultExpiryScan)
	def(&c.ExpiryLead, DefaultExpiryLead)
	def(&c.SecurityWindow, DefaultSecurityWindow)
	def(&c.Retention, DefaultRetention)
	if c.SecurityBurst <= 0 {
		c.SecurityBurst = DefaultSecurityBurst
	}
	return c
}

// targets are the operator targets of an event of type t.
func (c *Config) targets(t string) []string {
	var out []string
	for _, e := range c.Endpoints {
		if e.Wants(t) {
			out = append(out, e.Target())
		}
	}
	return out
}

func (c *Config) endpoint(target string) (Endpoint, bool) {
	for _, e := range c.Endpoints {
		if e.Target() == target {
			return e, true
		}
	}
	return Endpoint{}, false
}
