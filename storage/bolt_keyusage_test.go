package storage

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func TestKeyUsageRecordRoundTrip(t *testing.T) {
	last := time.Date(2026, 5, 1, 8, 30, 15, 123456789, time.UTC)
	early := time.Date(1901, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, c := range []struct {
		used int64
		last *time.Time
	}{{0, nil}, {1, &last}, {1 << 40, &early}, {-3, nil}} {
		v := appendKeyUsage(nil, c.used, c.last)
		used, got, err := decodeKeyUsage(v)
		if err != nil || used != c.used || (got == nil) != (c.last == nil) || (got != nil && !got.Equal(*c.last)) {
			t.Fatalf("round trip of %d %v: %d %v %v", c.used, c.last, used, got, err)
		}
		if got != nil && got.Location() != time.UTC {
			t.Fatalf("decoded time not in UTC: %v", got)
		}
	}
	for _, n := range []int{0, 7, 9, 19, 21} {
		if _, _, err := decodeKeyUsage(make([]byte, n)); err == nil {
			t.Fatalf("%d-byte record decoded", n)
		}
	}
}

// A schema 2 database keeps a key's counters in its JSON; the upgrade moves
// them into the key usage record (the JSON keeps no copy), they read the
// same, and later settlements count on from them.
func TestMigrationKeepsKeyCounters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s := openTestStore(t, path)
	u, k := register(t, s, "ku@example.com", 1000)
	s.Close()
	lastUsed := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		var ak APIKey
		if err := getJSON(tx.Bucket(bKeys), id8(k.ID), &ak); err != nil {
			return err
		}
		ak.RequestsUsed, ak.LastUsedAt = 41, &lastUsed
		if err := putJSON(tx.Bucket(bKeys), id8(k.ID), &ak); err != nil {
			return err
		}
		if err := tx.DeleteBucket(bKeyUsage); err != nil {
			return err
		}
		return tx.Bucket(bMeta).Put(kSchemaVersion, u64(2))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = openTestStore(t, path)
	got, err := s.GetKey(ctx, k.ID)
	if err != nil || got.RequestsUsed != 41 || got.LastUsedAt == nil || !got.LastUsedAt.Equal(lastUsed) {
		t.Fatalf("after upgrade: %+v, %v", got, err)
	}
	if err := s.db.View(func(tx *bbolt.Tx) error {
		var raw APIKey
		if err := getJSON(tx.Bucket(bKeys), id8(k.ID), &raw); err != nil {
			return err
		}
		if raw.RequestsUsed != 0 || raw.LastUsedAt != nil {
			t.Errorf("the key's JSON still holds counters after the upgrade: %d, %v", raw.RequestsUsed, raw.LastUsedAt)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reserve(ctx, ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 1, MaxRequests: 41}); err != ErrRequestLimit {
		t.Fatalf("limit from the JSON counter not applied: %v", err)
	}
	settleN(t, s, u.ID, k.ID, 3, 1)
	s.Close()

	s = openTestStore(t, path)
	defer s.Close()
	for _, read := range []func() (*APIKey, error){
		func() (*APIKey, error) { return s.GetKey(ctx, k.ID) },
		func() (*APIKey, error) { return s.KeyByHash(ctx, k.Hash) },
		func() (*APIKey, error) { ks, err := s.ListKeys(ctx, u.ID); return ks[0], err },
		func() (*APIKey, error) { ks, err := s.AllKeys(ctx); return ks[0], err },
	} {
		got, err := read()
		if err != nil || got.RequestsUsed != 44 || got.LastUsedAt == nil || !got.LastUsedAt.After(lastUsed) {
			t.Fatalf("after settling: %+v, %v", got, err)
		}
	}
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
}

// Updating or deleting a key keeps its counters record in step.
func TestKeyUsageFollowsKeyWrites(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, filepath.Join(t.TempDir(), "gw.db"))
	defer s.Close()
	u, k := register(t, s, "kw@example.com", 1000)
	settleN(t, s, u.ID, k.ID, 2, 1)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// A rename carries the counters through; the key's JSON is not their
	// source any more, whatever it holds.
	got, err := s.UpdateKey(ctx, k.ID, func(x *APIKey) error { x.KeyName = "renamed"; return nil })
	if err != nil || got.RequestsUsed != 2 || got.LastUsedAt == nil {
		t.Fatalf("UpdateKey: %+v, %v", got, err)
	}
	var raw []byte
	s.view(func(tx *bbolt.Tx) error {
		raw = append(raw, tx.Bucket(bKeyUsage).Get(id8(k.ID))...)
		return nil
	})
	if used, last, err := decodeKeyUsage(raw); err != nil || used != 2 || last == nil {
		t.Fatalf("stored counters %d %v %v", used, last, err)
	}
	var js map[string]json.RawMessage
	s.view(func(tx *bbolt.Tx) error { return json.Unmarshal(tx.Bucket(bKeys).Get(id8(k.ID)), &js) })
	if string(js["key_name"]) != `"renamed"` {
		t.Fatalf("key JSON %v", js)
	}
	if err := s.DeleteKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	s.view(func(tx *bbolt.Tx) error {
		if tx.Bucket(bKeyUsage).Get(id8(k.ID)) != nil {
			t.Error("counters of a deleted key kept")
		}
		return nil
	})
	// A settlement queued for the deleted key writes no counters record.
	settleN(t, s, u.ID, k.ID, 1, 1)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	s.view(func(tx *bbolt.Tx) error {
		if n := tx.Bucket(bKeyUsage).Stats().KeyN; n != 0 {
			t.Errorf("%d counters records left", n)
		}
		return nil
	})
}
