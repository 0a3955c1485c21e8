// Package e2e holds process-level tests of caddy-gatewayz: they build the
// custom Caddy binary, start it as a separate process with
// Caddyfile.example (the configuration operators run), and drive it over
// HTTP the way real clients and front ends do.
//
// The non-test files are the process harness (build, start, reload, stop,
// kill, log capture), shared with the soak runner in bench/cmd/soak.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RepoRoot returns the module root (the directory holding go.mod), searched
// upwards from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Build compiles the custom Caddy (./cmd/caddy) of the module at root into
// out. Extra go build flags (e.g. "-race") may be given.
func Build(ctx context.Context, root, out string, flags ...string) error {
	args := append([]string{"build"}, flags...)
	args = append(args, "-o", out, "./cmd/caddy")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, stderr.String())
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Config describes one gateway process.
type Config struct {
	// Binary is the custom Caddy binary.
	Binary string
	// Caddyfile is the configuration file (usually Caddyfile.example).
	Caddyfile string
	// Dir is the process's private directory: HOME, XDG dirs and, unless
	// DB is set, the database live in it.
	Dir string
	// DB is the database file. Default Dir/gatewayz.db.
	DB string
	// Upstream is GATEWAYZ_UPSTREAM (scheme://host:port).
	Upstream string
	// AdminKey, Secret, APIKey and SignupCredits fill the matching
	// GATEWAYZ_* variables when non-empty.
	AdminKey      string
	Secret        string
	APIKey        string
	SignupCredits string
	// Env holds extra KEY=value variables.
	Env []string
	// Log, when set, receives a copy of the process's stdout and stderr.
	Log io.Writer
	// StartTimeout bounds the wait for /health. Default 60s.
	StartTimeout time.Duration
}

// Gateway is a running gateway process.
type Gateway struct {
	cfg Config
	// URL is the base URL of the site (http://127.0.0.1:port).
	URL string
	// AdminAddr is Caddy's own admin endpoint (127.0.0.1:port).
	AdminAddr string
	// Listen is the GATEWAYZ_LISTEN value (a site address).
	Listen string

	cmd  *exec.Cmd
	logs *Logs
	done chan struct{}
	err  error // exit status, valid after done is closed
}

