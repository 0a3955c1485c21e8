package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// userRef names a user by api_key or user_id, as the admin endpoints take
// them.
type userRef struct {
	APIKey *string `json:"api_key"`
	UserID *int64  `json:"user_id"`
}

// resolve finds the user: exactly one of api_key and user_id must be given
// (422 otherwise); an unknown one is a 404 "User not found". It returns the
// user and, when named by key, that key.
func (h *Handler) resolveUser(ctx context.Context, ref userRef) (*storage.User, *storage.APIKey, error) {
	st := h.app.Store()
	switch {
	case ref.APIKey != nil && ref.UserID != nil:
		return nil, nil, errValidation("Give either api_key or user_id, not both")
	case ref.APIKey != nil:
		key := strings.TrimSpace(*ref.APIKey)
		if _, ok := storage.ParseKey(key); !ok {
			return nil, nil, errNotFound("User not found")
		}
		k, err := st.KeyByHash(ctx, h.app.Keyring().Hash(key))
		if err != nil {
			return nil, nil, notFoundAs(err, "User not found")
		}
		u, err := st.GetUser(ctx, k.UserID)
		return u, k, notFoundAs(err, "User not found")
	case ref.UserID != nil:
		if *ref.UserID <= 0 {
			return nil, nil, errValidation("user_id must be a positive integer")
		}
		u, err := st.GetUser(ctx, *ref.UserID)
		return u, nil, notFoundAs(err, "User not found")
	}
	return nil, nil, errValidation("Field \"api_key\" or \"user_id\" is required")
}

type addCreditsRequest struct {
	userRef
	Credits *int64  `json:"credits"`
	Note    *string `json:"note"`
}

// addCredits tops up a user's balance (POST /admin/add_credits). credits
// must be an integer (1.5 is a 422) and positive (<= 0 is the reference's
// 400). With an Idempotency-Key header a repeated call changes nothing and
// answers as the first did (plus "replayed": true and the header
// Idempotent-Replayed: true).
func (h *Handler) addCredits(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeRequest[addCreditsRequest](h, w, r)
	if !ok {
		return
	}
	if req.Credits == nil {
		h.fail(w, r, errValidation("Field \"credits\" is required"))
		return
	}
	if *req.Credits <= 0 {
		h.fail(w, r, errBadRequest("Credits must be positive"))
		return
	}
	if *req.Credits > maxCredits {
		h.fail(w, r, errValidation("credits must be at most %d", int64(maxCredits)))
		return
	}
	idem := strings.TrimSpace(r.Header.Get("Idempotency-Key"))
	if len(idem) > 255 {
		h.fail(w, r, errValidation("Idempotency-Key must be at most 255 characters"))
		return
	}
	note := ""
	if req.Note != nil {
		note = clip(*req.Note)
	}
	u, k, err := h.resolveUser(r.Context(), req.userRef)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	balance, replayed, err := h.app.Store().AddCredits(r.Context(), u.ID, *req.Credits, storage.LedgerTopUp, idem, note)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	name := u.Username
	if name == "" {
		name = fmt.Sprint(u.ID)
	}
	if replayed {
		// Same key, different request: say so rather than pretend.
		if same, err := h.sameTopUp(r.Context(), u.ID, idem, *req.Credits); err != nil {
			h.fail(w, r, err)
			return
		} else if !same {
			h.fail(w, r, errConflict("Idempotency-Key was already used for a different amount"))
			return
		}
		w.Header().Set("Idempotent-Replayed", "true")
	} else {
		details := map[string]any{"credits": *req.Credits, "new_balance": balance}
		if idem != "" {
			details["idempotency_key"] = idem
		}
		if k != nil {
			details["via_key_prefix"] = k.Masked()
			details["via_key_id"] = k.ID
		}
		if note != "" {
			details["note"] = note
		}
		h.audit(r, &storage.AuditEntry{UserID: u.ID, Action: actAddCredits, Details: details})
		h.creditAlerts(r, u, balance-*req.Credits, balance, storage.LedgerTopUp)
		if err := h.endTrialAtTopUp(r, u); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":      "success",
		"message":     fmt.Sprintf("Added %d credits to user %s", *req.Credits, name),
		"new_balance": balance,
		"user_id":     u.ID,
		"replayed":    replayed,
	})
}

