package alerts

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Store is what the Hub needs of the store: the outbox, and the keys for
// the key.expiring scan.
type Store interface {
	storage.Outbox
	AllKeys(ctx context.Context) ([]*storage.APIKey, error)
}

// queueSize bounds the events waiting for their batch; a full queue drops
// (and counts) new events rather than block a request.
const queueSize = 4096

// maxBatch is the most events one outbox write takes.
const maxBatch = 256

// Hub collects events and runs their delivery, one per store (it outlives
// config reloads; Configure swaps the config).
//
// Durability: Write (the management API's changes: top-ups, pings) stores
// the event before the call returns. Emit (the request path) queues it in
// memory, and the batcher writes it within Config.BatchWindow (default
// 50 ms) of the change, or as soon as the store answers again if it is
// down; a graceful stop or reload writes what is queued first. A process
// crash (SIGKILL, power loss) in that window loses the events queued, while
// the settlement that caused them may have been made durable. Once in the
// outbox, an event is delivered at least once, across restarts.
type Hub struct {
	store  Store
	logger *zap.Logger
	cfg    atomic.Pointer[Config]
	now    func() time.Time
	jitter func() float64

	queue   chan storage.Event
	dropped atomic.Int64
	wake    chan struct{}

	burstMu sync.Mutex
	burst   *Burst

	opClient   atomic.Pointer[clientFor]
	userClient atomic.Pointer[clientFor]
}

// NewHub returns a Hub for store, configured with the defaults until
// Configure.
func NewHub(store Store, logger *zap.Logger) *Hub {
	h := &Hub{
		store:  store,
		logger: logger,
		now:    time.Now,
		jitter: randomJitter,
		queue:  make(chan storage.Event, queueSize),
		wake:   make(chan struct{}, 1),
	}
	h.Configure(Config{})
	return h
}

// Configure makes cfg the Hub's config (the config that just started).
func (h *Hub) Configure(cfg Config) {
	cfg = cfg.withDefaults()
	h.cfg.Store(&cfg)
	h.burstMu.Lock()
	if h.burst == nil || h.burst.threshold != cfg.SecurityBurst || h.burst.window != cfg.SecurityWindow {
		h.burst = NewBurst(cfg.SecurityBurst, cfg.SecurityWindow)
	}
	h.burstMu.Unlock()
	h.opClient.Store(newClient(cfg.Timeout, nil))
	g := cfg.Guard
	h.userClient.Store(newClient(cfg.Timeout, &g))
}

// Config returns the config in force.
func (h *Hub) Config() *Config { return h.cfg.Load() }

// Emit queues an event for the outbox without blocking (the request
// path); see Hub for when it is durable.
func (h *Hub) Emit(ev storage.Event) {
	metricEvents.WithLabelValues(ev.Type).Inc()
	select {
	case h.queue <- ev:
	default:
		metricDropped.Inc()
		if n := h.dropped.Add(1); n&(n-1) == 0 { // log at powers of two
			h.logger.Error("alert queue full: events dropped", zap.Int64("dropped", n), zap.String("type", ev.Type))
		}
	}
}

// Dropped counts the events Emit could not queue.
func (h *Hub) Dropped() int64 { return h.dropped.Load() }

// Write stores events in the outbox now (the management API's path).
func (h *Hub) Write(ctx context.Context, evs ...storage.Event) error {
	if len(evs) == 0 {
		return nil
	}
	for _, ev := range evs {
		metricEvents.WithLabelValues(ev.Type).Inc()
	}
	err := h.store.AppendEvents(ctx, h.outboxEvents(evs))
	if err == nil {
		h.signal()
	}
	return err
}

// WriteTo stores a ping for webhook id of its user (its test).
func (h *Hub) WriteTo(ctx context.Context, webhookID int64, ev storage.Event) error {
	metricEvents.WithLabelValues(ev.Type).Inc()
	err := h.store.AppendEvents(ctx, []storage.OutboxEvent{{Event: ev, Webhook: webhookID}})
	if err == nil {
		h.signal()
	}
	return err
}

func (h *Hub) outboxEvents(evs []storage.Event) []storage.OutboxEvent {
	cfg := h.cfg.Load()
	out := make([]storage.OutboxEvent, len(evs))
	for i, ev := range evs {
		out[i] = storage.OutboxEvent{Event: ev, Targets: cfg.targets(ev.Type)}
	}
	return out
}

func (h *Hub) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// BalanceEvents returns the events of a change of a user's balance from
// before to after (a settlement, an admin adjustment): balance.low when it
// crossed threshold (the user's own, or the config's default when nil),
// balance.depleted when it reached zero.
func (h *Hub) BalanceEvents(uid, before, after int64, threshold *int64) []storage.Event {
	t := h.cfg.Load().LowBalanceThreshold
	if threshold != nil {
		t = *threshold
	}
	low, empty := LowBalanceCrossed(before, after, t), Depleted(before, after)
	if !low && !empty {
		return nil
	}
	var evs []storage.Event
	now := h.now()
	if low {
		evs = append(evs, NewEvent(BalanceLow, uid, map[string]int64{"balance": after, "threshold": t, "previous_balance": before}, now))
	}
	if empty {
		evs = append(evs, NewEvent(BalanceDepleted, uid, map[string]int64{"balance": after, "previous_balance": before}, now))
	}
	return evs
}

// BalanceChanged emits the events of a settlement's balance change; it
// costs two comparisons when nothing crossed.
func (h *Hub) BalanceChanged(uid, before, after int64, threshold *int64) {
	for _, ev := range h.BalanceEvents(uid, before, after, threshold) {
		h.Emit(ev)
	}
}

