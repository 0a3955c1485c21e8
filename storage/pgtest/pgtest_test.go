package pgtest

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// Each test gets its own empty database.
func TestDatabaseURL(t *testing.T) {
	ctx := context.Background()
	a, b := DatabaseURL(t), DatabaseURL(t)
	if a == b {
		t.Fatalf("two tests share database %s", a)
	}
	conn, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE x (id int)"); err != nil {
		t.Fatal(err)
	}
	other, err := pgx.Connect(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	var n int
	if err := other.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'x'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("table of one database visible in another: %d %v", n, err)
	}
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ base, want string }{
		{"postgres://u@h:5/postgres?sslmode=disable", "postgres://u@h:5/t1?sslmode=disable"},
		{"postgres://u@h:5", "postgres://u@h:5/t1"},
		{"host=h user=u dbname=postgres", "host=h user=u dbname=postgres dbname=t1"},
	} {
		if got := withDatabase(tc.base, "t1"); got != tc.want {
			t.Errorf("withDatabase(%q) = %q, want %q", tc.base, got, tc.want)
		}
	}
}
