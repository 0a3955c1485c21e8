package admin

import (
	"context"
	"errors"
	"math"
	"net/http"
	"path"
	"slices"
	"strings"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// planView is a plan as the reference showed it.
func planView(p *storage.Plan) map[string]any {
	return map[string]any{
		"id":                    p.ID,
		"name":                  p.Name,
		"description":           p.Description,
		"daily_request_limit":   p.DailyRequestLimit,
		"monthly_request_limit": p.MonthlyRequestLimit,
		"daily_token_limit":     p.DailyTokenLimit,
		"monthly_token_limit":   p.MonthlyTokenLimit,
		"price_per_month":       p.PricePerMonth,
		"features":              nonNil(p.Features),
		"models":                nonNil(p.Models),
		"is_active":             p.IsActive,
	}
}

// listPlans lists the active plans by price, then id (GET /plans): a bare
// JSON array, as the reference.
func (h *Handler) listPlans(w http.ResponseWriter, r *http.Request) {
	plans, err := h.app.Store().ListPlans(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	active := make([]*storage.Plan, 0, len(plans))
	for _, p := range plans {
		if p.IsActive {
			active = append(active, p)
		}
	}
	slices.SortStableFunc(active, func(a, b *storage.Plan) int {
		switch {
		case a.PricePerMonth < b.PricePerMonth:
			return -1
		case a.PricePerMonth > b.PricePerMonth:
			return 1
		}
		return 0
	})
	out := make([]map[string]any, 0, len(active))
	for _, p := range active {
		out = append(out, planView(p))
	}
	writeJSON(w, http.StatusOK, out)
}

// getPlan shows one active plan (GET /plans/{plan_id}); unknown or
// inactive: 404.
func (h *Handler) getPlan(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "plan_id")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	p, err := h.app.Store().GetPlan(r.Context(), id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && !p.IsActive) {
		h.fail(w, r, errNotFound("Plan not found"))
		return
	} else if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, planView(p))
}

// adminListPlans lists every plan, inactive ones included (GET
// /admin/plans).
func (h *Handler) adminListPlans(w http.ResponseWriter, r *http.Request) {
	plans, err := h.app.Store().ListPlans(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]map[string]any, 0, len(plans))
	for _, p := range plans {
		out = append(out, planView(p))
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "success", "total_plans": len(out), "plans": out})
}

type planRequest struct {
	Name                *string  `json:"name"`
	Description         *string  `json:"description"`
	DailyRequestLimit   *int64   `json:"daily_request_limit"`
	MonthlyRequestLimit *int64   `json:"monthly_request_limit"`
	DailyTokenLimit     *int64   `json:"daily_token_limit"`
	MonthlyTokenLimit   *int64   `json:"monthly_token_limit"`
	PricePerMonth       *float64 `json:"price_per_month"`
	Features            []string `json:"features"`
	Models              []string `json:"models"`
	IsActive            *bool    `json:"is_active"`
}

// apply validates the request and sets its fields on p; it returns the
// names of the fields set.
func (req *planRequest) apply(p *storage.Plan) ([]string, error) {
	var fields []string
	if req.Name != nil {
		n, err := validateName("name", *req.Name)
		if err != nil {
			return nil, err
		}
		p.Name = n
		fields = append(fields, "name")
	}
	if req.Description != nil {
		if len(*req.Description) > 2000 {
			return nil, errValidation("description must be at most 2000 characters")
		}
		p.Description = *req.Description
		fields = append(fields, "description")
	}
	for _, f := range []struct {
		name string
		v    *int64
		dst  *int64
	}{
		{"daily_request_limit", req.DailyRequestLimit, &p.DailyRequestLimit},
		{"monthly_request_limit", req.MonthlyRequestLimit, &p.MonthlyRequestLimit},
		{"daily_token_limit", req.DailyTokenLimit, &p.DailyTokenLimit},
		{"monthly_token_limit", req.MonthlyTokenLimit, &p.MonthlyTokenLimit},
	} {
		if f.v == nil {
			continue
		}
		if *f.v < 0 {
			return nil, errValidation("%s must not be negative", f.name)
		}
		*f.dst = *f.v
		fields = append(fields, f.name)
	}
	if req.PricePerMonth != nil {
		v := *req.PricePerMonth
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, errValidation("price_per_month must not be negative")
		}
		p.PricePerMonth = v
		fields = append(fields, "price_per_month")
	}
	if req.Features != nil {
		list, err := cleanList("features", req.Features)
		if err != nil {
			return nil, err
		}
		p.Features = list
		fields = append(fields, "features")
	}
	if req.Models != nil {
		list, err := cleanList("models", req.Models)
		if err != nil {
			return nil, err
		}
		for _, m := range list {
			if _, err := path.Match(m, ""); err != nil {
				return nil, errValidation("models entry %q is not a valid glob", clip(m))
			}
		}
		p.Models = list
		fields = append(fields, "models")
	}
	if req.IsActive != nil {
		p.IsActive = *req.IsActive
		fields = append(fields, "is_active")
	}
	return fields, nil
}