// endTrialAtTopUp ends a trial user's trial at their first top-up when the
// operator set trial ends_at_top_up: they pay as they go from then on,
// without the trial's limits.
func (h *Handler) endTrialAtTopUp(r *http.Request, u *storage.User) error {
	if !h.app.TrialPolicy().EndsAtTopUp || u.SubscriptionStatus != caddymodule.StatusTrial {
		return nil
	}
	_, err := h.app.Store().UpdateUser(r.Context(), u.ID, func(u *storage.User) error {
		if u.SubscriptionStatus == caddymodule.StatusTrial {
			u.SubscriptionStatus = caddymodule.StatusPayAsYouGo
			u.UpdatedAt = h.now().UTC()
		}
		return nil
	})
	return err
}

// sameTopUp reports whether the ledger entry recorded under idem added
// amount credits. An entry that cannot be found is not held against the
// caller.
func (h *Handler) sameTopUp(ctx context.Context, userID int64, idem string, amount int64) (bool, error) {
	entries, err := h.app.Store().Ledger(ctx, userID)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if e.IdempotencyKey == idem {
			return e.Amount == amount, nil
		}
	}
	return true, nil
}

// adminBalance lists users and balances, paginated by offset and limit
// (GET /admin/balance). Keys appear masked only.
func (h *Handler) adminBalance(w http.ResponseWriter, r *http.Request) {
	offset, err := queryInt(r, "offset", 0, 0, 1<<40)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	limit, err := queryInt(r, "limit", 100, 1, 1000)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ctx := r.Context()
	st := h.app.Store()
	users, total, err := st.ListUsers(ctx, int(offset), int(limit))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]map[string]any, 0, len(users))
	for _, u := range users {
		bal, err := st.Balance(ctx, u.ID)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		primary, err := h.primaryKey(ctx, u.ID)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		out = append(out, map[string]any{
			"user_id":    u.ID,
			"username":   u.Username,
			"email":      u.Email,
			"api_key":    primary,
			"credits":    bal.Credits,
			"reserved":   bal.Reserved,
			"created_at": u.CreatedAt.UTC(),
			"updated_at": u.UpdatedAt.UTC(),
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":      "success",
		"total_users": total,
		"offset":      offset,
		"limit":       limit,
		"users":       out,
	})
}

// primaryKey returns the masked primary key of a user (else their newest
// key), or nil when they have none.
func (h *Handler) primaryKey(ctx context.Context, userID int64) (any, error) {
	keys, err := h.app.Store().ListKeys(ctx, userID)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if k.IsPrimary {
			return k.Masked(), nil
		}
	}
	if len(keys) > 0 {
		return keys[0].Masked(), nil
	}
	return nil, nil
}

// rateLimitsInput is the rate_limits object of POST /admin/limit. Missing
// fields take the reference's defaults; 0 means "not set at this level".
type rateLimitsInput struct {
	RequestsPerMinute *int64 `json:"requests_per_minute"`
	RequestsPerHour   *int64 `json:"requests_per_hour"`
	RequestsPerDay    *int64 `json:"requests_per_day"`
	TokensPerMinute   *int64 `json:"tokens_per_minute"`
	TokensPerHour     *int64 `json:"tokens_per_hour"`
	TokensPerDay      *int64 `json:"tokens_per_day"`
}

