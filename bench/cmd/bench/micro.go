package main

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// microResult is one line of go test -bench output.
type microResult struct {
	pkg     string
	name    string
	nsPerOp float64
	bPerOp  float64
	allocs  float64
	extra   []string // other "value unit" pairs, as printed
	hasMem  bool
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.+)$`)

// runMicro runs the Go microbenchmarks of the hot paths (written beside the
// code in caddymodule, storage and storage/postgres: the last includes the
// durable settlements/s on a server with fsync on).
func runMicro(ctx context.Context, pattern string) ([]microResult, error) {
	args := []string{"test", "-run", "^$", "-bench", pattern, "-benchmem", "-benchtime", "1s", "-timeout", "8m", "./caddymodule/", "./storage/", "./storage/postgres/"}
	log.Printf("go %s", strings.Join(args, " "))
	out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput()
	res := parseBench(string(out))
	if err != nil {
		return res, fmt.Errorf("go test -bench: %v\n%s", err, tail(string(out), 30))
	}
	return res, nil
}

func parseBench(out string) []microResult {
	var res []microResult
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		r := microResult{pkg: pkg[strings.LastIndexByte(pkg, '/')+1:], name: m[1]}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				r.nsPerOp = v
			case "B/op":
				r.bPerOp = v
				r.hasMem = true
			case "allocs/op":
				r.allocs = v
			default:
				r.extra = append(r.extra, f[i]+" "+f[i+1])
			}
		}
		res = append(res, r)
	}
	return res
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
