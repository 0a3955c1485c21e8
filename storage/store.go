// Package storage is the persistent state of caddy-gatewayz: users, API keys
// (hashed and encrypted, never in plaintext), plans, the credit ledger, usage
// records and the audit log. It knows nothing about HTTP or Caddy.
//
// Store is the interface a backend implements, made of the roles its callers
// use (Gateway for the request path, the rest for the management API); the
// embedded bbolt implementation (Open) is the default, and a networked
// backend implements the same interface and passes the same conformance
// suite (package storetest).
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Errors returned by Store implementations. Callers test them with errors.Is.
var (
	ErrNotFound            = errors.New("not found")
	ErrDuplicate           = errors.New("already exists")
	ErrInsufficientCredits = errors.New("insufficient credits")
	ErrRequestLimit        = errors.New("key request limit reached")
	ErrAlreadySettled      = errors.New("reservation already settled or refunded")
	ErrInvalid             = errors.New("invalid argument")
	ErrClosed              = errors.New("store closed")
	ErrAuditChainBroken    = errors.New("audit chain broken")
	// ErrUnavailable wraps the errors of a networked backend whose
	// database cannot be reached (down, restarting, connection lost): the
	// handlers answer 503 and the request may be retried.
	ErrUnavailable = errors.New("database unavailable")
)

// ChangeKind says what kind of record a Change is about.
type ChangeKind string

// Change kinds.
const (
	ChangeKey    ChangeKind = "key"    // a key was created, updated, rotated or deleted
	ChangeUser   ChangeKind = "user"   // a user was updated or deleted (with all their keys)
	ChangePlan   ChangeKind = "plan"   // a plan's definition changed
	ChangeLimits ChangeKind = "limits" // a user's admin rate limits or plan assignment changed
	// ChangeCredits: credits came back to a user outside this process's
	// own Settle and Refund calls: AddCredits, and, for a database several
	// nodes share, the release of a dead node's holds. Requests waiting
	// for credits retry on it. Another node's settlements and refunds are
	// not published (a change per request would load the feed): waiting
	// requests also retry on a timer.
	ChangeCredits ChangeKind = "credits"
	// ChangeAll: any record may have changed. A store whose feed comes
	// from other processes sends it when the feed resumes after a break
	// (a lost notification connection, a database outage): subscribers
	// drop every cached record.
	ChangeAll ChangeKind = "all"
)

// Change tells subscribers (the gateway's in-memory key index) that a record
// changed, after the change is committed. Subscribers re-read what they need.
// OldHashes lists key hashes that must stop resolving (rotation, deletion).
type Change struct {
	Kind      ChangeKind
	UserID    int64
	KeyID     int64
	PlanID    int64
	OldHashes [][]byte
}

// ReserveRequest asks to hold credit (and, for keys with max_requests, one
// request slot) for one in-flight request.
//
// A fixed reservation (MinCredits 0, or not below Credits) holds exactly
// Credits. A flexible one (0 < MinCredits < Credits: the caller can lower
// the request's completion cap to fit) holds, in the same atomic step,
// ReserveAmount of the user's position: as much as Credits, but no more
// than an equal share of the available balance between this request, the
// Waiting ones behind it and the user's open reservations, and never less
// than MinCredits. Reservation.Amount is what was held.
type ReserveRequest struct {
	UserID int64
	KeyID  int64
	// Credits is the worst-case cost of the request: the most to hold.
	Credits int64
	// MinCredits, when positive and below Credits, is the least worth
	// holding (the prompt and a minimal completion): see ReserveAmount.
	MinCredits int64
	// Waiting is how many of the user's requests wait for credits behind
	// this one (the caller's queue); they get a share of a flexible
	// reservation's balance.
	Waiting int64
	// MaxRequests, when positive, is the key's request cap: the reservation
	// fails with ErrRequestLimit when requests used plus in flight reach it.
	MaxRequests int64
	// KeyBudget and UserBudget are the key's and the user's spend windows
	// in force (Budget.Window at the caller's clock). What the reservation
	// holds must also fit what each Limited window has left (its limit
	// less what was charged and is held in it), else it fails with a
	// *BudgetExceeded, holding nothing. The hold counts in these windows,
	// and its settlement charges them; the zero value is the never-ending
	// window without a limit.
	KeyBudget  BudgetWindow
	UserBudget BudgetWindow
	// Limits, for a LimitCounter, are the rate and plan limits to check
	// and count in the same step (nil: none). Other stores ignore them.
	Limits *LimitRequest
}

