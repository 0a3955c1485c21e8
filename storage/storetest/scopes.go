package storetest

import (
	"context"
	"reflect"
	"testing"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// confScopes: a store hands back every key's scope as it was given, on
// every read path and after an update. In particular an empty scope stays
// empty (it grants nothing) and is never stored as, or read back as, the
// full scope, nor the other way round.
func confScopes(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, _ := Register(t, s, "scopes@example.com", 10)
	scopes := map[string]storage.Scopes{
		"empty":       {},
		"empty lists": {storage.PermRead: {}},
		"narrow":      {storage.PermWrite: {storage.ResourceAPIKeys}},
		"several":     {storage.PermRead: {storage.ResourceProfile, storage.ResourceUsage}, storage.PermWrite: {storage.ResourceChat}},
		"full":        storage.FullScopes(),
	}
	grants := func(sc storage.Scopes) []bool {
		var out []bool
		for _, perm := range storage.ScopePermissions {
			for _, r := range append([]string{"*"}, storage.ScopeResources...) {
				out = append(out, sc.Allows(perm, r))
			}
		}
		return out
	}
	check := func(what string, got *storage.APIKey, err error, want storage.Scopes) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !reflect.DeepEqual(grants(got.Scopes), grants(want)) {
			t.Errorf("%s: scope %v read back, %v stored", what, got.Scopes, want)
		}
	}
	ids := map[string]int64{}
	for name, sc := range scopes {
		k, _ := NewKey(t, name)
		k.UserID, k.Scopes = u.ID, sc
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		ids[name] = k.ID
		got, err := s.GetKey(ctx, k.ID)
		check("GetKey "+name, got, err, sc)
		got, err = s.KeyByHash(ctx, k.Hash)
		check("KeyByHash "+name, got, err, sc)
	}
	keys, err := s.ListKeys(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if sc, ok := scopes[k.KeyName]; ok {
			check("ListKeys "+k.KeyName, k, nil, sc)
		}
	}
	// Swap the widest and the narrowest.
	for name, next := range map[string]storage.Scopes{"full": {}, "empty": storage.FullScopes()} {
		got, err := s.UpdateKey(ctx, ids[name], func(k *storage.APIKey) error { k.Scopes = next; return nil })
		check("UpdateKey "+name, got, err, next)
		got, err = s.GetKey(ctx, ids[name])
		check("GetKey after UpdateKey "+name, got, err, next)
	}
}
