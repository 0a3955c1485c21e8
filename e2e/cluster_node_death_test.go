package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// The node-death scenarios run with a short lease, so that they end
// soon; the reaper runs every third of it.
const (
	deathLease  = 2 * time.Second
	deathReaper = deathLease / 3
	// deathSlack is what measuring adds to the bound (the test polls the
	// database every 20ms, on a loaded machine).
	deathSlack = time.Second
)

// openStream starts a streamed chat completion on g and returns its body
// once the first event arrived (the request is admitted and its credits
// held). extra are "Name: value" headers (mock overrides).
func openStream(t *testing.T, g *Gateway, key string, maxTokens int, extra ...string) io.ReadCloser {
	t.Helper()
	body := fmt.Sprintf(`{"model":"mock-model","stream":true,"max_tokens":%d,"messages":[{"role":"user","content":"Say hello"}]}`, maxTokens)
	req, err := http.NewRequest("POST", g.URL+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	for _, h := range extra {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Set(name, strings.TrimSpace(value))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("stream: %d %s", resp.StatusCode, b)
	}
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			resp.Body.Close()
			t.Fatalf("stream ended before its first event: %v", err)
		}
		if strings.HasPrefix(line, "data: ") {
			break
		}
	}
	return struct {
		io.Reader
		io.Closer
	}{r, resp.Body}
}

// openStreams opens n streams on g at once.
func openStreams(t *testing.T, g *Gateway, key string, n, maxTokens int, extra ...string) []io.ReadCloser {
	t.Helper()
	out := make([]io.ReadCloser, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = openStream(t, g, key, maxTokens, extra...)
		}()
	}
	wg.Wait()
	for _, s := range out {
		if s == nil {
			t.FailNow()
		}
	}
	return out
}

// bigPlanUser registers a user with credits on a plan whose limits no
// test load reaches.
func bigPlanUser(t *testing.T, c *Cluster, name string, credits int64) *User {
	t.Helper()
	u := c.Register(t, name, credits)
	plan, err := c.APIs[0].BigPlan("big-" + name)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.APIs[0].AssignPlan(u.ID, plan); err != nil {
		t.Fatal(err)
	}
	return u
}

