package admin

import (
	"context"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// The store keeps each request's usage record for the usage detail
// retention only, and hourly and daily rollups for the long one: the
// analytics below read rollups (a few rows per user, key and model a
// day, whatever the traffic), and records only for the recent requests
// views and for the part of a period that does not start on a whole hour.

// usageSince returns the usage of userID and keyID (0: every user or key)
// from since (zero: as far back as the rollups go) to now, as rows of the
// coarsest grain that fits: the records of since's partial hour (each a
// row of one request starting at its time), the hourly rollups up to the
// next UTC midnight, then the daily rollups.
func usageSince(ctx context.Context, st storage.Store, userID, keyID int64, since time.Time) ([]storage.UsageRollup, error) {
	var out []storage.UsageRollup
	dayFrom := since
	if !since.IsZero() {
		since = since.UTC()
		hourFrom := ceilPeriod(storage.RollupHour, since)
		dayFrom = ceilPeriod(storage.RollupDay, since)
		if hourFrom.After(since) {
			recs, err := st.ListUsage(ctx, storage.UsageFilter{UserID: userID, KeyID: keyID, Since: since, Until: hourFrom})
			if err != nil {
				return nil, err
			}
			for i := range recs {
				if recs[i].Time.Before(hourFrom) { // Until is inclusive
					out = append(out, recordRow(&recs[i]))
				}
			}
		}
		if dayFrom.After(hourFrom) {
			hours, err := st.UsageRollups(ctx, storage.RollupFilter{Period: storage.RollupHour, UserID: userID, KeyID: keyID, Since: hourFrom, Until: dayFrom})
			if err != nil {
				return nil, err
			}
			out = append(out, hours...)
		}
	}
	days, err := st.UsageRollups(ctx, storage.RollupFilter{Period: storage.RollupDay, UserID: userID, KeyID: keyID, Since: dayFrom})
	if err != nil {
		return nil, err
	}
	return append(out, days...), nil
}

// ceilPeriod is the start of the first period of p at or after t.
func ceilPeriod(p storage.RollupPeriod, t time.Time) time.Time {
	start := p.Truncate(t)
	if start.Before(t) {
		if p == storage.RollupDay {
			return start.AddDate(0, 0, 1)
		}
		return start.Add(time.Hour)
	}
	return start
}

// recordRow is one request's record as a row of usage.
func recordRow(rec *storage.UsageRecord) storage.UsageRollup {
	row := storage.UsageRollup{Start: rec.Time.UTC(), UserID: rec.UserID, KeyID: rec.KeyID, Model: rec.Model, Outcome: rec.Outcome()}
	row.Add(rec)
	return row
}

// lastRequestTime is the time of the latest request of userID (0: any)
// still in the usage detail, else the latest start of rows (the hour or
// day of the latest request the rollups hold), else nil.
func lastRequestTime(ctx context.Context, st storage.Store, userID int64, rows []storage.UsageRollup) (any, error) {
	recs, err := st.ListUsage(ctx, storage.UsageFilter{UserID: userID, Limit: 1})
	if err != nil {
		return nil, err
	}
	if len(recs) > 0 {
		return recs[0].Time.UTC(), nil
	}
	var last time.Time
	for i := range rows {
		if rows[i].Start.After(last) {
			last = rows[i].Start
		}
	}
	if last.IsZero() {
		return nil, nil
	}
	return last.UTC(), nil
}
