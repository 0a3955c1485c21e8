package admin

import (
	"context"
	"encoding/csv"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Request-level usage: the caller's recent requests (GET /user/usage), the
// same rows as CSV (GET /user/usage/export) and per-day totals by model for
// charts (GET /user/usage/daily). The admin sees any user's rows through
// GET /admin/users/{user_id}/usage.

// Bounds of the usage listings.
const (
	defaultUsageLimit = 100
	maxUsageLimit     = 1000
	maxExportRows     = 100_000
	maxModelFilter    = 200
)

// usageQuery is a validated usage filter: the store's filter plus a model
// (matched exactly) and the number of rows wanted.
type usageQuery struct {
	filter storage.UsageFilter
	model  string
	limit  int
}

// parseUsageQuery reads key_id, model, date (a UTC day, YYYY-MM-DD) and
// limit (default 100, at most max). A malformed value is a 422.
func parseUsageQuery(r *http.Request, max int64) (usageQuery, error) {
	var q usageQuery
	v := r.URL.Query()
	if v.Get("key_id") != "" {
		id, err := queryInt(r, "key_id", 0, 1, 1<<62)
		if err != nil {
			return q, err
		}
		q.filter.KeyID = id
	}
	q.model = strings.TrimSpace(v.Get("model"))
	if len(q.model) > maxModelFilter {
		return q, errValidation("Query parameter model must be at most %d characters", maxModelFilter)
	}
	if d := v.Get("date"); d != "" {
		day, err := time.Parse(time.DateOnly, d)
		if err != nil {
			return q, errValidation("Query parameter date must be a day as YYYY-MM-DD")
		}
		q.filter.Since, q.filter.Until = day, day.AddDate(0, 0, 1)
	}
	limit, err := queryInt(r, "limit", min(defaultUsageLimit, max), 1, max)
	if err != nil {
		return q, err
	}
	q.limit = int(limit)
	return q, nil
}

// usageRow is one request as the usage listings show it; the key appears
// masked only.
type usageRow struct {
	Time             time.Time `json:"timestamp"`
	RequestID        string    `json:"request_id"`
	Model            string    `json:"model"`
	Endpoint         string    `json:"endpoint"`
	KeyID            int64     `json:"key_id"`
	KeyName          string    `json:"key_name"`
	APIKey           string    `json:"api_key"`
	PromptTokens     int64     `json:"prompt_tokens"`
	CompletionTokens int64     `json:"completion_tokens"`
	TotalTokens      int64     `json:"total_tokens"`
	Credits          int64     `json:"credits"`
	Estimated        bool      `json:"estimated"`
	Status           int       `json:"status"`
}

// usageRows reads the rows of userID matching q, newest first, naming each
// row's key (a deleted key keeps its id and an empty name).
func (h *Handler) usageRows(ctx context.Context, userID int64, q usageQuery) ([]usageRow, error) {
	st := h.app.Store()
	f := q.filter
	f.UserID = userID
	if q.model == "" {
		f.Limit = q.limit
	}
	recs, err := st.ListUsage(ctx, f)
	if err != nil {
		return nil, err
	}
	keys, err := st.ListKeys(ctx, userID)
	if err != nil {
		return nil, err
	}
	byID := make(map[int64]*storage.APIKey, len(keys))
	for _, k := range keys {
		byID[k.ID] = k
	}
	rows := make([]usageRow, 0, min(len(recs), q.limit))
	for i := range recs {
		rec := &recs[i]
		if q.model != "" && rec.Model != q.model {
			continue
		}
		row := usageRow{
			Time: rec.Time.UTC(), RequestID: rec.RequestID, Model: rec.Model, Endpoint: rec.Endpoint,
			KeyID: rec.KeyID, PromptTokens: rec.PromptTokens, CompletionTokens: rec.CompletionTokens,
			TotalTokens: rec.TotalTokens, Credits: rec.Credits, Estimated: rec.Estimated, Status: rec.Status,
		}
		if k := byID[rec.KeyID]; k != nil {
			row.KeyName, row.APIKey = k.KeyName, k.Masked()
		}
		rows = append(rows, row)
		if len(rows) == q.limit {
			break
		}
	}
	return rows, nil
}

// userUsage lists the caller's recent requests (GET /user/usage), filtered
// by key_id, model and date. Needs read on usage (routes.go).
func (h *Handler) userUsage(w http.ResponseWriter, r *http.Request) {
	h.writeUsage(w, r, identity(r).User.ID)
}

// adminUserUsage lists a user's recent requests (GET
// /admin/users/{user_id}/usage), with the filters of GET /user/usage.
func (h *Handler) adminUserUsage(w http.ResponseWriter, r *http.Request) {
	u, err := h.pathUser(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.writeUsage(w, r, u.ID)
}

func (h *Handler) writeUsage(w http.ResponseWriter, r *http.Request, userID int64) {
	q, err := parseUsageQuery(r, maxUsageLimit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	rows, err := h.usageRows(r.Context(), userID, q)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":  "success",
		"user_id": userID,
		"count":   len(rows),
		"records": rows,
	})
}

// usageCSVHeader names the columns of the CSV export.
var usageCSVHeader = []string{
	"timestamp", "request_id", "model", "endpoint", "key_id", "key_name", "api_key",
	"prompt_tokens", "completion_tokens", "total_tokens", "credits", "estimated", "status",
}

// csvSafe keeps a spreadsheet from reading a cell as a formula: text that
// starts with = + - @ or a tab gets a leading apostrophe.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// usageCSVRecord is a row as CSV cells, in usageCSVHeader's order.
func usageCSVRecord(row usageRow) []string {
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	return []string{
		row.Time.Format(time.RFC3339), csvSafe(row.RequestID), csvSafe(row.Model), csvSafe(row.Endpoint),
		i(row.KeyID), csvSafe(row.KeyName), row.APIKey, i(row.PromptTokens), i(row.CompletionTokens),
		i(row.TotalTokens), i(row.Credits), strconv.FormatBool(row.Estimated), strconv.Itoa(row.Status),
	}
}

// exportUsage writes the caller's requests as CSV (GET /user/usage/export),
// with the filters of GET /user/usage and up to 100,000 rows (default
// 100,000). Needs read on usage.
func (h *Handler) exportUsage(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	q, err := parseUsageQuery(r, maxExportRows)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if r.URL.Query().Get("limit") == "" {
		q.limit = maxExportRows
	}
	rows, err := h.usageRows(r.Context(), id.User.ID, q)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/csv; charset=utf-8")
	hdr.Set("Content-Disposition", `attachment; filename="usage.csv"`)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "no-store")
	cw := csv.NewWriter(w)
	_ = cw.Write(usageCSVHeader)
	for _, row := range rows {
		_ = cw.Write(usageCSVRecord(row))
	}
	cw.Flush()
}

