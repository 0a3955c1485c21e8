package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRoutingByModelWithFailover runs docs/Caddyfile.routing through
// bin/caddy: "anthropic/..." models go to their own upstream, every other
// model to the primary, and to the backup while the primary is down.
// Every answered request is charged exactly its usage, once.
func TestRoutingByModelWithFailover(t *testing.T) {
	anthropic, anthropicMock := newUpstream(t, mockOptions())
	backup, backupMock := newUpstream(t, mockOptions())
	port, err := FreePort() // nothing listens there: the primary is down
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, fmt.Sprintf("http://127.0.0.1:%d", port), func(c *Config) {
		c.Caddyfile = filepath.Join(repoRoot, "docs", "Caddyfile.routing")
		c.Env = append(c.Env, "GATEWAYZ_ANTHROPIC_UPSTREAM="+anthropic.URL, "GATEWAYZ_UPSTREAM_BACKUP="+backup.URL)
	})
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("router", "router@example.com", 1000)
	if err != nil {
		t.Fatal(err)
	}
	const cost = mockPrompt + mockCompletion // 1 credit per token
	chat := func(model string) {
		t.Helper()
		mustOK(t, "chat "+model)(api.Do("POST", "/v1/chat/completions", u.APIKey, map[string]any{
			"model": model, "max_tokens": 50, "messages": []map[string]string{{"role": "user", "content": "hi"}},
		}))
	}
	want := int64(1000)
	for i, step := range []struct {
		model                     string
		anthropicSeen, backupSeen int64
	}{
		{"anthropic/claude-3-5-sonnet", 1, 0},
		{"gpt-4o-mini", 1, 1}, // primary refused the connection: failed over
		{"meta-llama/llama-3.1-8b", 1, 2},
		{"anthropic/claude-3-haiku", 2, 2},
	} {
		chat(step.model)
		want -= cost
		if a, b := anthropicMock.Stats().Requests, backupMock.Stats().Requests; a != step.anthropicSeen || b != step.backupSeen {
			t.Fatalf("step %d (%s): anthropic saw %d, backup %d; want %d, %d", i, step.model, a, b, step.anthropicSeen, step.backupSeen)
		}
		c, err := api.UserCredits(u.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.Credits != want || c.Reserved != 0 {
			t.Fatalf("step %d (%s): credits %d reserved %d, want %d and 0", i, step.model, c.Credits, c.Reserved, want)
		}
	}
}

// TestExampleConfigsAdaptCleanly adapts the shipped Caddyfiles with
// bin/caddy, as an operator's edit, validate, reload loop does, and fails
// on any warning (such as Caddy's "Unnecessary header_up Host").
func TestExampleConfigsAdaptCleanly(t *testing.T) {
	for _, name := range []string{"Caddyfile.example", filepath.Join("docs", "Caddyfile.routing")} {
		cmd := exec.Command(binary, "adapt", "--config", filepath.Join(repoRoot, name), "--adapter", "caddyfile")
		dir := t.TempDir()
		cmd.Env = []string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("adapt %s: %v\n%s", name, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, `"level":"warn"`) || strings.Contains(line, "WARN") {
				t.Errorf("adapt %s warns: %s", name, line)
			}
		}
	}
}
