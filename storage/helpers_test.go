package storage

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// The package's own tests cannot import storetest (it imports this
// package), so they keep these few helpers of theirs.

var testKeyring = func() *Keyring {
	kr, err := NewKeyring(bytes.Repeat([]byte("k"), 32))
	if err != nil {
		panic(err)
	}
	return kr
}()

// newKey returns a key record for a fresh random key, and the key itself.
func newKey(t testing.TB, name string) (*APIKey, string) {
	t.Helper()
	plain, err := testKeyring.Generate("live")
	if err != nil {
		t.Fatal(err)
	}
	enc, err := testKeyring.Encrypt(plain)
	if err != nil {
		t.Fatal(err)
	}
	return &APIKey{
		KeyName: name, Hash: testKeyring.Hash(plain), Encrypted: enc,
		Prefix: KeyDisplayPrefix(plain), EnvironmentTag: "live", Scopes: FullScopes(), IsActive: true,
	}, plain
}

// register creates a user with a primary key and credits.
func register(t testing.TB, s Store, email string, credits int64) (*User, *APIKey) {
	t.Helper()
	u := &User{Username: strings.Split(email, "@")[0], Email: email, AuthMethod: "email", IsActive: true, SubscriptionStatus: "trial"}
	k, _ := newKey(t, "primary")
	k.IsPrimary = true
	if err := s.Register(context.Background(), u, k, credits); err != nil {
		t.Fatalf("Register(%s): %v", email, err)
	}
	return u, k
}

func mustBalance(t testing.TB, s Store, uid int64) Balance {
	t.Helper()
	b, err := s.Balance(context.Background(), uid)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
