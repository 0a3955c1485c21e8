package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// claimBatch is the most deliveries claimed at once; parallel is how many
// are attempted at the same time.
const (
	claimBatch = 16
	parallel   = 4
)

func randomJitter() float64 { return rand.Float64() }

// clientFor is an HTTP client for deliveries: no redirects followed, no
// proxy, a timeout; for users' webhooks, the guard's dial check.
type clientFor struct {
	*http.Client
}

func newClient(timeout time.Duration, guard *Guard) *clientFor {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if guard != nil {
		dialer.Control = guard.Control
	}
	tr := &http.Transport{
		Proxy:                 nil, // a proxy would dial for us, past the guard
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		MaxIdleConns:          16,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       30 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &clientFor{&http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}}
}

// deliverLoop claims due deliveries and attempts them until ctx ends,
// waiting PollInterval between empty claims unless woken by a write.
func (h *Hub) deliverLoop(ctx context.Context) {
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		cfg := h.cfg.Load()
		lease := 2*cfg.Timeout + 10*time.Second
		ds, err := h.store.ClaimDeliveries(ctx, h.now(), lease, claimBatch)
		if err != nil && ctx.Err() == nil {
			h.logger.Warn("claiming webhook deliveries", zap.Error(err))
		}
		for _, d := range ds {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return // the claimed rest is due again when its lease ends
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				h.attempt(ctx, d)
			}()
		}
		if len(ds) == claimBatch {
			continue
		}
		t := time.NewTimer(cfg.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-h.wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// attempt sends one delivery and records the outcome.
func (h *Hub) attempt(ctx context.Context, d storage.Delivery) {
	cfg := h.cfg.Load()
	res := h.send(ctx, cfg, d)
	if ctx.Err() != nil && !res.Delivered {
		return // stopping: due again when the lease ends (or at restart)
	}
	if !res.Delivered && res.RetryAt.IsZero() && res.Error == "" {
		res.Error = "failed"
	}
	switch {
	case res.Delivered:
		countAttempt(outcomeDelivered)
	case res.RetryAt.IsZero():
		countAttempt(outcomeFailed)
	default:
		countAttempt(outcomeRetry)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := h.store.FinishDelivery(wctx, d.ID, res); err != nil {
		h.logger.Error("recording a webhook delivery", zap.Int64("delivery", d.ID), zap.Error(err))
	}
}

// send resolves the delivery's endpoint and POSTs the event to it.
func (h *Hub) send(ctx context.Context, cfg *Config, d storage.Delivery) storage.DeliveryResult {
	var url, secret string
	var client *clientFor
	switch {
	case d.WebhookID != 0:
		w, err := h.store.GetWebhook(ctx, d.WebhookID)
		if errors.Is(err, storage.ErrNotFound) {
			return storage.DeliveryResult{At: h.now(), Error: "webhook deleted"}
		}
		if err != nil {
			return h.retry(cfg, d, 0, "store: "+err.Error())
		}
		if cfg.Secrets == nil {
			return h.retry(cfg, d, 0, "signing secrets not available")
		}
		if secret, err = cfg.Secrets.Decrypt(w.Secret); err != nil {
			return storage.DeliveryResult{At: h.now(), Error: "signing secret does not decrypt with the server secret"}
		}
		if _, err := cfg.Guard.CheckURL(w.URL); err != nil {
			return storage.DeliveryResult{At: h.now(), Error: "refused: " + err.Error()}
		}
		url, client = w.URL, h.userClient.Load()
	default:
		e, ok := cfg.endpoint(d.Target)
		if !ok {
			return storage.DeliveryResult{At: h.now(), Error: "endpoint no longer configured"}
		}
		url, secret, client = e.URL, e.Secret, h.opClient.Load()
	}
	status, err := post(ctx, client, url, secret, d.Event, h.now())
	if err == nil && status >= 200 && status < 300 {
		return storage.DeliveryResult{At: h.now(), Status: status, Delivered: true}
	}
	msg := ""
	switch {
	case errors.Is(err, ErrBlockedAddress):
		return storage.DeliveryResult{At: h.now(), Error: "refused: the target resolves to an address webhooks may not reach"}
	case err != nil:
		msg = err.Error()
	default:
		msg = "HTTP " + strconv.Itoa(status)
	}
	return h.retry(cfg, d, status, msg)
}

func (h *Hub) retry(cfg *Config, d storage.Delivery, status int, msg string) storage.DeliveryResult {
	now := h.now()
	next := NextAttempt(d.Event.CreatedAt, now, d.Attempts+1, cfg.RetryBase, cfg.RetryCeiling, cfg.RetryFor, h.jitter())
	if next.IsZero() {
		msg += " (retries exhausted)"
	}
	return storage.DeliveryResult{At: now, Status: status, Error: truncate(msg, 300), RetryAt: next}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Body is the JSON a receiver gets: the event.
func Body(ev storage.Event) ([]byte, error) { return json.Marshal(ev) }

// post sends ev to url signed with secret and returns the status. It reads
// at most MaxResponseBytes of the answer.
func post(ctx context.Context, c *clientFor, url, secret string, ev storage.Event, now time.Time) (int, error) {
	body, err := Body(ev)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("bad url")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "gatewayz-webhooks/1")
	req.Header.Set("Gatewayz-Event-Id", ev.ID)
	req.Header.Set("Gatewayz-Event-Type", ev.Type)
	req.Header.Set(SignatureHeader, Sign(secret, now, body))
	resp, err := c.Do(req)
	if err != nil {
		return 0, cleanErr(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxResponseBytes))
	return resp.StatusCode, nil
}

// cleanErr keeps the part of a client error worth showing (not the URL,
// which the user knows, and which may carry a token).
func cleanErr(err error) error {
	if errors.Is(err, ErrBlockedAddress) {
		return ErrBlockedAddress
	}
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			err = inner
		}
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 && strings.Contains(msg[:i], "://") {
		msg = msg[i+2:]
	}
	return errors.New(msg)
}
