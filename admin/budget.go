package admin

import (
	"bytes"
	"net/http"
	"strconv"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Spend budgets in the management API: spend_limit and spend_limit_reset
// on keys (create, update) and users (POST /admin/limit), and in every
// view of them the spend of the window in force (spend_used), what is
// left (spend_remaining) and when the window ends (spend_resets_at).

// spendLimitInput is spend_limit as a request gives it: absent (set
// false), null (no limit) or a non-negative integer. Anything else (a
// float, a string, a negative number) is a 422.
type spendLimitInput struct {
	set   bool
	value *int64
}

// UnmarshalJSON accepts null or a JSON integer, strictly: 100.0, 1e2 and
// "100" are refused, as is a value that does not fit 64 bits.
func (s *spendLimitInput) UnmarshalJSON(b []byte) error {
	s.set = true
	if bytes.Equal(b, []byte("null")) {
		s.value = nil
		return nil
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return errValidation("Field \"spend_limit\" must be a non-negative integer (credits) or null")
	}
	if v < 0 {
		return errValidation("Field \"spend_limit\" must not be negative")
	}
	s.value = &v
	return nil
}

// budgetInput is the budget part of a key's or a user's request.
type budgetInput struct {
	SpendLimit      spendLimitInput `json:"spend_limit"`
	SpendLimitReset *string         `json:"spend_limit_reset"`
}

// given reports whether the request names either field.
func (in *budgetInput) given() bool { return in.SpendLimit.set || in.SpendLimitReset != nil }

// budget returns b with the request's changes: a limit (null removes it)
// and a reset period (never, daily, weekly or monthly; else 422).
func (in *budgetInput) budget(b storage.Budget) (storage.Budget, error) {
	if in.SpendLimitReset != nil {
		r, err := storage.ParseBudgetReset(*in.SpendLimitReset)
		if err != nil || *in.SpendLimitReset == "" {
			return b, errValidation("Field \"spend_limit_reset\" must be one of never, daily, weekly, monthly")
		}
		b.Reset = r
	}
	if in.SpendLimit.set {
		b.Limit = nil
		if in.SpendLimit.value != nil {
			v := *in.SpendLimit.value
			b.Limit = &v
		}
	}
	if b.Reset == "" {
		b.Reset = storage.ResetNever
	}
	return b, nil
}

// budgetView adds a budget's fields, with its spend at now, to a view.
func budgetView(v map[string]any, b storage.Budget, sp storage.Spend, now time.Time) map[string]any {
	reset := b.Reset
	if reset == "" {
		reset = storage.ResetNever
	}
	used := sp.SpendIn(reset.WindowStart(now))
	var limit, remaining, resetsAt any
	if b.Limit != nil {
		limit = *b.Limit
		remaining = max(*b.Limit-used, 0)
	}
	if end := reset.WindowEnd(now); !end.IsZero() {
		resetsAt = end
	}
	v["spend_limit"] = limit
	v["spend_limit_reset"] = reset
	v["spend_used"] = used
	v["spend_remaining"] = remaining
	v["spend_resets_at"] = resetsAt
	return v
}

// budgetChange is the old and new values of a budget for an audit entry.
func budgetAudit(b storage.Budget) map[string]any {
	var limit any
	if b.Limit != nil {
		limit = *b.Limit
	}
	return map[string]any{"spend_limit": limit, "spend_limit_reset": b.Reset}
}

// adminKeyBudgetRequest is the body of PUT /admin/api-keys/{key_id}.
type adminKeyBudgetRequest struct {
	budgetInput
}

// adminUpdateKeyBudget sets any user's key's spend budget (PUT
// /admin/api-keys/{key_id}): the operator's override of what the key's
// owner set, answered like the owner's update.
func (h *Handler) adminUpdateKeyBudget(w http.ResponseWriter, r *http.Request) {
	keyID, err := pathID(r, "key_id")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	req, ok := decodeRequest[adminKeyBudgetRequest](h, w, r)
	if !ok {
		return
	}
	if !req.given() {
		h.fail(w, r, errBadRequest("No valid fields to update"))
		return
	}
	if _, err := req.budget(storage.Budget{}); err != nil {
		h.fail(w, r, err)
		return
	}
	now := h.now().UTC()
	var old storage.Budget
	updated, err := h.app.Store().UpdateKey(r.Context(), keyID, func(k *storage.APIKey) error {
		old = k.Budget
		k.Budget, _ = req.budget(k.Budget) // validated above
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		h.fail(w, r, notFoundAs(err, "API key not found"))
		return
	}
	h.audit(r, &storage.AuditEntry{UserID: updated.UserID, KeyID: updated.ID, Action: actUpdate, Details: map[string]any{
		"updated_fields": []string{"budget"}, "old_values": map[string]any{"budget": budgetAudit(old)},
		"new_values": map[string]any{"budget": budgetAudit(updated.Budget)}, "update_timestamp": now, "key_prefix": updated.Masked(),
	}})
	writeJSON(w, http.StatusOK, map[string]any{
		"status":      "success",
		"message":     "API key budget updated successfully",
		"updated_key": keyView(updated, now),
		"timestamp":   now,
	})
}