// ReserveAmount is the share rule of a reservation: what to hold of
// available credits (balance minus open reservations) when holds
// reservations of the user are open and waiting requests of theirs queue
// behind this one, for a request worth between minCredits and maxCredits.
// A fixed request (minCredits <= 0 or >= maxCredits) takes maxCredits. A
// flexible one takes available / (1 + holds + waiting), rounded down, kept
// between minCredits and maxCredits: a request on its own takes all the
// balance affords, one among others leaves them room. The result may
// exceed available: then the reservation fails with a *CreditShortage.
func ReserveAmount(available, holds, waiting, minCredits, maxCredits int64) int64 {
	if minCredits <= 0 || minCredits >= maxCredits {
		return maxCredits
	}
	share := max(available, 0) / (1 + max(holds, 0) + max(waiting, 0))
	return min(max(share, minCredits), maxCredits)
}

// CreditShortage is the error of a reservation the available balance
// cannot cover; errors.Is(err, ErrInsufficientCredits) holds. It says why:
// the balance itself is below what was needed (Credits < Needed), or open
// reservations hold the difference (Holds requests hold Reserved credits),
// which come back when they settle.
type CreditShortage struct {
	Needed   int64 // the least the request could have held
	Credits  int64 // the user's balance
	Reserved int64 // held by open reservations
	Holds    int64 // open reservations
	// Limits is what a LimitCounter counted (ReserveRequest.Limits; else nil).
	Limits *LimitState
}

func (e *CreditShortage) Error() string {
	return fmt.Sprintf("insufficient credits: %d needed, balance %d of which %d held by %d open reservations",
		e.Needed, e.Credits, e.Reserved, e.Holds)
}

// Is makes errors.Is(err, ErrInsufficientCredits) hold.
func (e *CreditShortage) Is(target error) bool { return target == ErrInsufficientCredits }

// BalanceShort reports whether the balance itself cannot pay the request,
// so that waiting for open reservations to settle cannot help.
func (e *CreditShortage) BalanceShort() bool { return e.Credits < e.Needed }

// The Store is split into the roles its callers play. The gateway's request
// path needs KeyLookup, Policy, Credits, AuditLog and ChangeFeed (with
// Maintenance); the management API adds Accounts, Plans, Ledger and
// AuditReader. Store is their union, the interface a backend implements.
// All methods are safe for concurrent use. Mutating methods are atomic: on
// error nothing was changed.
//
// Abilities only some backends have are optional interfaces, discovered by
// type assertion as http.Flusher is: Flusher, HotBackuper.

// KeyLookup resolves an API key and its owner (authentication).
type KeyLookup interface {
	// KeyByHash finds a key by its current hash, or by its previous hash while
	// the rotation grace lasts.
	KeyByHash(ctx context.Context, hash []byte) (*APIKey, error)
	GetUser(ctx context.Context, id int64) (*User, error)
}

// Policy is what admission reads to apply plans and limits.
type Policy interface {
	GetPlan(ctx context.Context, id int64) (*Plan, error)
	// ActiveUserPlan returns the user's active subscription row (which may
	// be past its end date: callers check UserPlan.ActiveAt), or ErrNotFound.
	ActiveUserPlan(ctx context.Context, userID int64) (*UserPlan, error)
	// UserLimits returns the limits an admin set, or ErrNotFound.
	UserLimits(ctx context.Context, userID int64) (RateLimits, error)
	// UserBudget returns the spend budget an admin set for the user (the
	// zero Budget when none) and what the user spent in its window.
	// Unknown users give ErrNotFound.
	UserBudget(ctx context.Context, userID int64) (Budget, Spend, error)
	// UsageTotals returns the number of usage records and the sum of their
	// TotalTokens for the user in the UTC day holding dayStart and in the
	// UTC month holding monthStart: what ListUsage's records of that day and
	// month add up to, read from per-user aggregates instead (plan limit
	// seeding). Every settled request is counted.
	UsageTotals(ctx context.Context, userID int64, dayStart, monthStart time.Time) (dayReq, dayTok, monthReq, monthTok int64, err error)
}

