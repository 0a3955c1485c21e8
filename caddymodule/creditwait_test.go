package caddymodule

import "testing"

// woken reports whether w has a wake pending (and takes it).
func woken(w *creditWaiter) bool {
	select {
	case <-w.wake:
		return true
	default:
		return false
	}
}

// TestCreditWaitersOrder: waiters of a user are served in arrival order,
// a release wakes only the head, and whoever leaves the head hands it on.
func TestCreditWaitersOrder(t *testing.T) {
	c := newCreditWaiters()
	if c.queued(1) {
		t.Fatal("empty queue reports waiters")
	}
	c.release(1) // nobody waits: nothing happens
	a, b, d := c.join(1), c.join(1), c.join(1)
	other := c.join(2)
	if !c.queued(1) || c.waiting.Load() != 4 {
		t.Fatalf("queued %v, waiting %d", c.queued(1), c.waiting.Load())
	}
	for i, tt := range []struct {
		w      *creditWaiter
		head   bool
		behind int64
	}{{a, true, 2}, {b, false, 0}, {d, false, 0}, {other, true, 0}} {
		uid := int64(1)
		if tt.w == other {
			uid = 2
		}
		if head, behind := c.position(uid, tt.w); head != tt.head || behind != tt.behind {
			t.Errorf("waiter %d: head %v behind %d, want %v %d", i, head, behind, tt.head, tt.behind)
		}
	}

	c.release(1)
	if !woken(a) || woken(b) || woken(d) || woken(other) {
		t.Fatal("a release wakes the head of that user's queue only")
	}
	c.release(1)
	c.release(1)
	if !woken(a) || woken(a) {
		t.Fatal("releases while the head is awake leave one wake pending")
	}

	// A waiter behind the head leaves (its client went away): nobody is woken.
	c.leave(1, b)
	if woken(a) || woken(d) {
		t.Fatal("leaving from behind woke someone")
	}
	// The head leaves (admitted): the next one is woken and is the head.
	c.leave(1, a)
	if !woken(d) {
		t.Fatal("the new head was not woken")
	}
	if head, behind := c.position(1, d); !head || behind != 0 {
		t.Fatalf("d: head %v behind %d", head, behind)
	}
	c.leave(1, d)
	c.leave(1, d) // twice: harmless
	c.leave(2, other)
	if c.queued(1) || c.queued(2) || c.waiting.Load() != 0 || len(c.users) != 0 {
		t.Fatalf("queues left behind: %d waiting, %d users", c.waiting.Load(), len(c.users))
	}
}
