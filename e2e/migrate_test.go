package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// TestMigrateToPostgres moves a bbolt database a gateway wrote to
// PostgreSQL with `caddy gatewayz migrate`, then serves the same users and
// keys from PostgreSQL.
func TestMigrateToPostgres(t *testing.T) {
	dsn := pgtest.DatabaseURL(t)
	up, _ := newUpstream(t, mockOptions())
	g := startGateway(t, up.URL, nil)
	api := NewAPI(g.URL, testAdminKey)
	u, err := api.Register("mover", "mover@example.com", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sdkClient(g, u.APIKey).Chat.Completions.New(t.Context(), chatParams(0)); err != nil {
		t.Fatal(err)
	}
	balance := int64(1000 - jsonCost)
	wantCredits(t, api, u.ID, balance)
	if _, err := api.AddCredits(u.ID, 100, "before-move"); err != nil {
		t.Fatal(err)
	}
	balance += 100
	if err := g.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}

	migrate := func(secret string) (string, error) {
		cmd := exec.Command(binary, "gatewayz", "migrate", "--from", g.cfg.DB, "--to", dsn, "--secret", secret)
		cmd.Env = g.Environ()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := migrate("not-the-secret-of-these-keys"); err == nil || !strings.Contains(out, "secret") {
		t.Fatalf("migrate with a wrong secret: %v\n%s", err, out)
	}
	out, err := migrate(testSecret)
	if err != nil || !strings.Contains(out, "1 users, 1 keys") || !strings.Contains(out, "verified") {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	if out, err := migrate(testSecret); err == nil || !strings.Contains(out, "already holds gateway data") {
		t.Fatalf("second migrate: %v\n%s", err, out)
	}

	pg := startOnPostgres(t, up.URL, dsn)
	papi := NewAPI(pg.URL, testAdminKey)
	wantCredits(t, papi, u.ID, balance)
	if _, err := sdkClient(pg, u.APIKey).Chat.Completions.New(t.Context(), chatParams(0)); err != nil {
		t.Fatalf("the moved key on PostgreSQL: %v", err)
	}
	balance -= jsonCost
	wantCredits(t, papi, u.ID, balance)
	// The top-up's idempotency key moved too: a replay answers the first
	// call's balance and adds nothing.
	if got, err := papi.AddCredits(u.ID, 100, "before-move"); err != nil || got != 1000-jsonCost+100 {
		t.Fatalf("replayed top-up: balance %d, %v; want the first call's %d", got, err, 1000-jsonCost+100)
	}
	wantCredits(t, papi, u.ID, balance)
	mustOK(t, "audit verification")(papi.Do("GET", "/admin/audit-logs/verify", testAdminKey, nil))
}
