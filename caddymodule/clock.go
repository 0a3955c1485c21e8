package caddymodule

import (
	"sync/atomic"
	"time"
)

// clockOverride, when set, is the clock clockNow reads instead of the
// system's.
var clockOverride atomic.Pointer[func() time.Time]

// SetClock makes the gateway and the management API tell time by now
// instead of the system clock, until restore is called: the hook tests use
// to move a running server across a date (budget windows, trials, key
// expiry). It may be called while requests are served.
func SetClock(now func() time.Time) (restore func()) {
	clockOverride.Store(&now)
	return func() { clockOverride.Store(nil) }
}

// Now is the time by the gateway's clock (see SetClock).
func Now() time.Time { return clockNow() }
