package alerts

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// receiver records deliveries and fails the first failures of them.
type receiver struct {
	mu       sync.Mutex
	failures int
	got      []storage.Event
	calls    int
	bad      []string
	secret   string
	arrived  chan struct{}
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.calls++
	if err := Verify(rc.secret, r.Header.Get(SignatureHeader), body, 5*time.Minute, time.Now()); err != nil {
		rc.bad = append(rc.bad, err.Error())
	}
	if rc.failures > 0 {
		rc.failures--
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	var ev storage.Event
	if err := json.Unmarshal(body, &ev); err != nil {
		rc.bad = append(rc.bad, "body: "+err.Error())
	}
	rc.got = append(rc.got, ev)
	select {
	case rc.arrived <- struct{}{}:
	default:
	}
}

func (rc *receiver) wait(t *testing.T, n int) []storage.Event {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		rc.mu.Lock()
		got := append([]storage.Event(nil), rc.got...)
		rc.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-rc.arrived:
		case <-deadline:
			t.Fatalf("received %d events, want %d", len(got), n)
		}
	}
}

func openStore(t *testing.T) storage.Store {
	s, err := storage.Open(filepath.Join(t.TempDir(), "gw.db"), storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// An operator endpoint that fails three times gets the event on the
// fourth attempt, once, signed; the outbox records the attempts.
func TestHubRetriesUntilDelivered(t *testing.T) {
	st := openStore(t)
	u, _ := storetest.Register(t, st, "ann@example.com", 100)
	rc := &receiver{failures: 3, secret: "op-secret", arrived: make(chan struct{}, 1)}
	srv := httptest.NewServer(rc)
	defer srv.Close()

	retries0 := counterValue(metricDeliveries.WithLabelValues("retry"))
	delivered0 := counterValue(metricDeliveries.WithLabelValues("delivered"))
	h := NewHub(st, zap.NewNop())
	h.Configure(Config{
		Endpoints:    []Endpoint{{URL: srv.URL, Secret: "op-secret", Events: []string{BalanceLow}}},
		RetryBase:    time.Millisecond,
		RetryCeiling: 5 * time.Millisecond,
		PollInterval: 5 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	h.BalanceChanged(u.ID, 100, 40, ptr(int64(50)))
	h.BalanceChanged(u.ID, 40, 30, ptr(int64(50))) // below already: nothing
	got := rc.wait(t, 1)
	if got[0].Type != BalanceLow || got[0].UserID != u.ID || string(got[0].Data) != `{"balance":40,"previous_balance":100,"threshold":50}` {
		t.Fatalf("delivered %+v (%s)", got[0], got[0].Data)
	}
	// Let the worker record the success, then check nothing else comes.
	var ds []storage.Delivery
	for range 200 {
		ds, _ = st.ListDeliveries(context.Background(), storage.DeliveryFilter{})
		if len(ds) == 1 && ds[0].State == storage.DeliveryDelivered {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(ds) != 1 || ds[0].State != storage.DeliveryDelivered || ds[0].Attempts != 4 || ds[0].LastStatus != 200 {
		t.Fatalf("deliveries %+v", ds)
	}
	if r, d := counterValue(metricDeliveries.WithLabelValues("retry"))-retries0,
		counterValue(metricDeliveries.WithLabelValues("delivered"))-delivered0; r != 3 || d != 1 {
		t.Fatalf("metrics: %v retries, %v delivered", r, d)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.calls != 4 || len(rc.got) != 1 || len(rc.bad) != 0 {
		t.Fatalf("calls %d, received %d, bad signatures %v", rc.calls, len(rc.got), rc.bad)
	}
}

// A user's webhook that resolves to loopback is refused at dial time and
// the delivery fails at once (no retry can help).
func TestHubGuardsUserWebhooks(t *testing.T) {
	st := openStore(t)
	u, _ := storetest.Register(t, st, "bob@example.com", 100)
	rc := &receiver{secret: "x", arrived: make(chan struct{}, 1)}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	enc, _ := storetest.Keyring.Encrypt("whsec_user")
	// Registered while private targets were allowed, delivered after the
	// operator turned that off.
	w := &storage.Webhook{UserID: u.ID, URL: srv.URL, Events: []string{"*"}, Secret: enc, IsActive: true}
	if err := st.CreateWebhook(context.Background(), w, 5); err != nil {
		t.Fatal(err)
	}
	h := NewHub(st, zap.NewNop())
	h.Configure(Config{Secrets: storetest.Keyring, Guard: Guard{AllowHTTP: true}, PollInterval: 5 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if err := h.WriteTo(context.Background(), w.ID, NewEvent(Ping, u.ID, nil, time.Now())); err != nil {
		t.Fatal(err)
	}
	var ds []storage.Delivery
	for range 300 {
		ds, _ = st.ListDeliveries(context.Background(), storage.DeliveryFilter{OwnerID: u.ID})
		if len(ds) == 1 && ds[0].State != storage.DeliveryPending {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(ds) != 1 || ds[0].State != storage.DeliveryFailed || ds[0].LastError == "" {
		t.Fatalf("deliveries %+v", ds)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.calls != 0 {
		t.Fatalf("the receiver on loopback was called %d times", rc.calls)
	}
}

// key.expiring fires once per key and expiration date, however often the
// scan runs.
func TestScanExpiringOnce(t *testing.T) {
	st := openStore(t)
	u, _ := storetest.Register(t, st, "cy@example.com", 100)
	now := time.Now()
	for i, exp := range []time.Duration{time.Hour, 23 * time.Hour, 25 * time.Hour, -time.Hour} {
		k, _ := storetest.NewKey(t, "k"+string(rune('a'+i)))
		k.UserID = u.ID
		e := now.Add(exp)
		k.ExpirationDate = &e
		if err := st.CreateKey(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	h := NewHub(st, zap.NewNop())
	h.Configure(Config{Endpoints: []Endpoint{{URL: "https://example.com/", Secret: "s"}}})
	for range 3 {
		if err := h.ScanExpiring(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := st.ListDeliveries(context.Background(), storage.DeliveryFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 {
		t.Fatalf("%d key.expiring deliveries, want 2 (keys expiring within a day)", len(ds))
	}
	for _, d := range ds {
		if d.Event.Type != KeyExpiring {
			t.Fatalf("event %+v", d.Event)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func counterValue(c interface{ Write(*dto.Metric) error }) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// Budget alerts fire once per crossing: 80 % once, the limit once, and
// again in a new window (spend from zero).
func TestBudgetChangedOncePerCrossing(t *testing.T) {
	h := NewHub(nil, zap.NewNop())
	steps := [][2]int64{{0, 30}, {30, 60}, {60, 85}, {85, 95}, {95, 100}, {100, 100}, {0, 90}, {90, 120}}
	for _, s := range steps {
		h.BudgetChanged(7, 3, s[0], s[1], 100, time.Time{})
	}
	var got []string
	for len(h.queue) > 0 {
		ev := <-h.queue
		if ev.UserID != 7 {
			t.Fatalf("event %+v", ev)
		}
		got = append(got, ev.Type)
	}
	want := []string{KeyBudgetWarning, KeyBudgetReached, KeyBudgetWarning, KeyBudgetReached}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("events %v, want %v", got, want)
	}
	// No budget: nothing.
	h.BudgetChanged(7, 3, 0, 1000, 0, time.Time{})
	if len(h.queue) != 0 {
		t.Fatal("an event without a budget")
	}
}
