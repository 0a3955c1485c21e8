package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

type updateKeyRequest struct {
	KeyName         *string     `json:"key_name"`
	ScopePerms      *scopeInput `json:"scope_permissions"`
	ExpirationDays  *int64      `json:"expiration_days"`
	ExpirationDate  *string     `json:"expiration_date"`
	MaxRequests     *int64      `json:"max_requests"`
	IPAllowlist     []string    `json:"ip_allowlist"`
	DomainReferrers []string    `json:"domain_referrers"`
	IsActive        *bool       `json:"is_active"`
	Action          *string     `json:"action"`
	// EnvironmentTag filters bulk_rotate; it does not change a key.
	EnvironmentTag *string `json:"environment_tag"`
	budgetInput
}

// updateKey updates, rotates or bulk-rotates (PUT /user/api-keys/{key_id},
// by "action"). It always acts on {key_id} (or, for bulk_rotate, the
// caller's keys), never implicitly on the calling key. The route needs
// write on api_keys, and the caller's scope must cover the target key's
// scope: a narrower key can neither widen a key nor obtain the secret of a
// wider one by rotating it. A key cannot change its own scope: a scope is
// granted by another key that covers it.
func (h *Handler) updateKey(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	req, ok := decodeRequest[updateKeyRequest](h, w, r)
	if !ok {
		return
	}
	target, err := h.ownedKey(r, id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	action := "update"
	if req.Action != nil {
		action = *req.Action
	}
	switch action {
	case "update":
		if !id.Key.Scopes.Covers(target.Scopes) {
			h.fail(w, r, errWiderKey("modify"))
			return
		}
		h.applyUpdate(w, r, id, target, &req)
	case "rotate":
		if !id.Key.Scopes.Covers(target.Scopes) {
			h.fail(w, r, errWiderKey("rotate"))
			return
		}
		h.rotateOne(w, r, target)
	case "bulk_rotate":
		h.bulkRotate(w, r, id, req.EnvironmentTag)
	default:
		// A deliberate business-rule 400, like the reference's create action.
		h.fail(w, r, errBadRequest("Invalid action. Must be 'update', 'rotate' or 'bulk_rotate'"))
	}
}

// keyUpdate is a validated set of changes to a key.
type keyUpdate struct {
	name       *string
	scopes     storage.Scopes
	expiration *time.Time
	maxReq     *int64
	ips        []string
	domains    []string
	isActive   *bool
	budget     *budgetInput
	fields     []string
}

// validateKeyUpdate checks an update request against the caller's scope.
func validateKeyUpdate(req *updateKeyRequest, caller storage.Scopes, now time.Time) (*keyUpdate, error) {
	u := &keyUpdate{}
	var err error
	if req.KeyName != nil {
		n, err := validateName("key_name", *req.KeyName)
		if err != nil {
			return nil, err
		}
		u.name = &n
		u.fields = append(u.fields, "key_name")
	}
	if req.ScopePerms != nil {
		if u.scopes, err = grantableScopes(req.ScopePerms, caller); err != nil {
			return nil, err
		}
		u.fields = append(u.fields, "scope_permissions")
	}
	if req.ExpirationDays != nil || req.ExpirationDate != nil {
		if u.expiration, err = resolveExpiration(req.ExpirationDays, req.ExpirationDate, now); err != nil {
			return nil, err
		}
		u.fields = append(u.fields, "expiration_date")
	}
	if req.MaxRequests != nil {
		if *req.MaxRequests <= 0 {
			return nil, errBadRequest("Max requests must be positive")
		}
		u.maxReq = req.MaxRequests
		u.fields = append(u.fields, "max_requests")
	}
	if req.IPAllowlist != nil {
		if u.ips, err = validateIPAllowlist(req.IPAllowlist); err != nil {
			return nil, err
		}
		u.fields = append(u.fields, "ip_allowlist")
	}
	if req.DomainReferrers != nil {
		if u.domains, err = validateDomains(req.DomainReferrers); err != nil {
			return nil, err
		}
		u.fields = append(u.fields, "domain_referrers")
	}
	if req.IsActive != nil {
		u.isActive = req.IsActive
		u.fields = append(u.fields, "is_active")
	}
	if req.budgetInput.given() {
		if _, err := req.budget(storage.Budget{}); err != nil {
			return nil, err
		}
		u.budget = &req.budgetInput
		if req.SpendLimit.set {
			u.fields = append(u.fields, "spend_limit")
		}
		if req.SpendLimitReset != nil {
			u.fields = append(u.fields, "spend_limit_reset")
		}
	}
	if len(u.fields) == 0 {
		return nil, errBadRequest("No valid fields to update")
	}
	return u, nil
}

// apply sets the changes on k and returns the old and new values of the
// changed fields (no secrets: keys are never among them).
func (u *keyUpdate) apply(k *storage.APIKey) (old, new map[string]any) {
	old, new = map[string]any{}, map[string]any{}
	if u.name != nil {
		old["key_name"], new["key_name"] = k.KeyName, *u.name
		k.KeyName = *u.name
	}
	if u.scopes != nil {
		old["scope_permissions"], new["scope_permissions"] = k.Scopes, u.scopes
		k.Scopes = u.scopes
	}
	if u.expiration != nil {
		old["expiration_date"], new["expiration_date"] = k.ExpirationDate, *u.expiration
		t := *u.expiration
		k.ExpirationDate = &t
	}
	if u.maxReq != nil {
		old["max_requests"], new["max_requests"] = k.MaxRequests, *u.maxReq
		v := *u.maxReq
		k.MaxRequests = &v
	}
	if u.ips != nil {
		old["ip_allowlist"], new["ip_allowlist"] = k.IPAllowlist, u.ips
		k.IPAllowlist = slices.Clone(u.ips)
	}
	if u.domains != nil {
		old["domain_referrers"], new["domain_referrers"] = k.DomainReferrers, u.domains
		k.DomainReferrers = slices.Clone(u.domains)
	}
	if u.isActive != nil {
		old["is_active"], new["is_active"] = k.IsActive, *u.isActive
		k.IsActive = *u.isActive
	}
	if u.budget != nil {
		b, _ := u.budget.budget(k.Budget) // validated
		old["budget"], new["budget"] = budgetAudit(k.Budget), budgetAudit(b)
		k.Budget = b
	}
	return old, new
}

func (h *Handler) applyUpdate(w http.ResponseWriter, r *http.Request, id *caddymodule.Identity, target *storage.APIKey, req *updateKeyRequest) {
	now := h.now().UTC()
	u, err := validateKeyUpdate(req, id.Key.Scopes, now)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if u.scopes != nil && target.ID == id.Key.ID {
		h.fail(w, r, errForbidden("A key cannot change its own scope_permissions; use a key whose scope covers it"))
		return
	}
	var oldVals, newVals map[string]any
	updated, err := h.app.Store().UpdateKey(r.Context(), target.ID, func(k *storage.APIKey) error {
		if err := checkTarget(k, id); err != nil {
			return err
		}
		oldVals, newVals = u.apply(k)
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		if errors.Is(err, storage.ErrDuplicate) {
			h.fail(w, r, errConflict("An API key with this name already exists"))
			return
		}
		h.fail(w, r, notFoundAs(err, "API key not found"))
		return
	}
	h.audit(r, &storage.AuditEntry{UserID: id.User.ID, KeyID: updated.ID, Action: actUpdate, Details: map[string]any{
		"updated_fields": u.fields, "old_values": oldVals, "new_values": newVals,
		"update_timestamp": now, "key_prefix": updated.Masked(), "by_key_id": id.Key.ID,
	}})
	writeJSON(w, http.StatusOK, map[string]any{
		"status":      "success",
		"message":     "API key updated successfully",
		"updated_key": keyView(updated, now),
		"timestamp":   now,
	})
}

// checkTarget checks, inside the store's update of key k, what the
// handler checked before: k is the caller's and within the caller's
// scope, so a key widened in between is not changed or rotated.
func checkTarget(k *storage.APIKey, id *caddymodule.Identity) error {
	if k.UserID != id.User.ID {
		return errNotFound("API key not found")
	}
	if !id.Key.Scopes.Covers(k.Scopes) {
		return errWiderKey("modify")
	}
	return nil
}

// errWiderKey refuses to act on a key whose scope the caller's does not
// cover.
func errWiderKey(verb string) *apiError {
	return errForbidden("Cannot " + verb + " a key with more scope than the calling key")
}

// rotateKey gives key id a new secret, keeping its id, name, limits and
// history. The previous secret keeps working for the app's rotation grace
// (PrevHash is set only when the grace is positive), else it stops at once.
func (h *Handler) rotateKey(ctx context.Context, keyID int64, id *caddymodule.Identity) (string, *storage.APIKey, error) {
	now := h.now().UTC()
	grace := h.app.RotationGrace()
	var plaintext string
	updated, err := h.app.Store().UpdateKey(ctx, keyID, func(k *storage.APIKey) error {
		if err := checkTarget(k, id); err != nil {
			return err
		}
		p, fresh, err := h.newKey(k.EnvironmentTag)
		if err != nil {
			return err
		}
		if grace > 0 {
			k.PrevHash = k.Hash
			k.PrevHashExpiresAt = now.Add(grace)
		} else {
			k.PrevHash = nil
			k.PrevHashExpiresAt = time.Time{}
		}
		k.Hash, k.Encrypted, k.Prefix = fresh.Hash, fresh.Encrypted, fresh.Prefix
		k.UpdatedAt = now
		plaintext = p
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	return plaintext, updated, nil
}

func (h *Handler) rotateOne(w http.ResponseWriter, r *http.Request, target *storage.APIKey) {
	id := identity(r)
	oldPrefix := target.Masked()
	plaintext, updated, err := h.rotateKey(r.Context(), target.ID, id)
	if err != nil {
		h.fail(w, r, notFoundAs(err, "API key not found"))
		return
	}
	now := h.now().UTC()
	details := map[string]any{
		"old_key_name": updated.KeyName, "new_key_name": updated.KeyName, "rotated_at": now,
		"old_key_prefix": oldPrefix, "new_key_prefix": updated.Masked(), "by_key_id": id.Key.ID,
	}
	var oldValidUntil any
	if !updated.PrevHashExpiresAt.IsZero() {
		oldValidUntil = updated.PrevHashExpiresAt.UTC()
		details["old_key_valid_until"] = oldValidUntil
	}
	h.audit(r, &storage.AuditEntry{UserID: id.User.ID, KeyID: updated.ID, Action: actRotate, Details: details})
	writeJSON(w, http.StatusOK, map[string]any{
		"status":              "success",
		"message":             "API key rotated successfully",
		"key_id":              updated.ID,
		"api_key":             plaintext,
		"old_key_valid_until": oldValidUntil,
		"updated_key":         keyView(updated, now),
		"timestamp":           now,
	})
}

// bulkRotate rotates every active key of the caller (optionally of one
// environment) whose scope the caller's covers; keys wider than the caller
// are skipped and listed. Each key is rotated in its own transaction: a
// store failure part-way leaves the keys rotated so far rotated (and says
// which in the log), never a key without a valid secret.
func (h *Handler) bulkRotate(w http.ResponseWriter, r *http.Request, id *caddymodule.Identity, env *string) {
	if env != nil {
		if err := validateEnvironment(*env); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	keys, err := h.app.Store().ListKeys(r.Context(), id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	now := h.now()
	newKeys := []map[string]any{}
	skipped := []int64{}
	for _, k := range keys {
		if !k.IsActive || k.Expired(now) || (env != nil && k.EnvironmentTag != *env) {
			continue
		}
		if !id.Key.Scopes.Covers(k.Scopes) {
			skipped = append(skipped, k.ID)
			continue
		}
		oldPrefix := k.Masked()
		plaintext, updated, err := h.rotateKey(r.Context(), k.ID, id)
		var ae *apiError
		if errors.Is(err, storage.ErrNotFound) {
			continue // deleted meanwhile
		} else if errors.As(err, &ae) && ae.Status == http.StatusForbidden {
			skipped = append(skipped, k.ID) // widened meanwhile
			continue
		}
		if err != nil {
			h.fail(w, r, err)
			return
		}
		h.audit(r, &storage.AuditEntry{UserID: id.User.ID, KeyID: k.ID, Action: actRotate, Details: map[string]any{
			"old_key_name": k.KeyName, "new_key_name": updated.KeyName, "rotated_at": now.UTC(),
			"old_key_prefix": oldPrefix, "new_key_prefix": updated.Masked(), "bulk": true, "by_key_id": id.Key.ID,
		}})
		newKeys = append(newKeys, map[string]any{"key_id": k.ID, "key_name": updated.KeyName, "new_api_key": plaintext})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":             "success",
		"message":            fmt.Sprintf("Bulk rotation completed: %d keys rotated", len(newKeys)),
		"rotated_count":      len(newKeys),
		"new_keys":           newKeys,
		"skipped_key_ids":    skipped,
		"phase4_integration": true,
		"timestamp":          now.UTC(),
	})
}

type confirmationRequest struct {
	Confirmation *string `json:"confirmation"`
}

// confirm reads a {"confirmation": want} body: no body is a 422, a missing
// or wrong value a 400 (the reference's deliberate check; its default was
// "DELETE").
func (h *Handler) confirm(w http.ResponseWriter, r *http.Request, want, what string) error {
	var req confirmationRequest
	if err := h.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Confirmation == nil || *req.Confirmation != want {
		return errBadRequest("Confirmation must be '%s' to proceed with %s", want, what)
	}
	return nil
}

// deleteKey deletes one of the caller's keys (DELETE
// /user/api-keys/{key_id}, body {"confirmation":"DELETE_KEY"}). The key
// stops authenticating at once, the primary key included. The route needs
// write on api_keys, and the caller's scope must cover the key's.
func (h *Handler) deleteKey(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	if err := h.confirm(w, r, "DELETE_KEY", "key deletion"); err != nil {
		h.fail(w, r, err)
		return
	}
	target, err := h.ownedKey(r, id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if !id.Key.Scopes.Covers(target.Scopes) {
		h.fail(w, r, errWiderKey("delete"))
		return
	}
	if err := h.app.Store().DeleteKey(r.Context(), target.ID); err != nil {
		h.fail(w, r, notFoundAs(err, "API key not found"))
		return
	}
	now := h.now().UTC()
	h.audit(r, &storage.AuditEntry{UserID: id.User.ID, KeyID: target.ID, Action: actDelete, Details: map[string]any{
		"deleted_at": now, "key_name": target.KeyName, "environment_tag": target.EnvironmentTag,
		"key_prefix": target.Masked(), "is_primary": target.IsPrimary, "by_key_id": id.Key.ID,
	}})
	writeJSON(w, http.StatusOK, map[string]any{
		"status":         "success",
		"message":        "API key deleted successfully",
		"deleted_key_id": target.ID,
		"timestamp":      now,
	})
}
