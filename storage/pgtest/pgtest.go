// Package pgtest gives tests a real PostgreSQL server: a private one that
// the package starts in a temporary directory (initdb and pg_ctl of the
// installed PostgreSQL, a free port on 127.0.0.1, the unix socket in the
// same directory, fsync off), or the one GATEWAYZ_TEST_DATABASE_URL points
// at. Each test gets a database of its own, created from a template (empty,
// or as the package's Main prepared it) and dropped when the test ends.
//
// A test package calls Main from its TestMain, so the private server is
// started at most once (on the first test that asks for a database) and
// stopped when the package's tests end:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// Where PostgreSQL is not installed the tests that ask for a database are
// skipped with a message saying how to enable them, except in CI (CI set),
// where they fail.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDatabaseURL names the variable that points the tests at an existing
// server instead of a private one. Its user needs the CREATEDB privilege.
const EnvDatabaseURL = "GATEWAYZ_TEST_DATABASE_URL"

// templateName is the database every test database of this process is
// copied from: one per process, since test packages run in parallel
// against a shared server.
var templateName = fmt.Sprintf("gw_tmpl_%d", os.Getpid())

var (
	shared     *Server
	sharedURL  string // the server's base URL (database "postgres")
	sharedErr  error
	sharedOnce sync.Once
	dbSeq      atomic.Int64
)

// prepareTemplate, when set by Main, runs once on the template database
// (e.g. to create a schema every test database then starts with).
var prepareTemplate func(ctx context.Context, url string) error

// Main runs the package's tests and stops the private server, if one was
// started. Use it from TestMain. prepare, if given, runs once on the
// template every test database is copied from.
func Main(m *testing.M, prepare ...func(ctx context.Context, url string) error) int {
	if len(prepare) > 0 {
		prepareTemplate = prepare[0]
	}
	code := m.Run()
	Stop()
	return code
}

// Stop stops the private server, if one was started. Main calls it; a
// TestMain that cannot use Main calls it after m.Run.
func Stop() {
	if sharedURL != "" && sharedErr == nil && shared == nil {
		// An existing server: leave it as it was found.
		if err := adminExec(sharedURL, "DROP DATABASE IF EXISTS "+templateName+" WITH (FORCE)"); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
	}
	if shared != nil {
		if err := shared.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
		shared = nil
	}
}

// DatabaseURL returns the URL of a new empty database for t, dropped when
// t ends. Without a server it fails the test in CI and skips it elsewhere.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	sharedOnce.Do(func() {
		if u := os.Getenv(EnvDatabaseURL); u != "" {
			sharedURL = u
		} else {
			shared, sharedErr = Start()
			if sharedErr == nil {
				sharedURL = shared.URL("postgres")
			}
		}
		if sharedErr == nil {
			sharedErr = createTemplate(sharedURL)
		}
	})
	if sharedErr != nil {
		Unavailable(t, sharedErr)
	}
	name := fmt.Sprintf("t_%d_%d", os.Getpid(), dbSeq.Add(1))
	if err := adminExec(sharedURL, "CREATE DATABASE "+name+" TEMPLATE "+templateName); err != nil {
		t.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		// WITH (FORCE) ends the connections a failed test left open.
		if err := adminExec(sharedURL, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return withDatabase(sharedURL, name)
}

// Unavailable ends a test that needs PostgreSQL but has none: it fails in
// CI (CI set) and skips elsewhere, saying how to enable the test.
func Unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("PostgreSQL is required when CI is set (.ci/run installs it: apt-get install -y postgresql): %v", err)
	}
	t.Skipf("PostgreSQL unavailable (%v); install it (apt-get install -y postgresql) or set %s to a server whose user may create databases",
		err, EnvDatabaseURL)
}

// withDatabase returns base with its database replaced by name.
func withDatabase(base, name string) string {
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		// A keyword/value DSN: a later dbname overrides an earlier one.
		return base + " dbname=" + name
	}
	u.Path = "/" + name
	return u.String()
}

func adminExec(baseURL, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// createTemplate creates the template database afresh (a template left
// by an earlier run may hold an older schema).
func createTemplate(baseURL string) error {
	if err := adminExec(baseURL, "DROP DATABASE IF EXISTS "+templateName+" WITH (FORCE)"); err != nil {
		return err
	}
	if err := adminExec(baseURL, "CREATE DATABASE "+templateName); err != nil {
		return err
	}
	if prepareTemplate == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := prepareTemplate(ctx, withDatabase(baseURL, templateName)); err != nil {
		return fmt.Errorf("preparing the template database: %w", err)
	}
	return nil
}

// Server is a private PostgreSQL server in a temporary directory.
type Server struct {
	dir  string // data in dir/data, socket in dir, log in dir/log
	bin  string
	port int
	cred *syscall.Credential // the postgres user when running as root
}

// Start initializes and starts a private server. Close stops it and
// removes its files. It runs with fsync off unless settings (lines of
// postgresql.conf, which override the defaults: "fsync = on") say
// otherwise, e.g. for a benchmark of durable commits.
func Start(settings ...string) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		// initdb refuses to run as root.
		if s.cred, err = postgresCredential(); err != nil {
			return nil, err
		}
	}
	if s.dir, err = os.MkdirTemp("", "gatewayz-pg-"); err != nil {
		return nil, err
	}
	if s.cred != nil {
		if err := os.Chown(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			s.removeDir()
			return nil, err
		}
	}
	out, err := s.run("initdb", "-D", s.dataDir(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C")
	if err != nil {
		s.removeDir()
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if s.port, err = freePort(); err != nil {
		s.removeDir()
		return nil, err
	}
	// The settings go to the configuration file, so Restart keeps them.
	conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"+
		"fsync = off\nfull_page_writes = off\nmax_connections = 200\n", s.port, s.dir)
	for _, line := range settings {
		conf += line + "\n"
	}
	f, err := os.OpenFile(filepath.Join(s.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(conf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		s.removeDir()
		return nil, err
	}
	if err := s.Restart(); err != nil {
		s.removeDir()
		return nil, err
	}
	return s, nil
}

// URL returns the URL of database db on the server.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// Stop stops the server at once (connections are cut), keeping its files:
// Restart brings it back on the same port.
func (s *Server) Stop() error {
	out, err := s.run("pg_ctl", "-D", s.dataDir(), "-m", "immediate", "-w", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

// Restart starts a stopped server and waits until it accepts connections.
func (s *Server) Restart() error {
	out, err := s.run("pg_ctl", "-D", s.dataDir(), "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60", "start")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	return nil
}

// Close stops the server and removes its files.
func (s *Server) Close() error {
	err := s.Stop()
	s.removeDir()
	return err
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

func (s *Server) removeDir() { os.RemoveAll(s.dir) }

// run runs a PostgreSQL program as the server's user.
func (s *Server) run(prog string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, prog), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd.CombinedOutput()
}

// BinDir finds the directory of initdb and pg_ctl: pg_config --bindir, else
// the newest /usr/lib/postgresql/<version>/bin.
func BinDir() (string, error) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasInitdb(dir) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, dir := range dirs {
		if hasInitdb(dir) {
			return dir, nil
		}
	}
	return "", errors.New("initdb not found (neither pg_config --bindir nor /usr/lib/postgresql/*/bin)")
}

func hasInitdb(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "initdb"))
	return dir != "" && err == nil
}

func versionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func postgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root and there is no postgres user to run initdb as: %v", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