func (in rateLimitsInput) limits() (storage.RateLimits, error) {
	var out storage.RateLimits
	for _, f := range []struct {
		name string
		v    *int64
		def  int64
		dst  *int64
	}{
		{"requests_per_minute", in.RequestsPerMinute, 60, &out.RequestsPerMinute},
		{"requests_per_hour", in.RequestsPerHour, 1000, &out.RequestsPerHour},
		{"requests_per_day", in.RequestsPerDay, 10000, &out.RequestsPerDay},
		{"tokens_per_minute", in.TokensPerMinute, 10000, &out.TokensPerMinute},
		{"tokens_per_hour", in.TokensPerHour, 100000, &out.TokensPerHour},
		{"tokens_per_day", in.TokensPerDay, 1000000, &out.TokensPerDay},
	} {
		*f.dst = f.def
		if f.v != nil {
			if *f.v < 0 {
				return out, errValidation("rate_limits.%s must not be negative", f.name)
			}
			*f.dst = *f.v
		}
	}
	return out, nil
}

type setLimitsRequest struct {
	userRef
	RateLimits *rateLimitsInput `json:"rate_limits"`
	budgetInput
}

// setLimits sets a user's rate limits and spend budget (POST
// /admin/limit); the gateway enforces them (rate limits per user, above
// the key's and the defaults; the budget in every reservation of the
// user's). rate_limits is required unless the request sets the budget
// (422), so a request that forgot it cannot reset the user's limits to the
// defaults; within it, missing fields take the defaults. spend_limit
// (null removes it) and spend_limit_reset change only what they name.
func (h *Handler) setLimits(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeRequest[setLimitsRequest](h, w, r)
	if !ok {
		return
	}
	if req.RateLimits == nil && !req.budgetInput.given() {
		h.fail(w, r, errValidation("Field \"rate_limits\" is required"))
		return
	}
	var limits storage.RateLimits
	if req.RateLimits != nil {
		var err error
		if limits, err = req.RateLimits.limits(); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	if _, err := req.budget(storage.Budget{}); err != nil {
		h.fail(w, r, err)
		return
	}
	u, k, err := h.resolveUser(r.Context(), req.userRef)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	st := h.app.Store()
	details := map[string]any{}
	resp := map[string]any{"status": "success", "user_id": u.ID}
	who := fmt.Sprintf("user %d", u.ID)
	if k != nil {
		who = "user " + k.Masked()
	}
	if req.RateLimits != nil {
		old, err := st.UserLimits(r.Context(), u.ID)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			h.fail(w, r, err)
			return
		}
		if err := st.SetUserLimits(r.Context(), u.ID, limits); err != nil {
			h.fail(w, r, err)
			return
		}
		details["old_values"], details["new_values"] = old, limits
		resp["message"] = "Rate limits updated for " + who
		resp["rate_limits"] = limits
	}
	if req.budgetInput.given() {
		old, _, err := st.UserBudget(r.Context(), u.ID)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		b, _ := req.budget(old) // validated above
		if err := st.SetUserBudget(r.Context(), u.ID, b); err != nil {
			h.fail(w, r, err)
			return
		}
		_, sp, err := st.UserBudget(r.Context(), u.ID)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		details["old_budget"], details["new_budget"] = budgetAudit(old), budgetAudit(b)
		if req.RateLimits == nil {
			resp["message"] = "Spend budget updated for " + who
		} else {
			resp["message"] = "Rate limits and spend budget updated for " + who
		}
		resp["spend_budget"] = budgetView(map[string]any{}, b, sp, h.now())
	}
	h.audit(r, &storage.AuditEntry{UserID: u.ID, Action: actSetLimits, Details: details})
	writeJSON(w, http.StatusOK, resp)
}

type assignPlanRequest struct {
	UserID         *int64 `json:"user_id"`
	PlanID         *int64 `json:"plan_id"`
	DurationMonths *int64 `json:"duration_months"`
}

// maxDurationMonths bounds duration_months (100 years).
const maxDurationMonths = 1200

