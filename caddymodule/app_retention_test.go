package caddymodule

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestDetailRetention(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		name          string
		detail, usage time.Duration
		want          time.Duration
	}{
		{"defaults", 0, 0, DefaultUsageDetailRetention},
		{"set", 2 * day, 0, 2 * day},
		{"longer than the default", 30 * day, 0, 30 * day},
		{"rollups kept longer", 2 * day, 90 * day, 2 * day},
		{"rollups kept shorter than the default detail", 0, 3 * day, 3 * day},
		{"rollups kept shorter than the detail", 10 * day, 4 * day, 4 * day},
	} {
		a := &App{UsageDetailRetention: caddy.Duration(tc.detail), UsageRetention: caddy.Duration(tc.usage)}
		if got := a.detailRetention(); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