// Start launches the gateway and waits until GET /health answers 200. The
// listen and admin ports are picked free.
func Start(cfg Config) (*Gateway, error) {
	if cfg.DB == "" {
		cfg.DB = filepath.Join(cfg.Dir, "gatewayz.db")
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	for _, d := range []string{"home", "data", "config"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	var lastErr error
	// A port found free may be taken by the time Caddy binds it; retry a
	// few times with new ports.
	for attempt := 0; attempt < 3; attempt++ {
		g, err := startOnce(cfg)
		if err == nil {
			return g, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func startOnce(cfg Config) (*Gateway, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	adminPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		cfg:       cfg,
		URL:       "http://127.0.0.1:" + strconv.Itoa(port),
		AdminAddr: "127.0.0.1:" + strconv.Itoa(adminPort),
		logs:      &Logs{},
		done:      make(chan struct{}),
	}
	g.Listen = g.URL
	cmd := exec.Command(cfg.Binary, "run", "--config", cfg.Caddyfile, "--adapter", "caddyfile")
	cmd.Dir = cfg.Dir
	cmd.Env = g.Environ()
	var out io.Writer = g.logs
	if cfg.Log != nil {
		out = io.MultiWriter(g.logs, cfg.Log)
	}
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	g.cmd = cmd
	go func() {
		g.err = cmd.Wait()
		close(g.done)
	}()
	if err := g.waitHealthy(cfg.StartTimeout); err != nil {
		g.Kill()
		return nil, fmt.Errorf("%v\n--- gateway log ---\n%s", err, g.logs.String())
	}
	return g, nil
}

// Environ is the environment the process runs with (also used for the
// reload command, which adapts the Caddyfile itself).
func (g *Gateway) Environ() []string {
	c := g.cfg
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + filepath.Join(c.Dir, "home"),
		"XDG_DATA_HOME=" + filepath.Join(c.Dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(c.Dir, "config"),
		"CADDY_ADMIN=" + g.AdminAddr,
		"GATEWAYZ_LISTEN=" + g.Listen,
		"GATEWAYZ_DB=" + c.DB,
	}
	add := func(name, v string) {
		if v != "" {
			env = append(env, name+"="+v)
		}
	}
	add("GATEWAYZ_UPSTREAM", c.Upstream)
	add("GATEWAYZ_ADMIN_KEY", c.AdminKey)
	add("GATEWAYZ_SECRET", c.Secret)
	add("GATEWAYZ_API_KEY", c.APIKey)
	add("GATEWAYZ_SIGNUP_CREDITS", c.SignupCredits)
	return append(env, c.Env...)
}

func (g *Gateway) waitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-g.done:
			return fmt.Errorf("gateway exited before it was ready: %v", g.err)
		default:
		}
		resp, err := client.Get(g.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gateway not healthy after %v (last error: %v)", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Pid is the process id.
func (g *Gateway) Pid() int { return g.cmd.Process.Pid }

// Logs returns everything the process wrote to stdout and stderr so far.
func (g *Gateway) Logs() *Logs { return g.logs }

// Done is closed when the process has exited.
func (g *Gateway) Done() <-chan struct{} { return g.done }

// ExitErr is the process's exit status (nil for a clean exit), valid once
// Done is closed.
func (g *Gateway) ExitErr() error {
	<-g.done
	return g.err
}

// Kill sends SIGKILL and waits for the process to be gone.
func (g *Gateway) Kill() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	_ = g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.done
}

// Stop sends SIGTERM (Caddy's graceful shutdown) and waits up to timeout
// for the process to exit; after that it kills it and reports an error.
func (g *Gateway) Stop(timeout time.Duration) error {
	select {
	case <-g.done:
		return g.err
	default:
	}
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-g.done:
		return g.err
	case <-time.After(timeout):
		g.Kill()
		return fmt.Errorf("gateway did not exit within %v of SIGTERM", timeout)
	}
}

// CaddyStop runs `caddy stop --address <admin>` and waits up to timeout
// for the process to exit.
func (g *Gateway) CaddyStop(timeout time.Duration) error {
	out, err := g.command("stop", "--address", g.AdminAddr)
	if err != nil {
		return fmt.Errorf("caddy stop: %v\n%s", err, out)
	}
	select {
	case <-g.done:
		return g.err
	case <-time.After(timeout):
		g.Kill()
		return fmt.Errorf("gateway did not exit within %v of caddy stop", timeout)
	}
}

// Reload runs `caddy reload` against the running process with the given
// Caddyfile (empty: the one it started with). force reloads even when the
// adapted config is unchanged.
func (g *Gateway) Reload(caddyfile string, force bool) error {
	if caddyfile == "" {
		caddyfile = g.cfg.Caddyfile
	}
	args := []string{"reload", "--config", caddyfile, "--adapter", "caddyfile", "--address", g.AdminAddr}
	if force {
		args = append(args, "--force")
	}
	out, err := g.command(args...)
	if err != nil {
		return fmt.Errorf("caddy reload: %v\n%s", err, out)
	}
	return nil
}

// command runs the binary with args in the gateway's environment.
func (g *Gateway) command(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.cfg.Binary, args...)
	cmd.Dir = g.cfg.Dir
	cmd.Env = g.Environ()
	return cmd.CombinedOutput()
}

// Logs is a goroutine-safe, append-only capture of process output.
type Logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// Bytes returns a copy of everything captured.
func (l *Logs) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.buf.Bytes())
}

// String returns everything captured.
func (l *Logs) String() string { return string(l.Bytes()) }

// Lines returns the captured output split into lines.
func (l *Logs) Lines() []string {
	return strings.Split(strings.TrimRight(l.String(), "\n"), "\n")
}
