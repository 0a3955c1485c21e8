package e2e

import (
	"testing"
	"time"
)

// TestClusterBasics: three nodes on one database behave as one gateway: a
// user registered on one node spends through all three, a top-up sent to
// each node with the same Idempotency-Key is applied once, and every node
// reports the same balance, the database's.
func TestClusterBasics(t *testing.T) {
	c := startCluster(t, ClusterOptions{})
	u := c.Register(t, "basics", 1000)
	key, _ := c.CreateKey(t, u, nil)
	for range len(c.Nodes) * 2 {
		mustOK(t, "chat")(c.Chat(key, false, 0))
	}
	want := int64(1000 - 2*len(c.Nodes)*jsonCost)
	if got := c.WaitSettled(t, u.ID, 10*time.Second); got != want {
		t.Fatalf("balance %d, want %d", got, want)
	}
	for range c.Nodes {
		c.TopUp(t, u.ID, 100, "basics-once")
	}
	want += 100
	for i, api := range c.APIs {
		bal := mustOK(t, "balance")(api.Do("GET", "/user/balance", u.APIKey, nil)).JSON()
		if bal["credits"] != float64(want) {
			t.Fatalf("node %d: /user/balance %v, want %d credits", i, bal, want)
		}
	}
	if got, _ := c.Balance(t, u.ID); got != want {
		t.Fatalf("database balance %d, want %d", got, want)
	}
	for i, g := range c.Nodes {
		if h := health(t, c.APIs[i]); h.status != 200 || h.Feed.Behind || h.Feed.BoundMS != clusterFeedBound.Milliseconds() {
			t.Errorf("node %d's health: %+v", i, h)
		}
		if lag := feedLagMetric(t, g); lag > clusterFeedBound.Seconds() {
			t.Errorf("node %d: feed lag %vs at rest", i, lag)
		}
	}
	c.Stop(t)
}
