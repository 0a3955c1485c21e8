package caddymodule

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func init() {
	caddy.RegisterModule(new(BoltStorage))
}

// BoltStorage is the storage backend `gatewayz.storage.bolt`, the default:
// the whole state in one embedded bbolt file, which one process owns.
type BoltStorage struct {
	// Path is the database file. Default: gatewayz.db in Caddy's data
	// directory. Placeholders are resolved (e.g. "{env.GATEWAYZ_DB}"); an
	// empty result means the default.
	Path string `json:"path,omitempty"`

	// CommitWindow is how long settlements are grouped before one durable
	// write (one transaction and fsync for all of them). A crash can lose
	// the settlements of the last window. Default 10ms.
	CommitWindow caddy.Duration `json:"commit_window,omitempty"`

	// LockTimeout bounds the wait for the database file lock (another
	// process holding it). Default 1s.
	LockTimeout caddy.Duration `json:"lock_timeout,omitempty"`

	// NoSync skips fsync on commits. For tests only: a crash may lose data.
	NoSync bool `json:"no_sync,omitempty"`

	path string // absolute, resolved
}

// CaddyModule returns the Caddy module information.
func (*BoltStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  boltBackendID,
		New: func() caddy.Module { return new(BoltStorage) },
	}
}

// defaultDBName is the database file in Caddy's data directory when no
// path is set.
const defaultDBName = "gatewayz.db"

// Provision resolves the path. It touches no file.
func (b *BoltStorage) Provision(caddy.Context) error {
	p := strings.TrimSpace(caddy.NewReplacer().ReplaceAll(b.Path, ""))
	if p == "" {
		p = filepath.Join(caddy.AppDataDir(), defaultDBName)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return fmt.Errorf("bolt storage path %q: %v", p, err)
	}
	b.path = abs
	return nil
}

// Validate checks the durations.
func (b *BoltStorage) Validate() error {
	if b.CommitWindow < 0 || b.LockTimeout < 0 {
		return fmt.Errorf("bolt storage: commit_window and lock_timeout must not be negative")
	}
	return nil
}

// StoreKey is the file's absolute path.
func (b *BoltStorage) StoreKey() string { return "bolt " + b.path }

// Describe names the file.
func (b *BoltStorage) Describe() (backend, location string) { return "bolt", b.path }

// SecretFile keeps a generated secret beside the database file.
func (b *BoltStorage) SecretFile() string { return b.path + ".secret" }

// OpenStore creates the file's directory when missing and opens the file.
func (b *BoltStorage) OpenStore(caddy.Context, *zap.Logger) (storage.Store, error) {
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the database directory: %v", err)
	}
	st, err := storage.Open(b.path, storage.Options{
		LockTimeout:  time.Duration(b.LockTimeout),
		CommitWindow: time.Duration(b.CommitWindow),
		NoSync:       b.NoSync,
	})
	if err != nil {
		return nil, fmt.Errorf("opening %s: %v", b.path, err)
	}
	return st, nil
}

// UnmarshalCaddyfile sets up the backend from
//
//	bolt [<path>] {
//	    path          <path>           # e.g. {env.GATEWAYZ_DB}
//	    commit_window <duration>
//	    lock_timeout  <duration>
//	    no_sync
//	}
func (b *BoltStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // backend name
	if d.NextArg() {
		b.Path = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for d.NextBlock(0) {
		name := d.Val()
		switch name {
		case "path":
			if !d.AllArgs(&b.Path) {
				return d.ArgErr()
			}
		case "commit_window", "lock_timeout":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur < 0 {
				return d.Errf("bad %s %q", name, s)
			}
			if name == "commit_window" {
				b.CommitWindow = caddy.Duration(dur)
			} else {
				b.LockTimeout = caddy.Duration(dur)
			}
		case "no_sync":
			if d.NextArg() {
				return d.ArgErr()
			}
			b.NoSync = true
		default:
			return d.Errf("unknown bolt storage option %q (valid: path, commit_window, lock_timeout, no_sync)", name)
		}
	}
	return nil
}

// Interface guards
var (
	_ StorageBackend        = (*BoltStorage)(nil)
	_ SecretKeeper          = (*BoltStorage)(nil)
	_ caddy.Provisioner     = (*BoltStorage)(nil)
	_ caddy.Validator       = (*BoltStorage)(nil)
	_ caddyfile.Unmarshaler = (*BoltStorage)(nil)
)
