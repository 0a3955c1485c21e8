package caddymodule

import (
	"sync"
	"sync/atomic"
)

// Credit waits.
//
// A request whose balance would pay for it, but whose user's other requests
// hold the credits it needs right now, waits for them to come back instead
// of being refused (admission.go, Gateway.reserve). The waiters of a user
// queue in arrival order; only the head of a queue tries to reserve. A
// release (a settlement or refund on this node, a top-up, or a change from
// another node through the store's change feed) wakes the head of the
// user's queue; a head that reserves, gives up or is cancelled wakes the
// next one, so credits left over go down the queue without waiting for
// another release. Nothing spins and nothing polls: a waiter sleeps on its
// channel until woken, until its bound, or until its client goes away.

// creditWaiters holds the credit queues of every user. It is shared
// through the state pool, like the limiter.
type creditWaiters struct {
	// waiting counts the queued requests of all users, so that a release
	// with nobody waiting (the usual case) costs one atomic load.
	waiting atomic.Int64

	mu    sync.Mutex
	users map[int64]*creditQueue
}

// creditQueue is one user's waiting requests, oldest first.
type creditQueue struct {
	waiters []*creditWaiter
}

// creditWaiter is one waiting request. wake holds at most one pending
// signal, so a release between a failed attempt and the wait is not lost.
type creditWaiter struct {
	wake chan struct{}
}

func newCreditWaiters() *creditWaiters {
	return &creditWaiters{users: make(map[int64]*creditQueue)}
}

// queued reports whether requests of the user are waiting: a new request
// then queues behind them rather than taking what they wait for.
func (c *creditWaiters) queued(userID int64) bool {
	if c.waiting.Load() == 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.users[userID] != nil
}

// join queues a request of the user at the back of their queue.
func (c *creditWaiters) join(userID int64) *creditWaiter {
	w := &creditWaiter{wake: make(chan struct{}, 1)}
	c.mu.Lock()
	q := c.users[userID]
	if q == nil {
		q = new(creditQueue)
		c.users[userID] = q
	}
	q.waiters = append(q.waiters, w)
	c.waiting.Add(1)
	c.mu.Unlock()
	return w
}

// position reports whether w is at the head of the user's queue and how
// many requests wait behind it.
func (c *creditWaiters) position(userID int64, w *creditWaiter) (head bool, behind int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.users[userID]
	if q == nil || len(q.waiters) == 0 || q.waiters[0] != w {
		return false, 0
	}
	return true, int64(len(q.waiters) - 1)
}

// leave takes w out of the user's queue (admitted, refused or cancelled)
// and wakes the new head when w was the head: whatever w did not take may
// serve it.
func (c *creditWaiters) leave(userID int64, w *creditWaiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.users[userID]
	if q == nil {
		return
	}
	for i, x := range q.waiters {
		if x != w {
			continue
		}
		copy(q.waiters[i:], q.waiters[i+1:])
		q.waiters[len(q.waiters)-1] = nil
		q.waiters = q.waiters[:len(q.waiters)-1]
		c.waiting.Add(-1)
		switch {
		case len(q.waiters) == 0:
			delete(c.users, userID)
		case i == 0:
			q.waiters[0].signal()
		}
		return
	}
}

// release wakes the head of the user's queue: credits of theirs came back.
func (c *creditWaiters) release(userID int64) {
	if c.waiting.Load() == 0 {
		return
	}
	c.mu.Lock()
	if q := c.users[userID]; q != nil && len(q.waiters) > 0 {
		q.waiters[0].signal()
	}
	c.mu.Unlock()
}

// signal wakes the waiter, or leaves a wake pending when one is not.
func (w *creditWaiter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}
