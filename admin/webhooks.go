package admin

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/alerts"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Users' webhooks: POST|GET /user/webhooks, DELETE /user/webhooks/{id},
// POST /user/webhooks/{id}/test, GET /user/webhooks/deliveries; and the
// operator's view, GET /admin/webhooks/deliveries.

// Audit actions of webhooks.
const (
	actWebhookCreate = "webhook.create"
	actWebhookDelete = "webhook.delete"
)

type webhookRequest struct {
	URL         *string  `json:"url"`
	Events      []string `json:"events"`
	Description *string  `json:"description"`
}

// webhookView is a webhook as the API shows it: never its secret (shown
// once, by create).
func webhookView(w *storage.Webhook) map[string]any {
	return map[string]any{
		"id":          w.ID,
		"url":         w.URL,
		"events":      w.Events,
		"description": w.Description,
		"is_active":   w.IsActive,
		"created_at":  w.CreatedAt.UTC(),
	}
}

// validateWebhook checks a create request under the operator's guard.
func validateWebhook(req webhookRequest, guard alerts.Guard) (*storage.Webhook, error) {
	if req.URL == nil {
		return nil, errValidation("Field \"url\" is required")
	}
	if _, err := guard.CheckURL(*req.URL); err != nil {
		return nil, errValidation("url: %s", err.Error())
	}
	events := req.Events
	if len(events) == 0 {
		events = []string{alerts.AllEvents}
	}
	if len(events) > len(alerts.Types)+1 {
		return nil, errValidation("events must list at most %d event types", len(alerts.Types)+1)
	}
	seen := map[string]bool{}
	for _, t := range events {
		if !alerts.ValidType(t) || t == alerts.Ping {
			return nil, errValidation("events: unknown event type (known: %s, or \"*\")", strings.Join(alerts.Types[:len(alerts.Types)-1], ", "))
		}
		if seen[t] {
			return nil, errValidation("events: %s is listed twice", t)
		}
		seen[t] = true
	}
	desc := ""
	if req.Description != nil {
		if err := checkNameChars("description", *req.Description); err != nil {
			return nil, err
		}
		desc = strings.TrimSpace(*req.Description)
		if len([]rune(desc)) > 200 {
			return nil, errValidation("description must be at most 200 characters")
		}
	}
	return &storage.Webhook{URL: *req.URL, Events: events, Description: desc, IsActive: true}, nil
}

// newWebhookSecret returns a fresh signing secret: "whsec_" and 32 random
// bytes.
func newWebhookSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "whsec_" + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// createWebhook registers a webhook for the caller's events (POST
// /user/webhooks). The answer carries the signing secret, once; it is
// stored encrypted with the server secret, as API keys are.
func (h *Handler) createWebhook(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	req, ok := decodeRequest[webhookRequest](h, w, r)
	if !ok {
		return
	}
	hook, err := validateWebhook(req, h.app.WebhookGuard())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	secret, err := newWebhookSecret()
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if hook.Secret, err = h.app.Keyring().Encrypt(secret); err != nil {
		h.fail(w, r, err)
		return
	}
	hook.UserID = id.User.ID
	err = h.app.Store().CreateWebhook(r.Context(), hook, alerts.MaxWebhooksPerUser)
	if errors.Is(err, storage.ErrTooMany) {
		h.fail(w, r, newError(http.StatusConflict, "webhook_limit", "At most %d webhooks per user; delete one first", alerts.MaxWebhooksPerUser))
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.audit(r, &storage.AuditEntry{UserID: id.User.ID, Action: actWebhookCreate, Details: map[string]any{
		"webhook_id": hook.ID, "events": hook.Events,
	}})
	v := webhookView(hook)
	v["secret"] = secret
	v["message"] = "Store the signing secret now: it is not shown again"
	writeJSON(w, http.StatusOK, v)
}

// listWebhooks lists the caller's webhooks (GET /user/webhooks).
func (h *Handler) listWebhooks(w http.ResponseWriter, r *http.Request) {
	hooks, err := h.app.Store().ListWebhooks(r.Context(), identity(r).User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]map[string]any, 0, len(hooks))
	for _, hk := range hooks {
		out = append(out, webhookView(hk))
	}
	writeJSON(w, http.StatusOK, map[string]any{"webhooks": out, "total": len(out), "limit": alerts.MaxWebhooksPerUser})
}

