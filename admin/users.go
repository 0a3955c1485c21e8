package admin

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// The admin's user directory: search (GET /admin/users) and a user's
// ledger (GET /admin/users/{user_id}/ledger). GET /admin/users/{user_id}
// (admin.go) and GET /admin/users/{user_id}/usage (usage_report.go) show
// the rest of a user's page.

// Bounds of the user directory.
const (
	maxUserQuery     = 200
	userListPageSize = 500
	defaultLedger    = 100
	maxLedger        = 1000
	spendWindowDays  = 30
)

// pathUser loads the user named by the {user_id} path parameter.
func (h *Handler) pathUser(r *http.Request) (*storage.User, error) {
	uid, err := pathID(r, "user_id")
	if err != nil {
		return nil, err
	}
	u, err := h.app.Store().GetUser(r.Context(), uid)
	return u, notFoundAs(err, "User not found")
}

// userMatches reports whether the user matches the search q (already
// lower-cased and trimmed): a substring of the email, username or name, or
// exactly the user id. An empty q matches everyone.
func userMatches(u *storage.User, q string) bool {
	if q == "" {
		return true
	}
	if id, err := strconv.ParseInt(q, 10, 64); err == nil && id == u.ID {
		return true
	}
	for _, s := range []string{u.Email, u.Username, u.Name} {
		if strings.Contains(strings.ToLower(s), q) {
			return true
		}
	}
	return false
}

// adminListUsers searches users by email, username, name or id (GET
// /admin/users?q=...), ordered by id, paginated by offset and limit
// (default 50, at most 500). Each user comes with balance, held credits,
// plan and the credits spent in the last 30 days.
func (h *Handler) adminListUsers(w http.ResponseWriter, r *http.Request) {
	q := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("q")))
	if len(q) > maxUserQuery {
		h.fail(w, r, errValidation("Query parameter q must be at most %d characters", maxUserQuery))
		return
	}
	offset, err := queryInt(r, "offset", 0, 0, 1<<40)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	limit, err := queryInt(r, "limit", 50, 1, userListPageSize)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ctx := r.Context()
	st := h.app.Store()
	var matched []*storage.User
	for start := 0; ; start += userListPageSize {
		users, total, err := st.ListUsers(ctx, start, userListPageSize)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		for _, u := range users {
			if userMatches(u, q) {
				matched = append(matched, u)
			}
		}
		if len(users) == 0 || start+len(users) >= total {
			break
		}
	}
	total := len(matched)
	matched = matched[min(int(offset), total):min(int(offset+limit), total)]

	now := h.now().UTC()
	spent := map[int64]int64{}
	if len(matched) > 0 {
		rows, err := usageSince(ctx, st, 0, 0, now.AddDate(0, 0, -spendWindowDays))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		for i := range rows {
			spent[rows[i].UserID] += rows[i].Credits
		}
	}
	out := make([]map[string]any, 0, len(matched))
	for _, u := range matched {
		bal, err := st.Balance(ctx, u.ID)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		var plan any
		if up, p, err := h.activePlan(ctx, u.ID); err != nil {
			h.fail(w, r, err)
			return
		} else if up != nil && up.ActiveAt(now) {
			plan = p.Name
		}
		out = append(out, map[string]any{
			"user_id":            u.ID,
			"username":           u.Username,
			"email":              u.Email,
			"name":               u.Name,
			"credits":            bal.Credits,
			"reserved":           bal.Reserved,
			"plan_name":          plan,
			"spent_last_30_days": spent[u.ID],
			"created_at":         u.CreatedAt.UTC(),
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status": "success",
		"query":  q,
		"total":  total,
		"offset": offset,
		"limit":  limit,
		"users":  out,
	})
}

// adminUserLedger lists a user's credit movements, newest first (GET
// /admin/users/{user_id}/ledger?limit=...; default 100, at most 1000).
func (h *Handler) adminUserLedger(w http.ResponseWriter, r *http.Request) {
	u, err := h.pathUser(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	limit, err := queryInt(r, "limit", defaultLedger, 1, maxLedger)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	entries, err := h.app.Store().Ledger(r.Context(), u.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	total := len(entries)
	newest := slices.Clone(entries[max(0, total-int(limit)):])
	slices.Reverse(newest)
	type ledgerRow struct {
		ID             int64     `json:"id"`
		Kind           string    `json:"kind"`
		Amount         int64     `json:"amount"`
		BalanceAfter   int64     `json:"balance_after"`
		KeyID          int64     `json:"key_id"`
		RequestID      string    `json:"request_id"`
		IdempotencyKey string    `json:"idempotency_key"`
		Note           string    `json:"note"`
		Time           time.Time `json:"time"`
		Requests       int64     `json:"requests"`
	}
	rows := make([]ledgerRow, 0, len(newest))
	for _, e := range newest {
		rows = append(rows, ledgerRow{
			ID: e.ID, Kind: string(e.Kind), Amount: e.Amount, BalanceAfter: e.BalanceAfter, KeyID: e.KeyID,
			RequestID: e.RequestID, IdempotencyKey: e.IdempotencyKey, Note: e.Note, Time: e.Time.UTC(), Requests: e.Requests,
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":  "success",
		"user_id": u.ID,
		"total":   total,
		"entries": rows,
	})
}
