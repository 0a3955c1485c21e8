package e2e

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/openai/openai-go/v3"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// ClusterOptions describe a cluster of gateway nodes on one PostgreSQL.
type ClusterOptions struct {
	// Nodes is the number of gateway processes. Default 3.
	Nodes int
	// Mock configures the shared upstream. Default mockOptions().
	Mock *mock.Options
	// Storage, when non-empty, replaces the Caddyfile's database_url
	// shorthand with a `storage postgres {env.GATEWAYZ_DATABASE_URL}`
	// block holding these lines (e.g. "lease 2s"), for the storage options
	// the shorthand has no room for.
	Storage []string
	// Caddyfile, when non-empty, is the configuration every node runs
	// (default Caddyfile.example, or its Storage variant). It must take
	// its database from GATEWAYZ_DATABASE_URL.
	Caddyfile string
	// Edit, when set, adjusts node i's process configuration before it
	// starts (extra environment, a different Caddyfile).
	Edit func(i int, c *Config)
}

// Cluster is N gateway processes on loopback sharing one private
// PostgreSQL server, one explicit secret and one mock upstream. Its
// client methods spread requests round-robin over the nodes.
type Cluster struct {
	// PG is the private server: Stop and Restart it for outages.
	PG *pgtest.Server
	// DSN is the database every node uses.
	DSN string
	// Upstream is the mock upstream every node proxies to; Mock its handler.
	Upstream *httptest.Server
	Mock     *mock.Handler
	// Nodes are the running processes (Restart replaces an entry); APIs
	// their management clients, index for index.
	Nodes []*Gateway
	APIs  []*API

	pool *pgxpool.Pool // the test's own connections, for reading balances
	next atomic.Uint64
}

// startCluster starts a private PostgreSQL server, the mock upstream and
// the nodes (in parallel), and stops all of them when the test ends.
func startCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.Nodes <= 0 {
		opts.Nodes = 3
	}
	mo := mockOptions()
	if opts.Mock != nil {
		mo = *opts.Mock
	}
	srv, err := pgtest.Start()
	if err != nil {
		pgtest.Unavailable(t, err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Logf("stopping PostgreSQL: %v", err)
		}
	})
	c := &Cluster{PG: srv, DSN: srv.URL("postgres")}
	c.Upstream, c.Mock = newUpstream(t, mo)
	file := opts.Caddyfile
	if file == "" && len(opts.Storage) > 0 {
		file = writeCaddyfile(t, func(s string) string { return postgresBlock(s, opts.Storage) })
	}
	// The first node creates the schema; the others start together.
	c.Nodes = make([]*Gateway, opts.Nodes)
	c.APIs = make([]*API, opts.Nodes)
	errs := make(chan error, opts.Nodes)
	startNode := func(i int) {
		cfg := Config{
			Binary: binary, Caddyfile: caddyfile, Dir: t.TempDir(), Upstream: c.Upstream.URL,
			AdminKey: testAdminKey, Secret: testSecret, APIKey: "sk-upstream-operator-key", SignupCredits: "1000",
			Env: []string{"GATEWAYZ_DATABASE_URL=" + c.DSN},
		}
		if file != "" {
			cfg.Caddyfile = file
		}
		if opts.Edit != nil {
			opts.Edit(i, &cfg)
		}
		g, err := Start(cfg)
		if err != nil {
			errs <- fmt.Errorf("node %d: %w", i, err)
			return
		}
		c.Nodes[i], c.APIs[i] = g, NewAPI(g.URL, testAdminKey)
		errs <- nil
	}
	startNode(0)
	for i := 1; i < opts.Nodes; i++ {
		go startNode(i)
	}
	var failed []error
	for range opts.Nodes {
		if err := <-errs; err != nil {
			failed = append(failed, err)
		}
	}
	for i, g := range c.Nodes {
		if g != nil {
			watchNode(t, c, i, g)
		}
	}
	if len(failed) > 0 {
		t.Fatal(failed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c.pool, err = pgxpool.New(ctx, c.DSN); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.pool.Close)
	return c
}

// postgresBlock replaces the database_url shorthand (and db_path, which
// cannot stand beside a storage block) with a postgres storage block.
func postgresBlock(caddyfile string, lines []string) string {
	block := "storage postgres {env.GATEWAYZ_DATABASE_URL} {\n\t\t\t" + strings.Join(lines, "\n\t\t\t") + "\n\t\t}"
	out := strings.Replace(caddyfile, "db_path {env.GATEWAYZ_DB}\n", "", 1)
	return strings.Replace(out, "database_url {env.GATEWAYZ_DATABASE_URL}", block, 1)
}

