package admin

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// maxCredits bounds any single credit amount from a request, so sums stay
// far from int64 overflow.
const maxCredits = 1_000_000_000_000

type registerRequest struct {
	Username       *string `json:"username"`
	Email          *string `json:"email"`
	AuthMethod     *string `json:"auth_method"`
	InitialCredits *int64  `json:"initial_credits"`
	EnvironmentTag *string `json:"environment_tag"`
	KeyName        *string `json:"key_name"`
}

// register creates a user with a primary key (POST /auth/register).
//
// Decisions: the signup grant is the operator's GATEWAYZ_SIGNUP_CREDITS; a
// client-sent initial_credits is ignored unless the request carries the
// admin bearer (then it sets the grant). Ignoring rather than refusing
// keeps reference clients, which always sent the field, working. The primary
// key is created in the requested environment_tag with the full scope, and
// the response says so truthfully. key_name (default "Primary Key") is
// honoured.
func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeRequest[registerRequest](h, w, r)
	if !ok {
		return
	}
	if req.Username == nil {
		h.fail(w, r, errValidation("Field \"username\" is required"))
		return
	}
	username, err := validateName("username", *req.Username)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if req.Email == nil {
		h.fail(w, r, errValidation("Field \"email\" is required"))
		return
	}
	email, err := validateEmail(*req.Email)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	authMethod := "email"
	if req.AuthMethod != nil {
		switch *req.AuthMethod {
		case "email", "wallet", "google":
			authMethod = *req.AuthMethod
		default:
			h.fail(w, r, errValidation("auth_method must be one of: email, wallet, google"))
			return
		}
	}
	env, err := environmentOrLive(req.EnvironmentTag)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	keyName := "Primary Key"
	if req.KeyName != nil {
		if keyName, err = validateName("key_name", *req.KeyName); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	credits := h.app.SignupCredits()
	byAdmin := h.isAdmin(r)
	if req.InitialCredits != nil && byAdmin {
		if *req.InitialCredits < 0 {
			h.fail(w, r, errBadRequest("Initial credits must be non-negative"))
			return
		}
		if *req.InitialCredits > maxCredits {
			h.fail(w, r, errValidation("initial_credits must be at most %d", int64(maxCredits)))
			return
		}
		credits = *req.InitialCredits
	}

	ctx := r.Context()
	now := h.now().UTC()
	plaintext, key, err := h.newKey(env)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	key.KeyName = keyName
	key.Scopes = storage.FullScopes()
	key.IsActive = true
	key.IsPrimary = true
	u := &storage.User{
		Username:           username,
		Email:              email,
		AuthMethod:         authMethod,
		IsActive:           true,
		SubscriptionStatus: caddymodule.StatusTrial,
		TrialExpiresAt:     h.app.TrialPolicy().ExpiresAt(now),
		RegistrationDate:   now,
	}
	if err := h.app.Store().Register(ctx, u, key, credits); err != nil {
		if errors.Is(err, storage.ErrDuplicate) {
			h.fail(w, r, errConflict("A user with this email already exists"))
			return
		}
		h.fail(w, r, err)
		return
	}
	actor := fmt.Sprintf(auditActorUserFmt, u.ID)
	if byAdmin {
		actor = auditActorAdmin
	}
	planName, err := h.subscribeSignupPlan(r, actor, u, now)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.auditAs(r, actor, &storage.AuditEntry{UserID: u.ID, Action: actRegister, Details: map[string]any{
		"username": username, "email": email, "auth_method": authMethod, "credits": credits,
	}})
	h.auditAs(r, actor, &storage.AuditEntry{UserID: u.ID, KeyID: key.ID, Action: actCreate, Details: map[string]any{
		"key_name": key.KeyName, "key_prefix": key.Masked(), "environment_tag": env,
		"scope_permissions": key.Scopes, "expiration_days": nil, "max_requests": nil, "is_primary": true,
	}})
	writeJSON(w, http.StatusOK, map[string]any{
		"user_id":             u.ID,
		"username":            u.Username,
		"email":               u.Email,
		"api_key":             plaintext,
		"key_id":              key.ID,
		"credits":             credits,
		"environment_tag":     env,
		"scope_permissions":   key.Scopes,
		"auth_method":         authMethod,
		"subscription_status": u.SubscriptionStatus,
		"trial_expires_at":    timeOrNull(u.TrialExpiresAt),
		"plan_name":           planName,
		"message":             "User registered successfully",
		"timestamp":           now,
	})
}

// subscribeSignupPlan subscribes a new user to the operator's signup_plan
// and returns its name, or returns the trial's name when there is none. A
// signup_plan that names no active plan is a configuration error the
// operator must see: the user stays on the trial and the log says why,
// rather than a registration failing for what the user cannot fix.
func (h *Handler) subscribeSignupPlan(r *http.Request, actor string, u *storage.User, now time.Time) (string, error) {
	name, months := h.app.SignupPlanFor()
	trial := h.app.TrialPolicy().Plan.Name
	if name == "" {
		return trial, nil
	}
	ctx := r.Context()
	st := h.app.Store()
	plans, err := st.ListPlans(ctx)
	if err != nil {
		return "", err
	}
	var plan *storage.Plan
	for _, p := range plans {
		if p.Name == name && p.IsActive {
			plan = p
			break
		}
	}
	if plan == nil {
		h.logger.Warn("signup_plan names no active plan; the new user starts on the trial", zap.String("signup_plan", name))
		return trial, nil
	}
	up, err := st.AssignPlan(ctx, u.ID, plan.ID, now, now.AddDate(0, 0, 30*months))
	if err != nil {
		return "", err
	}
	updated, err := st.UpdateUser(ctx, u.ID, func(u *storage.User) error {
		u.SubscriptionStatus = "active"
		u.UpdatedAt = now
		return nil
	})
	if err != nil {
		return "", err
	}
	*u = *updated
	h.auditAs(r, actor, &storage.AuditEntry{UserID: u.ID, Action: actAssignPlan, Details: map[string]any{
		"plan_id": plan.ID, "plan_name": plan.Name, "duration_months": months,
		"start_date": up.StartDate, "end_date": up.EndDate, "signup_plan": true,
	}})
	return plan.Name, nil
}

// newKey generates a key for env and returns its plaintext (to show once)
// and the storable record (hash, encrypted copy and masked prefix only).
func (h *Handler) newKey(env string) (string, *storage.APIKey, error) {
	kr := h.app.Keyring()
	plaintext, err := kr.Generate(env)
	if err != nil {
		return "", nil, err
	}
	enc, err := kr.Encrypt(plaintext)
	if err != nil {
		return "", nil, err
	}
	return plaintext, &storage.APIKey{
		Hash:            kr.Hash(plaintext),
		Encrypted:       enc,
		Prefix:          storage.KeyDisplayPrefix(plaintext),
		EnvironmentTag:  env,
		IPAllowlist:     []string{},
		DomainReferrers: []string{},
	}, nil
}