// Credits holds and charges credit for requests in flight.
type Credits interface {
	Balance(ctx context.Context, userID int64) (Balance, error)
	// Reserve atomically holds req.Credits (or, for a flexible request,
	// ReserveAmount) when the user's available balance covers it, in one
	// step: there is no separate balance read to race with. Otherwise it
	// fails with a *CreditShortage (errors.Is ErrInsufficientCredits) or
	// ErrRequestLimit, holding nothing. Reservations belong to the store
	// instance that made them: they end with it (a restart releases them).
	Reserve(ctx context.Context, req ReserveRequest) (*Reservation, error)
	// Settle replaces the reservation with a charge of cost credits and
	// records the usage, exactly once (a second Settle or Refund of the same
	// reservation gives ErrAlreadySettled). The charge never takes the
	// balance below zero: a cost above what the user has is capped, and the
	// amount actually charged is returned with the balance after it. The
	// charge is capped the same way by what the reservation's budget
	// windows have left, and counted in them (res.Spent says how). It also
	// counts one request toward the key's requests_used. A store may make
	// the write durable after returning (group commit): see Flusher.
	Settle(ctx context.Context, res *Reservation, cost int64, rec UsageRecord) (charged, balanceAfter int64, err error)
	// Refund releases a reservation without charging, exactly once.
	Refund(ctx context.Context, res *Reservation) error
	// OpenReservations counts this instance's reservations not yet settled
	// or refunded.
	OpenReservations() int64
}

// AuditLog appends to the hash-chained audit log.
type AuditLog interface {
	// AppendAudit sets the entry's ID, time (if zero) and chain hashes and
	// stores it durably.
	AppendAudit(ctx context.Context, e *AuditEntry) error
}

// ChangeFeed tells the in-memory caches what changed.
type ChangeFeed interface {
	// Subscribe registers fn to be called after each committed change,
	// made through this instance or any other on the same database; the
	// returned function unregisters it. Delivery may come after the
	// mutating call returns. fn must not block.
	Subscribe(fn func(Change)) (unsubscribe func())
}

// FeedStatus is how current a store's change feed is in this process: how
// long ago it last had every change of the other processes sharing the
// database.
type FeedStatus struct {
	// Node is this process's node id in the database; its feed
	// connection's application_name names it.
	Node int64
	// Listening reports whether the notification connection is up.
	// Without it the feed polls, which is slower but misses nothing.
	Listening bool
	// LastID is the id of the last change read (0: none since start).
	LastID int64
	// LastEventAt is when the last change read was made (zero: none since
	// start).
	LastEventAt time.Time
	// CaughtUpAt is when the last complete read of the change log
	// started: every change committed before it has been delivered.
	CaughtUpAt time.Time
	// Lag is how long ago CaughtUpAt was.
	Lag time.Duration
	// Bound is the feed bound: a feed whose Lag exceeds it is Behind.
	Bound time.Duration
	// Behind reports Lag > Bound: records cached from this store may be
	// stale beyond the bound and must be read again (fail closed).
	Behind bool
	// Reconnects counts how often the notification connection was lost.
	Reconnects int64
}

// SharedFeed is implemented by a store that other processes change too (a
// database server several gateway nodes share): its change feed brings
// their changes within a bound, unless the database cannot be read. A
// store that is not one is changed only through itself, so its feed is
// always current.
type SharedFeed interface {
	FeedStatus() FeedStatus
	// FeedBehind is FeedStatus().Behind, cheap enough for every request.
	FeedBehind() bool
}

// Maintenance is the store's life cycle and upkeep.
type Maintenance interface {
	// PruneUsage deletes the usage records (the per-request detail) before
	// the UTC day of detailBefore, and groups each user's consecutive
	// charge entries of the ledger older than detailBefore into one entry
	// (sum, last balance: the balance stays the running sum). When
	// rollupsBefore is not zero it also deletes the rollups and usage
	// totals of the days before it (a month's totals go with its last
	// day). It returns how many usage records it deleted.
	PruneUsage(ctx context.Context, detailBefore, rollupsBefore time.Time) (int, error)
	// Ping reports whether the store can serve.
	Ping(ctx context.Context) error
	// Close flushes pending writes and closes the store.
	Close() error
}

// Gateway is what the gateway's request path uses.
type Gateway interface {
	KeyLookup
	Policy
	Credits
	AuditLog
	ChangeFeed
	Maintenance
}

