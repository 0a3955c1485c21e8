package storage

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/fernet/fernet-go"
)

// Key format: "gw_<env>_" followed by keySecretLen characters of the
// URL-safe base64 alphabet (32 random bytes, no padding).
const (
	keySecretLen   = 43
	keyRandomBytes = 32
	// MinSecretLen is the minimum size of a keyring secret in bytes.
	MinSecretLen = 32
	// MinSecretStringLen is the minimum length of a GATEWAYZ_SECRET string.
	MinSecretStringLen = 16
)

// Labels used to derive independent sub-keys from the server secret, so the
// lookup hash and the encryption never share key material.
const (
	labelHash    = "gatewayz/v1/key-hash"
	labelEncrypt = "gatewayz/v1/key-encrypt"
)

// ParseKey checks the shape of an API key: "gw_<live|test|staging|dev>_"
// plus exactly 43 characters of [A-Za-z0-9_-]. It returns the environment
// tag ("live", "test", "staging", "development"). It does not allocate.
func ParseKey(s string) (env string, ok bool) {
	if len(s) < 3 || s[0] != 'g' || s[1] != 'w' || s[2] != '_' {
		return "", false
	}
	rest := s[3:]
	var n int
	switch {
	case strings.HasPrefix(rest, "live_"):
		env, n = "live", 5
	case strings.HasPrefix(rest, "test_"):
		env, n = "test", 5
	case strings.HasPrefix(rest, "staging_"):
		env, n = "staging", 8
	case strings.HasPrefix(rest, "dev_"):
		env, n = "development", 4
	default:
		return "", false
	}
	secret := rest[n:]
	if len(secret) != keySecretLen {
		return "", false
	}
	for i := 0; i < len(secret); i++ {
		if !isKeyChar(secret[i]) {
			return "", false
		}
	}
	return env, true
}

func isKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// EnvPrefix returns the key prefix of an environment tag: "live" →
// "gw_live_", "test" → "gw_test_", "staging" → "gw_staging_",
// "development" → "gw_dev_".
func EnvPrefix(tag string) (prefix string, ok bool) {
	switch tag {
	case "live":
		return "gw_live_", true
	case "test":
		return "gw_test_", true
	case "staging":
		return "gw_staging_", true
	case "development":
		return "gw_dev_", true
	}
	return "", false
}

// MaskPrefix is the one display form of a key, from its display prefix
// (APIKey.Prefix or KeyDisplayPrefix): the prefix and "…" (e.g.
// "gw_live_AbCd…"). A prefix that already ends in "…" or "..." (as
// imported ones may) keeps one "…"; an empty one gives "…" alone.
func MaskPrefix(prefix string) string {
	prefix = strings.TrimSuffix(strings.TrimSuffix(prefix, "…"), "...")
	return prefix + "…"
}

// MaskKey returns the display form of a plaintext key (MaskPrefix of its
// display prefix). Input that is not shaped like a key gives "…" alone, so
// nothing of it leaks.
func MaskKey(s string) string { return MaskPrefix(KeyDisplayPrefix(s)) }

// Masked returns the display form of a stored key (MaskPrefix); "" for
// nil.
func (k *APIKey) Masked() string {
	if k == nil {
		return ""
	}
	return MaskPrefix(k.Prefix)
}

// KeyDisplayPrefix returns the stored display prefix of a well-formed key,
// e.g. "gw_live_AbCd" (APIKey.Prefix), or "" when s is not a key.
func KeyDisplayPrefix(s string) string {
	env, ok := ParseKey(s)
	if !ok {
		return ""
	}
	prefix, _ := EnvPrefix(env)
	return s[:len(prefix)+4]
}

// Keyring hashes, generates, encrypts and decrypts API keys with keys
// derived from the server secret. It is safe for concurrent use.
type Keyring struct {
	hashKey []byte
	fernet  *fernet.Key
	fernets []*fernet.Key
	pool    sync.Pool // of *hasher
}

// hasher is a reusable HMAC-SHA256 state keyed with the hash key, with a
// scratch buffer so hashing a string does not allocate for the input.
type hasher struct {
	h   hash.Hash
	buf []byte
	sum [sha256.Size]byte
}

// NewKeyring derives the hashing and encryption keys from secret, which
// must be at least MinSecretLen bytes.
func NewKeyring(secret []byte) (*Keyring, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("storage: keyring secret must be at least %d bytes (GATEWAYZ_SECRET needs at least %d characters): %w",
			MinSecretLen, MinSecretStringLen, ErrInvalid)
	}
	kr := &Keyring{hashKey: derive(secret, labelHash)}
	var fk fernet.Key
	copy(fk[:], derive(secret, labelEncrypt))
	kr.fernet = &fk
	kr.fernets = []*fernet.Key{&fk}
	hk := kr.hashKey
	kr.pool.New = func() any { return &hasher{h: hmac.New(sha256.New, hk), buf: make([]byte, 0, 64)} }
	return kr, nil
}

