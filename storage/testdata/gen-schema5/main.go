// Command gen-schema5 wrote testdata/schema5.db.gz and schema5.json.gz:
// a database of schema 5 (the build before usage rollups, commit 47dcbea)
// with usage records and ledger entries, and the JSON of what that build
// listed from it; and schema5-crash.db.gz with its write-ahead log
// schema5-crash.db.wal.gz, a crash image whose last settlements are only in
// the log. It must be run with that build of the storage package (a module
// replace to a checkout of it); upgrade_test.go opens the databases with
// the current one. gzip the files it writes.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func main() {
	ctx := context.Background()
	dir := os.Args[1]
	s, err := storage.Open(dir+"/schema5.db", storage.Options{NoSync: true, InitialMmapSize: 1})
	check(err)
	kr, err := storage.NewKeyring(bytes.Repeat([]byte("k"), 32))
	check(err)
	var users []*storage.User
	var keys []*storage.APIKey
	for i := 0; i < 2; i++ {
		u, k := register(s, kr, fmt.Sprintf("old%d", i), 100_000)
		users, keys = append(users, u), append(keys, k)
	}
	base := time.Date(2026, 11, 28, 21, 0, 0, 0, time.UTC)
	models := []string{"gpt-4o-mini", "claude-sonnet-4-5", "gpt-4o"}
	for i := 0; i < 60; i++ {
		u := i % 2
		r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: users[u].ID, KeyID: keys[u].ID, Credits: 1000})
		check(err)
		rec := storage.UsageRecord{Model: models[i%3], PromptTokens: int64(10 * i), CompletionTokens: int64(3 * i), TotalTokens: int64(13 * i),
			CachedTokens: int64(i % 4), CacheWriteTokens: int64(i % 3), RequestID: fmt.Sprintf("%08x-aaaa-4bbb-8ccc-%012x", i, i),
			Time: base.Add(time.Duration(i) * 71 * time.Minute), Status: 200, Estimated: i%5 == 0, Endpoint: "/v1/chat/completions"}
		if i%7 == 0 {
			rec.Status = 502
		}
		_, _, err = s.Settle(ctx, r, int64(13*i%50), rec)
		check(err)
		if i == 30 {
			_, _, err := s.AddCredits(ctx, users[0].ID, 500, storage.LedgerTopUp, "old-topup", "before the upgrade")
			check(err)
		}
	}
	recs, err := s.ListUsage(ctx, storage.UsageFilter{})
	check(err)
	out := map[string]any{"usage": recs}
	for _, u := range users {
		l, err := s.Ledger(ctx, u.ID)
		check(err)
		out[fmt.Sprintf("ledger_%d", u.ID)] = l
	}
	check(s.Close())
	data, err := json.MarshalIndent(out, "", " ")
	check(err)
	check(os.WriteFile(dir+"/schema5.json", data, 0o644))
	crashImage(dir, kr)
}

// crashImage writes dir/schema5-crash.db and its .wal: a database whose
// last settlements are only in the write-ahead log, as a crash leaves it.
func crashImage(dir string, kr *storage.Keyring) {
	ctx := context.Background()
	live := dir + "/live.db"
	s, err := storage.Open(live, storage.Options{NoSync: true, InitialMmapSize: 1, CheckpointInterval: time.Hour})
	check(err)
	u, k := register(s, kr, "crash", 1000)
	settle := func(i int) {
		r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 100})
		check(err)
		_, _, err = s.Settle(ctx, r, int64(10+i), storage.UsageRecord{Model: "gpt-4o-mini", PromptTokens: int64(10 + i), TotalTokens: int64(10 + i),
			RequestID: fmt.Sprintf("%08x-aaaa-4bbb-8ccc-000000000000", i), Status: 200, Endpoint: "/v1/chat/completions"})
		check(err)
	}
	for i := range 3 {
		settle(i)
	}
	_, _, err = s.AddCredits(ctx, u.ID, 50, storage.LedgerTopUp, "crash-topup", "") // applies the log
	check(err)
	for i := 3; i < 10; i++ {
		settle(i)
	}
	_, _, err = s.AddCredits(ctx, u.ID, 5, storage.LedgerTopUp, "", "") // applied with the log
	check(err)
	for i := 10; i < 17; i++ {
		settle(i)
	}
	time.Sleep(500 * time.Millisecond) // logged, not applied (checkpoint in an hour)
	for _, ext := range []string{"", ".wal"} {
		data, err := os.ReadFile(live + ext)
		check(err)
		check(os.WriteFile(dir+"/schema5-crash.db"+ext, data, 0o600))
	}
	check(s.Close())
}

// register makes a user named name with a primary key and credits.
func register(s *storage.BoltStore, kr *storage.Keyring, name string, credits int64) (*storage.User, *storage.APIKey) {
	plain, err := kr.Generate("live")
	check(err)
	enc, err := kr.Encrypt(plain)
	check(err)
	k := &storage.APIKey{KeyName: "primary", Hash: kr.Hash(plain), Encrypted: enc, Prefix: storage.KeyDisplayPrefix(plain),
		EnvironmentTag: "live", Scopes: storage.FullScopes(), IsActive: true, IsPrimary: true}
	u := &storage.User{Username: name, Email: name + "@example.com", AuthMethod: "email", IsActive: true, SubscriptionStatus: "trial"}
	check(s.Register(context.Background(), u, k, credits))
	return u, k
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}