// assignPlan subscribes a user to a plan for duration_months (default 1,
// at least 1: 422 otherwise) months of 30 days (POST /admin/assign-plan).
// An unknown user or plan is a 404; an inactive plan a 400.
func (h *Handler) assignPlan(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeRequest[assignPlanRequest](h, w, r)
	if !ok {
		return
	}
	if req.UserID == nil || req.PlanID == nil {
		h.fail(w, r, errValidation("Fields \"user_id\" and \"plan_id\" are required"))
		return
	}
	months := int64(1)
	if req.DurationMonths != nil {
		months = *req.DurationMonths
	}
	if months < 1 || months > maxDurationMonths {
		h.fail(w, r, errValidation("duration_months must be between 1 and %d", maxDurationMonths))
		return
	}
	ctx := r.Context()
	st := h.app.Store()
	u, err := st.GetUser(ctx, *req.UserID)
	if err != nil {
		h.fail(w, r, notFoundAs(err, "User not found"))
		return
	}
	p, err := st.GetPlan(ctx, *req.PlanID)
	if err != nil {
		h.fail(w, r, notFoundAs(err, "Plan not found"))
		return
	}
	if !p.IsActive {
		h.fail(w, r, errBadRequest("Plan %d is not active", p.ID))
		return
	}
	now := h.now().UTC()
	end := now.AddDate(0, 0, int(30*months))
	up, err := st.AssignPlan(ctx, u.ID, p.ID, now, end)
	if err != nil {
		h.fail(w, r, notFoundAs(err, "User or plan not found"))
		return
	}
	if _, err := st.UpdateUser(ctx, u.ID, func(u *storage.User) error {
		u.SubscriptionStatus = "active"
		u.UpdatedAt = now
		return nil
	}); err != nil && !errors.Is(err, storage.ErrNotFound) {
		h.fail(w, r, err)
		return
	}
	h.audit(r, &storage.AuditEntry{UserID: u.ID, Action: actAssignPlan, Details: map[string]any{
		"plan_id": p.ID, "plan_name": p.Name, "duration_months": months,
		"start_date": up.StartDate, "end_date": up.EndDate,
	}})
	writeJSON(w, http.StatusOK, map[string]any{
		"status":          "success",
		"message":         fmt.Sprintf("Plan %s assigned to user %d for %d months", p.Name, u.ID, months),
		"user_id":         u.ID,
		"plan_id":         p.ID,
		"user_plan_id":    up.ID,
		"duration_months": months,
		"start_date":      up.StartDate.UTC(),
		"end_date":        up.EndDate.UTC(),
		"timestamp":       now,
	})
}

// adminGetUser shows one user with balance, masked keys, plan and limits
// (GET /admin/users/{user_id}).
func (h *Handler) adminGetUser(w http.ResponseWriter, r *http.Request) {
	uid, err := pathID(r, "user_id")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ctx := r.Context()
	st := h.app.Store()
	u, err := st.GetUser(ctx, uid)
	if err != nil {
		h.fail(w, r, notFoundAs(err, "User not found"))
		return
	}
	bal, err := st.Balance(ctx, uid)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	keys, err := st.ListKeys(ctx, uid)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	now := h.now()
	views := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		views = append(views, keyView(k, now))
	}
	var limits any
	if l, err := st.UserLimits(ctx, uid); err == nil {
		limits = l
	} else if !errors.Is(err, storage.ErrNotFound) {
		h.fail(w, r, err)
		return
	}
	plan, err := h.planInfo(ctx, uid)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	budget, spend, err := st.UserBudget(ctx, uid)
	if err != nil {
		h.fail(w, r, notFoundAs(err, "User not found"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"spend_budget": budgetView(map[string]any{}, budget, spend, now),
		"status":       "success",
		"user":         profileView(u),
		"credits":      bal.Credits,
		"reserved":     bal.Reserved,
		"keys":         views,
		"total_keys":   len(views),
		"plan":         plan,
		"rate_limits":  limits,
	})
}
