package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/gatewayz/caddy-gatewayz"
)

// TestShippedConfigsFromTheExample derives both configs from the real
// Caddyfile.example and adapts them as Caddy does: the gateway config is
// the example plus the benchmark's global options; the plain one has the
// same access log and reverse_proxy lines and no gatewayz module.
func TestShippedConfigsFromTheExample(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(root, "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	gw, plain, err := shippedConfigs(string(example))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(gw, strings.TrimSpace(strings.SplitN(string(example), "\n{\n", 2)[1])) {
		t.Fatal("the gateway config does not contain the example's global block and site unchanged")
	}
	t.Setenv("BENCH_ADMIN_PORT", "2999")
	t.Setenv("GATEWAYZ_LISTEN", ":9080")
	t.Setenv("GATEWAYZ_UPSTREAM", "http://127.0.0.1:9901")
	adapt := func(name, text string) string {
		t.Helper()
		adapter := caddyconfig.GetAdapter("caddyfile")
		out, warn, err := adapter.Adapt([]byte(text), map[string]any{"filename": name})
		if err != nil {
			t.Fatalf("%s does not adapt: %v\n%s", name, err, text)
		}
		for _, w := range warn {
			if !strings.Contains(w.Message, "formatted") {
				t.Errorf("%s: %s", name, w.Message)
			}
		}
		var v any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	gwJSON, plainJSON := adapt("gateway", gw), adapt("plain", plain)
	for _, want := range []string{`"handler":"gatewayz"`, `"handler":"gatewayz_api"`, `"gatewayz":{`} {
		if !strings.Contains(gwJSON, want) {
			t.Errorf("gateway config lacks %s:\n%s", want, gwJSON)
		}
	}
	if strings.Contains(plainJSON, "gatewayz") {
		t.Errorf("plain config has gatewayz:\n%s", plainJSON)
	}
	for _, both := range []string{`"handler":"reverse_proxy"`, `"dial":"127.0.0.1:9901"`, `X-Api-Key":{"filter":"delete"}`, `"response":{"delete":["x-ratelimit-*","anthropic-ratelimit-*"]}`,
		`"default_logger_name":"log0"`, `"listen":[":9080"]`, `"admin":{"listen":"localhost:2999"`, `"persist":false`} {
		if !strings.Contains(gwJSON, both) || !strings.Contains(plainJSON, both) {
			t.Errorf("%s missing from one of the configs:\ngateway %s\nplain %s", both, gwJSON, plainJSON)
		}
	}
}

func TestShippedConfigsNoticeChanges(t *testing.T) {
	const good = "# comment\n{\n\tgatewayz {\n\t\tdb_path x\n\t}\n}\n\n:8080 {\n\tlog {\n\t\toutput stderr\n\t}\n" +
		"\thandle /v1/* {\n\t\tgatewayz\n\t\treverse_proxy up\n\t}\n\thandle {\n\t\tgatewayz_api\n\t}\n}\n"
	gw, plain, err := shippedConfigs(good)
	if err != nil {
		t.Fatal(err)
	}
	wantPlain := "# comment\n{\n\tadmin localhost:{$BENCH_ADMIN_PORT}\n\tpersist_config off\n\tauto_https off\n\tskip_install_trust\n\tgrace_period 1s\n}\n\n" +
		":8080 {\n\tlog {\n\t\toutput stderr\n\t}\n\thandle /v1/* {\n\t\treverse_proxy up\n\t}\n}\n"
	if plain != wantPlain {
		t.Errorf("plain:\n%s\nwant:\n%s", plain, wantPlain)
	}
	if !strings.HasPrefix(gw, "# comment\n{\n\tadmin localhost:{$BENCH_ADMIN_PORT}\n") || !strings.HasSuffix(gw, good[len("# comment\n{\n"):]) {
		t.Errorf("gateway:\n%s", gw)
	}
	tests := []struct{ name, in, err string }{
		{"no global block", strings.Replace(good, "{\n\tgatewayz {\n\t\tdb_path x\n\t}\n}\n", "", 1), "no global options block"},
		{"no access log", strings.Replace(good, "\tlog {\n\t\toutput stderr\n\t}\n", "", 1), "no access log"},
		{"no gatewayz handler", strings.Replace(good, "\t\tgatewayz\n", "", 1), "the gatewayz handler not found"},
		{"no api", strings.Replace(good, "gatewayz_api", "file_server", 1), "gatewayz_api handle block not found"},
		{"twice", strings.Replace(good, "\t\tgatewayz\n", "\t\tgatewayz\n\t\tgatewayz\n", 1), "appears twice"},
		{"unclosed", strings.TrimSuffix(good, "}\n"), "braces do not balance"},
		{"left over", strings.Replace(good, "reverse_proxy up", "reverse_proxy up\n\t\tgatewayz_extra", 1), "left in the plain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := shippedConfigs(tc.in); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err %v, want %q", err, tc.err)
			}
		})
	}
}
