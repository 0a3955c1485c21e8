package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// The revocation latency of the multi-node run: how long after a key is
// deactivated on one node the other nodes refuse it. Each repetition
// makes a key on the first node, warms it on the others (so they hold it
// in their caches), deactivates it on the first and polls the others
// until they answer 401. What a node learns through the change feed's
// notification it refuses within a few milliseconds; the feed's polling
// fallback and feed_bound (1 s) bound the rest.

// revocationReps is the number of keys revoked.
const revocationReps = 50

// revocationResult is the latency, as the client sees it (from the
// deactivation's answer to the first refusal), per revocation and node.
type revocationResult struct {
	latencies []time.Duration
	late      int // requests accepted more than a second after the change
}

// measureRevocation runs the repetitions against the nodes' bases
// (http://host:port): nodes[0] makes and revokes, the others poll.
func measureRevocation(nodes []string, owner string) (*revocationResult, error) {
	res := &revocationResult{}
	for rep := range revocationReps {
		var key struct {
			APIKey string `json:"api_key"`
			KeyID  int64  `json:"key_id"`
		}
		if err := postJSON(nodes[0]+"/user/api-keys", owner, map[string]any{"key_name": fmt.Sprintf("revoked-%d", rep)}, &key); err != nil {
			return nil, err
		}
		for _, n := range nodes[1:] {
			if st, err := modelsStatus(n, key.APIKey); err != nil || st != http.StatusOK {
				return nil, fmt.Errorf("warming the key on %s: status %d: %v", n, st, err)
			}
		}
		if err := deactivateKey(nodes[0], owner, key.KeyID); err != nil {
			return nil, err
		}
		done := time.Now()
		type answer struct {
			latency time.Duration
			late    bool
			err     error
		}
		answers := make(chan answer, len(nodes)-1)
		for _, n := range nodes[1:] {
			go func() {
				lat, late, err := refusedAfter(n, key.APIKey, done)
				answers <- answer{lat, late, err}
			}()
		}
		for range nodes[1:] {
			a := <-answers
			if a.err != nil {
				return nil, a.err
			}
			res.latencies = append(res.latencies, a.latency)
			if a.late {
				res.late++
			}
		}
	}
	return res, nil
}

// deactivateKey sets is_active false on key id through base.
func deactivateKey(base, owner string, id int64) error {
	req, err := http.NewRequest("PUT", fmt.Sprintf("%s/user/api-keys/%d", base, id), strings.NewReader(`{"is_active":false}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+owner)
	resp, err := httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("deactivate: status %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}

// modelsStatus is the status of GET /v1/models with key (free for any
// valid key).
func modelsStatus(base, key string) (int, error) {
	req, err := http.NewRequest("GET", base+"/v1/models", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := httpc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// refusedAfter polls base with key until it answers 401, returning the
// time from since to the refusal and whether a request sent more than
// the feed bound after since was still accepted.
func refusedAfter(base, key string, since time.Time) (time.Duration, bool, error) {
	const bound, giveUp = time.Second, 10 * time.Second
	late := false
	for {
		sent := time.Now()
		st, err := modelsStatus(base, key)
		switch {
		case err != nil:
			return 0, late, err
		case st == http.StatusUnauthorized:
			return time.Since(since), late, nil
		case st != http.StatusOK:
			return 0, late, fmt.Errorf("%s: status %d while waiting for the refusal", base, st)
		case time.Since(since) > giveUp:
			return 0, late, fmt.Errorf("%s: the key still works %v after it was deactivated", base, time.Since(since))
		}
		if sent.Sub(since) > bound {
			late = true
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// markdown is the report's paragraph on the revocation latency.
func (r *revocationResult) markdown() string {
	if r == nil || len(r.latencies) == 0 {
		return ""
	}
	s := slices.Clone(r.latencies)
	slices.Sort(s)
	at := func(q float64) string { return fmtDur(s[min(len(s)-1, int(q*float64(len(s))))]) }
	var b strings.Builder
	fmt.Fprintf(&b, "\nRevocation latency (%d keys deactivated on the first node, each polled on the other two every 2 ms "+
		"from the deactivation's answer until refused with 401; %d measurements, idle nodes):\n\n", revocationReps, len(s))
	b.WriteString("| p50 | p90 | p99 | max | accepted past the 1 s bound |\n|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| %s | %s | %s | %s | %d |\n", at(0.5), at(0.9), at(0.99), fmtDur(s[len(s)-1]), r.late)
	return b.String()
}
