package storage

import (
	"encoding/json"
	"time"
)

// User is an account holder. Its credit balance is not a field: it follows
// from the ledger (see Store.Balance).
type User struct {
	ID                 int64           `json:"id"`
	Username           string          `json:"username"`
	Email              string          `json:"email"`
	Name               string          `json:"name,omitempty"`
	AuthMethod         string          `json:"auth_method"`
	IsActive           bool            `json:"is_active"`
	SubscriptionStatus string          `json:"subscription_status"` // trial|active|expired|cancelled
	TrialExpiresAt     time.Time       `json:"trial_expires_at"`
	RegistrationDate   time.Time       `json:"registration_date"`
	Preferences        json.RawMessage `json:"preferences,omitempty"`
	Settings           json.RawMessage `json:"settings,omitempty"`
	// LowBalanceThreshold is the balance below which balance.low fires
	// for this user; nil: the operator's default; 0: off.
	LowBalanceThreshold *int64    `json:"low_balance_threshold,omitempty"`
	CreatedAt           time.Time `json:"created_at"`
	UpdatedAt           time.Time `json:"updated_at"`
}

// RateLimits are per-window request and token limits. A zero field means
// "not set at this level" (the next level down applies).
type RateLimits struct {
	RequestsPerMinute int64 `json:"requests_per_minute"`
	RequestsPerHour   int64 `json:"requests_per_hour"`
	RequestsPerDay    int64 `json:"requests_per_day"`
	TokensPerMinute   int64 `json:"tokens_per_minute"`
	TokensPerHour     int64 `json:"tokens_per_hour"`
	TokensPerDay      int64 `json:"tokens_per_day"`
}

// IsZero reports whether no limit is set.
func (l RateLimits) IsZero() bool { return l == RateLimits{} }

