package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// profileView is a user as the profile and admin views show it.
func profileView(u *storage.User) map[string]any {
	return map[string]any{
		"user_id":               u.ID,
		"username":              u.Username,
		"email":                 u.Email,
		"name":                  u.Name,
		"auth_method":           u.AuthMethod,
		"is_active":             u.IsActive,
		"subscription_status":   u.SubscriptionStatus,
		"trial_expires_at":      timeOrNull(u.TrialExpiresAt),
		"registration_date":     u.RegistrationDate.UTC(),
		"preferences":           rawOrNull(u.Preferences),
		"settings":              rawOrNull(u.Settings),
		"low_balance_threshold": int64OrNull(u.LowBalanceThreshold),
		"created_at":            u.CreatedAt.UTC(),
		"updated_at":            u.UpdatedAt.UTC(),
	}
}

// timeOrNull is t in UTC, or null for the zero time (a trial without an
// end).
func timeOrNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC()
}

func int64OrNull(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// lowBalanceThreshold parses the profile's low_balance_threshold: a
// non-negative integer of credits (0 turns balance.low off for the user),
// or null for the operator's default. It reports clear=true for null.
func lowBalanceThreshold(raw json.RawMessage) (v int64, clear bool, err error) {
	t := bytes.TrimSpace(raw)
	if bytes.Equal(t, []byte("null")) {
		return 0, true, nil
	}
	if err := json.Unmarshal(t, &v); err != nil || v < 0 || v > maxCredits {
		return 0, false, errValidation("low_balance_threshold must be a non-negative integer of credits (at most %d), or null for the default", int64(maxCredits))
	}
	return v, false, nil
}

func rawOrNull(m json.RawMessage) any {
	if len(m) == 0 {
		return nil
	}
	return m
}

// userBalance shows the caller's credits (GET /user/balance): the key
// masked, plus reserved (held by in-flight requests) and available.
func (h *Handler) userBalance(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	bal, err := h.app.Store().Balance(r.Context(), id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"api_key":   id.Key.Masked(),
		"credits":   bal.Credits,
		"reserved":  bal.Reserved,
		"available": bal.Available(),
		"status":    "active",
		"user_id":   id.User.ID,
	})
}

