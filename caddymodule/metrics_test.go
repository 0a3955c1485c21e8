package caddymodule

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// TestMetricsSurviveReload registers the collectors into two fresh
// registries, as two config loads do, and twice into the same one (two
// sites sharing the handler): no error, and both registries expose them.
func TestMetricsSurviveReload(t *testing.T) {
	e := newTestEnv(t, nil)
	_, k := e.newKey(t, "", nil)
	metricsState.Store(e.app.state)
	first, second := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	for _, reg := range []*prometheus.Registry{first, first, second} {
		if err := registerCollectors(reg); err != nil {
			t.Fatal(err)
		}
	}
	res, err := e.st.Reserve(context.Background(), storage.ReserveRequest{UserID: k.UserID, KeyID: k.ID, Credits: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.st.Refund(context.Background(), res)
	seriesChat.requests[outcomeOK].Inc()
	for _, reg := range []*prometheus.Registry{first, second} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				switch {
				case m.GetGauge() != nil:
					got[mf.GetName()] = m.GetGauge().GetValue()
				case m.GetCounter() != nil:
					got[mf.GetName()] += m.GetCounter().GetValue()
				}
			}
		}
		if got["gatewayz_open_reservations"] != 1 || got["gatewayz_requests_total"] < 1 {
			t.Fatalf("gathered %v", got)
		}
	}
}
