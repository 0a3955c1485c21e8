package e2e

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// TestClusterNoOverspend is scenario 1: a user with 10,000 credits and
// about 200 concurrent clients (JSON, streams, streams the client
// abandons) spread over three nodes until every one of them got a 402.
// Then every ledger balance is >= 0 and the running sum of its entries,
// what was charged is 10,000 - the final balance and the sum of the usage
// records, no hold is left open, one Idempotency-Key top-up sent to all
// three nodes is applied once, and a key with max_requests 50 ends with
// exactly 50 charged requests.
func TestClusterNoOverspend(t *testing.T) {
	c := startCluster(t, ClusterOptions{})
	const initial = 10_000
	u := c.Register(t, "spender", initial)
	plan, err := c.Next().BigPlan("load")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Next().AssignPlan(u.ID, plan); err != nil {
		t.Fatal(err)
	}

	const clients = 201 // 67 of each kind
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				status, err := spend(c, u.APIKey, i%3)
				switch {
				case err != nil:
					t.Errorf("client %d: %v", i, err)
					return
				case status == http.StatusPaymentRequired:
					refused.Add(1)
					return
				case status != http.StatusOK:
					t.Errorf("client %d: status %d", i, status)
					return
				}
				ok.Add(1)
			}
			t.Errorf("client %d never got a 402", i)
		}()
	}
	wg.Wait()
	if refused.Load() != clients {
		t.Fatalf("%d of %d clients got their 402", refused.Load(), clients)
	}
	final := c.WaitSettled(t, u.ID, 30*time.Second)
	var holds, usageCount, usageCredits, ledgerCharged int64
	c.Query(t, []any{&holds}, `SELECT count(*) FROM gw_holds WHERE user_id = $1`, u.ID)
	c.Query(t, []any{&usageCount, &usageCredits},
		`SELECT count(*), coalesce(sum((doc->>'credits')::bigint), 0) FROM gw_usage WHERE user_id = $1`, u.ID)
	c.Query(t, []any{&ledgerCharged}, `SELECT coalesce(-sum(amount), 0) FROM gw_ledger WHERE user_id = $1 AND kind = 'charge'`, u.ID)
	charged := initial - final
	t.Logf("%d requests served, %d usage records, %d credits charged, %d left", ok.Load(), usageCount, charged, final)
	switch {
	case final < 0 || final >= initial:
		t.Fatalf("final balance %d", final)
	case holds != 0:
		t.Fatalf("%d holds left", holds)
	case usageCredits != charged || ledgerCharged != charged:
		t.Fatalf("charged %d (10,000 - balance), usage records %d, ledger charges %d", charged, usageCredits, ledgerCharged)
	case usageCount < ok.Load():
		t.Fatalf("%d usage records for %d requests served", usageCount, ok.Load())
	}

	// One top-up, sent to all three nodes at once with one key.
	balances := make([]int64, len(c.APIs))
	for i, api := range c.APIs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := api.AddCredits(u.ID, 500, "scenario-1-top-up")
			if err != nil {
				t.Error(err)
			}
			balances[i] = b
		}()
	}
	wg.Wait()
	var topUps int64
	c.Query(t, []any{&topUps}, `SELECT count(*) FROM gw_ledger WHERE user_id = $1 AND idempotency_key = $2`, u.ID, "scenario-1-top-up")
	if got, _ := c.Balance(t, u.ID); got != final+500 || topUps != 1 {
		t.Fatalf("balance %d after the top-up (want %d), %d ledger entries", got, final+500, topUps)
	}
	for i, b := range balances {
		if b != final+500 {
			t.Fatalf("node %d answered balance %d, want %d", i, b, final+500)
		}
	}

	// A key capped at 50 requests, 150 at once over the nodes.
	rich := c.Register(t, "capped", 1_000_000)
	if err := c.Next().AssignPlan(rich.ID, plan); err != nil {
		t.Fatal(err)
	}
	const limit = 50
	capped, keyID := c.CreateKey(t, rich, map[string]any{"max_requests": limit})
	statuses := burstChat(t, c, capped, 3*limit)
	if statuses[http.StatusOK] != limit || statuses[http.StatusTooManyRequests] != 2*limit {
		t.Fatalf("statuses %v, want %d × 200 and %d × 429", statuses, limit, 2*limit)
	}
	c.WaitSettled(t, rich.ID, 30*time.Second)
	var used, records int64
	c.Query(t, []any{&used}, `SELECT requests_used FROM gw_keys WHERE id = $1`, keyID)
	c.Query(t, []any{&records}, `SELECT count(*) FROM gw_usage WHERE key_id = $1 AND (doc->>'credits')::bigint > 0`, keyID)
	if used != limit || records != limit {
		t.Fatalf("requests_used %d, %d charged usage records; want %d", used, records, limit)
	}
	c.Stop(t)
}

