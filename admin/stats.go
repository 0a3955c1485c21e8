package admin

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// The admin's system view (GET /admin/stats): requests, tokens and credits
// per hour or per day by model and outcome, refusals by kind over the same
// buckets, open reservations, and, since this process started, requests by
// metering outcome and upstream latency percentiles.

// statsPeriods are the bucket sizes GET /admin/stats offers, with how many
// buckets each shows.
var statsPeriods = map[string]struct {
	step   time.Duration
	count  int
	rollup storage.RollupPeriod
}{
	"hour": {time.Hour, 24, storage.RollupHour},
	"day":  {24 * time.Hour, 30, storage.RollupDay},
}

// statsRow is the usage of one model with one outcome in one bucket.
type statsRow struct {
	Start   time.Time `json:"start"`
	Model   string    `json:"model"`
	Outcome string    `json:"outcome"`
	usageTotals
}

// refusalRow counts one kind of refusal in one bucket.
type refusalRow struct {
	Start time.Time `json:"start"`
	Kind  string    `json:"kind"`
	Count int64     `json:"count"`
}

// bucketStats groups usage rollups (of step, or shorter) and refusal audit
// entries into count buckets of step from first on (anything before first
// is left out), rows sorted by bucket, then model or kind, then outcome.
func bucketStats(usage []storage.UsageRollup, refusals []storage.AuditEntry, first time.Time, step time.Duration, count int) ([]time.Time, []statsRow, []refusalRow) {
	starts := make([]time.Time, count)
	for i := range starts {
		starts[i] = first.Add(time.Duration(i) * step)
	}
	bucket := func(t time.Time) (time.Time, bool) {
		if t.Before(first) {
			return time.Time{}, false
		}
		i := int(t.Sub(first) / step)
		if i >= count {
			return time.Time{}, false
		}
		return starts[i], true
	}
	type usageCell struct {
		start          time.Time
		model, outcome string
	}
	sums := map[usageCell]*usageTotals{}
	for i := range usage {
		u := &usage[i]
		start, ok := bucket(u.Start.UTC())
		if !ok {
			continue
		}
		c := usageCell{start, u.Model, string(u.Outcome)}
		if sums[c] == nil {
			sums[c] = &usageTotals{}
		}
		sums[c].add(u)
	}
	rows := make([]statsRow, 0, len(sums))
	for c, t := range sums {
		rows = append(rows, statsRow{Start: c.start, Model: c.model, Outcome: c.outcome, usageTotals: *t})
	}
	slices.SortFunc(rows, func(a, b statsRow) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		if c := strings.Compare(a.Model, b.Model); c != 0 {
			return c
		}
		return strings.Compare(a.Outcome, b.Outcome)
	})

	type refusalCell struct {
		start time.Time
		kind  string
	}
	refused := map[refusalCell]int64{}
	for _, e := range refusals {
		if start, ok := bucket(e.Time.UTC()); ok {
			refused[refusalCell{start, strings.TrimPrefix(e.Action, "security.")}]++
		}
	}
	refRows := make([]refusalRow, 0, len(refused))
	for c, n := range refused {
		refRows = append(refRows, refusalRow{Start: c.start, Kind: c.kind, Count: n})
	}
	slices.SortFunc(refRows, func(a, b refusalRow) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return strings.Compare(a.Kind, b.Kind)
	})
	return starts, rows, refRows
}

// adminStats is the system view (GET /admin/stats?period=hour|day): the
// last 24 hours by hour (the default) or the last 30 UTC days by day.
func (h *Handler) adminStats(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("period")
	if name == "" {
		name = "hour"
	}
	period, ok := statsPeriods[name]
	if !ok {
		h.fail(w, r, errValidation("Query parameter period must be \"hour\" or \"day\""))
		return
	}
	now := h.now().UTC()
	first := now.Truncate(period.step).Add(-time.Duration(period.count-1) * period.step)
	ctx := r.Context()
	st := h.app.Store()
	// first is a whole hour or UTC day: the rollups of the period hold it.
	usage, err := st.UsageRollups(ctx, storage.RollupFilter{Period: period.rollup, Since: first})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	refusals, err := st.ListAudit(ctx, storage.AuditFilter{Actions: securityActions, Since: first})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	starts, rows, refRows := bucketStats(usage, refusals, first, period.step, period.count)
	var total usageTotals
	for i := range usage {
		total.add(&usage[i])
	}
	latency := caddymodule.UpstreamLatency()
	if latency == nil {
		latency = []caddymodule.LatencySummary{}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":               "success",
		"timestamp":            now,
		"period":               name,
		"buckets":              starts,
		"usage":                rows,
		"refusals":             refRows,
		"totals":               total,
		"open_reservations":    st.OpenReservations(),
		"outcomes_since_start": caddymodule.OutcomeCounts(),
		"upstream_latency":     latency,
	})
}
