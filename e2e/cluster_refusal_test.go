package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestClusterSettlementRefusedForNow: a settlement the database refuses for
// the moment, answering rather than going away (here a full disk, injected:
// every ledger write fails while a flag is set), is not lost with its
// charge. The request is served; its credits stay held while the
// settlement is kept; once the database can write again the node applies
// it by itself, once: the user is charged and every invariant holds. The
// management API answers such a failure with a 503, never a 500.
func TestClusterSettlementRefusedForNow(t *testing.T) {
	c := startCluster(t, ClusterOptions{Nodes: 1, Storage: []string{"lease 1500ms"}})
	u := c.Register(t, "refused", 1000)
	start, _ := c.Balance(t, u.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, q := range []string{
		`CREATE TABLE test_fault (failing boolean NOT NULL)`,
		`INSERT INTO test_fault VALUES (true)`,
		`CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF (SELECT failing FROM test_fault) THEN
				RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100';
			END IF;
			RETURN NULL;
		END $$`,
		`CREATE TRIGGER test_fault BEFORE INSERT ON gw_ledger FOR EACH STATEMENT EXECUTE FUNCTION test_fault()`,
	} {
		if _, err := c.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	resp, err := c.Chat(u.APIKey, false, 16)
	if err != nil || resp.Status != http.StatusOK {
		t.Fatalf("completion while the ledger cannot be written: %v %v", err, resp)
	}
	// A top-up writes the ledger too: refused for now, 503 {"detail"}.
	top, err := c.APIs[0].Do("POST", "/admin/add_credits", testAdminKey, map[string]any{"user_id": u.ID, "credits": 5})
	if err != nil || top.Status != http.StatusServiceUnavailable || top.JSON()["detail"] == nil {
		t.Errorf("a top-up while the ledger cannot be written: %v %v", err, top)
	}
	// Kept through a few retries (the node retries every third of the
	// lease), the credits still held.
	time.Sleep(2 * time.Second)
	if credits, reserved := c.Balance(t, u.ID); credits != start || reserved == 0 {
		t.Fatalf("while the settlement cannot be written: %d credits, %d reserved; want %d and a hold", credits, reserved, start)
	}
	if _, err := c.pool.Exec(ctx, `UPDATE test_fault SET failing = false`); err != nil {
		t.Fatal(err)
	}
	after := c.WaitSettled(t, u.ID, 15*time.Second)
	if after >= start {
		t.Fatalf("balance %d after the settlement was applied, want less than %d: the served request was not charged", after, start)
	}
	var entries, charged int64
	c.Query(t, []any{&entries, &charged}, `SELECT count(*), coalesce(-sum(amount), 0) FROM gw_ledger WHERE user_id = $1 AND kind = 'charge'`, u.ID)
	if entries != 1 || start-charged != after {
		t.Fatalf("ledger: %d charge entries charging %d, balance %d from %d; want one entry, charged once", entries, charged, after, start)
	}
	c.Stop(t)
	verifyDatabase(t, c.DSN)
}
