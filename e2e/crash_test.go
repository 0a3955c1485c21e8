package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// ack is a management change the gateway acknowledged with a 200.
type topUp struct {
	userID int64
	idem   string
	amount int64
}

type createdKey struct {
	userID  int64
	id      int64
	key     string // the current secret
	old     string // the secret before an acknowledged rotation
	deleted bool   // deleted, acknowledged
}

// TestCrashDurability kills the gateway with SIGKILL under concurrent
// inference and management load, restarts it on the same database, and
// checks that the store opens cleanly, that no acknowledged top-up or key
// creation is lost, that every reservation open at the crash is released,
// and that every balance still equals its ledger.
func TestCrashDurability(t *testing.T) {
	up, _ := newUpstream(t, func() mock.Options {
		o := mockOptions()
		o.ChunkDelay = 15 * time.Millisecond // streams stay open ~250ms
		return o
	}())
	g := startGateway(t, up.URL, nil)
	api := NewAPI(g.URL, testAdminKey)
	plan, err := api.BigPlan("crash-test")
	if err != nil {
		t.Fatal(err)
	}
	const nUsers = 4
	users := make([]*User, nUsers)
	for i := range users {
		if users[i], err = api.Register(fmt.Sprintf("crash%d", i), fmt.Sprintf("crash%d@example.com", i), 1_000_000); err != nil {
			t.Fatal(err)
		}
		if err := api.AssignPlan(users[i].ID, plan); err != nil {
			t.Fatal(err)
		}
	}

	load := time.Second
	if testing.Short() {
		load = 500 * time.Millisecond
	}
	var (
		mu       sync.Mutex
		topUps   []topUp
		keys     []createdKey
		served   atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		seq      atomic.Int64
		stopping = func() bool {
			select {
			case <-stop:
				return true
			default:
				return false
			}
		}
	)
	// A short client timeout: after the kill, requests fail fast.
	lapi := NewAPI(g.URL, testAdminKey)
	lapi.Client = &http.Client{Timeout: 5 * time.Second}
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stopping(); i++ {
				u := users[(w+i)%nUsers]
				resp, err := lapi.Chat(u.APIKey, i%2 == 0, 0)
				if err == nil && resp.Status == http.StatusOK {
					served.Add(1)
				}
			}
		}()
	}
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopping() {
				n := seq.Add(1)
				u := users[n%nUsers]
				idem := fmt.Sprintf("crash-topup-%d", n)
				if _, err := lapi.AddCredits(u.ID, n, idem); err == nil {
					mu.Lock()
					topUps = append(topUps, topUp{u.ID, idem, n})
					mu.Unlock()
				}
			}
		}()
	}
	// Key changes: create a key, then rotate it, then delete it. Only
	// acknowledged changes are recorded; a key whose last change got no
	// answer is in doubt (it may or may not have been applied) and is not
	// checked.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stopping() {
			n := seq.Add(1)
			u := users[n%nUsers]
			k, id, err := lapi.CreateKey(u.APIKey, map[string]any{"key_name": fmt.Sprintf("crash-key-%d", n)})
			if err != nil {
				continue
			}
			ck := createdKey{userID: u.ID, id: id, key: k}
			switch n % 3 {
			case 1: // rotate
				resp, err := lapi.Do("PUT", fmt.Sprintf("/user/api-keys/%d", id), u.APIKey, map[string]any{"action": "rotate"})
				if err != nil || resp.Status != http.StatusOK {
					continue // in doubt
				}
				newKey, _ := resp.JSON()["api_key"].(string)
				ck.old, ck.key = k, newKey
			case 2: // delete
				resp, err := lapi.Do("DELETE", fmt.Sprintf("/user/api-keys/%d", id), u.APIKey, map[string]any{"confirmation": "DELETE_KEY"})
				if err != nil || resp.Status != http.StatusOK {
					continue // in doubt
				}
				ck.deleted = true
			}
			mu.Lock()
			keys = append(keys, ck)
			mu.Unlock()
		}
	}()

	// Run the load for its time, and on a slow machine until every kind
	// of change has been acknowledged a few times.
	time.Sleep(load)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		enough := len(topUps) >= 3 && len(keys) >= 3
		mu.Unlock()
		if enough && served.Load() >= 3 {
			break
		}
	}
	g.Kill() // SIGKILL while requests are in flight
	close(stop)
	wg.Wait()
	t.Logf("before the kill: %d inference requests served, %d top-ups and %d keys acknowledged",
		served.Load(), len(topUps), len(keys))
	if served.Load() == 0 || len(topUps) == 0 || len(keys) == 0 {
		t.Fatal("the load did not get going before the kill")
	}

	// Restart on the same database: it opens cleanly.
	g2 := restart(t, g)
	api2 := NewAPI(g2.URL, testAdminKey)
	for _, u := range users {
		c, err := api2.UserCredits(u.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.Reserved != 0 {
			t.Errorf("user %d: %d credits still reserved after the restart", u.ID, c.Reserved)
		}
		// Every acknowledged key authenticates.
	}
	changes := map[string]int{}
	for _, k := range keys {
		want := http.StatusOK
		if k.deleted {
			want = http.StatusUnauthorized
			changes["deleted"]++
		}
		resp, err := api2.Do("GET", "/user/balance", k.key, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != want {
			t.Errorf("key %d (deleted=%v, acknowledged before the crash): GET /user/balance %d %s", k.id, k.deleted, resp.Status, resp.Body)
		}
		if k.old != "" {
			changes["rotated"]++
			resp, err := api2.Do("GET", "/user/balance", k.old, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != http.StatusUnauthorized {
				t.Errorf("key %d: the secret replaced by an acknowledged rotation still works after the crash", k.id)
			}
		}
	}
	t.Logf("checked %d acknowledged keys after the restart (%d rotated, %d deleted)", len(keys), changes["rotated"], changes["deleted"])
	// The restarted gateway serves and meters.
	if resp, err := api2.Chat(users[0].APIKey, false, 0); err != nil || resp.Status != http.StatusOK {
		t.Fatalf("chat after restart: %v %v", err, resp)
	}
	credits := map[int64]int64{}
	for _, u := range users {
		c, err := api2.UserCredits(u.ID)
		if err != nil {
			t.Fatal(err)
		}
		credits[u.ID] = c.Credits
	}
	if err := g2.Stop(30 * time.Second); err != nil {
		t.Fatalf("graceful stop after restart: %v", err)
	}
	checkLogClean(t, g2)

	// Open the file the way the gateway does and check it.
	st, err := storage.Open(g.cfg.DB, storage.Options{})
	if err != nil {
		t.Fatalf("opening the database after the crash: %v", err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.VerifyLedger(ctx); err != nil {
		t.Errorf("VerifyLedger: %v", err)
	}
	byIdem := map[string]storage.LedgerEntry{}
	for _, u := range users {
		entries, err := st.Ledger(ctx, u.ID)
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, e := range entries {
			sum += e.Amount
			if e.IdempotencyKey != "" {
				byIdem[e.IdempotencyKey] = e
			}
		}
		bal, err := st.Balance(ctx, u.ID)
		if err != nil {
			t.Fatal(err)
		}
		if bal.Credits != sum || bal.Credits != credits[u.ID] {
			t.Errorf("user %d: balance %d, ledger sum %d, API said %d", u.ID, bal.Credits, sum, credits[u.ID])
		}
	}
	for _, tu := range topUps {
		e, ok := byIdem[tu.idem]
		if !ok {
			t.Errorf("acknowledged top-up %s (%d credits to user %d) lost in the crash", tu.idem, tu.amount, tu.userID)
			continue
		}
		if e.UserID != tu.userID || e.Amount != tu.amount {
			t.Errorf("top-up %s: ledger has user %d amount %d, want user %d amount %d", tu.idem, e.UserID, e.Amount, tu.userID, tu.amount)
		}
	}
	for _, k := range keys {
		sk, err := st.GetKey(ctx, k.id)
		switch {
		case k.deleted && !errors.Is(err, storage.ErrNotFound):
			t.Errorf("acknowledged deletion of key %d lost: %v", k.id, err)
		case !k.deleted && (err != nil || sk.UserID != k.userID):
			t.Errorf("acknowledged key %d of user %d: %v", k.id, k.userID, err)
		}
	}
}

// checkLogClean fails the test if the gateway's log shows a database lock
// timeout, a panic or an internal error.
func checkLogClean(t *testing.T, g *Gateway) {
	t.Helper()
	for _, line := range g.Logs().Lines() {
		l := strings.ToLower(line)
		switch {
		case strings.Contains(l, "timeout") && (strings.Contains(l, "bolt") || strings.Contains(l, "opening") || strings.Contains(l, ".db")),
			strings.Contains(l, "database not open"),
			strings.Contains(l, "panic"),
			strings.Contains(l, `"level":"error"`) && !expectedError(l):
			t.Errorf("gateway log: %s", line)
		}
	}
}

// expectedError reports log errors that a test provokes on purpose (none
// so far: every error-level line is a finding).
func expectedError(string) bool { return false }
