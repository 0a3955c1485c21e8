package caddymodule

import (
	"errors"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Metering metrics. The collectors are package-level and registered into
// every config's registry (ctx.GetMetricsRegistry() is new per config load),
// so they survive reloads. No label carries a key, a user or a model:
// cardinality is bounded by endpoints × outcomes.
var (
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "gatewayz",
		Name:      "requests_total",
		Help:      "Metered requests by endpoint and outcome.",
	}, []string{"endpoint", "outcome"})
	metricTokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "gatewayz",
		Name:      "tokens_total",
		Help:      "Tokens settled, by endpoint and kind (prompt, completion).",
	}, []string{"endpoint", "kind"})
	metricCredits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "gatewayz",
		Name:      "credits_charged_total",
		Help:      "Credits charged by settlements, by endpoint.",
	}, []string{"endpoint"})
	metricUpstreamLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "gatewayz",
		Name:      "upstream_latency_seconds",
		Help:      "Time from sending a metered request upstream to its response header.",
		Buckets:   []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
	}, []string{"endpoint"})
	metricOpenReservations = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "gatewayz",
		Name:      "open_reservations",
		Help:      "Credit reservations of in-flight requests not yet settled or refunded.",
	}, func() float64 {
		if s, ok := metricsStore.Load().(storeHolder); ok && s.store != nil {
			return float64(s.store.OpenReservations())
		}
		return 0
	})
)

// storeHolder lets an interface value live in an atomic.Value.
type storeHolder struct{ store storage.Store }

// metricsStore is the store whose open reservations the gauge reports: the
// one of the most recently provisioned gateway.
var metricsStore atomic.Value

// Request outcomes (the "outcome" label).
const (
	outcomeOK                  = "ok"                   // settled on upstream-reported usage
	outcomeEstimated           = "estimated"            // settled on an estimate (no usage reported)
	outcomeUpstreamError       = "upstream_error"       // upstream answered >= 400: refunded
	outcomeUpstreamUnavailable = "upstream_unavailable" // upstream unreachable: refunded, 502
	outcomeClientClosed        = "client_closed"        // client left before anything was delivered: refunded
	outcomeNoContent           = "no_content"           // nothing generated was delivered: refunded
	outcomeInsufficient        = "insufficient_credits" // refused with 402
	outcomeRequestLimit        = "request_limit"        // refused: key request cap
	outcomeStoreError          = "store_error"          // the store failed: refused or not billed
	outcomeFree                = "free"                 // free route, passed through
)

// registerMetrics adds the metering collectors to this config's registry,
// ignoring collectors already registered there (several sites share the
// handler), and points the open-reservations gauge at store.
func registerMetrics(ctx caddy.Context, store storage.Store) error {
	metricsStore.Store(storeHolder{store})
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		return registerCollectors(reg)
	}
	return nil
}

// registerCollectors registers the collectors into reg, tolerating ones
// already there.
func registerCollectors(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{metricRequests, metricTokens, metricCredits, metricUpstreamLatency, metricOpenReservations} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}
