package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

var httpc = &http.Client{Timeout: 30 * time.Second}

func postJSON(url, bearer string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequest("POST", url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: status %d: %s", url, resp.StatusCode, bytes.TrimSpace(body))
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("POST %s: %w: %s", url, err, body)
		}
	}
	return nil
}

// setupGateway registers a benchmark user, tops up its credits and raises
// (but keeps) its rate limits, and returns its API key.
func setupGateway(base, adminKey string) (string, error) {
	plan, err := benchPlan(base, adminKey)
	if err != nil {
		return "", err
	}
	return benchUser(base, adminKey, plan)
}

// benchLimit is every limit of the benchmark users: on, but out of reach.
const benchLimit = 1_000_000_000

// benchPlan creates a plan whose limits are on but out of reach, and
// returns its id. Without a plan a user has trial entitlements (100
// requests a day).
func benchPlan(base, adminKey string) (int64, error) {
	var plan struct {
		Plan struct {
			ID int64 `json:"id"`
		} `json:"plan"`
	}
	err := postJSON(base+"/admin/plans", adminKey, map[string]any{
		"name": fmt.Sprintf("Benchmark %d", time.Now().UnixNano()), "description": "make bench",
		"daily_request_limit": benchLimit, "monthly_request_limit": benchLimit,
		"daily_token_limit": benchLimit * 100, "monthly_token_limit": benchLimit * 100,
	}, &plan)
	return plan.Plan.ID, err
}

// benchUser registers a user on plan, tops up its credits and raises (but
// keeps) its rate limits, and returns its API key.
func benchUser(base, adminKey string, plan int64) (string, error) {
	var reg struct {
		APIKey string `json:"api_key"`
		UserID int64  `json:"user_id"`
	}
	email := fmt.Sprintf("bench-%d-%s@example.com", time.Now().UnixNano(), randHex(4))
	if err := postJSON(base+"/auth/register", "", map[string]any{"username": "bench", "email": email}, &reg); err != nil {
		return "", err
	}
	if reg.APIKey == "" {
		return "", fmt.Errorf("register returned no api_key")
	}
	// As many credits as the store accepts, so no benchmark request is
	// ever refused for money; the amount shrinks if a cap refuses it.
	var lastErr error
	for _, c := range []int64{1e15, 1e12, 1e9} {
		if lastErr = postJSON(base+"/admin/add_credits", adminKey, map[string]any{"api_key": reg.APIKey, "credits": c}, nil); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		return "", lastErr
	}
	limits := map[string]any{
		"requests_per_minute": benchLimit, "requests_per_hour": benchLimit, "requests_per_day": benchLimit,
		"tokens_per_minute": benchLimit * 100, "tokens_per_hour": benchLimit * 100, "tokens_per_day": benchLimit * 100,
	}
	if err := postJSON(base+"/admin/limit", adminKey, map[string]any{"api_key": reg.APIKey, "rate_limits": limits}, nil); err != nil {
		return "", err
	}
	if err := postJSON(base+"/admin/assign-plan", adminKey, map[string]any{
		"user_id": reg.UserID, "plan_id": plan, "duration_months": 12,
	}, nil); err != nil {
		return "", err
	}
	return reg.APIKey, nil
}

// probe sends one request and checks the status, returning the body.
func probe(url string, hdr map[string]string, body string) ([]byte, error) {
	req, err := http.NewRequest("POST", url, bytes.NewReader([]byte(body)))
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return b, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("POST %s: status %d: %s", url, resp.StatusCode, bytes.TrimSpace(b))
	}
	return b, nil
}

// meterCheck is what the gateway charged for a few requests, read from the
// user's balance: proof that the benchmarked path really meters and
// settles.
type meterCheck struct {
	n                     int
	jsonCharge, sseCharge float64 // credits per request
	reservedAfter         int64
	err                   string
}

func balance(base, key string) (credits, reserved int64, err error) {
	req, _ := http.NewRequest("GET", base+"/user/balance", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := httpc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var b struct {
		Credits  int64 `json:"credits"`
		Reserved int64 `json:"reserved"`
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return 0, 0, fmt.Errorf("GET /user/balance: %d %s", resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return 0, 0, err
	}
	return b.Credits, b.Reserved, nil
}

// checkMetering sends n JSON and n SSE requests through the gateway and
// reads how much each cost.
func checkMetering(base string, hdr map[string]string, n int) meterCheck {
	mc := meterCheck{n: n}
	fail := func(err error) meterCheck { mc.err = err.Error(); return mc }
	key := strings.TrimPrefix(hdr["Authorization"], "Bearer ")
	b0, _, err := balance(base, key)
	if err != nil {
		return fail(err)
	}
	run := func(body string) (float64, error) {
		for i := 0; i < n; i++ {
			if _, err := probe(base+apiPath, hdr, body); err != nil {
				return 0, err
			}
		}
		time.Sleep(300 * time.Millisecond) // settlement may finish just after the response
		b1, _, err := balance(base, key)
		if err != nil {
			return 0, err
		}
		d := float64(b0-b1) / float64(n)
		b0 = b1
		return d, nil
	}
	if mc.jsonCharge, err = run(jsonBody); err != nil {
		return fail(err)
	}
	if mc.sseCharge, err = run(streamBody); err != nil {
		return fail(err)
	}
	_, mc.reservedAfter, err = balance(base, key)
	if err != nil {
		return fail(err)
	}
	return mc
}