// deleteWebhook deletes one of the caller's webhooks (DELETE
// /user/webhooks/{webhook_id}); deliveries still pending to it fail.
func (h *Handler) deleteWebhook(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	hid, err := pathID(r, "webhook_id")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if err := h.app.Store().DeleteWebhook(r.Context(), id.User.ID, hid); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			err = errNotFound("Webhook not found")
		}
		h.fail(w, r, err)
		return
	}
	h.audit(r, &storage.AuditEntry{UserID: id.User.ID, Action: actWebhookDelete, Details: map[string]any{"webhook_id": hid}})
	writeJSON(w, http.StatusOK, map[string]any{"status": "success", "message": "Webhook deleted", "id": hid})
}

// testWebhook sends a ping to one of the caller's webhooks (POST
// /user/webhooks/{webhook_id}/test): it is queued in the outbox and
// delivered as any event; GET /user/webhooks/deliveries shows the outcome.
func (h *Handler) testWebhook(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	hid, err := pathID(r, "webhook_id")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	hook, err := h.app.Store().GetWebhook(r.Context(), hid)
	if errors.Is(err, storage.ErrNotFound) || err == nil && hook.UserID != id.User.ID {
		h.fail(w, r, errNotFound("Webhook not found"))
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ev := alerts.NewEvent(alerts.Ping, id.User.ID, map[string]any{"webhook_id": hid, "message": "Test event from Gatewayz"}, h.now())
	if err := h.app.AlertHub().WriteTo(r.Context(), hid, ev); err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "queued", "event_id": ev.ID, "type": ev.Type})
}

// deliveryView is a delivery as the deliveries views show it.
func deliveryView(d storage.Delivery, operator bool) map[string]any {
	v := map[string]any{
		"id":              d.ID,
		"event_id":        d.Event.ID,
		"event_type":      d.Event.Type,
		"user_id":         d.Event.UserID,
		"status":          d.State,
		"attempts":        d.Attempts,
		"last_attempt_at": timePtrOrNull(d.LastAttemptAt),
		"response_status": d.LastStatus,
		"error":           d.LastError,
		"created_at":      d.CreatedAt.UTC(),
		"delivered_at":    timePtrOrNull(d.DeliveredAt),
	}
	if d.State == storage.DeliveryPending {
		v["next_attempt_at"] = d.DueAt.UTC()
	} else {
		v["next_attempt_at"] = nil
	}
	if d.WebhookID != 0 {
		v["webhook_id"] = d.WebhookID
	} else {
		v["webhook_id"] = nil
	}
	if operator {
		v["target"] = d.Target
	}
	return v
}

func timePtrOrNull(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UTC()
}

// userDeliveries shows recent deliveries to the caller's webhooks (GET
// /user/webhooks/deliveries?limit=).
func (h *Handler) userDeliveries(w http.ResponseWriter, r *http.Request) {
	h.listDeliveries(w, r, identity(r).User.ID)
}

// adminDeliveries shows recent deliveries to every endpoint, the
// operator's included (GET /admin/webhooks/deliveries?limit=).
func (h *Handler) adminDeliveries(w http.ResponseWriter, r *http.Request) {
	h.listDeliveries(w, r, 0)
}

func (h *Handler) listDeliveries(w http.ResponseWriter, r *http.Request, owner int64) {
	limit, err := queryInt(r, "limit", storage.DefaultDeliveryLimit, 1, storage.MaxDeliveryLimit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ds, err := h.app.Store().ListDeliveries(r.Context(), storage.DeliveryFilter{OwnerID: owner, Limit: int(limit)})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]map[string]any, 0, len(ds))
	for _, d := range ds {
		out = append(out, deliveryView(d, owner == 0))
	}
	writeJSON(w, http.StatusOK, map[string]any{"deliveries": out, "total": len(out)})
}

// creditAlerts stores the events of a top-up or adjustment of user u's
// balance from before to after: credits.added for an addition, and the
// balance crossings. The change is made already; a failure to store its
// events is logged, not answered.
func (h *Handler) creditAlerts(r *http.Request, u *storage.User, before, after int64, kind storage.LedgerKind) {
	hub := h.app.AlertHub()
	evs := hub.BalanceEvents(u.ID, before, after, u.LowBalanceThreshold)
	if after > before {
		evs = append(evs, alerts.NewEvent(alerts.CreditsAdded, u.ID, map[string]any{
			"amount": after - before, "balance": after, "kind": kind,
		}, h.now()))
	}
	if err := hub.Write(r.Context(), evs...); err != nil {
		h.logger.Error("storing alert events", zap.Int64("user_id", u.ID), zap.Error(err))
	}
}
