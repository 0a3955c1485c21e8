package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// TestBackupRestore takes a hot backup through GET /admin/backup while
// streams and top-ups are running, checks the copy is a consistent
// database, and restores it the documented way (stop, put the file in
// place, start) on a new directory, as on a new machine: the data of the
// backup is there, later changes are not, and the keys authenticate.
func TestBackupRestore(t *testing.T) {
	for _, tc := range []struct {
		name      string
		envSecret bool // GATEWAYZ_SECRET set; else the generated <db>.secret must be restored too
	}{{"secret from env", true}, {"generated secret file", false}} {
		t.Run(tc.name, func(t *testing.T) {
			up, h := newUpstream(t, func() mock.Options {
				o := mockOptions()
				o.ChunkDelay = 20 * time.Millisecond
				return o
			}())
			g := startGateway(t, up.URL, func(c *Config) {
				if !tc.envSecret {
					c.Secret = ""
				}
			})
			api := NewAPI(g.URL, testAdminKey)
			a, err := api.Register("alice", "alice@example.com", 100_000)
			if err != nil {
				t.Fatal(err)
			}
			mustOK(t, "chat")(api.Chat(a.APIKey, false, 0))

			// Take the backup while streams and top-ups are in flight.
			var wg sync.WaitGroup
			wait := startStreams(t, g.URL, a.APIKey, 3)
			waitInFlight(t, h, 3)
			stop := make(chan struct{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 1; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := api.AddCredits(a.ID, 1, fmt.Sprintf("during-backup-%d", i)); err != nil {
						t.Error(err)
						return
					}
				}
			}()
			resp, err := api.Do("GET", "/admin/backup", testAdminKey, nil)
			close(stop)
			wg.Wait()
			checkStreams(t, "streams during backup", wait())
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != http.StatusOK {
				t.Fatalf("backup: %d %s", resp.Status, resp.Body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
				t.Errorf("backup Content-Type %q", ct)
			}
			if cd := resp.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, "attachment;") || !strings.Contains(cd, ".db") {
				t.Errorf("backup Content-Disposition %q", cd)
			}

			// The copy is a valid, consistent database on its own.
			dir := t.TempDir()
			copyPath := filepath.Join(dir, "check.db")
			if err := os.WriteFile(copyPath, resp.Body, 0o600); err != nil {
				t.Fatal(err)
			}
			st, err := storage.Open(copyPath, storage.Options{})
			if err != nil {
				t.Fatalf("opening the backup: %v", err)
			}
			ctx := context.Background()
			if err := st.VerifyLedger(ctx); err != nil {
				t.Errorf("backup ledger: %v", err)
			}
			bal, err := st.Balance(ctx, a.ID)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := st.VerifyAudit(ctx); err != nil || n == 0 {
				t.Errorf("backup audit chain: %d entries, %v", n, err)
			}
			st.Close()
			backupCredits := bal.Credits

			// Changes after the backup.
			b, err := api.Register("bob", "bob@example.com", 100)
			if err != nil {
				t.Fatal(err)
			}
			mustOK(t, "chat after backup")(api.Chat(a.APIKey, false, 0))
			if err := g.Stop(30 * time.Second); err != nil {
				t.Fatal(err)
			}

			// Restore on a new machine: a new directory holding only the
			// backup (and the generated secret file, when there is one).
			cfg := g.cfg
			cfg.Dir = t.TempDir()
			cfg.DB = filepath.Join(cfg.Dir, "restored", "gatewayz.db")
			if err := os.MkdirAll(filepath.Dir(cfg.DB), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cfg.DB, resp.Body, 0o600); err != nil {
				t.Fatal(err)
			}
			if !tc.envSecret {
				sec, err := os.ReadFile(g.cfg.DB + ".secret")
				if err != nil {
					t.Fatalf("the generated secret file: %v", err)
				}
				if err := os.WriteFile(cfg.DB+".secret", sec, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			g2, err := Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			watch(t, g2)
			api2 := NewAPI(g2.URL, testAdminKey)
			wantCredits(t, api2, a.ID, backupCredits)
			mustOK(t, "alice's key after restore")(api2.Do("GET", "/user/balance", a.APIKey, nil))
			mustOK(t, "chat after restore")(api2.Chat(a.APIKey, false, 0))
			wantCredits(t, api2, a.ID, backupCredits-jsonCost)
			if r, err := api2.Do("GET", fmt.Sprintf("/admin/users/%d", b.ID), testAdminKey, nil); err != nil || r.Status != http.StatusNotFound {
				t.Errorf("user created after the backup: %v %v", err, r)
			}
			if r, err := api2.Do("GET", "/user/balance", b.APIKey, nil); err != nil || r.Status != http.StatusUnauthorized {
				t.Errorf("key created after the backup: %v %v", err, r)
			}
			v := mustOK(t, "verify audit")(api2.Do("GET", "/admin/audit-logs/verify", testAdminKey, nil)).JSON()
			if v["valid"] != true {
				t.Errorf("audit chain after restore: %v", v)
			}
		})
	}
}
