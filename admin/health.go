package admin

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// health reports whether the store can serve (GET /health): 200
// {"status":"healthy"} or 503 {"detail","code","status":"unhealthy"}; never
// an internal error text. On a database several nodes share it also
// reports the change feed, and answers 503 while the feed is behind its
// bound, so that a load balancer drains a node that lost track of the
// others' changes until it has caught up.
func (h *Handler) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	now := h.now().UTC()
	st := h.app.Store()
	body := map[string]any{"status": "healthy", "database": "connected", "version": version(), "timestamp": now}
	var feed *storage.FeedStatus
	if sf, ok := st.(storage.SharedFeed); ok {
		fs := sf.FeedStatus()
		feed = &fs
		body["feed"] = feedReport(fs)
	}
	code := http.StatusOK
	switch err := st.Ping(ctx); {
	case err != nil:
		h.logger.Warn("health check: store unavailable", zap.Error(err))
		code = http.StatusServiceUnavailable
		body["status"], body["database"] = "unhealthy", "unavailable"
		body["detail"], body["code"] = "Store unavailable", "unavailable"
	case feed != nil && feed.Behind:
		h.logger.Warn("health check: change feed behind its bound",
			zap.Duration("lag", feed.Lag), zap.Duration("bound", feed.Bound))
		code = http.StatusServiceUnavailable
		body["status"] = "unhealthy"
		body["detail"], body["code"] = "Change feed behind: this node may not yet see changes made on other nodes", "feed_behind"
	}
	writeJSON(w, code, body)
}

// feedReport is the "feed" object of /health.
func feedReport(fs storage.FeedStatus) map[string]any {
	m := map[string]any{
		"node_id":       fs.Node,
		"listening":     fs.Listening,
		"behind":        fs.Behind,
		"lag_ms":        fs.Lag.Milliseconds(),
		"bound_ms":      fs.Bound.Milliseconds(),
		"last_event_id": fs.LastID,
		"caught_up_at":  fs.CaughtUpAt,
		"reconnects":    fs.Reconnects,
	}
	if !fs.LastEventAt.IsZero() {
		m["last_event_at"] = fs.LastEventAt
	}
	return m
}
