package storage

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"go.etcd.io/bbolt"
)

// A schema 4 database may hold keys whose empty scope meant "everything";
// the upgrade stores the full scope for them, leaves every other scope as
// it was, keeps the keys' counters, and changes nothing when run again.
func TestMigrationFillsEmptyScopes(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gw.db")
	s := openTestStore(t, path)
	u, primary := register(t, s, "scopes@example.com", 100)
	settleN(t, s, u.ID, primary.ID, 2, 1)
	stored := map[string]Scopes{
		"null":        nil,
		"empty":       {},
		"empty lists": {PermRead: {}},
		"narrow":      {PermWrite: {ResourceAPIKeys}},
		"legacy":      {PermRead: {"USAGE"}},
	}
	ids := map[string]int64{}
	for name := range stored {
		k := &APIKey{UserID: u.ID, KeyName: name, Hash: []byte("hash " + name), EnvironmentTag: "live", IsActive: true}
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		ids[name] = k.ID
	}
	ids["primary"], stored["primary"] = primary.ID, Scopes{}
	s.Close()

	// Write the scopes as an older build would have stored them.
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for name, id := range ids {
			var k APIKey
			if err := getJSON(tx.Bucket(bKeys), id8(id), &k); err != nil {
				return err
			}
			k.Scopes = stored[name]
			if err := putJSON(tx.Bucket(bKeys), id8(id), &k); err != nil {
				return err
			}
		}
		return tx.Bucket(bMeta).Put(kSchemaVersion, u64(4))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	want := map[string]Scopes{
		"null":        FullScopes(),
		"empty":       FullScopes(),
		"primary":     FullScopes(),
		"empty lists": {PermRead: {}},
		"narrow":      {PermWrite: {ResourceAPIKeys}},
		"legacy":      {PermRead: {"USAGE"}},
	}
	for open := 0; open < 2; open++ {
		s = openTestStore(t, path)
		for name, id := range ids {
			k, err := s.GetKey(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(k.Scopes, want[name]) {
				t.Errorf("open %d: key %q has scope %v, want %v", open, name, k.Scopes, want[name])
			}
		}
		if k, err := s.GetKey(ctx, primary.ID); err != nil || k.RequestsUsed != 2 || k.LastUsedAt == nil {
			t.Fatalf("open %d: primary key's counters after the upgrade: %+v, %v", open, k, err)
		}
		s.Close()
	}
}