func cleanList(field string, in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, s := range in {
		s = strings.TrimSpace(s)
		if s == "" || len(s) > 128 {
			return nil, errValidation("%s entries must be 1 to 128 characters", field)
		}
		out = append(out, s)
	}
	return out, nil
}

// nameTaken reports whether another plan (not id) has this name.
func (h *Handler) planNameTaken(ctx context.Context, name string, id int64) (bool, error) {
	plans, err := h.app.Store().ListPlans(ctx)
	if err != nil {
		return false, err
	}
	for _, p := range plans {
		if p.ID != id && strings.EqualFold(p.Name, name) {
			return true, nil
		}
	}
	return false, nil
}

// createPlan adds a plan (POST /admin/plans). name is required and unique
// (409); limits default to 0 (no limit), is_active to true.
func (h *Handler) createPlan(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeRequest[planRequest](h, w, r)
	if !ok {
		return
	}
	if req.Name == nil {
		h.fail(w, r, errValidation("Field \"name\" is required"))
		return
	}
	now := h.now().UTC()
	p := &storage.Plan{IsActive: true, Features: []string{}, CreatedAt: now, UpdatedAt: now}
	if _, err := req.apply(p); err != nil {
		h.fail(w, r, err)
		return
	}
	taken, err := h.planNameTaken(r.Context(), p.Name, 0)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if taken {
		h.fail(w, r, errConflict("A plan named %q already exists", clip(p.Name)))
		return
	}
	if err := h.app.Store().CreatePlan(r.Context(), p); err != nil {
		if errors.Is(err, storage.ErrDuplicate) {
			err = errConflict("A plan named %q already exists", clip(p.Name))
		}
		h.fail(w, r, err)
		return
	}
	h.audit(r, &storage.AuditEntry{Action: actPlanCreate, Details: map[string]any{"plan_id": p.ID, "new_values": planView(p)}})
	writeJSON(w, http.StatusOK, map[string]any{"status": "success", "message": "Plan created", "plan": planView(p)})
}

// updatePlan changes a plan's fields (PUT /admin/plans/{plan_id});
// is_active false deactivates it. No fields: 400.
func (h *Handler) updatePlan(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "plan_id")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	req, ok := decodeRequest[planRequest](h, w, r)
	if !ok {
		return
	}
	// Validate on a scratch copy first, so the 4xx comes before any write.
	if fields, err := req.apply(&storage.Plan{}); err != nil {
		h.fail(w, r, err)
		return
	} else if len(fields) == 0 {
		h.fail(w, r, errBadRequest("No valid fields to update"))
		return
	}
	if req.Name != nil {
		taken, err := h.planNameTaken(r.Context(), strings.TrimSpace(*req.Name), id)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if taken {
			h.fail(w, r, errConflict("A plan with this name already exists"))
			return
		}
	}
	h.changePlan(w, r, id, actPlanUpdate, "Plan updated", func(p *storage.Plan) error {
		_, err := req.apply(p)
		return err
	})
}

// deactivatePlan sets is_active false (DELETE /admin/plans/{plan_id}).
// Plans are never removed: users' subscriptions keep pointing at them.
func (h *Handler) deactivatePlan(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "plan_id")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.changePlan(w, r, id, actPlanDeactivate, "Plan deactivated", func(p *storage.Plan) error {
		p.IsActive = false
		return nil
	})
}

func (h *Handler) changePlan(w http.ResponseWriter, r *http.Request, id int64, action, msg string, fn func(*storage.Plan) error) {
	now := h.now().UTC()
	var old map[string]any
	p, err := h.app.Store().UpdatePlan(r.Context(), id, func(p *storage.Plan) error {
		old = planView(p)
		if err := fn(p); err != nil {
			return err
		}
		p.UpdatedAt = now
		return nil
	})
	if errors.Is(err, storage.ErrNotFound) {
		h.fail(w, r, errNotFound("Plan not found"))
		return
	} else if err != nil {
		h.fail(w, r, err)
		return
	}
	h.audit(r, &storage.AuditEntry{Action: action, Details: map[string]any{
		"plan_id": p.ID, "old_values": old, "new_values": planView(p),
	}})
	writeJSON(w, http.StatusOK, map[string]any{"status": "success", "message": msg, "plan": planView(p)})
}

// planInfo is a user's current subscription for views: nil without an
// active, unexpired plan.
func (h *Handler) planInfo(ctx context.Context, userID int64) (map[string]any, error) {
	up, p, err := h.activePlan(ctx, userID)
	if err != nil || up == nil || !up.ActiveAt(h.now()) {
		return nil, err
	}
	v := planView(p)
	v["user_plan_id"] = up.ID
	v["start_date"] = up.StartDate.UTC()
	v["end_date"] = up.EndDate.UTC()
	return v, nil
}

// activePlan returns the user's subscription row and plan. The row is
// returned even when it has lapsed (callers check ActiveAt); nil, nil, nil
// when the user has none.
func (h *Handler) activePlan(ctx context.Context, userID int64) (*storage.UserPlan, *storage.Plan, error) {
	st := h.app.Store()
	up, err := st.ActiveUserPlan(ctx, userID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	p, err := st.GetPlan(ctx, up.PlanID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	return up, p, nil
}