// serveDuring sends JSON completions to the nodes idx, one after the
// other per node with a short pause (steady traffic, not a flood that
// would spend the user's credits in seconds), until stop is closed; any
// answer but 200 fails the test. It returns how many were served.
func serveDuring(t *testing.T, c *Cluster, key string, idx []int, stop <-chan struct{}) func() int64 {
	var served atomic.Int64
	var wg sync.WaitGroup
	for _, i := range idx {
		api := c.APIs[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := api.Chat(key, false, 0)
				if err != nil || resp.Status != http.StatusOK {
					t.Errorf("node %d while another node is down: %v %v", i, err, resp)
					return
				}
				served.Add(1)
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	return func() int64 { wg.Wait(); return served.Load() }
}

// waitReleased waits until nothing of the user is reserved and returns
// how long that took from since.
func waitReleased(t *testing.T, c *Cluster, userID int64, since time.Time) time.Duration {
	t.Helper()
	for {
		if _, reserved := c.Balance(t, userID); reserved == 0 {
			return time.Since(since)
		}
		if time.Since(since) > 30*deathLease {
			t.Fatalf("user %d's holds still open %v after their node stopped", userID, time.Since(since))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClusterNodeDeath (scenario 4): 30 slow streams open on node B, B is
// killed: within the lease and one reaper interval its holds are released
// (available = balance), while nodes A and C keep serving and settling
// the same user; B restarted rejoins by itself. Then B is stopped
// (SIGSTOP) past the lease with 30 streams open, the user's credits are
// spent on A, and B continued (SIGCONT): its late settlements charge at
// most what is available, each once.
func TestClusterNodeDeath(t *testing.T) {
	c := startCluster(t, ClusterOptions{Storage: []string{"lease " + deathLease.String()}})
	const credits = 100_000
	u := bigPlanUser(t, c, "death", credits)
	streams := openStreams(t, c.Nodes[1], u.APIKey, 30, 100,
		mock.HeaderChunks+": 100000", mock.HeaderChunkDelay+": 50ms")
	if _, reserved := c.Balance(t, u.ID); reserved == 0 {
		t.Fatal("30 open streams hold nothing")
	}
	stop := make(chan struct{})
	served := serveDuring(t, c, u.APIKey, []int{0, 2}, stop)
	c.Signal(t, 1, syscall.SIGKILL)
	killed := time.Now()
	<-c.Nodes[1].Done()
	took := waitReleased(t, c, u.ID, killed)
	t.Logf("holds of the killed node released after %v (lease %v, reaper every %v)", took, deathLease, deathReaper)
	if took > deathLease+deathReaper+deathSlack {
		t.Errorf("holds released %v after the kill, bound %v", took, deathLease+deathReaper)
	}
	time.Sleep(deathReaper) // A and C go on serving past the release
	close(stop)
	n := served()
	for _, s := range streams {
		s.Close()
	}
	if n == 0 {
		t.Fatal("A and C served nothing while B was down")
	}
	if got := c.WaitSettled(t, u.ID, 10*time.Second); got != credits-n*jsonCost {
		t.Fatalf("balance %d after %d completions on A and C, want %d (the killed node's streams charge nothing)",
			got, n, credits-n*jsonCost)
	}
	t.Logf("A and C served %d completions while B was down", n)

	// B restarts under its name and serves at once.
	c.Restart(t, 1)
	mustOK(t, "a completion on the restarted node")(c.APIs[1].Chat(u.APIKey, false, 0))
	if h := health(t, c.APIs[1]); h.status != http.StatusOK || h.Feed.Behind {
		t.Fatalf("restarted node's health: %+v", h)
	}

	nodeStoppedPastLease(t, c)
	c.Stop(t)
}

// nodeStoppedPastLease is the SIGSTOP variant of scenario 4.
func nodeStoppedPastLease(t *testing.T, c *Cluster) {
	// Streams that hold much (max_tokens 1000) and cost little (40
	// completion tokens), so the user can afford all 30 at admission.
	const streams, chunks, maxTokens = 30, 40, 1000
	u := bigPlanUser(t, c, "frozen", streams*(mockPrompt+maxTokens)+200)
	open := openStreams(t, c.Nodes[1], u.APIKey, streams, maxTokens,
		mock.HeaderChunks+fmt.Sprintf(": %d", chunks), mock.HeaderChunkDelay+": 20ms")
	c.Signal(t, 1, syscall.SIGSTOP)
	stopped := time.Now()
	took := waitReleased(t, c, u.ID, stopped)
	t.Logf("holds of the stopped node released after %v", took)
	// Spend what is available on A, largest requests first, until even
	// the smallest is refused.
	for _, completion := range []int{5000, 500, 50, 1} {
		for {
			resp, err := c.APIs[0].Chat(u.APIKey, false, completion, mock.HeaderCompletion+fmt.Sprintf(": %d", completion))
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status == http.StatusPaymentRequired {
				break
			}
			if resp.Status != http.StatusOK {
				t.Fatalf("spending on A: %d %s", resp.Status, resp.Body)
			}
		}
	}
	before, reserved := c.Balance(t, u.ID)
	if reserved != 0 {
		t.Fatalf("%d reserved before SIGCONT", reserved)
	}
	var usageBefore int64
	c.Query(t, []any{&usageBefore}, `SELECT count(*) FROM gw_usage WHERE user_id = $1`, u.ID)
	c.Signal(t, 1, syscall.SIGCONT)
	var wg sync.WaitGroup
	for _, s := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.Close()
			io.Copy(io.Discard, s)
		}()
	}
	wg.Wait()
	// Each late settlement is recorded once, charged at most what was left.
	var records, distinct int64
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		c.Query(t, []any{&records, &distinct}, `SELECT count(*), count(DISTINCT doc->>'request_id') FROM gw_usage WHERE user_id = $1`, u.ID)
		if records >= usageBefore+streams {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	after := c.WaitSettled(t, u.ID, 10*time.Second)
	t.Logf("late settlements: %d records, balance %d -> %d", records-usageBefore, before, after)
	switch {
	case records != usageBefore+streams:
		t.Errorf("%d usage records after SIGCONT, want %d (one per stream)", records-usageBefore, streams)
	case records != distinct:
		t.Errorf("%d usage records for %d requests: a settlement was recorded twice", records, distinct)
	case after < 0 || after > before:
		t.Errorf("balance %d -> %d", before, after)
	}
	if h := health(t, c.APIs[1]); h.status != http.StatusOK {
		t.Errorf("the continued node's health: %+v", h)
	}
}
