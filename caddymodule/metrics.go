package caddymodule

import (
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
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
	metricCreditWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "gatewayz",
		Name:      "credit_wait_seconds",
		Help:      "Time metered requests waited for credits held by the same user's requests in flight.",
		Buckets:   []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	metricCreditWaits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "gatewayz",
		Name:      "credit_waits_total",
		Help:      "Waits for credits by outcome: admitted, insufficient_credits (402 after the wait), client_gone.",
	}, []string{"outcome"})
	metricCreditWaiting = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "gatewayz",
		Name:      "credit_waiting",
		Help:      "Metered requests waiting for credits now.",
	}, func() float64 {
		if s, ok := metricsState.Load().(*sharedState); ok && s.credits != nil {
			return float64(s.credits.waiting.Load())
		}
		return 0
	})
	metricFeedLag = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "gatewayz",
		Name:      "feed_lag_seconds",
		Help:      "Time since this node last read the change feed of a database several nodes share to its end (0 on an embedded database); past the feed bound it trusts no cached key.",
	}, func() float64 {
		if s, ok := metricsState.Load().(*sharedState); ok {
			return s.feedLag().Seconds()
		}
		return 0
	})
	metricOpenReservations = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "gatewayz",
		Name:      "open_reservations",
		Help:      "Credit reservations of in-flight requests not yet settled or refunded.",
	}, func() float64 {
		if s, ok := metricsState.Load().(*sharedState); ok {
			return float64(s.openReservations())
		}
		return 0
	})
)

// metricsState is the state whose open reservations and credit waiters
// the gauges report: the one of the most recently provisioned gateway.
var metricsState atomic.Value

// outcome is a request outcome (the "outcome" label).
type outcome int

// Request outcomes.
const (
	outcomeOK                  outcome = iota // settled on upstream-reported usage
	outcomeEstimated                          // settled on an estimate (no usage reported)
	outcomeUpstreamError                      // upstream answered >= 400: refunded
	outcomeUpstreamUnavailable                // upstream unreachable: refunded, 502
	outcomeClientClosed                       // client left before anything was delivered: refunded
	outcomeNoContent                          // nothing generated was delivered: refunded
	outcomeInsufficient                       // refused with 402
	outcomeRequestLimit                       // refused: key request cap
	outcomeStoreError                         // the store failed: refused or not billed
	outcomeFree                               // free route, passed through
	outcomeUnauthenticated                    // refused: no, unknown, inactive or expired key (401)
	outcomeForbidden                          // refused: IP, referrer, scope, model or trial (403)
	outcomeRateLimited                        // refused: a per-minute/hour/day rate limit (429)
	outcomePlanLimit                          // refused: a daily or monthly plan limit (429)
	outcomeBadRequest                         // refused: bad body, path or method (4xx)
	outcomePreflight                          // a CORS preflight answered by the gateway
	numOutcomes
)

// outcomeLabels are the label values of the outcomes.
var outcomeLabels = [numOutcomes]string{
	outcomeOK:                  "ok",
	outcomeEstimated:           "estimated",
	outcomeUpstreamError:       "upstream_error",
	outcomeUpstreamUnavailable: "upstream_unavailable",
	outcomeClientClosed:        "client_closed",
	outcomeNoContent:           "no_content",
	outcomeInsufficient:        "insufficient_credits",
	outcomeRequestLimit:        "request_limit",
	outcomeStoreError:          "store_error",
	outcomeFree:                "free",
	outcomeUnauthenticated:     "unauthenticated",
	outcomeForbidden:           "forbidden",
	outcomeRateLimited:         "rate_limited",
	outcomePlanLimit:           "plan_limit",
	outcomeBadRequest:          "bad_request",
	outcomePreflight:           "preflight",
}

// refusalOutcome is the outcome a refusal of the gateway counts as.
func refusalOutcome(e *gatewayError) outcome {
	switch {
	case e.Status == http.StatusUnauthorized:
		return outcomeUnauthenticated
	case e.Status == http.StatusForbidden:
		return outcomeForbidden
	case e.Status == http.StatusPaymentRequired:
		return outcomeInsufficient
	case e.Code == codeRequestLimit:
		return outcomeRequestLimit
	case e.Code == codePlanLimit:
		return outcomePlanLimit
	case e.Status == http.StatusTooManyRequests:
		return outcomeRateLimited
	case e.Status >= 500:
		return outcomeStoreError
	}
	return outcomeBadRequest
}

