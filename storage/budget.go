package storage

import (
	"errors"
	"fmt"
	"time"
)

// Spend budgets: a key (and, set by an admin, a user) may have a spend
// limit in credits per window, a UTC day, a week starting on Monday, a
// calendar month, or one window that never resets. The spend of the window
// in force is enforced by the reservation that holds a request's credits,
// in the same atomic step that checks the balance, and charged by its
// settlement; so, like a balance, a budget is never exceeded under
// concurrency.
//
// A store keeps, per key and per user, the window its spend counts (the
// start of the window in which it last reserved or charged) and the credits
// charged in it. A window that began after the stored one counts from zero
// (see SpendIn); a settlement charges the window its reservation was made
// in, so a request admitted just before a boundary never takes the new
// window's budget.

// BudgetReset says how often a spend window starts again.
type BudgetReset string

// Budget reset periods. The zero value means never.
const (
	ResetNever   BudgetReset = "never"
	ResetDaily   BudgetReset = "daily"
	ResetWeekly  BudgetReset = "weekly"
	ResetMonthly BudgetReset = "monthly"
)

// ErrBudgetExceeded is what a *BudgetExceeded error Is.
var ErrBudgetExceeded = errors.New("spend budget exceeded")

// ParseBudgetReset returns the period named s; "" is never.
func ParseBudgetReset(s string) (BudgetReset, error) {
	switch r := BudgetReset(s); r {
	case "", ResetNever:
		return ResetNever, nil
	case ResetDaily, ResetWeekly, ResetMonthly:
		return r, nil
	}
	return "", fmt.Errorf("storage: unknown budget reset %q: %w", s, ErrInvalid)
}

// WindowStart returns the start of the window of r holding now (UTC): the
// zero time for never.
func (r BudgetReset) WindowStart(now time.Time) time.Time {
	now = now.UTC()
	y, m, d := now.Date()
	switch r {
	case ResetDaily:
		return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	case ResetWeekly:
		// Weeks start on Monday: Sunday is the week's seventh day.
		back := (int(now.Weekday()) + 6) % 7
		return time.Date(y, m, d-back, 0, 0, 0, 0, time.UTC)
	case ResetMonthly:
		return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Time{}
}

// WindowEnd returns when the window of r holding now ends (the next one
// starts), or the zero time for never.
func (r BudgetReset) WindowEnd(now time.Time) time.Time {
	start := r.WindowStart(now)
	switch r {
	case ResetDaily:
		return start.AddDate(0, 0, 1)
	case ResetWeekly:
		return start.AddDate(0, 0, 7)
	case ResetMonthly:
		return start.AddDate(0, 1, 0)
	}
	return time.Time{}
}

// Budget is a spend limit: at most Limit credits per window of Reset. A
// nil Limit is no limit.
type Budget struct {
	Limit *int64      `json:"spend_limit"`
	Reset BudgetReset `json:"spend_limit_reset,omitempty"`
}

// Window returns what a reservation at now checks and charges: the window
// in force and the limit.
func (b Budget) Window(now time.Time) BudgetWindow {
	w := BudgetWindow{Start: b.Reset.WindowStart(now)}
	if b.Limit != nil {
		w.Limit, w.Limited = *b.Limit, true
	}
	return w
}

// Spend is what a store counted for a budget: Used credits charged in the
// window starting at Window.
type Spend struct {
	Window time.Time `json:"window"`
	Used   int64     `json:"used"`
}

// SpendIn returns the credits spent in the window starting at start: Used
// when the stored window is that one (or a later one, which a reservation
// that saw a later clock made current), zero when the window began after
// the stored one.
func (s Spend) SpendIn(start time.Time) int64 {
	if start.After(s.Window) {
		return 0
	}
	return s.Used
}

// BudgetWindow is a budget as a reservation checks it: the start of the
// window in force and, when Limited, the most it may spend.
type BudgetWindow struct {
	Start   time.Time
	Limit   int64
	Limited bool
}

// BudgetExceeded is the error of a reservation that a spend budget cannot
// cover; errors.Is(err, ErrBudgetExceeded) holds. Waiting for credits does
// not help: the budget comes back when its window resets (or when requests
// in flight settle below what they hold).
type BudgetExceeded struct {
	Key      bool  // the key's budget; else the user's
	Limit    int64 // credits per window
	Used     int64 // charged in the window
	Reserved int64 // held in the window by requests in flight
	Needed   int64 // the least the request could have held
	// Limits is what a LimitCounter counted (ReserveRequest.Limits; else nil).
	Limits *LimitState
}

func (e *BudgetExceeded) Error() string {
	who := "user"
	if e.Key {
		who = "key"
	}
	return fmt.Sprintf("%s spend budget exceeded: %d needed, %d of %d spent and %d held in this window",
		who, e.Needed, e.Used, e.Limit, e.Reserved)
}

// Is makes errors.Is(err, ErrBudgetExceeded) hold.
func (e *BudgetExceeded) Is(target error) bool { return target == ErrBudgetExceeded }

// budgetRoom is what a budget window lets a reservation take: unlimited
// (a huge value) when not Limited.
func budgetRoom(w BudgetWindow, used, reserved int64) int64 {
	if !w.Limited {
		return maxRoom
	}
	return w.Limit - used - reserved
}

// maxRoom stands for "no limit" in the min of what a reservation may take.
const maxRoom = int64(1) << 62

// SpendChange is what a settlement did to one budget: the window it
// charged, the credits spent in it before and after the charge, and the
// limit (Limited false: none) in force when the request was reserved.
// Valid is false when nothing was tracked (no key, or a window that had
// already ended).
type SpendChange struct {
	Valid         bool
	Window        time.Time
	Before, After int64
	Limit         int64
	Limited       bool
}

// SettleSpend is what a settlement did to the key's and the user's budgets
// (see Reservation.Spent): where a budget warning or a budget reached
// notice is decided.
type SettleSpend struct {
	Key, User SpendChange
}

// Crossed reports whether the charge took the window's spend to percent of
// its limit or past it, from below: true once per crossing, for the
// settlement that crossed it. A window without a limit crosses nothing.
func (c SpendChange) Crossed(percent int64) bool {
	if !c.Valid || !c.Limited {
		return false
	}
	// Integer arithmetic: spend*100 >= limit*percent.
	at := func(spend int64) bool { return spend*100 >= c.Limit*percent }
	return !at(c.Before) && at(c.After)
}