// BudgetChanged emits key.budget_warning and key.budget_reached when a
// key's spend in its budget window went from before to after and crossed
// 80 % or all of limit; resetsAt is when the window ends (zero: never).
// It costs two comparisons when nothing crossed.
func (h *Hub) BudgetChanged(uid, keyID, before, after, limit int64, resetsAt time.Time) {
	warn, reached := BudgetWarningCrossed(before, after, limit), BudgetReached(before, after, limit)
	if !warn && !reached {
		return
	}
	data := map[string]any{"key_id": keyID, "spend_used": after, "spend_limit": limit, "resets_at": nil}
	if !resetsAt.IsZero() {
		data["resets_at"] = resetsAt.UTC()
	}
	typ := KeyBudgetWarning
	if reached {
		typ = KeyBudgetReached
	}
	h.Emit(NewEvent(typ, uid, data, h.now()))
}

// SecurityRefusal counts a refused request of key (reason: the refusal,
// e.g. "ip_denied") and emits security.alert when it starts a burst.
func (h *Hub) SecurityRefusal(key *storage.APIKey, reason string, now time.Time) {
	h.burstMu.Lock()
	b := h.burst
	h.burstMu.Unlock()
	fire, n := b.Hit(key.ID, now)
	if !fire {
		return
	}
	h.Emit(NewEvent(SecurityAlert, key.UserID, map[string]any{
		"key_id":         key.ID,
		"key_prefix":     key.Masked(),
		"reason":         reason,
		"refusals":       n,
		"window_seconds": int64(b.window / time.Second),
	}, now))
}

// Run writes queued events, delivers due ones and scans for expiring keys
// until ctx ends; then it writes what is still queued and returns once
// the attempts in flight have ended.
func (h *Hub) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); h.batch(ctx) }()
	go func() { defer wg.Done(); h.deliverLoop(ctx) }()
	go func() { defer wg.Done(); h.housekeep(ctx) }()
	wg.Wait()
}

// batch writes queued events in batches: the first event of a batch
// waits at most BatchWindow for others.
func (h *Hub) batch(ctx context.Context) {
	var pending []storage.Event
	var timer *time.Timer
	var timerC <-chan time.Time
	flush := func(ctx context.Context) {
		for len(pending) > 0 {
			n := min(len(pending), maxBatch)
			err := h.store.AppendEvents(ctx, h.outboxEvents(pending[:n]))
			if err != nil {
				if ctx.Err() == nil {
					h.logger.Error("writing alert events to the outbox", zap.Int("events", n), zap.Error(err))
				}
				return // kept, retried with the next flush
			}
			pending = pending[n:]
			h.signal()
		}
		pending = nil
	}
	for {
		select {
		case ev := <-h.queue:
			pending = append(pending, ev)
			if len(pending) >= maxBatch {
				flush(ctx)
			}
			if timerC == nil && len(pending) > 0 {
				timer = time.NewTimer(h.cfg.Load().BatchWindow)
				timerC = timer.C
			}
		case <-timerC:
			timerC = nil
			flush(ctx)
			if len(pending) > 0 { // the store failed: try again later
				timer = time.NewTimer(time.Second)
				timerC = timer.C
			}
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
		drain:
			for {
				select {
				case ev := <-h.queue:
					pending = append(pending, ev)
				default:
					break drain
				}
			}
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			flush(wctx)
			cancel()
			if len(pending) > 0 {
				h.logger.Error("alert events not written at shutdown", zap.Int("events", len(pending)))
			}
			return
		}
	}
}

// housekeep scans keys for key.expiring and prunes old events.
func (h *Hub) housekeep(ctx context.Context) {
	lastPrune := time.Time{}
	for {
		cfg := h.cfg.Load()
		if err := h.ScanExpiring(ctx); err != nil && ctx.Err() == nil {
			h.logger.Error("scanning keys for key.expiring", zap.Error(err))
		}
		if now := h.now(); now.Sub(lastPrune) >= time.Hour {
			lastPrune = now
			if _, err := h.store.PruneOutbox(ctx, now.Add(-cfg.Retention)); err != nil && ctx.Err() == nil {
				h.logger.Error("pruning the alert outbox", zap.Error(err))
			}
		}
		t := time.NewTimer(cfg.ExpiryScan)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// ScanExpiring writes key.expiring for every active key whose expiration
// date is within ExpiryLead: once per key and expiration date (the event
// id is derived from both, so later scans, and other nodes, add nothing).
func (h *Hub) ScanExpiring(ctx context.Context) error {
	keys, err := h.store.AllKeys(ctx)
	if err != nil {
		return err
	}
	now := h.now()
	lead := h.cfg.Load().ExpiryLead
	var evs []storage.Event
	for _, k := range keys {
		if !ExpiringSoon(k, now, lead) {
			continue
		}
		exp := k.ExpirationDate.UTC()
		evs = append(evs, StableEvent(strconv.FormatInt(k.ID, 10)+"|"+exp.Format(time.RFC3339Nano), KeyExpiring, k.UserID, map[string]any{
			"key_id":          k.ID,
			"key_name":        k.KeyName,
			"key_prefix":      k.Masked(),
			"expiration_date": exp,
		}, now))
	}
	var errs []error
	for len(evs) > 0 {
		n := min(len(evs), maxBatch)
		errs = append(errs, h.Write(ctx, evs[:n]...))
		evs = evs[n:]
	}
	return errors.Join(errs...)
}

// ExpiringSoon reports whether key is active and expires after now but
// within lead of it.
func ExpiringSoon(k *storage.APIKey, now time.Time, lead time.Duration) bool {
	return k.IsActive && k.ExpirationDate != nil && k.ExpirationDate.After(now) && !k.ExpirationDate.After(now.Add(lead))
}