func (o outcome) String() string { return outcomeLabels[o] }

// waitOutcome is how a wait for credits ended.
type waitOutcome int

// Wait outcomes.
const (
	waitAdmitted   waitOutcome = iota // the credits came back: reserved
	waitRefused                       // 402: the bound passed, or the balance turned out short
	waitClientGone                    // the client left while waiting
	numWaitOutcomes
)

// creditWaitSeries are the counters of the wait outcomes, resolved once.
var creditWaitSeries = [numWaitOutcomes]prometheus.Counter{
	waitAdmitted:   metricCreditWaits.WithLabelValues("admitted"),
	waitRefused:    metricCreditWaits.WithLabelValues("insufficient_credits"),
	waitClientGone: metricCreditWaits.WithLabelValues("client_gone"),
}

// observeCreditWait records a wait for credits that ended with o after d.
func observeCreditWait(o waitOutcome, d time.Duration) {
	metricCreditWait.Observe(d.Seconds())
	creditWaitSeries[o].Inc()
}

// endpointSeries are the metric series of one metered endpoint, resolved
// once (WithLabelValues hashes the labels and locks on every call).
type endpointSeries struct {
	requests         [numOutcomes]prometheus.Counter // nil for outcomeFree
	promptTokens     prometheus.Counter
	completionTokens prometheus.Counter
	credits          prometheus.Counter
	latency          prometheus.Observer
}

var (
	seriesChat        = newEndpointSeries(endpointChat)
	seriesCompletions = newEndpointSeries(endpointCompletions)
	seriesEmbeddings  = newEndpointSeries(endpointEmbeddings)
	// seriesFree and seriesUnrouted count the outcomes of free routes and
	// of requests refused before a route was known (endpoint "none").
	seriesFree     = newOutcomeSeries("free")
	seriesUnrouted = newOutcomeSeries("none")
	// metricFreeRequests counts requests on free routes.
	metricFreeRequests = seriesFree[outcomeFree]
)

// newOutcomeSeries returns the request counters of every outcome for an
// endpoint label that has no token series.
func newOutcomeSeries(endpoint string) *[numOutcomes]prometheus.Counter {
	var s [numOutcomes]prometheus.Counter
	for o := range numOutcomes {
		s[o] = metricRequests.WithLabelValues(endpoint, o.String())
	}
	return &s
}

// requestCounters returns the request counters of a route's endpoint.
func requestCounters(rt route, routed bool) *[numOutcomes]prometheus.Counter {
	switch {
	case !routed:
		return seriesUnrouted
	case !rt.metered():
		return seriesFree
	}
	return &seriesFor(rt.endpoint).requests
}

func newEndpointSeries(endpoint string) *endpointSeries {
	s := &endpointSeries{
		promptTokens:     metricTokens.WithLabelValues(endpoint, metricKindPrompt),
		completionTokens: metricTokens.WithLabelValues(endpoint, metricKindCompletion),
		credits:          metricCredits.WithLabelValues(endpoint),
		latency:          metricUpstreamLatency.WithLabelValues(endpoint),
	}
	for o := range numOutcomes {
		if o != outcomeFree {
			s.requests[o] = metricRequests.WithLabelValues(endpoint, o.String())
		}
	}
	return s
}

// seriesFor returns the series of a metered endpoint.
func seriesFor(endpoint string) *endpointSeries {
	switch endpoint {
	case endpointCompletions:
		return seriesCompletions
	case endpointEmbeddings:
		return seriesEmbeddings
	default:
		return seriesChat
	}
}

// registerMetrics adds the metering collectors to this config's registry,
// ignoring collectors already registered there (several sites share the
// handler), and points the open-reservations gauge at state's store.
func registerMetrics(ctx caddy.Context, state *sharedState) error {
	metricsState.Store(state)
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		return registerCollectors(reg)
	}
	return nil
}

// registerCollectors registers the collectors into reg, tolerating ones
// already there.
func registerCollectors(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{metricRequests, metricTokens, metricCredits, metricUpstreamLatency, metricCreditWait, metricCreditWaits, metricCreditWaiting, metricOpenReservations, metricFeedLag, metricPriceRefreshFailures} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}
