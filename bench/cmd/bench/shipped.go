package main

import (
	"fmt"
	"strings"
)

// The "as shipped" comparison runs Caddyfile.example itself, so the
// benchmark cannot drift from what users run: its site with the access log,
// the gateway and the management API, against the same site with plain
// reverse_proxy (the same log block and header lines, no gatewayz). Both
// get the same server-wide options the bare configs have (admin address,
// no autosave, no automatic HTTPS); the upstream, listen address and
// database come from the environment as Caddyfile.example documents.

// benchGlobals are added at the top of the global options block.
var benchGlobals = []string{
	"admin localhost:{$BENCH_ADMIN_PORT}",
	"persist_config off",
	"auto_https off",
	"skip_install_trust",
	"grace_period 1s",
}

// shippedConfigs derives the as-shipped gateway and plain Caddyfiles from
// the text of Caddyfile.example. It fails when the example no longer has
// the pieces it removes for plain (the gatewayz global option block, the
// gatewayz directive, the handle block of gatewayz_api) or has no access
// log, so a change to the example is noticed rather than measured wrong.
func shippedConfigs(example string) (gateway, plain string, err error) {
	lines := strings.Split(example, "\n")
	global := -1
	for i, l := range lines {
		t := code(l)
		if t == "" {
			continue
		}
		if t == "{" {
			global = i
		}
		break
	}
	if global < 0 {
		return "", "", fmt.Errorf("Caddyfile.example: no global options block first")
	}
	depth := 0
	for _, l := range lines {
		t := code(l)
		depth += strings.Count(t, "{") - strings.Count(t, "}")
	}
	if depth != 0 {
		return "", "", fmt.Errorf("Caddyfile.example: braces do not balance")
	}
	if findLine(lines, func(t string) bool { return t == "log {" || t == "log" }) < 0 {
		return "", "", fmt.Errorf("Caddyfile.example: no access log")
	}
	withGlobals := func(ls []string) string {
		out := append([]string{}, ls[:global+1]...)
		for _, g := range benchGlobals {
			out = append(out, "\t"+g)
		}
		return strings.Join(append(out, ls[global+1:]...), "\n")
	}
	gateway = withGlobals(lines)

	// Plain: the same file without the three gatewayz pieces. The global
	// option is looked for only inside the global options block and the
	// handler only outside it, since both may be written `gatewayz {`.
	p := lines
	for _, cut := range []struct {
		what string
		at   func(t string) bool
		// global: the piece sits inside the global options block
		global bool
		// within: the block must contain a line with this directive
		within string
	}{
		{"the gatewayz global option", func(t string) bool { return t == "gatewayz {" }, true, ""},
		{"the gatewayz handler", func(t string) bool { return t == "gatewayz" || t == "gatewayz {" }, false, ""},
		{"the gatewayz_api handle block", func(t string) bool { return t == "handle {" }, false, "gatewayz_api"},
	} {
		globalEnd := blockEnd(p, global)
		found := false
		for i := 0; i < len(p); i++ {
			if (i > global && i < globalEnd) != cut.global || !cut.at(code(p[i])) {
				continue
			}
			end := i
			if strings.HasSuffix(code(p[i]), "{") {
				end = blockEnd(p, i)
			}
			if cut.within != "" && findLine(p[i:end+1], func(t string) bool { return t == cut.within }) < 0 {
				continue
			}
			if found {
				return "", "", fmt.Errorf("Caddyfile.example: %s appears twice", cut.what)
			}
			found = true
			p = append(append([]string{}, p[:i]...), p[end+1:]...)
			i--
		}
		if !found {
			return "", "", fmt.Errorf("Caddyfile.example: %s not found", cut.what)
		}
	}
	if findLine(p, func(t string) bool { return strings.HasPrefix(t, "gatewayz") }) >= 0 {
		return "", "", fmt.Errorf("Caddyfile.example: a gatewayz line is left in the plain config")
	}
	return gateway, withGlobals(p), nil
}

// code is a Caddyfile line without its comment and surrounding space.
func code(line string) string {
	if i := strings.IndexByte(line, '#'); i >= 0 {
		line = line[:i]
	}
	return strings.TrimSpace(line)
}

func findLine(lines []string, match func(t string) bool) int {
	for i, l := range lines {
		if match(code(l)) {
			return i
		}
	}
	return -1
}

// blockEnd is the index of the line that closes the block opened on line
// i (the braces of the whole file balance).
func blockEnd(lines []string, i int) int {
	depth := 0
	for j := i; j < len(lines); j++ {
		t := code(lines[j])
		depth += strings.Count(t, "{") - strings.Count(t, "}")
		if depth == 0 {
			return j
		}
	}
	return len(lines) - 1
}
