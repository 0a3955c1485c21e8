package caddymodule

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// StorageBackend is a module of the `gatewayz.storage` namespace: where the
// app keeps its state (`gatewayz.storage.bolt`, the embedded default, or a
// database server). Its Provision resolves the configuration without
// touching the database: the app opens the store in its Start, so
// validating a config never opens, locks or creates anything.
type StorageBackend interface {
	// StoreKey identifies the database the backend opens, with its
	// placeholders resolved. Configs whose backends give the same key
	// share one open store, so a reload keeps it open with its in-memory
	// state. The key stays in memory (it may hold a DSN's password).
	StoreKey() string

	// OpenStore opens the store. The app calls it from its Start, once per
	// StoreKey while some config uses it, and closes the store when the
	// last such config is unloaded.
	OpenStore(ctx caddy.Context, logger *zap.Logger) (storage.Store, error)

	// Describe names the backend and where its data is (a file path, a
	// host and database) for the start-up log. Never a password.
	Describe() (backend, location string)
}

// SecretKeeper is a StorageBackend that can keep a generated server secret
// beside its data when the config sets none (a file next to a database
// file). A backend that is not one needs an explicit secret: several
// gateways sharing a database must hash keys with the same secret.
type SecretKeeper interface {
	// SecretFile is the 0600 file holding the generated secret.
	SecretFile() string
}

// Storage backends the app's shorthands select.
const (
	boltBackendID     = "gatewayz.storage.bolt"
	postgresBackendID = "gatewayz.storage.postgres"
)

// loadStorage loads the app's storage backend: the `storage` module when
// the config has one, otherwise the `database_url` shorthand (PostgreSQL)
// when it resolves to a non-empty value, otherwise the `db_path` shorthand
// (bbolt, at the default path when db_path is empty too). A shorthand hands
// its value to the backend unresolved, so the backend resolves it (and a
// secret in it never reaches the config).
func (a *App) loadStorage(ctx caddy.Context, repl *caddy.Replacer) (StorageBackend, error) {
	var mod any
	var err error
	switch {
	case a.StorageRaw != nil:
		if a.DBPath != "" || a.DatabaseURL != "" {
			return nil, fmt.Errorf("gatewayz: storage is set together with db_path or database_url: use one of them")
		}
		mod, err = ctx.LoadModule(a, "StorageRaw")
	case strings.TrimSpace(repl.ReplaceAll(a.DatabaseURL, "")) != "":
		if _, gerr := caddy.GetModule(postgresBackendID); gerr != nil {
			return nil, fmt.Errorf("gatewayz: database_url is set, but this build has no PostgreSQL storage (module %s): unset it, or build with that module", postgresBackendID)
		}
		mod, err = loadBackend(ctx, postgresBackendID, map[string]string{"dsn": a.DatabaseURL})
	default:
		mod, err = loadBackend(ctx, boltBackendID, map[string]string{"path": a.DBPath})
	}
	if err != nil {
		return nil, fmt.Errorf("gatewayz: loading storage: %v", err)
	}
	backend, ok := mod.(StorageBackend)
	if !ok {
		return nil, fmt.Errorf("gatewayz: storage module %T is not a storage backend", mod)
	}
	return backend, nil
}

// loadBackend loads the backend module id with the shorthand's settings.
func loadBackend(ctx caddy.Context, id string, settings map[string]string) (any, error) {
	raw, err := json.Marshal(settings)
	if err != nil {
		return nil, err
	}
	return ctx.LoadModuleByID(id, raw)
}