// dailyRow is the usage of one model on one UTC day.
type dailyRow struct {
	Date  string `json:"date"`
	Model string `json:"model"`
	usageTotals
}

// dailyByModel groups usage (rollups of a day or shorter) by UTC day and
// model over the days from first (a UTC midnight) on, rows sorted by day
// then model. It also returns every day of the period, so charts show the
// days without usage.
func dailyByModel(usage []storage.UsageRollup, first time.Time, days int) ([]string, []dailyRow) {
	dates := make([]string, days)
	for i := range dates {
		dates[i] = first.AddDate(0, 0, i).Format(time.DateOnly)
	}
	type cell struct{ date, model string }
	sums := map[cell]*usageTotals{}
	for i := range usage {
		u := &usage[i]
		if u.Start.Before(first) {
			continue
		}
		c := cell{u.Start.UTC().Format(time.DateOnly), u.Model}
		t := sums[c]
		if t == nil {
			t = &usageTotals{}
			sums[c] = t
		}
		t.add(u)
	}
	rows := make([]dailyRow, 0, len(sums))
	for c, t := range sums {
		rows = append(rows, dailyRow{Date: c.date, Model: c.model, usageTotals: *t})
	}
	slices.SortFunc(rows, func(a, b dailyRow) int {
		if c := strings.Compare(a.Date, b.Date); c != 0 {
			return c
		}
		return strings.Compare(a.Model, b.Model)
	})
	return dates, rows
}

// userUsageDaily shows the caller's credits, tokens and requests per UTC
// day and model over the last `days` days (default 30, at most 366),
// optionally for one key_id, with today's and this calendar month's totals
// (GET /user/usage/daily). Needs read on usage.
func (h *Handler) userUsageDaily(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	days, err := queryInt(r, "days", 30, 1, 366)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var keyID int64
	if r.URL.Query().Get("key_id") != "" {
		if keyID, err = queryInt(r, "key_id", 0, 1, 1<<62); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	now := h.now().UTC()
	first := dayStart(now).AddDate(0, 0, -int(days-1))
	since := first
	if ms := monthStart(now); ms.Before(since) {
		since = ms
	}
	usage, err := usageSince(r.Context(), h.app.Store(), id.User.ID, keyID, since)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	today, month := planUsage(usage, now)
	dates, rows := dailyByModel(usage, first, int(days))
	writeJSON(w, http.StatusOK, map[string]any{
		"status":     "success",
		"user_id":    id.User.ID,
		"key_id":     keyID,
		"days":       days,
		"dates":      dates,
		"rows":       rows,
		"today":      today,
		"this_month": month,
	})
}
