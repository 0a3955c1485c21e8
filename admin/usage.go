package admin

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// payAsYouGo is what a user whose trial ended at a top-up has without a
// plan: no plan limits.
var payAsYouGo = storage.Plan{Name: caddymodule.PayAsYouGoPlanName, IsActive: true}

// planWithout is what limits u without an active plan: nothing beyond
// credits once they paid their way out of the trial, else the trial.
func (h *Handler) planWithout(u *storage.User) *storage.Plan {
	if u != nil && u.SubscriptionStatus == caddymodule.StatusPayAsYouGo {
		return &payAsYouGo
	}
	return &h.app.TrialPolicy().Plan
}

// userPlan shows the caller's subscription (GET /user/plan). No plan, or a
// plan past its end date: 404 "No active plan found" (an expired plan
// counts as none; nothing is written).
func (h *Handler) userPlan(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	up, p, err := h.activePlan(r.Context(), id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if up == nil || !up.ActiveAt(h.now()) {
		h.fail(w, r, errNotFound("No active plan found"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"user_plan_id":          up.ID,
		"user_id":               id.User.ID,
		"plan_id":               p.ID,
		"plan_name":             p.Name,
		"plan_description":      p.Description,
		"daily_request_limit":   p.DailyRequestLimit,
		"monthly_request_limit": p.MonthlyRequestLimit,
		"daily_token_limit":     p.DailyTokenLimit,
		"monthly_token_limit":   p.MonthlyTokenLimit,
		"price_per_month":       p.PricePerMonth,
		"features":              nonNil(p.Features),
		"start_date":            up.StartDate.UTC(),
		"end_date":              up.EndDate.UTC(),
		"is_active":             true,
	})
}

// usageTotals are request and token counts over a period.
type usageTotals struct {
	Requests         int64 `json:"requests"`
	Tokens           int64 `json:"tokens"`
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	CachedTokens     int64 `json:"cached_tokens"`
	CacheWriteTokens int64 `json:"cache_write_tokens"`
	Credits          int64 `json:"credits"`
}

// add adds a row of usage (a rollup, or one request's record).
func (t *usageTotals) add(u *storage.UsageRollup) {
	t.Requests += u.Requests
	t.Tokens += u.TotalTokens
	t.PromptTokens += u.PromptTokens
	t.CompletionTokens += u.CompletionTokens
	t.CachedTokens += u.CachedTokens
	t.CacheWriteTokens += u.CacheWriteTokens
	t.Credits += u.Credits
}

// dayStart and monthStart are the UTC calendar boundaries of now.
func dayStart(now time.Time) time.Time {
	y, m, d := now.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func monthStart(now time.Time) time.Time {
	y, m, _ := now.UTC().Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
}

// planUsage counts the usage (rows starting on whole days: daily rollups)
// since 00:00 UTC today and since the 1st of the month (UTC).
func planUsage(rows []storage.UsageRollup, now time.Time) (day, month usageTotals) {
	ds, ms := dayStart(now), monthStart(now)
	for i := range rows {
		row := &rows[i]
		if row.Start.Before(ms) {
			continue
		}
		month.add(row)
		if !row.Start.Before(ds) {
			day.add(row)
		}
	}
	return day, month
}

// userPlanUsage shows the caller's usage against their plan limits (GET
// /user/plan/usage). Without an active plan the trial limits apply.
func (h *Handler) userPlanUsage(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	ctx := r.Context()
	now := h.now()
	up, p, err := h.activePlan(ctx, id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	plan := h.planWithout(id.User)
	if up != nil && up.ActiveAt(now) {
		plan = p
	}
	rows, err := usageSince(ctx, h.app.Store(), id.User.ID, 0, monthStart(now))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	day, month := planUsage(rows, now)
	used := map[string]int64{
		"daily_requests": day.Requests, "daily_tokens": day.Tokens,
		"monthly_requests": month.Requests, "monthly_tokens": month.Tokens,
	}
	limits := map[string]int64{
		"daily_requests": plan.DailyRequestLimit, "daily_tokens": plan.DailyTokenLimit,
		"monthly_requests": plan.MonthlyRequestLimit, "monthly_tokens": plan.MonthlyTokenLimit,
	}
	// A limit of 0 is unlimited: nothing remaining to count, never at it.
	remaining, atLimit := map[string]any{}, map[string]bool{}
	for k, u := range used {
		if limits[k] <= 0 {
			remaining[k], atLimit[k] = nil, false
			continue
		}
		remaining[k] = max(limits[k]-u, 0)
		atLimit[k] = u >= limits[k]
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"plan_name": plan.Name,
		"usage":     used,
		"limits": map[string]int64{
			"daily_request_limit": plan.DailyRequestLimit, "daily_token_limit": plan.DailyTokenLimit,
			"monthly_request_limit": plan.MonthlyRequestLimit, "monthly_token_limit": plan.MonthlyTokenLimit,
		},
		"remaining": remaining,
		"at_limit":  atLimit,
		"period": map[string]any{
			"day_start": dayStart(now), "month_start": monthStart(now),
		},
	})
}

// userEntitlements shows what the caller's plan allows (GET
// /user/plan/entitlements?feature=...). A lapsed plan is reported as
// "Expired" with the trial limits, computed on read: nothing is written.
func (h *Handler) userEntitlements(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	now := h.now()
	feature := r.URL.Query().Get("feature")
	up, p, err := h.activePlan(r.Context(), id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	plan := h.planWithout(id.User)
	resp := map[string]any{"has_plan": false}
	switch {
	case up != nil && up.ActiveAt(now):
		plan = p
		resp["has_plan"] = true
		resp["plan_expires"] = up.EndDate.UTC()
		resp["plan_expired"] = false
	case up != nil:
		resp["plan_expired"] = true
		resp["plan_expires"] = up.EndDate.UTC()
	}
	features := nonNil(plan.Features)
	name := plan.Name
	if up != nil && !up.ActiveAt(now) {
		name = "Expired"
	}
	resp["plan_name"] = name
	resp["daily_request_limit"] = plan.DailyRequestLimit
	resp["monthly_request_limit"] = plan.MonthlyRequestLimit
	resp["daily_token_limit"] = plan.DailyTokenLimit
	resp["monthly_token_limit"] = plan.MonthlyTokenLimit
	resp["features"] = features
	resp["can_access_feature"] = feature == "" || slices.Contains(features, feature)
	writeJSON(w, http.StatusOK, resp)
}

// breakdown is usage grouped by a key (a day or a model).
type breakdown struct {
	order []string
	by    map[string]*usageTotals
}

func (b *breakdown) at(k string) *usageTotals {
	if b.by == nil {
		b.by = map[string]*usageTotals{}
	}
	t, ok := b.by[k]
	if !ok {
		t = &usageTotals{}
		b.by[k] = t
		b.order = append(b.order, k)
	}
	return t
}

// rows returns the groups sorted by name (ascending) under label.
func (b *breakdown) rows(label string) []map[string]any {
	keys := slices.Clone(b.order)
	slices.Sort(keys)
	out := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		t := b.by[k]
		out = append(out, map[string]any{
			label: k, "requests": t.Requests, "tokens": t.Tokens, "prompt_tokens": t.PromptTokens,
			"completion_tokens": t.CompletionTokens, "cached_tokens": t.CachedTokens,
			"cache_write_tokens": t.CacheWriteTokens, "credits": t.Credits,
		})
	}
	return out
}

// userMonitor shows the caller's usage by day and by model over the last
// `days` days (default 30, at most 366) (GET /user/monitor).
func (h *Handler) userMonitor(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	days, err := queryInt(r, "days", 30, 1, 366)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	now := h.now().UTC()
	since := dayStart(now).AddDate(0, 0, -int(days-1))
	ctx := r.Context()
	rows, err := usageSince(ctx, h.app.Store(), id.User.ID, 0, since)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var total, today usageTotals
	var byDay, byModel breakdown
	ds := dayStart(now)
	for i := range rows {
		row := &rows[i]
		total.add(row)
		if !row.Start.Before(ds) {
			today.add(row)
		}
		byDay.at(row.Start.UTC().Format("2006-01-02")).add(row)
		byModel.at(row.Model).add(row)
	}
	last, err := lastRequestTime(ctx, h.app.Store(), id.User.ID, rows)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var avg float64
	if total.Requests > 0 {
		avg = float64(total.Tokens) / float64(total.Requests)
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":  "success",
		"user_id": id.User.ID,
		"api_key": id.Key.Masked(),
		"period":  map[string]any{"start": since, "end": now, "days": days},
		"usage_metrics": map[string]any{
			"total_requests": total.Requests, "total_tokens": total.Tokens, "total_credits": total.Credits,
			"prompt_tokens": total.PromptTokens, "completion_tokens": total.CompletionTokens,
			"cached_tokens": total.CachedTokens, "cache_write_tokens": total.CacheWriteTokens,
			"requests_today": today.Requests, "tokens_today": today.Tokens, "credits_today": today.Credits,
			"average_tokens_per_request": avg, "last_request_time": last,
		},
		"by_day":   byDay.rows("date"),
		"by_model": byModel.rows("model"),
	})
}

// adminMonitor shows system-wide usage (GET /admin/monitor), as the
// reference: "today" is the last 24 hours, "this month" the last 30 days.
// Costs are in credits; keys appear masked.
func (h *Handler) adminMonitor(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	st := h.app.Store()
	now := h.now().UTC()
	_, totalUsers, err := st.ListUsers(ctx, 0, 1)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	dayAgo, monthAgo := now.Add(-24*time.Hour), now.Add(-30*24*time.Hour)
	var windows [3][]storage.UsageRollup // all kept, the last 30 days, the last 24 hours
	for i, since := range [3]time.Time{{}, monthAgo, dayAgo} {
		if windows[i], err = usageSince(ctx, st, 0, 0, since); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	var all, today, month usageTotals
	activeToday := map[int64]bool{}
	perUser := map[int64]*usageTotals{}
	var byModel breakdown
	for i := range windows[0] {
		row := &windows[0][i]
		all.add(row)
		byModel.at(row.Model).add(row)
		t := perUser[row.UserID]
		if t == nil {
			t = &usageTotals{}
			perUser[row.UserID] = t
		}
		t.add(row)
	}
	for i := range windows[1] {
		month.add(&windows[1][i])
	}
	for i := range windows[2] {
		today.add(&windows[2][i])
		activeToday[windows[2][i].UserID] = true
	}
	recs, err := st.ListUsage(ctx, storage.UsageFilter{Limit: 20})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	mostUsed := ""
	var mostTokens int64 = -1
	for _, m := range byModel.order {
		if t := byModel.by[m]; t.Tokens > mostTokens || (t.Tokens == mostTokens && m < mostUsed) {
			mostUsed, mostTokens = m, t.Tokens
		}
	}
	var avg float64
	if all.Requests > 0 {
		avg = float64(all.Tokens) / float64(all.Requests)
	}
	last, err := lastRequestTime(ctx, st, 0, windows[2])
	if err != nil {
		h.fail(w, r, err)
		return
	}

	uids := make([]int64, 0, len(perUser))
	for uid := range perUser {
		uids = append(uids, uid)
	}
	slices.SortFunc(uids, func(a, b int64) int {
		ta, tb := perUser[a].Tokens, perUser[b].Tokens
		switch {
		case ta > tb:
			return -1
		case ta < tb:
			return 1
		case a < b:
			return -1
		case a > b:
			return 1
		}
		return 0
	})
	top := []map[string]any{}
	for _, uid := range uids[:min(10, len(uids))] {
		t := perUser[uid]
		key, err := h.primaryKey(ctx, uid)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		top = append(top, map[string]any{
			"user_id": uid, "api_key": key, "tokens_used": t.Tokens, "cost": t.Credits, "requests": t.Requests,
		})
	}
	prefixes := map[int64]any{}
	recent := []map[string]any{}
	for i := range recs {
		rec := &recs[i]
		p, ok := prefixes[rec.KeyID]
		if !ok {
			if k, err := st.GetKey(ctx, rec.KeyID); err == nil {
				p = k.Masked()
			}
			prefixes[rec.KeyID] = p
		}
		recent = append(recent, map[string]any{
			"api_key": p, "key_id": rec.KeyID, "user_id": rec.UserID, "model": rec.Model,
			"tokens_used": rec.TotalTokens, "cached_tokens": rec.CachedTokens, "cache_write_tokens": rec.CacheWriteTokens,
			"cost": rec.Credits, "timestamp": rec.Time.UTC(),
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":    "success",
		"timestamp": now,
		"data": map[string]any{
			"total_users":          totalUsers,
			"active_users_today":   len(activeToday),
			"total_requests_today": today.Requests,
			"total_tokens_today":   today.Tokens,
			"total_cost_today":     today.Credits,
			"system_usage_metrics": map[string]any{
				"total_requests": all.Requests, "total_tokens": all.Tokens, "total_cost": all.Credits,
				"requests_today": today.Requests, "tokens_today": today.Tokens, "cost_today": today.Credits,
				"requests_this_month": month.Requests, "tokens_this_month": month.Tokens,
				"cost_this_month": month.Credits, "average_tokens_per_request": avg,
				"most_used_model": strings.TrimSpace(mostUsed), "last_request_time": last,
				"cached_tokens": all.CachedTokens, "cache_write_tokens": all.CacheWriteTokens,
			},
			"usage_by_model":     byModel.rows("model"),
			"top_users_by_usage": top,
			"recent_activity":    recent,
		},
	})
}
