package admin

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Security audit actions written by the gateway when it refuses a request;
// their details carry "key_prefix" and "ip".
var securityActions = []string{
	"security.ip_denied",
	"security.referrer_denied",
	"security.key_expired",
	"security.key_inactive",
	"security.unknown_key",
}

// counted is one row of a top-N list.
type counted struct {
	Value string `json:"value"`
	Count int    `json:"count"`
}

// topN returns the n most frequent values, ties by value.
func topN(counts map[string]int, n int) []counted {
	out := make([]counted, 0, len(counts))
	for v, c := range counts {
		out = append(out, counted{v, c})
	}
	slices.SortFunc(out, func(a, b counted) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		if a.Value < b.Value {
			return -1
		} else if a.Value > b.Value {
			return 1
		}
		return 0
	})
	return out[:min(n, len(out))]
}

// securitySummary aggregates refusal entries (newest first) at now.
func securitySummary(entries []storage.AuditEntry, now time.Time) map[string]any {
	hour, day := map[string]int{}, map[string]int{}
	for _, a := range securityActions {
		hour[a], day[a] = 0, 0
	}
	keys, ips := map[string]int{}, map[string]int{}
	hourAgo, dayAgo := now.Add(-time.Hour), now.Add(-24*time.Hour)
	for _, e := range entries {
		if e.Time.Before(dayAgo) {
			continue
		}
		day[e.Action]++
		if !e.Time.Before(hourAgo) {
			hour[e.Action]++
		}
		if p, ok := e.Details["key_prefix"].(string); ok && p != "" {
			keys[p]++
		}
		ip, _ := e.Details["ip"].(string)
		if ip == "" {
			ip = e.IP
		}
		if ip != "" {
			ips[ip]++
		}
	}
	topKeys := []map[string]any{}
	for _, c := range topN(keys, 10) {
		topKeys = append(topKeys, map[string]any{"key_prefix": c.Value, "refusals": c.Count})
	}
	topIPs := []map[string]any{}
	for _, c := range topN(ips, 10) {
		topIPs = append(topIPs, map[string]any{"ip": c.Value, "refusals": c.Count})
	}
	sum := func(m map[string]int) int {
		n := 0
		for _, v := range m {
			n += v
		}
		return n
	}
	return map[string]any{
		"refusals_last_hour": hour,
		"refusals_last_day":  day,
		"total_last_hour":    sum(hour),
		"total_last_day":     sum(day),
		"top_refused_keys":   topKeys,
		"top_refused_ips":    topIPs,
	}
}

// securityDashboard is the operator's security view (GET /admin/security):
// refusals by kind over the last hour and day, the most refused keys (by
// masked prefix) and client IPs, active keys expiring within
// expiring_within_days (default 7, at most 365), and recent admin actions.
func (h *Handler) securityDashboard(w http.ResponseWriter, r *http.Request) {
	within, err := queryInt(r, "expiring_within_days", 7, 1, 365)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ctx := r.Context()
	st := h.app.Store()
	now := h.now().UTC()
	refusals, err := st.ListAudit(ctx, storage.AuditFilter{Actions: securityActions, Since: now.Add(-24 * time.Hour)})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	resp := securitySummary(refusals, now)

	keys, err := st.AllKeys(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	horizon := now.Add(time.Duration(within) * 24 * time.Hour)
	soon := make([]*storage.APIKey, 0)
	for _, k := range keys {
		if k.IsActive && k.ExpirationDate != nil && !k.Expired(now) && !k.ExpirationDate.After(horizon) {
			soon = append(soon, k)
		}
	}
	slices.SortFunc(soon, func(a, b *storage.APIKey) int {
		if c := a.ExpirationDate.Compare(*b.ExpirationDate); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	expiring := make([]map[string]any, 0, len(soon))
	for _, k := range soon {
		expiring = append(expiring, map[string]any{
			"key_id": k.ID, "user_id": k.UserID, "key_name": k.KeyName, "api_key": k.Masked(),
			"expiration_date": k.ExpirationDate.UTC(),
			"hours_remaining": int64(k.ExpirationDate.Sub(now) / time.Hour),
		})
	}
	resp["keys_expiring_soon"] = expiring
	resp["expiring_within_days"] = within

	recent, err := st.ListAudit(ctx, storage.AuditFilter{Actions: adminActions, Limit: 20})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	resp["recent_admin_actions"] = recent
	resp["status"] = "success"
	resp["timestamp"] = now
	resp["message"] = fmt.Sprintf("%d refusals in the last 24 hours", resp["total_last_day"])
	writeJSON(w, http.StatusOK, resp)
}