// APIKey is a stored key. The plaintext key is never stored: Hash is
// HMAC-SHA256(server secret, key) and Encrypted a Fernet token of it.
type APIKey struct {
	ID              int64      `json:"id"`
	UserID          int64      `json:"user_id"`
	KeyName         string     `json:"key_name"`
	Hash            []byte     `json:"hash"`
	Encrypted       string     `json:"encrypted"`
	Prefix          string     `json:"prefix"` // masked display form, e.g. "gw_live_AbCd"
	EnvironmentTag  string     `json:"environment_tag"`
	Scopes          Scopes     `json:"scope_permissions"`
	IsActive        bool       `json:"is_active"`
	IsPrimary       bool       `json:"is_primary"`
	ExpirationDate  *time.Time `json:"expiration_date,omitempty"`
	MaxRequests     *int64     `json:"max_requests,omitempty"`
	RequestsUsed    int64      `json:"requests_used"`
	IPAllowlist     []string   `json:"ip_allowlist"`
	DomainReferrers []string   `json:"domain_referrers"`
	RateLimits      RateLimits `json:"rate_limits"` // the key's own limits; zero fields unset
	// Budget is the key's spend limit per window (storage/budget.go).
	Budget
	// Spend is what the key spent in its budget window: a counter kept
	// beside the key like RequestsUsed, never in its JSON.
	Spend           Spend      `json:"-"`
	CreatedByUserID int64      `json:"created_by_user_id"`
	LastUsedAt      *time.Time `json:"last_used_at,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
	UpdatedAt       time.Time  `json:"updated_at"`

	// PrevHash is the hash of the secret replaced by the last rotation; it
	// keeps authenticating until PrevHashExpiresAt (the rotation grace).
	PrevHash          []byte    `json:"prev_hash,omitempty"`
	PrevHashExpiresAt time.Time `json:"prev_hash_expires_at,omitzero"`
}

// Expired reports whether the key's expiration date has passed at now.
func (k *APIKey) Expired(now time.Time) bool {
	return k.ExpirationDate != nil && !now.Before(*k.ExpirationDate)
}

// Plan is a subscription plan.
type Plan struct {
	ID                  int64    `json:"id"`
	Name                string   `json:"name"`
	Description         string   `json:"description"`
	DailyRequestLimit   int64    `json:"daily_request_limit"`
	MonthlyRequestLimit int64    `json:"monthly_request_limit"`
	DailyTokenLimit     int64    `json:"daily_token_limit"`
	MonthlyTokenLimit   int64    `json:"monthly_token_limit"`
	PricePerMonth       float64  `json:"price_per_month"` // display only; never used in credit arithmetic
	Features            []string `json:"features"`
	// Models are globs ("gpt-4o*", "*") of the models the plan may call;
	// empty means every model.
	Models    []string  `json:"models,omitempty"`
	IsActive  bool      `json:"is_active"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// UserPlan is a user's subscription to a plan.
type UserPlan struct {
	ID        int64     `json:"id"`
	UserID    int64     `json:"user_id"`
	PlanID    int64     `json:"plan_id"`
	StartDate time.Time `json:"start_date"`
	EndDate   time.Time `json:"end_date"`
	IsActive  bool      `json:"is_active"`
}

// ActiveAt reports whether the subscription is in force at now. An expired
// plan counts as no plan; nothing is written when it lapses.
func (p *UserPlan) ActiveAt(now time.Time) bool {
	return p != nil && p.IsActive && now.Before(p.EndDate)
}

// LedgerKind names a ledger entry type.
type LedgerKind string

// Ledger entry kinds.
const (
	LedgerGrant  LedgerKind = "grant"  // signup credits
	LedgerTopUp  LedgerKind = "top_up" // admin add_credits
	LedgerCharge LedgerKind = "charge" // settlement of a request (negative amount)
	LedgerAdjust LedgerKind = "admin_adjustment"
)

// LedgerEntry is one append-only movement of credits. The balance of a user
// is the sum of the Amount of their entries. Reservations are not ledger
// entries: they hold credit without moving it, and a settlement's charge is
// in a charge entry, which may cover several settlements (see Requests; a
// refund writes none, because nothing moved).
type LedgerEntry struct {
	ID             int64      `json:"id"`
	UserID         int64      `json:"user_id"`
	Kind           LedgerKind `json:"kind"`
	Amount         int64      `json:"amount"` // signed credits
	BalanceAfter   int64      `json:"balance_after"`
	KeyID          int64      `json:"key_id,omitempty"`
	RequestID      string     `json:"request_id,omitempty"`
	IdempotencyKey string     `json:"idempotency_key,omitempty"`
	Note           string     `json:"note,omitempty"`
	Time           time.Time  `json:"time"`
	// Requests is how many settled requests a charge entry covers: the
	// store may group the charges of a user's consecutive settlements into
	// one entry (a group commit's worth, and every run older than the
	// usage detail retention), whose RequestID is then empty. The usage
	// records, and after them the rollups, keep the per-request detail.
	Requests int64 `json:"requests,omitempty"`
}

// Reservation holds credit for one in-flight request.
type Reservation struct {
	ID     uint64
	UserID int64
	KeyID  int64
	Amount int64 // credits held
	// Available is the user's available balance right after the hold (for
	// the caller's credits-remaining header; it moves with every other
	// request of the user).
	Available int64
	// Spent is set by a successful Settle: what it did to the key's and
	// the user's spend budgets (nil before; allocated by the settlement,
	// so that a reservation stays small).
	Spent *SettleSpend
	// Limits is what a LimitCounter counted (ReserveRequest.Limits; else nil).
	Limits *LimitState
}

// Balance is a user's credit position.
type Balance struct {
	Credits  int64 `json:"credits"`  // what the ledger adds up to
	Reserved int64 `json:"reserved"` // held by open reservations
}

// Available is what new reservations may still take.
func (b Balance) Available() int64 { return b.Credits - b.Reserved }

// UsageRecord is the metered outcome of one request.
type UsageRecord struct {
	UserID           int64     `json:"user_id"`
	KeyID            int64     `json:"key_id"`
	Model            string    `json:"model"`
	PromptTokens     int64     `json:"prompt_tokens"`
	CompletionTokens int64     `json:"completion_tokens"`
	TotalTokens      int64     `json:"total_tokens"`
	Credits          int64     `json:"credits"`
	RequestID        string    `json:"request_id"`
	Time             time.Time `json:"timestamp"`
	Status           int       `json:"status"`    // HTTP status returned to the client
	Estimated        bool      `json:"estimated"` // usage estimated rather than reported by the upstream
	Endpoint         string    `json:"endpoint,omitempty"`
	// CachedTokens and CacheWriteTokens are the parts of PromptTokens the
	// upstream read from and wrote to its prompt cache (priced apart).
	CachedTokens     int64 `json:"cached_tokens,omitempty"`
	CacheWriteTokens int64 `json:"cache_write_tokens,omitempty"`
}

// Outcome classes a settled request for the rollups.
type Outcome string

// Outcomes.
const (
	OutcomeSuccess   Outcome = "success"   // answered, usage reported by the upstream
	OutcomeEstimated Outcome = "estimated" // answered, usage estimated
	OutcomeError     Outcome = "error"     // settled with an error status (a refusal)
)

// Outcome classes the record.
func (r *UsageRecord) Outcome() Outcome {
	switch {
	case r.Status >= 400:
		return OutcomeError
	case r.Estimated:
		return OutcomeEstimated
	}
	return OutcomeSuccess
}

// RollupPeriod is the span of a rollup.
type RollupPeriod string

// Rollup periods (UTC).
const (
	RollupHour RollupPeriod = "hour"
	RollupDay  RollupPeriod = "day"
)

// Truncate returns the start of the period holding t, in UTC.
func (p RollupPeriod) Truncate(t time.Time) time.Time {
	t = t.UTC()
	if p == RollupDay {
		y, m, d := t.Date()
		return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	}
	return t.Truncate(time.Hour)
}

// UsageRollup is the sum of the usage records of one user, key, model and
// outcome over one UTC hour or day. Rollups are kept after the records
// they sum are pruned (see Maintenance.PruneUsage), so reports over long
// periods read them.
type UsageRollup struct {
	Start            time.Time `json:"start"`
	UserID           int64     `json:"user_id"`
	KeyID            int64     `json:"key_id"`
	Model            string    `json:"model"`
	Outcome          Outcome   `json:"outcome"`
	Requests         int64     `json:"requests"`
	PromptTokens     int64     `json:"prompt_tokens"`
	CompletionTokens int64     `json:"completion_tokens"`
	TotalTokens      int64     `json:"total_tokens"`
	CachedTokens     int64     `json:"cached_tokens"`
	CacheWriteTokens int64     `json:"cache_write_tokens"`
	Credits          int64     `json:"credits"`
}

// Add adds one usage record to the rollup's sums.
func (u *UsageRollup) Add(r *UsageRecord) {
	u.Requests++
	u.PromptTokens += r.PromptTokens
	u.CompletionTokens += r.CompletionTokens
	u.TotalTokens += r.TotalTokens
	u.CachedTokens += r.CachedTokens
	u.CacheWriteTokens += r.CacheWriteTokens
	u.Credits += r.Credits
}

// Merge adds another rollup's sums.
func (u *UsageRollup) Merge(o *UsageRollup) {
	u.Requests += o.Requests
	u.PromptTokens += o.PromptTokens
	u.CompletionTokens += o.CompletionTokens
	u.TotalTokens += o.TotalTokens
	u.CachedTokens += o.CachedTokens
	u.CacheWriteTokens += o.CacheWriteTokens
	u.Credits += o.Credits
}

// RollupFilter selects rollups of one period kind whose Start is in
// [Since, Until). Zero fields do not filter.
type RollupFilter struct {
	Period RollupPeriod // RollupHour or RollupDay (required)
	UserID int64
	KeyID  int64
	Since  time.Time
	Until  time.Time
}

// UsageFilter selects usage records. Zero fields do not filter.
type UsageFilter struct {
	UserID int64
	KeyID  int64
	Since  time.Time
	Until  time.Time
	Limit  int
}

// AuditEntry is one tamper-evident audit log entry. Hash is
// SHA-256(PrevHash || canonical JSON of the entry without Hash), so changing
// or removing any entry breaks the chain.
type AuditEntry struct {
	ID       int64          `json:"id"`
	UserID   int64          `json:"user_id,omitempty"`
	KeyID    int64          `json:"api_key_id,omitempty"`
	Action   string         `json:"action"`
	Actor    string         `json:"actor,omitempty"` // "user:12", "admin", "gateway"
	IP       string         `json:"ip,omitempty"`
	Details  map[string]any `json:"details,omitempty"`
	Time     time.Time      `json:"timestamp"`
	PrevHash string         `json:"prev_hash"`
	Hash     string         `json:"hash"`
}

// AuditFilter selects audit entries, newest first. Zero fields do not filter.
type AuditFilter struct {
	UserID  int64
	KeyID   int64
	Action  string
	Actions []string
	Since   time.Time
	Until   time.Time
	Limit   int
}

// KeyChange tells subscribers (the gateway's in-memory key index) that a key
// changed. Key is nil when it was deleted; OldHashes are hashes that must no
// longer resolve to it.
type KeyChange struct {
	KeyID     int64
	UserID    int64
	Key       *APIKey
	OldHashes [][]byte
}
