package storage

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const secret43 = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcd" + "e"

func TestParseKey(t *testing.T) {
	if len(secret43) != 43 {
		t.Fatalf("fixture length %d", len(secret43))
	}
	tests := []struct {
		in      string
		env     string
		ok      bool
		comment string
	}{
		{"gw_live_" + secret43, "live", true, ""},
		{"gw_test_" + secret43, "test", true, ""},
		{"gw_staging_" + secret43, "staging", true, ""},
		{"gw_dev_" + secret43, "development", true, ""},
		{"gw_development_" + secret43, "", false, "long env name is not a prefix"},
		{"gw_prod_" + secret43, "", false, "unknown env"},
		{"gw_live_" + secret43[:42], "", false, "42 chars"},
		{"gw_live_" + secret43 + "x", "", false, "44 chars"},
		{"gw_live_", "", false, "no secret"},
		{"", "", false, "empty"},
		{"gw_", "", false, "prefix only"},
		{"gw_live" + secret43, "", false, "missing underscore"},
		{"GW_live_" + secret43, "", false, "upper-case prefix"},
		{"gw_LIVE_" + secret43, "", false, "upper-case env"},
		{"sk_live_" + secret43, "", false, "wrong prefix"},
		{"xgw_live_" + secret43[:42], "", false, "leading char"},
		{"gw_live_" + secret43[:42] + "=", "", false, "padding"},
		{"gw_live_" + secret43[:42] + "+", "", false, "std base64 char"},
		{"gw_live_" + secret43[:42] + "/", "", false, "slash"},
		{"gw_live_" + secret43[:42] + " ", "", false, "space"},
		{"gw_live_" + secret43[:41] + "é", "", false, "non-ASCII (2 bytes)"},
		{" gw_live_" + secret43, "", false, "leading space"},
		{"gw_live_" + strings.Repeat("_", 43), "live", true, "all underscores is well-formed"},
	}
	for _, tc := range tests {
		env, ok := ParseKey(tc.in)
		if env != tc.env || ok != tc.ok {
			t.Errorf("ParseKey(%q) [%s] = %q, %v; want %q, %v", tc.in, tc.comment, env, ok, tc.env, tc.ok)
		}
	}
}

func TestParseKeyDoesNotAllocate(t *testing.T) {
	k := "gw_staging_" + secret43
	if n := testing.AllocsPerRun(100, func() { ParseKey(k) }); n != 0 {
		t.Fatalf("ParseKey allocates %v times", n)
	}
}

func TestEnvPrefixAndGenerate(t *testing.T) {
	kr, err := NewKeyring(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, tag := range []string{"live", "test", "staging", "development"} {
		prefix, ok := EnvPrefix(tag)
		if !ok || !strings.HasPrefix(prefix, "gw_") {
			t.Fatalf("EnvPrefix(%s) = %q %v", tag, prefix, ok)
		}
		for i := 0; i < 20; i++ {
			k, err := kr.Generate(tag)
			if err != nil {
				t.Fatal(err)
			}
			if env, ok := ParseKey(k); !ok || env != tag || !strings.HasPrefix(k, prefix) {
				t.Fatalf("generated %q parses as %q %v", k, env, ok)
			}
			if seen[k] {
				t.Fatalf("duplicate key %q", k)
			}
			seen[k] = true
		}
	}
	if _, ok := EnvPrefix("prod"); ok {
		t.Fatal("EnvPrefix(prod) ok")
	}
	if _, err := kr.Generate("prod"); err == nil {
		t.Fatal("Generate(prod) succeeded")
	}
}

func TestMaskKey(t *testing.T) {
	tests := map[string]string{
		"gw_live_" + secret43:    "gw_live_AbCd…",
		"gw_dev_" + secret43:     "gw_dev_AbCd…",
		"gw_staging_" + secret43: "gw_staging_AbCd…",
		"gw_live_short":          "…",
		"":                       "…",
		"sk-" + secret43:         "…",
	}
	for in, want := range tests {
		if got := MaskKey(in); got != want {
			t.Errorf("MaskKey(%q) = %q, want %q", in, got, want)
		}
	}
	if got := KeyDisplayPrefix("gw_test_" + secret43); got != "gw_test_AbCd" {
		t.Errorf("KeyDisplayPrefix = %q", got)
	}
}

func TestRedactKeys(t *testing.T) {
	k := "gw_live_" + secret43
	tests := map[string]string{
		"no key here":                "no key here",
		"key " + k + " used":         "key gw_live_AbCd… used",
		k + "," + k:                  "gw_live_AbCd…,gw_live_AbCd…",
		"gw_ gw_live_short gw_dev_x": "gw_ gw_live_short gw_dev_x",
	}
	for in, want := range tests {
		if got := RedactKeys(in); got != want {
			t.Errorf("RedactKeys(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKeyringHashAndEncryption(t *testing.T) {
	if _, err := NewKeyring(make([]byte, 31)); err == nil {
		t.Fatal("short secret accepted")
	}
	kr1, _ := NewKeyring(bytes.Repeat([]byte{1}, 32))
	kr2, _ := NewKeyring(bytes.Repeat([]byte{2}, 32))
	key, _ := kr1.Generate("live")
	h := kr1.Hash(key)
	if len(h) != 32 || !kr1.Equal(h, kr1.Hash(key)) {
		t.Fatal("hash not deterministic")
	}
	if kr1.Equal(h, kr2.Hash(key)) {
		t.Fatal("hash does not depend on the secret")
	}
	other, _ := kr1.Generate("live")
	if kr1.Equal(h, kr1.Hash(other)) {
		t.Fatal("different keys hash equal")
	}
	// Concurrent hashing through the pool stays correct.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				if !bytes.Equal(kr1.Hash(key), h) {
					t.Error("pooled hash differs")
					return
				}
			}
		}()
	}
	wg.Wait()

	tok1, err := kr1.Encrypt(key)
	if err != nil {
		t.Fatal(err)
	}
	tok2, _ := kr1.Encrypt(key)
	if tok1 == tok2 {
		t.Fatal("fernet tokens are not randomized")
	}
	if strings.Contains(tok1, key[8:]) {
		t.Fatal("token contains the key")
	}
	if got, err := kr1.Decrypt(tok1); err != nil || got != key {
		t.Fatalf("Decrypt = %q, %v", got, err)
	}
	if got, err := kr2.Decrypt(tok1); err == nil || got != "" {
		t.Fatalf("Decrypt with another secret = %q, %v", got, err)
	} else if strings.Contains(err.Error(), tok1) || strings.Contains(err.Error(), key) {
		t.Fatalf("error leaks token or key: %v", err)
	}
	if _, err := kr1.Decrypt("garbage"); err == nil {
		t.Fatal("garbage decrypts")
	}
	// The hashing and encryption keys are independent of each other.
	if bytes.Equal(kr1.hashKey, kr1.fernet[:]) {
		t.Fatal("hash and encryption keys equal")
	}
}

func TestLoadOrCreateSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dir", "secret")
	s1, err := LoadOrCreateSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(s1) != 32 {
		t.Fatalf("secret length %d", len(s1))
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v", st.Mode().Perm())
	}
	s2, err := LoadOrCreateSecret(path)
	if err != nil || !bytes.Equal(s1, s2) {
		t.Fatalf("second load differs: %v", err)
	}
	// Concurrent starters agree on one secret.
	path2 := filepath.Join(t.TempDir(), "secret")
	var wg sync.WaitGroup
	got := make([][]byte, 8)
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := LoadOrCreateSecret(path2)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		}(i)
	}
	wg.Wait()
	for i := range got {
		if !bytes.Equal(got[i], got[0]) {
			t.Fatal("concurrent starters got different secrets")
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(path2))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
	// A corrupt file is an error, not silently replaced.
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("not base64!"), 0o600)
	if _, err := LoadOrCreateSecret(bad); err == nil {
		t.Fatal("corrupt secret file accepted")
	}
	if _, err := NewKeyring(s1); err != nil {
		t.Fatal(err)
	}
}

func TestSecretFromString(t *testing.T) {
	if SecretFromString("short") != nil {
		t.Fatal("short secret accepted")
	}
	a := SecretFromString("a-long-enough-secret")
	if len(a) != 32 || !bytes.Equal(a, SecretFromString("a-long-enough-secret")) {
		t.Fatal("not a deterministic 32-byte secret")
	}
	if bytes.Equal(a, SecretFromString("a-long-enough-secreT")) {
		t.Fatal("different strings give the same secret")
	}
	if _, err := NewKeyring(a); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"gw_live_" + secret43, "gw_dev_" + secret43, "gw_staging_x", "gw_test_", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		env, ok := ParseKey(s)
		if !ok {
			if env != "" {
				t.Fatalf("env %q without ok", env)
			}
			return
		}
		prefix, pok := EnvPrefix(env)
		if !pok || !strings.HasPrefix(s, prefix) || len(s) != len(prefix)+43 {
			t.Fatalf("accepted %q with env %q", s, env)
		}
		for i := len(prefix); i < len(s); i++ {
			if !isKeyChar(s[i]) {
				t.Fatalf("accepted %q with bad char at %d", s, i)
			}
		}
		if m := MaskKey(s); m != s[:len(prefix)+4]+"…" {
			t.Fatalf("MaskKey(%q) = %q", s, m)
		}
		if r := RedactKeys("x " + s + " y"); strings.Contains(r, s[len(prefix)+4:]) {
			t.Fatalf("RedactKeys leaks %q", r)
		}
	})
}

func TestHashToMatchesHash(t *testing.T) {
	for _, key := range []string{"", "gw_live_abc", strings.Repeat("x", 2000)} {
		var dst [32]byte
		if got := testKeyring.HashTo(&dst, key); !bytes.Equal(got, testKeyring.Hash(key)) || &got[0] != &dst[0] {
			t.Fatalf("HashTo(%.20q) differs from Hash", key)
		}
	}
}

func TestMaskPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"gw_live_AbCd":     "gw_live_AbCd…",
		"gw_live_AbCd…":    "gw_live_AbCd…",
		"gw_live_AbCd...":  "gw_live_AbCd…",
		"":                 "…",
		"gw_test_x y\x00z": "gw_test_x y\x00z…",
	} {
		if got := MaskPrefix(in); got != want {
			t.Errorf("MaskPrefix(%q) = %q, want %q", in, got, want)
		}
	}
	if got := (*APIKey)(nil).Masked(); got != "" {
		t.Errorf("nil key masked = %q", got)
	}
}
