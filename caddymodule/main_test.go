package caddymodule

import (
	"os"
	"testing"

	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
	"github.com/gatewayz/caddy-gatewayz/storage/postgres"
)

// The tests that run on PostgreSQL share one private server, started on
// first use; every test database starts with the schema.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, postgres.Migrate)) }
