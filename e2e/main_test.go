package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// Built once per test binary by TestMain.
var (
	binary    string // the custom Caddy
	repoRoot  string
	caddyfile string // the repository's Caddyfile.example
)

const (
	testAdminKey = "e2e-admin-key-7f3a9c1d2b4e6f80"
	testSecret   = "e2e-server-secret-5d1c8e2a9b7f4063"
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	repoRoot, err = RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	caddyfile = filepath.Join(repoRoot, "Caddyfile.example")
	tmp, err := os.MkdirTemp("", "gatewayz-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	defer pgtest.Stop() // the PostgreSQL server of the tests that started one
	// The gateway processes get their own HOME and XDG dirs (see
	// Config.Dir); this process keeps its environment so that the build
	// below uses the usual Go build cache.
	binary = filepath.Join(tmp, "caddy")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Under -race the gateway is built with it too: it shares the race
	// build of Caddy with the other packages' tests (one compile of the
	// dependencies less on a cold cache) and its own races are caught.
	var flags []string
	if raceEnabled {
		flags = append(flags, "-race")
	}
	if err := Build(ctx, repoRoot, binary, flags...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// newUpstream starts the mock OpenAI upstream on 127.0.0.1.
func newUpstream(t testing.TB, opts mock.Options) (*httptest.Server, *mock.Handler) {
	t.Helper()
	h := mock.NewHandler(opts)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, h
}

// startGateway starts the binary with Caddyfile.example (or the file set
// by edit) on a fresh directory. It is killed at the end of the test, and
// its log is printed when the test failed.
func startGateway(t testing.TB, upstream string, edit func(*Config)) *Gateway {
	t.Helper()
	cfg := Config{
		Binary:        binary,
		Caddyfile:     caddyfile,
		Dir:           t.TempDir(),
		Upstream:      upstream,
		AdminKey:      testAdminKey,
		Secret:        testSecret,
		APIKey:        "sk-upstream-operator-key",
		SignupCredits: "1000",
	}
	if edit != nil {
		edit(&cfg)
	}
	g, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	watch(t, g)
	return g
}

// watch kills g at the end of the test and prints its log on failure.
func watch(t testing.TB, g *Gateway) {
	t.Cleanup(func() {
		g.Kill()
		if t.Failed() {
			t.Logf("--- gateway log (pid %d) ---\n%s", g.Pid(), tail(g.Logs().String(), 200))
		}
	})
}

// restart starts a new process with the configuration of g (same
// directory, database and secret) after g has exited.
func restart(t testing.TB, g *Gateway) *Gateway {
	t.Helper()
	select {
	case <-g.Done():
	default:
		t.Fatal("restart: the previous process is still running")
	}
	g2, err := Start(g.cfg)
	if err != nil {
		t.Fatal(err)
	}
	watch(t, g2)
	return g2
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// writeCaddyfile writes a variant of Caddyfile.example: edit receives its
// text and returns the new one.
func writeCaddyfile(t testing.TB, edit func(string) string) string {
	t.Helper()
	b, err := os.ReadFile(caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	out := edit(string(b))
	if out == string(b) {
		t.Fatal("writeCaddyfile: the edit changed nothing (Caddyfile.example changed?)")
	}
	p := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(p, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustOK returns a function that fails the test unless its (response,
// error) pair is a 200, and returns the response:
// mustOK(t, "register")(api.Do(...)).
func mustOK(t testing.TB, what string) func(*Response, error) *Response {
	return func(resp *Response, err error) *Response {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if resp.Status != 200 {
			t.Fatalf("%s: status %d: %s", what, resp.Status, resp.Body)
		}
		return resp
	}
}

// mockOptions are the upstream defaults of the e2e tests (bench/mock's
// defaults, spelled out because the expected charges depend on them).
func mockOptions() mock.Options {
	return mock.Options{PromptTokens: mockPrompt, CompletionTokens: mockCompletion, StreamChunks: mockChunks}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
