package alerts

import "github.com/prometheus/client_golang/prometheus"

// Metrics of alerts, package-level (the gateway registers them into every
// config's registry). Labels are bounded: event types and three outcomes.
var (
	metricEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "gatewayz",
		Name:      "alert_events_total",
		Help:      "Alert events raised, by type.",
	}, []string{"type"})
	metricDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "gatewayz",
		Name:      "alert_events_dropped_total",
		Help:      "Alert events raised by requests and dropped because the queue to the outbox was full.",
	})
	metricDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "gatewayz",
		Name:      "webhook_deliveries_total",
		Help:      "Webhook delivery attempts by outcome: delivered, retry (failed, tried again later), failed (given up).",
	}, []string{"outcome"})
)

// Collectors are the alert metrics, for the gateway to register.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricEvents, metricDropped, metricDeliveries}
}

func countAttempt(r deliveryOutcome) {
	metricDeliveries.WithLabelValues(string(r)).Inc()
}

type deliveryOutcome string

const (
	outcomeDelivered deliveryOutcome = "delivered"
	outcomeRetry     deliveryOutcome = "retry"
	outcomeFailed    deliveryOutcome = "failed"
)
