package storage_test

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/storetest"
)

func gunzip(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// A database written by the build of schema 5 (JSON records and ledger
// entries, no rollups; see testdata/gen-schema5) upgrades to the current schema:
// its records and ledger read as that build listed them, the rollups are
// their sums, new settlements are counted beside them, and once every
// record is pruned the reports from the rollups are unchanged and the
// grouped ledger still adds up to the balance.
func TestUpgradeFromSchema5(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	if err := os.WriteFile(path, gunzip(t, "testdata/schema5.db.gz"), 0o600); err != nil {
		t.Fatal(err)
	}
	var old struct {
		Usage   []storage.UsageRecord `json:"usage"`
		Ledger1 []storage.LedgerEntry `json:"ledger_1"`
		Ledger2 []storage.LedgerEntry `json:"ledger_2"`
	}
	if err := json.Unmarshal(gunzip(t, "testdata/schema5.json.gz"), &old); err != nil {
		t.Fatal(err)
	}
	s, err := storage.Open(path, storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	recs, err := s.ListUsage(ctx, storage.UsageFilter{})
	if err != nil || len(recs) != 60 || !reflect.DeepEqual(recs, old.Usage) {
		t.Fatalf("records after the upgrade (%v) differ from the old build's listing", err)
	}
	for uid, want := range map[int64][]storage.LedgerEntry{1: old.Ledger1, 2: old.Ledger2} {
		for i := range want {
			if want[i].Kind == storage.LedgerCharge {
				want[i].Requests = 1 // the old build wrote one charge entry per request
			}
		}
		got, err := s.Ledger(ctx, uid)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("user %d ledger after the upgrade: %v\n got %+v\nwant %+v", uid, err, got, want)
		}
	}
	storetest.CheckRollups(t, s, "built by the upgrade", storetest.RollupsOfAll(recs))

	// A settlement after the upgrade is counted with the old ones.
	r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: 1, KeyID: 1, Credits: 100})
	if err != nil {
		t.Fatal(err)
	}
	rec := storage.UsageRecord{Model: "gpt-4o-mini", PromptTokens: 7, CompletionTokens: 5, TotalTokens: 12, Status: 200,
		RequestID: "0f0e0d0c-0b0a-4908-8706-050403020100", Endpoint: "/v1/chat/completions", Time: old.Usage[0].Time}
	charged, _, err := s.Settle(ctx, r, 12, rec)
	if err != nil {
		t.Fatal(err)
	}
	rec.UserID, rec.KeyID, rec.Credits = 1, 1, charged
	recs = append([]storage.UsageRecord{rec}, recs...)
	got, err := s.ListUsage(ctx, storage.UsageFilter{Limit: 1})
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], rec) {
		t.Fatalf("new record read back as %+v, %v; want %+v", got, err, rec)
	}
	reports := storetest.RollupsOfAll(recs)
	storetest.CheckRollups(t, s, "with a new settlement", reports)
	balances := map[int64]int64{}
	for _, uid := range []int64{1, 2} {
		b, err := s.Balance(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		balances[uid] = b.Credits
	}

	// Every record pruned: the reports read the same from the rollups, and
	// the ledger, grouped, still adds up.
	if n, err := s.PruneUsage(ctx, time.Now().Add(time.Hour), time.Time{}); err != nil || n != 61 {
		t.Fatalf("PruneUsage = %d, %v", n, err)
	}
	storetest.CheckRollups(t, s, "after pruning every record", reports)
	for uid, bal := range balances {
		l, err := s.Ledger(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, e := range l {
			sum += e.Amount
		}
		if sum != bal || len(l) > 4 {
			t.Fatalf("user %d: %d ledger entries adding up to %d, balance %d", uid, len(l), sum, bal)
		}
	}
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

// A crash image of schema 5 whose last settlements are only in its
// write-ahead log (JSON records, one charge entry each; see
// testdata/gen-schema5) upgrades, then replays the log: nothing settled is
// lost, the rollups count the replayed settlements, and the ledger adds up.
func TestUpgradeReplaysSchema5Log(t *testing.T) {
	s := openCrashImage(t, "testdata/schema5-crash.db")
	defer s.Close()
	checkReplayedCrash(t, s)
}

// A crash image of schema 7 whose last settlements are only in its log,
// logged with their spend windows (JSON records; see testdata/gen-schema7),
// upgrades and replays as well, and the replayed settlements count in the
// key's and the user's budget windows.
func TestUpgradeReplaysSchema7Log(t *testing.T) {
	ctx := context.Background()
	s := openCrashImage(t, "testdata/schema7-crash.db")
	defer s.Close()
	checkReplayedCrash(t, s)
	_, us, err := s.UserBudget(ctx, 1)
	if err != nil || us.Used != 306 {
		t.Fatalf("user spend after the replay: %+v, %v; want 306 used", us, err)
	}
	k, err := s.GetKey(ctx, 1)
	if err != nil || k.Spend.Used != 306 {
		t.Fatalf("key spend after the replay: %+v, %v; want 306 used", k, err)
	}
}

// openCrashImage opens a copy of the gzipped database at path and of its
// gzipped log.
func openCrashImage(t *testing.T, path string) *storage.BoltStore {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "gw.db")
	if err := os.WriteFile(dst, gunzip(t, path+".gz"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".wal", gunzip(t, path+".wal.gz"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := storage.Open(dst, storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkReplayedCrash checks a crash image of the generators after its
// replay: user 1 was granted 1000 and topped up 50 and 5, and made 17
// settlements of 10+i credits.
func checkReplayedCrash(t *testing.T, s *storage.BoltStore) {
	t.Helper()
	ctx := context.Background()
	if b := storetest.MustBalance(t, s, 1); b.Credits != 1055-306 {
		t.Fatalf("balance %d after the replay, want %d", b.Credits, 1055-306)
	}
	recs, err := s.ListUsage(ctx, storage.UsageFilter{})
	if err != nil || len(recs) != 17 {
		t.Fatalf("%d records after the replay, %v", len(recs), err)
	}
	storetest.CheckRollups(t, s, "after the replay", storetest.RollupsOfAll(recs))
	var charged int64
	l, err := s.Ledger(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range l {
		if e.Kind == storage.LedgerCharge {
			charged += e.Requests
		}
	}
	if charged != 17 {
		t.Fatalf("charge entries cover %d requests, want 17", charged)
	}
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
}
