package e2e

import (
	"testing"
	"time"
)

// TestClusterRollingRestart: each node in turn is stopped (SIGTERM) with
// streams in flight and started again, while the other nodes serve the
// same user: every stream completes, every request is charged once, and
// no credit stays held.
func TestClusterRollingRestart(t *testing.T) {
	mo := mockOptions()
	mo.ChunkDelay = 40 * time.Millisecond
	c := startCluster(t, ClusterOptions{Mock: &mo})
	const credits, perNode = 100_000, 4
	u := bigPlanUser(t, c, "rolling", credits)
	var served int64
	for i := range c.Nodes {
		others := make([]int, 0, len(c.Nodes)-1)
		for j := range c.Nodes {
			if j != i {
				others = append(others, j)
			}
		}
		stop := make(chan struct{})
		load := serveDuring(t, c, u.APIKey, others, stop)
		wait := startStreams(t, c.Nodes[i].URL, u.APIKey, perNode)
		waitInFlight(t, c.Mock, perNode)
		if err := c.Nodes[i].Stop(60 * time.Second); err != nil {
			t.Fatalf("stopping node %d: %v", i, err)
		}
		checkStreams(t, "streams across a node's restart", wait())
		c.Restart(t, i)
		mustOK(t, "the restarted node")(c.APIs[i].Chat(u.APIKey, false, 0))
		served++
		close(stop)
		served += load()
	}
	want := credits - int64(len(c.Nodes))*perNode*streamCost - served*jsonCost
	if got := c.WaitSettled(t, u.ID, 10*time.Second); got != want {
		t.Fatalf("balance %d, want %d (%d streams and %d completions, each charged once)",
			got, want, len(c.Nodes)*perNode, served)
	}
	c.Stop(t)
}