func derive(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// Generate returns a new random key for the environment tag ("live",
// "test", "staging", "development").
func (kr *Keyring) Generate(tag string) (string, error) {
	prefix, ok := EnvPrefix(tag)
	if !ok {
		return "", fmt.Errorf("storage: unknown environment tag %q: %w", tag, ErrInvalid)
	}
	var raw [keyRandomBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("storage: generating key: %w", err)
	}
	buf := make([]byte, len(prefix)+keySecretLen)
	copy(buf, prefix)
	base64.RawURLEncoding.Encode(buf[len(prefix):], raw[:])
	return string(buf), nil
}

// Hash returns HMAC-SHA256(derived hash key, key): the 32-byte lookup hash
// stored in APIKey.Hash.
func (kr *Keyring) Hash(key string) []byte {
	hs := kr.pool.Get().(*hasher)
	hs.h.Reset()
	hs.buf = append(hs.buf[:0], key...)
	hs.h.Write(hs.buf)
	sum := hs.h.Sum(make([]byte, 0, sha256.Size))
	if cap(hs.buf) > 1024 {
		hs.buf = make([]byte, 0, 64) // do not keep a huge input alive
	}
	kr.pool.Put(hs)
	return sum
}

// HashTo is Hash writing into dst (no allocation): it returns dst[:].
func (kr *Keyring) HashTo(dst *[sha256.Size]byte, key string) []byte {
	hs := kr.pool.Get().(*hasher)
	hs.h.Reset()
	hs.buf = append(hs.buf[:0], key...)
	hs.h.Write(hs.buf)
	// Sum into the hasher's own array: a slice passed to the hash.Hash
	// interface escapes, and dst should be able to live on the stack.
	copy(dst[:], hs.h.Sum(hs.sum[:0]))
	if cap(hs.buf) > 1024 {
		hs.buf = make([]byte, 0, 64)
	}
	kr.pool.Put(hs)
	return dst[:]
}

// Encrypt returns a Fernet token of key (randomized: never use it for
// lookups).
func (kr *Keyring) Encrypt(key string) (string, error) {
	tok, err := fernet.EncryptAndSign([]byte(key), kr.fernet)
	if err != nil {
		return "", fmt.Errorf("storage: encrypting key: %w", err)
	}
	return string(tok), nil
}

// errDecrypt does not carry the token or any part of the key.
var errDecrypt = errors.New("storage: key token does not decrypt with this server secret")

// Decrypt returns the key inside a token made by Encrypt with the same
// secret.
func (kr *Keyring) Decrypt(tok string) (string, error) {
	msg := fernet.VerifyAndDecrypt([]byte(tok), 0, kr.fernets)
	if msg == nil {
		return "", errDecrypt
	}
	return string(msg), nil
}

// Equal compares two hashes in constant time.
func (kr *Keyring) Equal(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}

// LoadOrCreateSecret returns the server secret kept in the file at path.
// When the file does not exist it creates it (mode 0600) with 32 random
// bytes, base64-encoded; the file appears complete and atomically (written
// to a temporary file, then hard-linked into place, which fails if another
// starter won), so concurrent starters agree on one secret and later starts
// reuse it.
func LoadOrCreateSecret(path string) ([]byte, error) {
	if secret, err := readSecret(path); err == nil {
		return secret, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("storage: creating secret directory: %w", err)
	}
	var raw [MinSecretLen]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("storage: generating secret: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".secret-*")
	if err != nil {
		return nil, fmt.Errorf("storage: creating secret file: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("storage: creating secret file: %w", err)
	}
	if _, err := tmp.WriteString(base64.StdEncoding.EncodeToString(raw[:]) + "\n"); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("storage: writing secret file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("storage: writing secret file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("storage: writing secret file: %w", err)
	}
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readSecret(path) // another starter created it first
		}
		return nil, fmt.Errorf("storage: creating secret file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return raw[:], nil
}

func readSecret(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	secret, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(secret) < MinSecretLen {
		return nil, fmt.Errorf("storage: secret file %s is not base64 of at least %d bytes: %w", path, MinSecretLen, ErrInvalid)
	}
	return secret, nil
}

// SecretFromString turns a GATEWAYZ_SECRET value into a keyring secret:
// SHA-256 of the string, so any string of at least MinSecretStringLen
// characters gives a 32-byte secret. A shorter string gives nil, which
// NewKeyring rejects.
func SecretFromString(s string) []byte {
	if len(s) < MinSecretStringLen {
		return nil
	}
	sum := sha256.Sum256([]byte(s))
	return sum[:]
}
