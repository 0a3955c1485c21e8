package caddymodule

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Security audit actions recorded by the gateway handler.
const (
	auditIPDenied       = "security.ip_denied"
	auditReferrerDenied = "security.referrer_denied"
	auditKeyExpired     = "security.key_expired"
	auditKeyInactive    = "security.key_inactive"
	auditUnknownKey     = "security.unknown_key"
)

// auditQueueSize bounds the events waiting to be written; beyond it events
// are dropped (and counted).
const auditQueueSize = 256

// maxAuditSubjects bounds the per-minute rate-limit table; beyond it, new
// subjects are not recorded until the next minute.
const maxAuditSubjects = 10_000

// auditor records security refusals as audit entries, off the request path:
// record never blocks, at most perMinute events per action and subject (key
// or client IP) are kept each minute, and a single goroutine writes them
// through a bounded queue. A flood therefore cannot grow the log or slow
// requests.
type auditor struct {
	store     storage.AuditLog
	logger    *zap.Logger
	perMinute int
	queue     chan *storage.AuditEntry
	dropped   atomic.Int64

	mu     sync.Mutex
	minute int64
	counts map[auditSubject]int
}

type auditSubject struct {
	action  string
	subject string
}

func newAuditor(st storage.AuditLog, perMinute int, logger *zap.Logger) *auditor {
	if perMinute <= 0 {
		perMinute = defaultAuditPerMinute
	}
	return &auditor{
		store:     st,
		logger:    logger,
		perMinute: perMinute,
		queue:     make(chan *storage.AuditEntry, auditQueueSize),
		counts:    make(map[auditSubject]int),
	}
}

// allow reports whether one more event for (action, subject) fits in the
// current minute.
func (a *auditor) allow(action, subject string, now time.Time) bool {
	m := now.Unix() / 60
	a.mu.Lock()
	defer a.mu.Unlock()
	if m != a.minute {
		a.minute = m
		clear(a.counts)
	}
	k := auditSubject{action, subject}
	n, ok := a.counts[k]
	if !ok && len(a.counts) >= maxAuditSubjects {
		return false
	}
	if n >= a.perMinute {
		return false
	}
	a.counts[k] = n + 1
	return true
}

// record queues a security event. subject identifies what the per-minute
// limit counts (a key id or masked prefix, or the client IP). details must
// never contain a key.
func (a *auditor) record(action, subject string, e *storage.AuditEntry, now time.Time) {
	if !a.allow(action, subject, now) {
		return
	}
	e.Action = action
	e.Actor = "gateway"
	e.Time = now
	select {
	case a.queue <- e:
	default:
		a.dropped.Add(1)
	}
}

// run writes queued events until ctx is done, then writes what is left.
func (a *auditor) run(ctx context.Context) {
	for {
		select {
		case e := <-a.queue:
			a.write(e)
		case <-ctx.Done():
			for {
				select {
				case e := <-a.queue:
					a.write(e)
				default:
					return
				}
			}
		}
	}
}

func (a *auditor) write(e *storage.AuditEntry) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.store.AppendAudit(ctx, e); err != nil {
		a.logger.Error("writing security audit entry", zap.String("action", e.Action), zap.Error(err))
	}
}
