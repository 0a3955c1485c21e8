package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/postgres"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

// fillBolt writes a bit of everything into a bbolt store.
func fillBolt(t *testing.T, s *storage.BoltStore) (kept *storage.User, keptKey *storage.APIKey) {
	t.Helper()
	ctx := context.Background()
	u, k := storetest.Register(t, s, "ann@example.com", 1000)
	gone, _ := storetest.Register(t, s, "gone@example.com", 300)
	plan := &storage.Plan{Name: "pro", DailyRequestLimit: 100, IsActive: true}
	if err := s.CreatePlan(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AssignPlan(ctx, u.ID, plan.ID, time.Now(), time.Now().Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUserLimits(ctx, u.ID, storage.RateLimits{RequestsPerMinute: 7}); err != nil {
		t.Fatal(err)
	}
	budget := int64(500)
	if err := s.SetUserBudget(ctx, u.ID, storage.Budget{Limit: &budget, Reset: storage.ResetMonthly}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateWebhook(ctx, &storage.Webhook{UserID: u.ID, URL: "https://hooks.example.com/a", Events: []string{"balance.low"}, Secret: "enc", IsActive: true}, 5); err != nil {
		t.Fatal(err)
	}
	hour := time.Now().Truncate(time.Hour) // one hourly rollup per user
	for i, who := range []*storage.User{u, u, gone} {
		r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: who.ID, Credits: 50})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Settle(ctx, r, int64(10+i), storage.UsageRecord{Model: "m", TotalTokens: int64(10 + i), RequestID: "r", Time: hour}); err != nil {
			t.Fatal(err)
		}
		// One charge entry each: settlements committed together share one.
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.AddCredits(ctx, u.ID, 500, storage.LedgerTopUp, "topup-1", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUser(ctx, gone.ID); err != nil { // its ledger and usage stay
		t.Fatal(err)
	}
	for _, action := range []string{"user.register", "key.create", "credits.add"} {
		if err := s.AppendAudit(ctx, &storage.AuditEntry{UserID: u.ID, Action: action, Time: time.Date(2026, 3, 1, 1, 2, 3, 456789123, time.UTC)}); err != nil {
			t.Fatal(err)
		}
	}
	return u, k
}

// A bbolt database with real data moves to PostgreSQL whole and verified;
// a second copy into the same database is refused; a wrong secret is
// refused and leaves the target empty, so the copy can be run again.
func TestCopyFromBolt(t *testing.T) {
	ctx := context.Background()
	src, err := storage.Open(filepath.Join(t.TempDir(), "gw.db"), storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	u, k := fillBolt(t, src)
	dsn := pgtest.DatabaseURL(t)

	wrong, err := storage.NewKeyring(bytes.Repeat([]byte("w"), 32))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.Copy(ctx, src, dsn, wrong); err == nil {
		t.Fatal("copy with the wrong secret went through")
	}
	n, err := postgres.Copy(ctx, src, dsn, storetest.Keyring)
	if err != nil {
		t.Fatalf("copy after a failed one: %v", err)
	}
	want := postgres.CopyCounts{Users: 1, Keys: 1, Plans: 1, Subscriptions: 1, Limits: 1, Accounts: 2,
		LedgerEntries: 6, UsageRecords: 3, Rollups: 4, AuditEntries: 3, Webhooks: 1}
	if n != want {
		t.Fatalf("copied %v\nwant   %v", n, want)
	}
	if _, err := postgres.Copy(ctx, src, dsn, storetest.Keyring); !errors.Is(err, postgres.ErrTargetNotEmpty) {
		t.Fatalf("second copy: %v", err)
	}

	dst := open(t, dsn, testOptions)
	if got, err := dst.KeyByHash(ctx, k.Hash); err != nil || got.ID != k.ID || got.RequestsUsed != 0 {
		t.Fatalf("copied key: %+v, %v", got, err)
	}
	srcBal, _ := src.Balance(ctx, u.ID)
	if b := storetest.MustBalance(t, dst, u.ID); b.Credits != srcBal.Credits {
		t.Fatalf("balance %d, source %d", b.Credits, srcBal.Credits)
	}
	// The idempotency key came along: the same top-up is a replay.
	if _, replayed, err := dst.AddCredits(ctx, u.ID, 500, storage.LedgerTopUp, "topup-1", ""); err != nil || !replayed {
		t.Fatalf("replayed top-up: %v %v", replayed, err)
	}
	if dr, dt, _, _, err := dst.UsageTotals(ctx, u.ID, time.Now(), time.Now()); err != nil || dr != 2 || dt != 21 {
		t.Fatalf("usage totals %d/%d, %v", dr, dt, err)
	}
	// The user's budget and what it spent came along.
	if b, sp, err := dst.UserBudget(ctx, u.ID); err != nil || b.Limit == nil || *b.Limit != 500 || b.Reset != storage.ResetMonthly || sp.Used != 21 {
		t.Fatalf("copied budget %+v, spend %+v, %v", b, sp, err)
	}
	if up, err := dst.ActiveUserPlan(ctx, u.ID); err != nil || !up.ActiveAt(time.Now()) {
		t.Fatalf("subscription %+v, %v", up, err)
	}
	if hooks, err := dst.ListWebhooks(ctx, u.ID); err != nil || len(hooks) != 1 || hooks[0].Secret != "enc" || hooks[0].URL != "https://hooks.example.com/a" {
		t.Fatalf("copied webhooks %+v, %v", hooks, err)
	}
	// New rows get ids after the copied ones; the chain goes on.
	u2, _ := storetest.Register(t, dst, "new@example.com", 1)
	if u2.ID <= u.ID+1 {
		t.Fatalf("new user id %d reuses a copied one", u2.ID)
	}
	if err := dst.AppendAudit(ctx, &storage.AuditEntry{Action: "after.copy"}); err != nil {
		t.Fatal(err)
	}
	if n, err := dst.VerifyAudit(ctx); err != nil || n != 4 {
		t.Fatalf("VerifyAudit = %d, %v", n, err)
	}
	if err := dst.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := src.ListUsage(ctx, storage.UsageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	storetest.CheckRollups(t, dst, "copied", storetest.RollupsOfAll(recs))
}
