package caddymodule

import (
	"context"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/alerts"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// statePool shares one sharedState per database (keyed by the backend's
// StoreKey: a bbolt file's absolute path) between the configs that use it, so reloads keep the store open and
// the in-memory state (key index, plan cache, limiter counters) intact.
var statePool = caddy.NewUsagePool()

// sharedConfig are the settings of the first config that opened the state.
type sharedConfig struct {
	negativeCacheSize int
	auditPerMinute    int
}

// sharedState is everything that outlives a config: the store and the
// in-memory state derived from it. The first config to start opens the
// store (open); the fields set there are not written again, and readers
// reach them only after their app's Start (App.WaitStarted), which comes
// after open. Its goroutines run until the last config using it is cleaned
// up (Destruct).
type sharedState struct {
	cfg    sharedConfig
	logger *zap.Logger
	mu     sync.Mutex // held by open and Destruct

	store storage.Store
	// settleQueues says the store's Settle only queues the durable write
	// (a storage.Flusher) and never waits on its context; on any other
	// store a settlement is bounded by a timeout.
	settleQueues bool
	// limits is the store when it counts rate limits and plan quotas
	// itself (shared by several nodes); nil: the limiter counts them.
	limits  storage.LimitCounter
	index   *keyIndex
	plans   *planCache
	limiter *limiter
	credits *creditWaiters
	audit   *auditor
	// spent, when set, is told what each settlement did to the spend
	// budgets of its key and user (see observeSpend): where budget
	// notices (a warning at 80 %, budget reached) are decided. It runs on
	// the request's goroutine and must not block.
	spent  func(SpendNotice)
	alerts *alerts.Hub

	unsubscribe func()
	cancel      context.CancelFunc
	wg          sync.WaitGroup
}

// newSharedState returns the state of a database not opened yet.
func newSharedState(cfg sharedConfig, logger *zap.Logger) *sharedState {
	return &sharedState{cfg: cfg, logger: logger, limiter: newLimiter(), credits: newCreditWaiters()}
}

// open opens the store with openStore unless it is open, and starts the
// state's goroutines.
//
// alertsCfg is the alert config of the config starting: the first one
// configures the alert hub before its worker starts; a later one (a reload)
// replaces the hub's config.
func (s *sharedState) open(openStore func() (storage.Store, error), alertsCfg alerts.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.store != nil {
		s.alerts.Configure(alertsCfg)
		return nil
	}
	st, err := openStore()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.store = st
	s.settleQueues = isFlusher(st)
	s.limits, _ = st.(storage.LimitCounter)
	s.index = newKeyIndex(st, s.cfg.negativeCacheSize)
	s.plans = newPlanCache(st)
	s.audit = newAuditor(st, s.cfg.auditPerMinute, s.logger)
	if feed, ok := st.(storage.SharedFeed); ok {
		// Other nodes change the database too: past the feed bound the
		// caches are not trusted (fail closed).
		s.index.behind, s.plans.behind = feed.FeedBehind, feed.FeedBehind
	}
	s.cancel = cancel
	s.alerts = alerts.NewHub(st, s.logger)
	s.alerts.Configure(alertsCfg)
	s.spent = s.budgetAlerts
	s.unsubscribe = st.Subscribe(s.onChange)
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.limiter.sweep(ctx, sweepInterval) }()
	go func() { defer s.wg.Done(); s.audit.run(ctx) }()
	go func() { defer s.wg.Done(); s.alerts.Run(ctx) }()
	return nil
}

func isFlusher(st storage.Store) bool {
	_, ok := st.(storage.Flusher)
	return ok
}

// onChange is the store's change feed: it drops what changed from the
// in-memory caches (without blocking and without store reads), so the next
// request re-reads the current record, and wakes the requests waiting for
// credits that came back.
func (s *sharedState) onChange(c storage.Change) {
	if c.Kind == storage.ChangeCredits {
		s.credits.release(c.UserID)
		return
	}
	s.index.invalidate(c)
	s.plans.invalidate(c)
}

// openReservations counts the open store's open reservations (none
// before it opens).
func (s *sharedState) openReservations() int64 {
	s.mu.Lock()
	st := s.store
	s.mu.Unlock()
	if st == nil {
		return 0
	}
	return st.OpenReservations()
}

// feedLag is how far behind the open store's change feed is (0 for a
// store only this process changes, or before it opens).
func (s *sharedState) feedLag() time.Duration {
	s.mu.Lock()
	st := s.store
	s.mu.Unlock()
	if feed, ok := st.(storage.SharedFeed); ok {
		return feed.FeedStatus().Lag
	}
	return 0
}

// Destruct stops the goroutines, writes pending audit events and closes the
// store, if it was opened.
func (s *sharedState) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.store == nil {
		return nil
	}
	s.unsubscribe()
	s.cancel()
	s.wg.Wait()
	return s.store.Close()
}

var _ caddy.Destructor = (*sharedState)(nil)
