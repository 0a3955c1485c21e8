package admin

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// keyView is a key as listings show it: never the full key. api_key holds
// the masked prefix ("gw_live_AbCd…").
func keyView(k *storage.APIKey, now time.Time) map[string]any {
	var daysRemaining, requestsRemaining, usagePct any
	var expiration any
	if k.ExpirationDate != nil {
		expiration = k.ExpirationDate.UTC()
		d := int64(k.ExpirationDate.Sub(now) / (24 * time.Hour))
		daysRemaining = max(d, 0)
	}
	var maxRequests any
	if k.MaxRequests != nil {
		maxRequests = *k.MaxRequests
		requestsRemaining = max(*k.MaxRequests-k.RequestsUsed, 0)
		if k.RequestsUsed > 0 && *k.MaxRequests > 0 {
			usagePct = min(100, float64(k.RequestsUsed)/float64(*k.MaxRequests)*100)
		}
	}
	var lastUsed any
	if k.LastUsedAt != nil {
		lastUsed = k.LastUsedAt.UTC()
	}
	return budgetView(map[string]any{
		"id":                 k.ID,
		"key_name":           k.KeyName,
		"api_key":            k.Masked(),
		"environment_tag":    k.EnvironmentTag,
		"scope_permissions":  scopesOut(k.Scopes),
		"is_active":          k.IsActive,
		"is_primary":         k.IsPrimary,
		"expiration_date":    expiration,
		"days_remaining":     daysRemaining,
		"max_requests":       maxRequests,
		"requests_used":      k.RequestsUsed,
		"requests_remaining": requestsRemaining,
		"usage_percentage":   usagePct,
		"ip_allowlist":       nonNil(k.IPAllowlist),
		"domain_referrers":   nonNil(k.DomainReferrers),
		"created_at":         k.CreatedAt.UTC(),
		"updated_at":         k.UpdatedAt.UTC(),
		"last_used_at":       lastUsed,
	}, k.Budget, k.Spend, now)
}

func scopesOut(s storage.Scopes) storage.Scopes {
	if s == nil {
		return storage.Scopes{}
	}
	return s
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// securityStatus is the reference's per-key security summary.
func securityStatus(k *storage.APIKey) map[string]any {
	return map[string]any{
		"has_ip_restrictions":     len(k.IPAllowlist) > 0,
		"has_domain_restrictions": len(k.DomainReferrers) > 0,
		"has_expiration":          k.ExpirationDate != nil,
		"has_usage_limits":        k.MaxRequests != nil,
		"last_used_tracking":      true,
		"audit_logging":           true,
		"phase4_enhanced":         true,
	}
}

type createKeyRequest struct {
	KeyName         *string     `json:"key_name"`
	EnvironmentTag  *string     `json:"environment_tag"`
	ScopePerms      *scopeInput `json:"scope_permissions"`
	ExpirationDays  *int64      `json:"expiration_days"`
	ExpirationDate  *string     `json:"expiration_date"`
	MaxRequests     *int64      `json:"max_requests"`
	IPAllowlist     []string    `json:"ip_allowlist"`
	DomainReferrers []string    `json:"domain_referrers"`
	Action          *string     `json:"action"`
	budgetInput
}

// createKey creates a key for the caller (POST /user/api-keys; the route
// needs write on api_keys). The new key's scope must be within the
// caller's (403 otherwise). A key created without scope_permissions gets
// the caller's own scope (the full scope for a primary key).
// max_requests is stored as given (the reference silently clamped it to
// the plan's monthly limit).
func (h *Handler) createKey(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	req, ok := decodeRequest[createKeyRequest](h, w, r)
	if !ok {
		return
	}
	now := h.now().UTC()
	if req.KeyName == nil {
		h.fail(w, r, errValidation("Field \"key_name\" is required"))
		return
	}
	name, err := validateName("key_name", *req.KeyName)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if req.Action != nil && *req.Action != "create" {
		h.fail(w, r, errBadRequest("Invalid action. Must be 'create'"))
		return
	}
	expiration, err := resolveExpiration(req.ExpirationDays, req.ExpirationDate, now)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if req.MaxRequests != nil && *req.MaxRequests <= 0 {
		h.fail(w, r, errBadRequest("Max requests must be positive"))
		return
	}
	budget, err := req.budget(storage.Budget{})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	env, err := environmentOrLive(req.EnvironmentTag)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	scopes, err := grantableScopes(req.ScopePerms, id.Key.Scopes)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ips, err := validateIPAllowlist(req.IPAllowlist)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	domains, err := validateDomains(req.DomainReferrers)
	if err != nil {
		h.fail(w, r, err)
		return
	}

	plaintext, key, err := h.newKey(env)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	key.UserID = id.User.ID
	key.KeyName = name
	key.Scopes = scopes
	key.IsActive = true
	key.ExpirationDate = expiration
	key.MaxRequests = req.MaxRequests
	key.Budget = budget
	key.IPAllowlist = ips
	key.DomainReferrers = domains
	key.CreatedByUserID = id.User.ID
	if err := h.app.Store().CreateKey(r.Context(), key); err != nil {
		if errors.Is(err, storage.ErrDuplicate) {
			h.fail(w, r, errConflict("An API key named %q already exists", clip(name)))
			return
		}
		h.fail(w, r, err)
		return
	}
	h.audit(r, &storage.AuditEntry{UserID: id.User.ID, KeyID: key.ID, Action: actCreate, Details: map[string]any{
		"key_name": name, "key_prefix": key.Masked(), "environment_tag": env, "scope_permissions": scopes,
		"expiration_days": req.ExpirationDays, "expiration_date": expiration, "max_requests": req.MaxRequests,
		"ip_allowlist": ips, "domain_referrers": domains, "is_primary": false,
		"created_by_key_id": id.Key.ID, "budget": budgetAudit(budget),
	}})
	writeJSON(w, http.StatusOK, budgetView(map[string]any{
		"status":            "success",
		"message":           "API key created successfully",
		"api_key":           plaintext,
		"key_id":            key.ID,
		"key_name":          name,
		"environment_tag":   env,
		"scope_permissions": scopes,
		"expiration_date":   expiration,
		"security_features": map[string]any{
			"ip_allowlist":       ips,
			"domain_referrers":   domains,
			"expiration_days":    req.ExpirationDays,
			"max_requests":       req.MaxRequests,
			"audit_logging":      true,
			"last_used_tracking": true,
		},
		"phase4_integration": true,
	}, key.Budget, key.Spend, now))
}

// listKeys lists the caller's keys, newest first (GET /user/api-keys; the
// route needs read on api_keys).
func (h *Handler) listKeys(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	keys, err := h.app.Store().ListKeys(r.Context(), id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	now := h.now()
	out := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		v := keyView(k, now)
		v["security_status"] = securityStatus(k)
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":                    "success",
		"total_keys":                len(out),
		"keys":                      out,
		"phase4_integration":        true,
		"security_features_enabled": true,
		"message":                   fmt.Sprintf("Retrieved %d API keys", len(out)),
	})
}

