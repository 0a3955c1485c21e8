package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// API is a plain HTTP client of the gateway's management API, the way a
// front end calls it.
type API struct {
	Base     string // gateway URL
	AdminKey string
	Client   *http.Client
}

// NewAPI returns a client of the gateway at base.
func NewAPI(base, adminKey string) *API {
	return &API{Base: base, AdminKey: adminKey, Client: &http.Client{Timeout: 30 * time.Second}}
}

// Response is a buffered HTTP response.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a generic map (nil when it is not an object).
func (r *Response) JSON() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(r.Body, &m)
	return m
}

// Do sends a request. body may be nil, a string or []byte (sent as is) or
// any other value (sent as JSON). bearer, when non-empty, becomes the
// Authorization header. headers are extra "Name: value" pairs.
func (a *API) Do(method, path, bearer string, body any, headers ...string) (*Response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequest(method, a.Base+path, rd)
	if err != nil {
		return nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return nil, fmt.Errorf("bad header %q", h)
		}
		req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	resp, err := a.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// User is a registered user and its primary key.
type User struct {
	ID     int64
	Email  string
	APIKey string
	KeyID  int64
}

// Register creates a user through POST /auth/register. With credits >= 0
// the admin bearer sets the signup grant; with credits < 0 the operator's
// default applies.
func (a *API) Register(username, email string, credits int64) (*User, error) {
	body := map[string]any{"username": username, "email": email}
	bearer := ""
	if credits >= 0 {
		body["initial_credits"] = credits
		bearer = a.AdminKey
	}
	resp, err := a.Do("POST", "/auth/register", bearer, body)
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusOK {
		return nil, fmt.Errorf("register %s: %d %s", email, resp.Status, resp.Body)
	}
	var out struct {
		UserID int64  `json:"user_id"`
		APIKey string `json:"api_key"`
		KeyID  int64  `json:"key_id"`
	}
	if err := json.Unmarshal(resp.Body, &out); err != nil {
		return nil, err
	}
	return &User{ID: out.UserID, Email: email, APIKey: out.APIKey, KeyID: out.KeyID}, nil
}

// Credits is a user's position as the admin API reports it.
type Credits struct {
	Credits  int64 `json:"credits"`
	Reserved int64 `json:"reserved"`
}

// UserCredits reads GET /admin/users/{id}.
func (a *API) UserCredits(userID int64) (Credits, error) {
	var c Credits
	resp, err := a.Do("GET", fmt.Sprintf("/admin/users/%d", userID), a.AdminKey, nil)
	if err != nil {
		return c, err
	}
	if resp.Status != http.StatusOK {
		return c, fmt.Errorf("GET /admin/users/%d: %d %s", userID, resp.Status, resp.Body)
	}
	err = json.Unmarshal(resp.Body, &c)
	return c, err
}

// AddCredits tops a user up through POST /admin/add_credits with an
// Idempotency-Key when idem is non-empty, and returns the new balance.
func (a *API) AddCredits(userID, credits int64, idem string) (int64, error) {
	var hdr []string
	if idem != "" {
		hdr = append(hdr, "Idempotency-Key: "+idem)
	}
	resp, err := a.Do("POST", "/admin/add_credits", a.AdminKey,
		map[string]any{"user_id": userID, "credits": credits}, hdr...)
	if err != nil {
		return 0, err
	}
	if resp.Status != http.StatusOK {
		return 0, fmt.Errorf("add_credits: %d %s", resp.Status, resp.Body)
	}
	var out struct {
		NewBalance int64 `json:"new_balance"`
	}
	err = json.Unmarshal(resp.Body, &out)
	return out.NewBalance, err
}

// CreateKey creates a key for the caller (POST /user/api-keys) and returns
// its plaintext and id.
func (a *API) CreateKey(bearer string, body map[string]any) (string, int64, error) {
	resp, err := a.Do("POST", "/user/api-keys", bearer, body)
	if err != nil {
		return "", 0, err
	}
	if resp.Status != http.StatusOK {
		return "", 0, fmt.Errorf("create key: %d %s", resp.Status, resp.Body)
	}
	var out struct {
		APIKey string `json:"api_key"`
		KeyID  int64  `json:"key_id"`
	}
	err = json.Unmarshal(resp.Body, &out)
	return out.APIKey, out.KeyID, err
}

// Chat sends one chat completion over plain HTTP and returns the buffered
// response. stream asks for SSE.
func (a *API) Chat(bearer string, stream bool, maxTokens int, headers ...string) (*Response, error) {
	body := map[string]any{
		"model":    "mock-model",
		"messages": []map[string]string{{"role": "user", "content": "Say hello"}},
	}
	if stream {
		body["stream"] = true
	}
	if maxTokens > 0 {
		body["max_tokens"] = maxTokens
	}
	return a.Do("POST", "/v1/chat/completions", bearer, body, headers...)
}

// BigPlan creates a plan with limits far above any test load and returns
// its id, so load tests are not cut by the trial plan's daily limits.
func (a *API) BigPlan(name string) (int64, error) {
	return a.PlanWithDailyRequests(name, bigLimit)
}

// bigLimit is a plan limit far above any test load.
const bigLimit = 1_000_000_000

// PlanWithDailyRequests creates a plan allowing dailyRequests requests a
// day (every other limit far above any test load) and returns its id.
func (a *API) PlanWithDailyRequests(name string, dailyRequests int64) (int64, error) {
	const big = bigLimit
	resp, err := a.Do("POST", "/admin/plans", a.AdminKey, map[string]any{
		"name": name, "description": "load tests",
		"daily_request_limit": dailyRequests, "monthly_request_limit": big,
		"daily_token_limit": big, "monthly_token_limit": big,
		"price_per_month": 0, "features": []string{"basic_models"},
	})
	if err != nil {
		return 0, err
	}
	if resp.Status != http.StatusOK {
		return 0, fmt.Errorf("create plan: %d %s", resp.Status, resp.Body)
	}
	var out struct {
		ID     int64 `json:"id"`
		PlanID int64 `json:"plan_id"`
		Plan   struct {
			ID int64 `json:"id"`
		} `json:"plan"`
	}
	if err := json.Unmarshal(resp.Body, &out); err != nil {
		return 0, err
	}
	for _, id := range []int64{out.PlanID, out.ID, out.Plan.ID} {
		if id > 0 {
			return id, nil
		}
	}
	return 0, fmt.Errorf("create plan: no id in %s", resp.Body)
}

// AssignPlan subscribes a user to a plan for a month.
func (a *API) AssignPlan(userID, planID int64) error {
	resp, err := a.Do("POST", "/admin/assign-plan", a.AdminKey,
		map[string]any{"user_id": userID, "plan_id": planID, "duration_months": 1})
	if err != nil {
		return err
	}
	if resp.Status != http.StatusOK {
		return fmt.Errorf("assign plan: %d %s", resp.Status, resp.Body)
	}
	return nil
}
