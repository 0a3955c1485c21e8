package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Audit actions written by the management API. Key actions keep the
// reference's names (create, update, delete, rotate).
const (
	actCreate         = "create"
	actUpdate         = "update"
	actDelete         = "delete"
	actRotate         = "rotate"
	actRegister       = "user.register"
	actProfileUpdate  = "user.profile_update"
	actAccountDelete  = "user.account_delete"
	actAddCredits     = "admin.add_credits"
	actSetLimits      = "admin.set_limits"
	actAssignPlan     = "admin.assign_plan"
	actPlanCreate     = "admin.plan_create"
	actPlanUpdate     = "admin.plan_update"
	actPlanDeactivate = "admin.plan_deactivate"
)

// Audit actors and limits.
const (
	auditActorAdmin   = "admin"
	auditActorUserFmt = "user:%d"
	auditWriteTimeout = 5 * time.Second
	defaultAuditLimit = 100
	maxAuditLimit     = 1000
)

// adminActions are the actions listed as "recent admin actions" on the
// security dashboard.
var adminActions = []string{actBackup, actAddCredits, actSetLimits, actAssignPlan, actPlanCreate, actPlanUpdate, actPlanDeactivate}

// audit records an action of the calling user.
func (h *Handler) audit(r *http.Request, e *storage.AuditEntry) {
	actor := auditActorAdmin
	if id := identity(r); id != nil {
		actor = fmt.Sprintf(auditActorUserFmt, id.User.ID)
	}
	h.auditAs(r, actor, e)
}

// auditAs appends an audit entry. The action has already been committed, so
// a failure to record it is logged (loudly) rather than reported as a
// failed request. Details must never hold a plaintext key.
func (h *Handler) auditAs(r *http.Request, actor string, e *storage.AuditEntry) {
	e.Actor = actor
	e.IP = clientIP(r)
	if e.Time.IsZero() {
		e.Time = h.now().UTC()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditWriteTimeout)
	defer cancel()
	if err := h.app.Store().AppendAudit(ctx, e); err != nil {
		h.logger.Error("writing audit entry", zap.String("action", e.Action),
			zap.Int64("user_id", e.UserID), zap.Int64("key_id", e.KeyID), zap.Error(err))
	}
}

// auditQuery reads the audit filters shared by the user and admin views:
// key_id, action, start_date, end_date, limit (default 100, at most 1000)
// and offset. A malformed value is a 422 (format validation; the reference
// answered 400 for a bad date).
func auditQuery(r *http.Request) (storage.AuditFilter, int, error) {
	var f storage.AuditFilter
	q := r.URL.Query()
	if s := q.Get("key_id"); s != "" {
		id, err := queryInt(r, "key_id", 0, 1, 1<<62)
		if err != nil {
			return f, 0, err
		}
		f.KeyID = id
	}
	f.Action = q.Get("action")
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"start_date", &f.Since}, {"end_date", &f.Until}} {
		if s := q.Get(p.name); s != "" {
			t, ok := parseTime(s)
			if !ok {
				return f, 0, errValidation("Invalid %s format. Use ISO format.", p.name)
			}
			*p.dst = t
		}
	}
	limit, err := queryInt(r, "limit", defaultAuditLimit, 1, maxAuditLimit)
	if err != nil {
		return f, 0, err
	}
	offset, err := queryInt(r, "offset", 0, 0, 1_000_000)
	if err != nil {
		return f, 0, err
	}
	f.Limit = int(limit + offset)
	return f, int(offset), nil
}

// listAuditPage runs f and drops the first offset entries.
func (h *Handler) listAuditPage(ctx context.Context, f storage.AuditFilter, offset int) ([]storage.AuditEntry, error) {
	logs, err := h.app.Store().ListAudit(ctx, f)
	if err != nil {
		return nil, err
	}
	if offset >= len(logs) {
		return []storage.AuditEntry{}, nil
	}
	return logs[offset:], nil
}

// userAuditLogs lists the caller's audit entries (GET
// /user/api-keys/audit-logs; the route needs read on api_keys).
func (h *Handler) userAuditLogs(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	f, offset, err := auditQuery(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	f.UserID = id.User.ID
	logs, err := h.listAuditPage(r.Context(), f, offset)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":                    "success",
		"total_logs":                len(logs),
		"logs":                      logs,
		"phase4_integration":        true,
		"security_features_enabled": true,
	})
}

// adminAuditLogs lists every user's audit entries (GET /admin/audit-logs),
// with the user filters plus user_id.
func (h *Handler) adminAuditLogs(w http.ResponseWriter, r *http.Request) {
	f, offset, err := auditQuery(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if s := r.URL.Query().Get("user_id"); s != "" {
		uid, err := queryInt(r, "user_id", 0, 1, 1<<62)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		f.UserID = uid
	}
	logs, err := h.listAuditPage(r.Context(), f, offset)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":     "success",
		"total_logs": len(logs),
		"offset":     offset,
		"logs":       logs,
	})
}

// verifyAudit walks the hash chain (GET /admin/audit-logs/verify). A broken
// chain is reported in the body ("valid": false), still with 200: the check
// itself succeeded.
func (h *Handler) verifyAudit(w http.ResponseWriter, r *http.Request) {
	n, err := h.app.Store().VerifyAudit(r.Context())
	resp := map[string]any{
		"status":      "success",
		"valid":       err == nil,
		"entries":     n,
		"verified_at": h.now().UTC(),
	}
	if err != nil {
		if !errors.Is(err, storage.ErrAuditChainBroken) {
			h.fail(w, r, err)
			return
		}
		resp["error"] = err.Error()
		h.logger.Warn("audit chain verification failed", zap.Int("verified", n), zap.Error(err))
	}
	writeJSON(w, http.StatusOK, resp)
}

// exportAudit streams the whole chain as JSON lines, oldest first (GET
// /admin/audit-logs/export).
func (h *Handler) exportAudit(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Disposition", `attachment; filename="gatewayz-audit.jsonl"`)
	w.WriteHeader(http.StatusOK)
	if err := h.app.Store().ExportAudit(r.Context(), w); err != nil && r.Context().Err() == nil {
		// Headers are gone; all we can do is log and cut the stream short.
		h.logger.Error("exporting audit log", zap.Error(err))
	}
}