// ownedKey loads key_id from the path and checks that it belongs to the
// caller: anything else is a 404 (a 422 for a non-numeric id).
func (h *Handler) ownedKey(r *http.Request, id *caddymodule.Identity) (*storage.APIKey, error) {
	keyID, err := pathID(r, "key_id")
	if err != nil {
		return nil, err
	}
	k, err := h.app.Store().GetKey(r.Context(), keyID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && k.UserID != id.User.ID) {
		return nil, errNotFound("API key not found")
	}
	return k, err
}

// keysUsage lists the caller's keys with their request counts (GET
// /user/api-keys/usage; the route needs read on usage); keys are masked.
func (h *Handler) keysUsage(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	keys, err := h.app.Store().ListKeys(r.Context(), id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	now := h.now()
	byKey, err := h.keyUsageThisMonth(r, id.User.ID, now)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		v := keyView(k, now)
		month := byKey[k.ID]
		if month == nil {
			month = new(usageTotals)
		}
		out = append(out, map[string]any{
			"key_id":             k.ID,
			"api_key":            v["api_key"],
			"key_name":           k.KeyName,
			"is_active":          k.IsActive,
			"is_primary":         k.IsPrimary,
			"requests_used":      k.RequestsUsed,
			"max_requests":       v["max_requests"],
			"requests_remaining": v["requests_remaining"],
			"usage_percentage":   v["usage_percentage"],
			"environment_tag":    k.EnvironmentTag,
			"created_at":         v["created_at"],
			"last_used_at":       v["last_used_at"],
			"usage_this_month":   month,
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"user_id":    id.User.ID,
		"total_keys": len(out),
		"keys":       out,
		"audit_logging": map[string]any{
			"enabled":                   true,
			"last_audit_check":          now.UTC(),
			"security_events_tracked":   true,
			"access_patterns_monitored": true,
		},
		"phase4_integration": true,
	})
}

// keyUsageThisMonth totals the user's metered usage per key since the 1st
// of the month (UTC), cached prompt tokens apart.
func (h *Handler) keyUsageThisMonth(r *http.Request, userID int64, now time.Time) (map[int64]*usageTotals, error) {
	rows, err := usageSince(r.Context(), h.app.Store(), userID, 0, monthStart(now))
	if err != nil {
		return nil, err
	}
	byKey := map[int64]*usageTotals{}
	for i := range rows {
		t := byKey[rows[i].KeyID]
		if t == nil {
			t = new(usageTotals)
			byKey[rows[i].KeyID] = t
		}
		t.add(&rows[i])
	}
	return byKey, nil
}
