package e2e

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// outageLoad is what the clients saw during the outage scenario.
type outageLoad struct {
	json, streams atomic.Int64 // served (200)
	refused       atomic.Int64 // 503
	mu            sync.Mutex
	refusals      map[string]int // 503 messages
	lastOK        [3]atomic.Int64
}

// TestClusterDatabaseOutage (scenario 5): PostgreSQL stops for a few
// seconds under load on three nodes. Every refusal is a 503 in the OpenAI
// error shape with a clear message (never a 500), no node panics, and
// once the database is back every node serves again by itself, with every
// served request charged exactly once.
func TestClusterDatabaseOutage(t *testing.T) {
	const outage = 3 * time.Second
	c := startCluster(t, ClusterOptions{})
	const credits = 1_000_000
	u := bigPlanUser(t, c, "outage", credits)
	load := &outageLoad{refusals: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := w % len(c.Nodes)
			stream := w >= len(c.Nodes)
			for {
				select {
				case <-stop:
					return
				default:
				}
				load.send(t, c, node, u.APIKey, stream)
			}
		}()
	}
	time.Sleep(time.Second)
	if err := c.PG.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	time.Sleep(outage / 2) // past the feed bound
	for i, api := range c.APIs {
		if h := health(t, api); h.status != http.StatusServiceUnavailable || h.Database != "unavailable" || !h.Feed.Behind {
			t.Errorf("node %d's health with the database down: %d %+v", i, h.status, h)
		}
		if lag := feedLagMetric(t, c.Nodes[i]); lag <= clusterFeedBound.Seconds() {
			t.Errorf("node %d: gatewayz_feed_lag_seconds %v with the database down past the bound", i, lag)
		}
		// Fail closed: the key is cached and the model list needs no
		// credits, but past the bound the cached key is not trusted.
		resp, err := api.Do("GET", "/v1/models", u.APIKey, nil)
		if err != nil || resp.Status != http.StatusServiceUnavailable || !strings.Contains(string(resp.Body), "cannot confirm this API key") {
			t.Errorf("node %d: a cached key past the feed bound with the database down: %v %v", i, err, resp)
		}
	}
	time.Sleep(outage - time.Since(down))
	if err := c.PG.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// Every node serves again by itself.
	for i := range c.Nodes {
		for load.lastOK[i].Load() < back.UnixNano() {
			if time.Since(back) > 30*time.Second {
				t.Fatalf("node %d served nothing in the 30s after the database came back", i)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("every node served again %v after the database came back", time.Since(back))
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if load.refused.Load() == 0 {
		t.Error("no request was refused during the outage: the test proved nothing")
	}
	t.Logf("served %d completions and %d streams, refused %d: %v", load.json.Load(), load.streams.Load(), load.refused.Load(), load.refusals)
	for i, api := range c.APIs {
		if h := health(t, api); h.status != http.StatusOK || h.Feed.Behind {
			t.Errorf("node %d's health after the outage: %+v", i, h)
		}
	}
	c.Stop(t) // verifies the ledger and that no hold is left
	for i, g := range c.Nodes {
		if strings.Contains(strings.ToLower(g.Logs().String()), "panic") {
			t.Errorf("node %d panicked", i)
		}
	}
	want := credits - load.json.Load()*jsonCost - load.streams.Load()*streamCost
	if got, reserved := c.Balance(t, u.ID); got != want || reserved != 0 {
		t.Fatalf("balance %d (reserved %d), want %d: %d completions and %d streams served, each charged once",
			got, reserved, want, load.json.Load(), load.streams.Load())
	}
}

// send makes one request on node i and records its outcome; anything but
// a 200 or a well-formed 503 fails the test.
func (l *outageLoad) send(t *testing.T, c *Cluster, i int, key string, stream bool) {
	resp, err := c.APIs[i].Chat(key, stream, 0)
	if err != nil {
		t.Errorf("node %d: %v", i, err)
		time.Sleep(100 * time.Millisecond)
		return
	}
	switch resp.Status {
	case http.StatusOK:
		if stream && !strings.Contains(string(resp.Body), "data: [DONE]") {
			t.Errorf("node %d: a stream ended early: %s", i, tail(string(resp.Body), 5))
			return
		}
		if stream {
			l.streams.Add(1)
		} else {
			l.json.Add(1)
		}
		l.lastOK[i].Store(time.Now().UnixNano())
	case http.StatusServiceUnavailable:
		var e struct {
			Error struct {
				Message, Type, Code string
			} `json:"error"`
		}
		if json.Unmarshal(resp.Body, &e) != nil || e.Error.Message == "" || e.Error.Code != "service_unavailable" {
			t.Errorf("node %d: a 503 not in the OpenAI error shape: %s", i, resp.Body)
		}
		l.refused.Add(1)
		l.mu.Lock()
		l.refusals[e.Error.Message]++
		l.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	default:
		t.Errorf("node %d: status %d during the outage: %s", i, resp.Status, resp.Body)
		time.Sleep(100 * time.Millisecond)
	}
}

// feedLagMetric reads gatewayz_feed_lag_seconds from the node's /metrics
// (Caddy's admin endpoint).
func feedLagMetric(t *testing.T, g *Gateway) float64 {
	t.Helper()
	api := NewAPI("http://"+g.AdminAddr, "")
	resp, err := api.Do("GET", "/metrics", "", nil)
	if err != nil || resp.Status != http.StatusOK {
		t.Fatalf("/metrics: %v %v", err, resp)
	}
	for _, line := range strings.Split(string(resp.Body), "\n") {
		if v, ok := strings.CutPrefix(line, "gatewayz_feed_lag_seconds "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			return f
		}
	}
	t.Fatal("no gatewayz_feed_lag_seconds in /metrics")
	return 0
}
