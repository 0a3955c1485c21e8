package storage

import (
	"context"
	"fmt"
	"time"
)

// Limits a store counts itself.
//
// A single gateway process counts rate limits and plan quotas in memory. A
// store that several gateway nodes share can count them instead, in the
// same atomic step as the reservation (LimitCounter), so that N nodes
// admit exactly what one would.

// Windows of WindowCounts: fixed windows aligned to UTC.
const (
	WindowMinute = iota
	WindowHour
	WindowDay
	WindowMonth // calendar month
	NumWindows
)

// WindowCounts are requests and tokens per window (limits, or what was
// counted against them).
type WindowCounts struct {
	Requests [NumWindows]int64
	Tokens   [NumWindows]int64
}

// LimitLevel is what a limit applies to.
type LimitLevel uint8

// Limit levels, in the order they are checked.
const (
	LevelPlan LimitLevel = iota // the user's plan: day and month, charged requests
	LevelUser                   // the user's rate limits: minute, hour, day
	LevelKey                    // the key's rate limits: minute, hour, day
	NumLevels
)

// LimitRequest asks a LimitCounter to count one request against the limits
// of its user and key. A limit of 0 is none. Rate limits (User, Key) use
// the minute, hour and day windows; plan limits (Plan) the day and the
// month.
type LimitRequest struct {
	// Now places the request in its windows.
	Now time.Time
	// Limits are the limits in force, by level.
	Limits [NumLevels]WindowCounts
	// Tokens is the request's estimated tokens; its settlement replaces
	// them by the actual ones.
	Tokens int64
	// Counted says that an earlier call for the same request already
	// counted it against the request-rate limits (a retry after a credit
	// shortage): it is not counted, or checked, against them again.
	Counted bool
}

// LimitState is what a LimitCounter has counted in the windows holding
// LimitRequest.Now, by level, after the call (before it, on a refusal).
// Plan counts are the user's charged requests and their tokens plus the
// requests in flight and their estimates.
type LimitState [NumLevels]WindowCounts

// LimitExceeded is the refusal of a request that would cross a limit:
// nothing was counted or reserved.
type LimitExceeded struct {
	Level  LimitLevel
	Window int  // WindowMinute .. WindowMonth
	Tokens bool // a token limit, else a request limit
	Limit  int64
	State  LimitState
}

func (e *LimitExceeded) Error() string {
	what := "request"
	if e.Tokens {
		what = "token"
	}
	return fmt.Sprintf("storage: %s limit %d of level %d, window %d exceeded", what, e.Limit, e.Level, e.Window)
}

// LimitCounter is a store that counts rate limits and plan quotas for all
// the gateway nodes sharing it, exactly. Reserve with ReserveRequest.Limits
// set checks and counts them in the same atomic step as the credits and
// answers *LimitExceeded when one would be crossed; the settlement replaces
// the estimated tokens by the actual ones, and a refund takes them back. A
// request refused for credits (or for the key's request cap) still counts
// against the request-rate limits, not against the plan or the tokens.
// Plan counts come from the shared usage totals plus the open
// reservations, so they hold whichever node answers.
type LimitCounter interface {
	// CountLimits counts a request that reserves nothing (a free route)
	// against the rate limits of its user and key; plan limits are only
	// reported.
	CountLimits(ctx context.Context, userID, keyID int64, lim *LimitRequest) (LimitState, error)
}

// LimitStore is a Store that counts limits.
type LimitStore interface {
	Store
	LimitCounter
}
