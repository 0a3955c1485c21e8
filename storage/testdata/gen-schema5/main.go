// Command gen-schema5 wrote testdata/schema5.db.gz and schema5.json.gz:
// a database of schema 5 (the build before usage rollups, commit 47dcbea)
// with usage records and ledger entries, and the JSON of what that build
// listed from it. It must be run with that build of the storage package
// (a module replace to a checkout of it); upgrade_test.go opens the
// database with the current one. gzip both files it writes.
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
		plain, err := kr.Generate("live")
		check(err)
		enc, err := kr.Encrypt(plain)
		check(err)
		k := &storage.APIKey{KeyName: "primary", Hash: kr.Hash(plain), Encrypted: enc, Prefix: storage.KeyDisplayPrefix(plain),
			EnvironmentTag: "live", Scopes: storage.FullScopes(), IsActive: true, IsPrimary: true}
		u := &storage.User{Username: fmt.Sprintf("old%d", i), Email: fmt.Sprintf("old%d@example.com", i), AuthMethod: "email", IsActive: true, SubscriptionStatus: "trial"}
		check(s.Register(ctx, u, k, 100_000))
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
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}