// watchNode kills node i at the end of the test and prints its log when
// the test failed.
func watchNode(t testing.TB, c *Cluster, i int, g *Gateway) {
	t.Cleanup(func() {
		g.Kill()
		if t.Failed() {
			t.Logf("--- node %d log (pid %d) ---\n%s", i, g.Pid(), tail(g.Logs().String(), 100))
		}
	})
}

// Next returns the management client of the next node, round-robin.
func (c *Cluster) Next() *API {
	return c.APIs[c.nextIndex()]
}

// NextNode returns the next node, round-robin (for SDK clients:
// sdkClient(c.NextNode(), key)).
func (c *Cluster) NextNode() *Gateway {
	return c.Nodes[c.nextIndex()]
}

func (c *Cluster) nextIndex() int {
	return int((c.next.Add(1) - 1) % uint64(len(c.Nodes)))
}

// Chat sends one chat completion to the next node.
func (c *Cluster) Chat(key string, stream bool, maxTokens int, headers ...string) (*Response, error) {
	return c.Next().Chat(key, stream, maxTokens, headers...)
}

// SDK returns an OpenAI client of the next node.
func (c *Cluster) SDK(key string) *openai.Client {
	return sdkClient(c.NextNode(), key)
}

// Register creates a user with credits through the next node and fails
// the test on error.
func (c *Cluster) Register(t testing.TB, name string, credits int64) *User {
	t.Helper()
	u, err := c.Next().Register(name, name+"@example.com", credits)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// CreateKey makes a key of the user (body as POST /user/api-keys takes it,
// nil for a plain one) through the next node, and returns its plaintext
// and id.
func (c *Cluster) CreateKey(t testing.TB, u *User, body map[string]any) (string, int64) {
	t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	if body["key_name"] == nil {
		body["key_name"] = fmt.Sprintf("key-%d", c.next.Load())
	}
	key, id, err := c.Next().CreateKey(u.APIKey, body)
	if err != nil {
		t.Fatal(err)
	}
	return key, id
}

// TopUp adds credits through the next node (with an Idempotency-Key when
// idem is non-empty) and returns the new balance.
func (c *Cluster) TopUp(t testing.TB, userID, credits int64, idem string) int64 {
	t.Helper()
	b, err := c.Next().AddCredits(userID, credits, idem)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Balance reads a user's balance and reserved credits from the database
// itself, not through a node.
func (c *Cluster) Balance(t testing.TB, userID int64) (credits, reserved int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.pool.QueryRow(ctx, `SELECT credits, reserved FROM gw_accounts WHERE user_id = $1`, userID).
		Scan(&credits, &reserved); err != nil {
		t.Fatalf("reading user %d's balance: %v", userID, err)
	}
	return credits, reserved
}

// WaitSettled waits until nothing of the user is reserved and returns the
// balance; it fails the test after timeout.
func (c *Cluster) WaitSettled(t testing.TB, userID int64, timeout time.Duration) int64 {
	t.Helper()
	var credits, reserved int64
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		credits, reserved = c.Balance(t, userID)
		if reserved == 0 {
			return credits
		}
		if time.Now().After(deadline) {
			t.Fatalf("user %d: %d credits still reserved after %v (balance %d)", userID, reserved, timeout, credits)
		}
	}
}

// Query runs a query on the database for the test and scans its single
// row into dest.
func (c *Cluster) Query(t testing.TB, dest []any, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.pool.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Restart starts node i again with its configuration (same directory,
// hence the same node name) after it exited or was killed.
func (c *Cluster) Restart(t testing.TB, i int) *Gateway {
	t.Helper()
	old := c.Nodes[i]
	old.Kill()
	g, err := Start(old.cfg)
	if err != nil {
		t.Fatal(err)
	}
	watchNode(t, c, i, g)
	c.Nodes[i], c.APIs[i] = g, NewAPI(g.URL, testAdminKey)
	return g
}

// Signal sends sig (SIGKILL, SIGSTOP, SIGCONT) to node i's process.
func (c *Cluster) Signal(t testing.TB, i int, sig syscall.Signal) {
	t.Helper()
	if err := c.Nodes[i].cmd.Process.Signal(sig); err != nil {
		t.Fatalf("node %d: %v: %v", i, sig, err)
	}
}

// Stop stops every running node gracefully and checks the database's
// invariants (ledger sums, reserved equals the open holds, audit chain).
func (c *Cluster) Stop(t *testing.T) {
	t.Helper()
	for i, g := range c.Nodes {
		select {
		case <-g.Done():
			continue
		default:
		}
		if err := g.Stop(30 * time.Second); err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}
	verifyDatabase(t, c.DSN)
}
