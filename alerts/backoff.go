package alerts

import "time"

// RetryDelay is the wait before attempt n+1 after n failed attempts:
// base doubled per failure (base, 2·base, 4·base, …), at most ceiling,
// then jittered down by up to half (jitter in [0,1)), so that receivers
// coming back are not hit by every sender at the same instant.
func RetryDelay(n int, base, ceiling time.Duration, jitter float64) time.Duration {
	if n < 1 {
		n = 1
	}
	d := base
	for i := 1; i < n && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	return d - time.Duration(float64(d/2)*min(max(jitter, 0), 1))
}

// NextAttempt is when to try a delivery again after its attempts-th
// failure at now, or the zero time to give up: retries stop once the event
// is older than retryFor.
func NextAttempt(created, now time.Time, attempts int, base, ceiling, retryFor time.Duration, jitter float64) time.Time {
	next := now.Add(RetryDelay(attempts, base, ceiling, jitter))
	if next.Sub(created) > retryFor {
		return time.Time{}
	}
	return next
}
