// Command gen-schema7 wrote testdata/schema7-crash.db.gz with its
// write-ahead log schema7-crash.db.wal.gz: a crash image of schema 7 (the
// build with spend budgets and alerts, before usage rollups, commit
// 54ba549) whose last settlements are only in the log, as settlements with
// their spend windows (JSON records). It must be run with that build of the
// storage package (run it in a checkout of that commit); upgrade_test.go
// opens the database with the current one. gzip the files it writes.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func main() {
	ctx := context.Background()
	dir := os.Args[1]
	live := dir + "/live.db"
	s, err := storage.Open(live, storage.Options{NoSync: true, InitialMmapSize: 1, CheckpointInterval: time.Hour})
	check(err)
	kr, err := storage.NewKeyring(bytes.Repeat([]byte("k"), 32))
	check(err)
	keyLimit, userLimit := int64(900), int64(800)
	plain, err := kr.Generate("live")
	check(err)
	enc, err := kr.Encrypt(plain)
	check(err)
	k := &storage.APIKey{KeyName: "primary", Hash: kr.Hash(plain), Encrypted: enc, Prefix: storage.KeyDisplayPrefix(plain),
		EnvironmentTag: "live", Scopes: storage.FullScopes(), IsActive: true, IsPrimary: true,
		Budget: storage.Budget{Limit: &keyLimit, Reset: storage.ResetNever}}
	u := &storage.User{Username: "crash", Email: "crash@example.com", AuthMethod: "email", IsActive: true, SubscriptionStatus: "trial"}
	check(s.Register(ctx, u, k, 1000))
	ub := storage.Budget{Limit: &userLimit, Reset: storage.ResetNever}
	check(s.SetUserBudget(ctx, u.ID, ub))
	now := time.Now()
	settle := func(i int) {
		r, err := s.Reserve(ctx, storage.ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 100,
			KeyBudget: k.Budget.Window(now), UserBudget: ub.Window(now)})
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
		check(os.WriteFile(dir+"/schema7-crash.db"+ext, data, 0o600))
	}
	check(s.Close())
	check(os.Remove(live))
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}
