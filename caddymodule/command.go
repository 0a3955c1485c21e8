package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/gatewayz/caddy-gatewayz/storage"
	"github.com/gatewayz/caddy-gatewayz/storage/postgres"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "gatewayz",
		Usage: "migrate --from <bbolt file> --to <dsn>",
		Short: "Operates the gatewayz storage (moving a bbolt database to PostgreSQL)",
		CobraFunc: func(cmd *cobra.Command) {
			migrate := &cobra.Command{
				Use:   "migrate --from <bbolt file> --to <dsn>",
				Short: "Copies a bbolt database into an empty PostgreSQL database and verifies the copy",
				Long: `
Copies users, keys (hashes and encrypted keys as they are), plans,
subscriptions, limits, the ledger, usage and the audit chain from a bbolt
database file into an empty PostgreSQL database, in one transaction, then
verifies that every balance equals its ledger and the source's balance and
that the audit chain verifies on the target.

Stop the gateway first (it holds the file). The secret must be the one the
keys were written with: --secret, else $GATEWAYZ_SECRET; the gateway on
PostgreSQL then runs with the same GATEWAYZ_SECRET. A target that already
holds data is refused; a copy that failed leaves the target empty, so it
can be run again.`,
				RunE: caddycmd.WrapCommandFuncForCobra(cmdMigrate),
			}
			migrate.Flags().String("from", "", "the bbolt database file")
			migrate.Flags().String("to", "", "the PostgreSQL DSN (default $GATEWAYZ_DATABASE_URL)")
			migrate.Flags().String("secret", "", "the server secret (default $GATEWAYZ_SECRET)")
			migrate.Flags().Duration("timeout", time.Hour, "how long the copy may take")
			cmd.AddCommand(migrate)
		},
	})
}

// cmdMigrate is `caddy gatewayz migrate`.
func cmdMigrate(fl caddycmd.Flags) (int, error) {
	from := fl.String("from")
	to := strings.TrimSpace(orEnv(fl.String("to"), "GATEWAYZ_DATABASE_URL"))
	secretStr := orEnv(fl.String("secret"), "GATEWAYZ_SECRET")
	if from == "" || to == "" {
		return exitUsage, errors.New("--from <bbolt file> and --to <dsn> (or GATEWAYZ_DATABASE_URL) are required")
	}
	secret := storage.SecretFromString(secretStr)
	if secret == nil {
		return exitUsage, fmt.Errorf("the secret the keys were written with is required (--secret or GATEWAYZ_SECRET, at least %d characters)", storage.MinSecretStringLen)
	}
	keyring, err := storage.NewKeyring(secret)
	if err != nil {
		return exitUsage, err
	}
	if _, err := os.Stat(from); err != nil {
		return exitUsage, fmt.Errorf("source database: %v", err)
	}
	src, err := storage.Open(from, storage.Options{})
	if err != nil {
		return exitFailed, fmt.Errorf("opening %s (stop the gateway first): %v", from, err)
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(context.Background(), fl.Duration("timeout"))
	defer cancel()
	n, err := postgres.Copy(ctx, src, to, keyring)
	if err != nil {
		return exitFailed, fmt.Errorf("copying %s to %s: %v", from, postgres.Location(to), err)
	}
	fmt.Printf("copied %s from %s to %s; verified: balances equal their ledgers and the source, the audit chain holds\n",
		n, from, postgres.Location(to))
	return 0, nil
}

// Exit codes of the command, as Caddy's own commands use them.
const (
	exitFailed = 1
	exitUsage  = 2
)

// orEnv returns v, or the environment variable name when v is empty.
func orEnv(v, name string) string {
	if v != "" {
		return v
	}
	return os.Getenv(name)
}
