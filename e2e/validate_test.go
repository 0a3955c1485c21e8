package e2e

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestValidateWhileRunning runs `caddy validate` on Caddyfile.example while
// a gateway serves from the same database (whose file lock it holds), and
// on another database path without a secret: validation succeeds and opens,
// locks and creates nothing. The running gateway logged one start-up line
// saying what it runs with.
func TestValidateWhileRunning(t *testing.T) {
	upstream, _ := newUpstream(t, mockOptions())
	g := startGateway(t, upstream.URL, nil)

	validate := func(extraEnv ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, binary, "validate", "--config", caddyfile, "--adapter", "caddyfile")
		cmd.Dir = g.cfg.Dir
		// Later entries win over the gateway's own.
		cmd.Env = append(g.Environ(), extraEnv...)
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "Valid configuration") {
			t.Fatalf("validate %v: %v\n%s", extraEnv, err, out)
		}
	}
	validate()
	other := filepath.Join(t.TempDir(), "other", "gatewayz.db")
	validate("GATEWAYZ_DB="+other, "GATEWAYZ_SECRET=")
	if _, err := os.Stat(filepath.Dir(other)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("validate created the database directory (or more): %v", err)
	}
	// The gateway still serves after both.
	api := NewAPI(g.URL, testAdminKey)
	mustOK(t, "register after validate")(api.Do("POST", "/auth/register", "", map[string]any{"username": "v", "email": "v@example.com"}))

	line := startupLine(t, g)
	for _, want := range []string{
		`"storage":"bolt"`, `"storage_location":"` + g.cfg.DB + `"`, `"secret":"environment"`, `"admin_api":true`,
		// The port the site listens on, and the upstream it proxies to.
		g.URL[strings.LastIndex(g.URL, ":"):] + `"`, `"upstreams":["` + strings.TrimPrefix(upstream.URL, "http://") + `"]`,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("start-up line lacks %s: %s", want, line)
		}
	}
	if strings.Contains(g.Logs().String(), "upstream credential resolves to nothing") {
		t.Error("warned about an empty upstream credential that is set")
	}
}

// TestStartupWarnsWithoutUpstreamKey: with GATEWAYZ_API_KEY unset the
// gateway starts, says where its generated secret is, and warns that the
// upstream credential is empty.
func TestStartupWarnsWithoutUpstreamKey(t *testing.T) {
	upstream, _ := newUpstream(t, mockOptions())
	g := startGateway(t, upstream.URL, func(c *Config) { c.APIKey, c.Secret, c.AdminKey = "", "", "" })
	line := startupLine(t, g)
	for _, want := range []string{`"secret":"generated file ` + g.cfg.DB + `.secret"`, `"admin_api":false`} {
		if !strings.Contains(line, want) {
			t.Errorf("start-up line lacks %s: %s", want, line)
		}
	}
	var warning string
	for _, l := range strings.Split(g.Logs().String(), "\n") {
		if strings.Contains(l, "upstream credential resolves to nothing") {
			warning = l
		}
	}
	if !strings.Contains(warning, `Authorization: Bearer {env.GATEWAYZ_API_KEY}`) {
		t.Fatalf("no warning naming the empty credential: %q", warning)
	}
}

// startupLine returns the gateway's "gatewayz started" log line (there is
// one: the process is healthy, so its app has started; the line is read
// from the process's stderr a moment after it is written).
func startupLine(t *testing.T, g *Gateway) string {
	t.Helper()
	var found []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		found = found[:0]
		for _, l := range strings.Split(g.Logs().String(), "\n") {
			if strings.Contains(l, `"msg":"gatewayz started"`) {
				found = append(found, l)
			}
		}
		if len(found) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d start-up lines in the log:\n%s", len(found), g.Logs().String())
	}
	return found[0]
}
