package caddymodule

import (
	"context"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// statePool shares one sharedState per database file (keyed by its absolute
// path) between the configs that use it, so reloads keep the store open and
// the in-memory state (key index, plan cache, limiter counters) intact.
var statePool = caddy.NewUsagePool()

// sharedConfig are the settings of the first config that opened the state.
type sharedConfig struct {
	negativeCacheSize int
	auditPerMinute    int
}

// sharedState is everything that outlives a config: the store and the
// in-memory state derived from it. Its goroutines run until the last config
// using it is cleaned up (Destruct).
type sharedState struct {
	store storage.Store
	// settleQueues says the store's Settle only queues the durable write
	// (a storage.Flusher) and never waits on its context; on any other
	// store a settlement is bounded by a timeout.
	settleQueues bool
	index        *keyIndex
	plans        *planCache
	limiter      *limiter
	audit        *auditor

	unsubscribe func()
	cancel      context.CancelFunc
	wg          sync.WaitGroup
}

func newSharedState(st storage.Store, cfg sharedConfig, logger *zap.Logger) *sharedState {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sharedState{
		store:        st,
		settleQueues: isFlusher(st),
		index:        newKeyIndex(st, cfg.negativeCacheSize),
		plans:        newPlanCache(st),
		limiter:      newLimiter(),
		audit:        newAuditor(st, cfg.auditPerMinute, logger),
		cancel:       cancel,
	}
	s.unsubscribe = st.Subscribe(s.onChange)
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.limiter.sweep(ctx, sweepInterval) }()
	go func() { defer s.wg.Done(); s.audit.run(ctx) }()
	return s
}

func isFlusher(st storage.Store) bool {
	_, ok := st.(storage.Flusher)
	return ok
}

// onChange is the store's change feed: it drops what changed from the
// in-memory caches (without blocking and without store reads), so the next
// request re-reads the current record.
func (s *sharedState) onChange(c storage.Change) {
	s.index.invalidate(c)
	s.plans.invalidate(c)
}

// Destruct stops the goroutines, writes pending audit events and closes the
// store.
func (s *sharedState) Destruct() error {
	s.unsubscribe()
	s.cancel()
	s.wg.Wait()
	return s.store.Close()
}

var _ caddy.Destructor = (*sharedState)(nil)