// Accounts manages users and their keys.
type Accounts interface {
	// Register creates a user with their primary key and grants credits in
	// one transaction. It sets the IDs and timestamps of u and key.
	// A duplicate email gives ErrDuplicate.
	Register(ctx context.Context, u *User, key *APIKey, credits int64) error
	UserByEmail(ctx context.Context, email string) (*User, error)
	// UpdateUser applies fn to a copy of the user and stores the result; fn
	// returning an error aborts with that error.
	UpdateUser(ctx context.Context, id int64, fn func(*User) error) (*User, error)
	// DeleteUser removes a user and every key of theirs. Ledger, usage and
	// audit history are kept.
	DeleteUser(ctx context.Context, id int64) error
	// ListUsers returns users ordered by id, and the total count.
	ListUsers(ctx context.Context, offset, limit int) ([]*User, int, error)

	// CreateKey stores a new key and sets its ID and timestamps. A key name
	// already used by the same user, or a hash already indexed, gives
	// ErrDuplicate. The key's Scopes are stored and read back as given: an
	// empty scope grants nothing and must never be turned into the full
	// one (see Scopes, and bolt_scope.go for the upgrade of older data).
	CreateKey(ctx context.Context, k *APIKey) error
	GetKey(ctx context.Context, id int64) (*APIKey, error)
	// ListKeys returns a user's keys, newest first.
	ListKeys(ctx context.Context, userID int64) ([]*APIKey, error)
	// AllKeys returns every key (the security overview of the API).
	AllKeys(ctx context.Context) ([]*APIKey, error)
	// UpdateKey applies fn to a copy of the key and stores the result,
	// re-indexing a changed Hash/PrevHash. fn returning an error aborts.
	UpdateKey(ctx context.Context, id int64, fn func(*APIKey) error) (*APIKey, error)
	DeleteKey(ctx context.Context, id int64) error
}

// Plans manages plans, subscriptions and admin rate limits.
type Plans interface {
	CreatePlan(ctx context.Context, p *Plan) error
	// ListPlans returns every plan ordered by id, inactive ones included.
	ListPlans(ctx context.Context) ([]*Plan, error)
	UpdatePlan(ctx context.Context, id int64, fn func(*Plan) error) (*Plan, error)
	// AssignPlan deactivates the user's other subscriptions and adds this
	// one. Unknown user or plan: ErrNotFound.
	AssignPlan(ctx context.Context, userID, planID int64, start, end time.Time) (*UserPlan, error)
	// SetUserLimits sets a user's admin rate limits (POST /admin/limit).
	SetUserLimits(ctx context.Context, userID int64, l RateLimits) error
	// SetUserBudget sets a user's spend budget (POST /admin/limit); a nil
	// Limit is none (the period is kept). It publishes ChangeLimits.
	SetUserBudget(ctx context.Context, userID int64, b Budget) error
}

// Ledger moves credits outside requests and reads the history.
type Ledger interface {
	// AddCredits appends a positive or negative (admin adjustment) ledger
	// entry durably. With a non-empty idempotency key, a repeated call
	// returns the first call's balance and replayed=true, changing nothing.
	// A positive amount publishes ChangeCredits, so that requests waiting
	// for the user's credits retry.
	AddCredits(ctx context.Context, userID, amount int64, kind LedgerKind, idempotencyKey, note string) (balance int64, replayed bool, err error)
	// Ledger returns a user's ledger entries, oldest first.
	Ledger(ctx context.Context, userID int64) ([]LedgerEntry, error)
	// ListUsage returns usage records matching f, newest first. Records
	// are kept for the usage detail retention only: reports over longer
	// periods read UsageRollups.
	ListUsage(ctx context.Context, f UsageFilter) ([]UsageRecord, error)
	// UsageRollups returns the rollups matching f, ordered by start, user,
	// key, model and outcome. Every settled request is in them, also after
	// its record was pruned.
	UsageRollups(ctx context.Context, f RollupFilter) ([]UsageRollup, error)
}

// AuditReader reads, verifies and exports the audit log.
type AuditReader interface {
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
	// VerifyAudit walks the chain; a broken link gives ErrAuditChainBroken
	// (wrapped with the entry id) and the count verified before it.
	VerifyAudit(ctx context.Context) (int, error)
	// ExportAudit writes the whole chain as JSON lines, oldest first.
	ExportAudit(ctx context.Context, w io.Writer) error
}

// Store is every role: what a backend implements and the management API
// uses.
type Store interface {
	Gateway
	Accounts
	Plans
	Ledger
	AuditReader
	Outbox
}

// Flusher is implemented by a store whose Settle returns before the
// settlement is durable (group commit). Flush blocks until every settlement
// accepted so far is durable.
type Flusher interface {
	Flush(ctx context.Context) error
}

// HotBackuper is implemented by a store that can copy its whole database
// while serving (an embedded file). A networked database is backed up with
// its own tools instead.
type HotBackuper interface {
	// Backup writes a consistent hot copy of the database to w.
	Backup(ctx context.Context, w io.Writer) (int64, error)
}
