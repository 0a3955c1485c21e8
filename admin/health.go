package admin

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// health reports whether the store can serve (GET /health): 200
// {"status":"healthy"} or 503 {"detail","code","status":"unhealthy"}; never
// an internal error text.
func (h *Handler) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	now := h.now().UTC()
	if err := h.app.Store().Ping(ctx); err != nil {
		h.logger.Warn("health check: store unavailable", zap.Error(err))
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{
			"detail": "Store unavailable", "code": "unavailable",
			"status": "unhealthy", "database": "unavailable", "version": version(), "timestamp": now,
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status": "healthy", "database": "connected", "version": version(), "timestamp": now,
	})
}