// spend sends one request of kind (0 JSON, 1 stream read to the end, 2
// stream abandoned after its first bytes) to the next node and returns
// its status.
func spend(c *Cluster, key string, kind int) (int, error) {
	if kind < 2 {
		resp, err := c.Chat(key, kind == 1, 0)
		if err != nil {
			return 0, err
		}
		return resp.Status, nil
	}
	api := c.Next()
	req, err := http.NewRequest("POST", api.Base+"/v1/chat/completions",
		bytes.NewReader([]byte(`{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"Say hello"}]}`)))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(mock.HeaderChunkDelay, "5ms")
	resp, err := api.Client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		// Read the first bytes of the stream, then hang up.
		if _, err := resp.Body.Read(make([]byte, 64)); err != nil && err != io.EOF {
			return 0, err
		}
		return resp.StatusCode, nil
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// burstChat sends n JSON chat completions at once, spread over the
// nodes, and counts the answers by status.
func burstChat(t *testing.T, c *Cluster, key string, n int) map[int]int {
	t.Helper()
	var mu sync.Mutex
	statuses := map[int]int{}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Chat(key, false, 0)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			statuses[resp.Status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return statuses
}

// TestClusterLimits is scenario 3: requests_per_minute 60 and a plan of
// 100 requests a day, 300 concurrent requests over three nodes. The
// limits are counted in the database, in the reservation's own statement,
// so the bound is exact: a minute admits 60 whichever nodes answer, and
// the day 100.
func TestClusterLimits(t *testing.T) {
	c := startCluster(t, ClusterOptions{})
	u := c.Register(t, "limited", 1_000_000)
	plan, err := c.Next().PlanWithDailyRequests("hundred-a-day", 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Next().AssignPlan(u.ID, plan); err != nil {
		t.Fatal(err)
	}
	setRPM(t, c, u.ID, 60)
	key, _ := c.CreateKey(t, u, nil)
	// The rate limit is per UTC minute: start the burst early in a minute,
	// and count the minutes it spans.
	if s := time.Now().UTC().Second(); s > 40 {
		time.Sleep(time.Duration(61-s) * time.Second)
	}
	start := time.Now().UTC().Truncate(time.Minute)
	statuses := burstChat(t, c, key, 300)
	minutes := int(time.Now().UTC().Truncate(time.Minute).Sub(start)/time.Minute) + 1
	want := min(60*minutes, 100)
	if statuses[http.StatusOK] != want || statuses[http.StatusTooManyRequests] != 300-want {
		t.Fatalf("burst over %d minute(s): statuses %v, want %d × 200 and the rest 429", minutes, statuses, want)
	}
	admitted := int64(want)

	// Lift the rate limit: the plan's day is what is left. The change
	// reaches every node through the change feed; a node still on the old
	// limit answers the minute's 429, one on the new admits (and counts).
	setRPM(t, c, u.ID, 1000)
	for i, api := range c.APIs {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			resp := answered(t, "probe")(api.Chat(key, false, 0))
			if resp.Status == http.StatusOK {
				admitted++
				break
			}
			if time.Now().After(deadline) || errorCode(resp) != "rate_limit_exceeded" {
				t.Fatalf("node %d after the limit was lifted: %d %s", i, resp.Status, resp.Body)
			}
		}
	}
	statuses = burstChat(t, c, key, 300)
	if got := int64(statuses[http.StatusOK]); admitted+got != 100 || statuses[http.StatusTooManyRequests] != 300-int(got) {
		t.Fatalf("second burst: statuses %v after %d admitted; the plan's day is 100", statuses, admitted)
	}
	for i, api := range c.APIs {
		if resp := answered(t, "refused")(api.Chat(key, false, 0)); resp.Status != http.StatusTooManyRequests || errorCode(resp) != "plan_limit_exceeded" {
			t.Fatalf("node %d after the plan's day: %d %s", i, resp.Status, resp.Body)
		}
	}
	c.WaitSettled(t, u.ID, 30*time.Second)
	var records int64
	c.Query(t, []any{&records}, `SELECT count(*) FROM gw_usage WHERE user_id = $1`, u.ID)
	if records != 100 {
		t.Fatalf("%d usage records, want the plan's 100", records)
	}
	c.Stop(t)
}

// setRPM sets a user's requests per minute (and no other rate limit)
// through POST /admin/limit.
func setRPM(t *testing.T, c *Cluster, userID, rpm int64) {
	t.Helper()
	resp := mustOK(t, "limit")(c.Next().Do("POST", "/admin/limit", testAdminKey, map[string]any{"user_id": userID,
		"rate_limits": map[string]int64{"requests_per_minute": rpm, "requests_per_hour": 0, "requests_per_day": 0,
			"tokens_per_minute": 0, "tokens_per_hour": 0, "tokens_per_day": 0}}))
	if resp.Status != http.StatusOK {
		t.Fatalf("POST /admin/limit: %d %s", resp.Status, resp.Body)
	}
}

// errorCode is the error.code of an OpenAI-shaped error answer.
func errorCode(resp *Response) any {
	e, _ := resp.JSON()["error"].(map[string]any)
	return e["code"]
}

// answered fails the test when a request got no answer, and returns the
// answer whatever its status.
func answered(t testing.TB, what string) func(*Response, error) *Response {
	return func(resp *Response, err error) *Response {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return resp
	}
}