// getProfile shows the caller's account (GET /user/profile).
func (h *Handler) getProfile(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	ctx := r.Context()
	u, err := h.app.Store().GetUser(ctx, id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	bal, err := h.app.Store().Balance(ctx, u.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	v := profileView(u)
	v["api_key"] = id.Key.Masked()
	v["credits"] = bal.Credits
	writeJSON(w, http.StatusOK, v)
}

type profileRequest struct {
	Username    *string         `json:"username"`
	Name        *string         `json:"name"`
	Email       *string         `json:"email"`
	Preferences json.RawMessage `json:"preferences"`
	Settings    json.RawMessage `json:"settings"`
	// LowBalanceThreshold: see lowBalanceThreshold.
	LowBalanceThreshold json.RawMessage `json:"low_balance_threshold"`
}

// maxProfileBlob bounds preferences and settings.
const maxProfileBlob = 16 << 10

// jsonObject accepts a JSON object (or null to clear) for preferences and
// settings.
func jsonObject(field string, raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) > maxProfileBlob {
		return nil, errValidation("%s must be at most %d bytes", field, maxProfileBlob)
	}
	t := bytes.TrimSpace(raw)
	if bytes.Equal(t, []byte("null")) {
		return json.RawMessage{}, nil
	}
	var m map[string]any
	if err := json.Unmarshal(t, &m); err != nil || m == nil {
		return nil, errValidation("%s must be a JSON object", field)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, t); err != nil {
		return nil, errValidation("%s must be a JSON object", field)
	}
	return buf.Bytes(), nil
}

// updateProfile changes the caller's username, name, email, preferences or
// settings (PUT /user/profile; the route needs write on profile). A taken
// email is a 409; no fields a 400.
func (h *Handler) updateProfile(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	req, ok := decodeRequest[profileRequest](h, w, r)
	if !ok {
		return
	}
	var fields []string
	var username, name, email *string
	var prefs, settings json.RawMessage
	if req.Username != nil {
		v, err := validateName("username", *req.Username)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		username = &v
		fields = append(fields, "username")
	}
	if req.Name != nil {
		if err := checkNameChars("name", *req.Name); err != nil {
			h.fail(w, r, err)
			return
		}
		v := strings.TrimSpace(*req.Name)
		if len([]rune(v)) > 200 {
			h.fail(w, r, errValidation("name must be at most 200 characters"))
			return
		}
		name = &v
		fields = append(fields, "name")
	}
	if req.Email != nil {
		v, err := validateEmail(*req.Email)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		email = &v
		fields = append(fields, "email")
	}
	var err error
	if req.Preferences != nil {
		if prefs, err = jsonObject("preferences", req.Preferences); err != nil {
			h.fail(w, r, err)
			return
		}
		fields = append(fields, "preferences")
	}
	if req.Settings != nil {
		if settings, err = jsonObject("settings", req.Settings); err != nil {
			h.fail(w, r, err)
			return
		}
		fields = append(fields, "settings")
	}
	var threshold *int64
	clearThreshold := false
	if req.LowBalanceThreshold != nil {
		v, clear, err := lowBalanceThreshold(req.LowBalanceThreshold)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if !clear {
			threshold = &v
		}
		clearThreshold = clear
		fields = append(fields, "low_balance_threshold")
	}
	if len(fields) == 0 {
		h.fail(w, r, errBadRequest("No valid fields to update"))
		return
	}
	ctx := r.Context()
	st := h.app.Store()
	if email != nil {
		other, err := st.UserByEmail(ctx, *email)
		if err == nil && other.ID != id.User.ID {
			h.fail(w, r, errConflict("A user with this email already exists"))
			return
		} else if err != nil && !errors.Is(err, storage.ErrNotFound) {
			h.fail(w, r, err)
			return
		}
	}
	now := h.now().UTC()
	oldVals, newVals := map[string]any{}, map[string]any{}
	u, err := st.UpdateUser(ctx, id.User.ID, func(u *storage.User) error {
		if username != nil {
			oldVals["username"], newVals["username"] = u.Username, *username
			u.Username = *username
		}
		if name != nil {
			oldVals["name"], newVals["name"] = u.Name, *name
			u.Name = *name
		}
		if email != nil {
			oldVals["email"], newVals["email"] = u.Email, *email
			u.Email = *email
		}
		if prefs != nil {
			u.Preferences = prefs
		}
		if settings != nil {
			u.Settings = settings
		}
		if threshold != nil || clearThreshold {
			oldVals["low_balance_threshold"], newVals["low_balance_threshold"] = int64OrNull(u.LowBalanceThreshold), int64OrNull(threshold)
			u.LowBalanceThreshold = threshold
		}
		u.UpdatedAt = now
		return nil
	})
	if errors.Is(err, storage.ErrDuplicate) {
		h.fail(w, r, errConflict("A user with this email already exists"))
		return
	} else if err != nil {
		h.fail(w, r, err)
		return
	}
	h.audit(r, &storage.AuditEntry{UserID: u.ID, Action: actProfileUpdate, Details: map[string]any{
		"updated_fields": fields, "old_values": oldVals, "new_values": newVals,
	}})
	v := profileView(u)
	v["status"] = "success"
	v["message"] = "Profile updated successfully"
	writeJSON(w, http.StatusOK, v)
}

// deleteAccount deletes the caller's account and every key of theirs (DELETE
// /user/account, body {"confirmation":"DELETE_ACCOUNT"}); the keys stop
// working at once. Ledger, usage and audit history are kept. The route
// needs the full scope (such as the primary key's): it removes every key,
// whatever their scope.
func (h *Handler) deleteAccount(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	if err := h.confirm(w, r, "DELETE_ACCOUNT", "account deletion"); err != nil {
		h.fail(w, r, err)
		return
	}
	ctx := r.Context()
	keys, err := h.app.Store().ListKeys(ctx, id.User.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if err := h.app.Store().DeleteUser(ctx, id.User.ID); err != nil {
		h.fail(w, r, err)
		return
	}
	now := h.now().UTC()
	prefixes := make([]string, 0, len(keys))
	for _, k := range keys {
		prefixes = append(prefixes, k.Masked())
	}
	h.audit(r, &storage.AuditEntry{UserID: id.User.ID, Action: actAccountDelete, Details: map[string]any{
		"deleted_at": now, "email": id.User.Email, "deleted_keys": len(keys), "key_prefixes": prefixes,
	}})
	writeJSON(w, http.StatusOK, map[string]any{
		"status":    "success",
		"message":   "Account deleted successfully",
		"user_id":   id.User.ID,
		"timestamp": now,
	})
}
