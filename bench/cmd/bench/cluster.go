package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// The multi-node run (-cluster): the gateway on a private PostgreSQL
// server, one node against three nodes sharing the database, all on this
// machine. The load is the bare metered JSON case (tiny answer, 32
// connections); with three nodes each takes a third of the connections.
// On a machine with few cores the nodes share them, so what it shows is
// the ratio and the CPU per request, not a speed-up.

// postgresInstalled reports whether the multi-node run can start a
// private PostgreSQL server here (its default).
func postgresInstalled() bool {
	_, err := pgtest.BinDir()
	return err == nil
}

// clusterNodes is the number of nodes of the multi-node run.
const clusterNodes = 3

// clusterSample is one round of one node count.
type clusterSample struct {
	nodes     int
	rps       float64
	p99       time.Duration // the slowest node's
	cpuPerReq float64       // µs of gateway CPU (all nodes) per request
	dbPerReq  float64       // µs of database CPU (the nodes' connections) per request
	non2xx    int64
	errors    int64
}

// clusterResult is the multi-node run's report.
type clusterResult struct {
	load       string
	samples    map[int][]clusterSample // by node count
	revocation *revocationResult
}

// clusterCaddyfile is bench/Caddyfile.gateway on PostgreSQL.
func (h *harness) clusterCaddyfile() (string, error) {
	b, err := os.ReadFile(h.configPath(setupBare, "gateway"))
	if err != nil {
		return "", err
	}
	const bolt = "db_path {env.GATEWAYZ_DB}"
	if !strings.Contains(string(b), bolt) {
		return "", fmt.Errorf("%s has no %q to replace", h.configPath(setupBare, "gateway"), bolt)
	}
	path := filepath.Join(h.dir, "Caddyfile.cluster")
	out := strings.Replace(string(b), bolt, "database_url {env.GATEWAYZ_DATABASE_URL}", 1)
	return path, os.WriteFile(path, []byte(out), 0o644)
}

// cluster runs the multi-node comparison: a private PostgreSQL server,
// three gateway nodes on it (distinct node names: each its own data
// directory), one benchmark user, then rounds alternating one node and
// all of them.
func (h *harness) cluster(ctx context.Context, rn runner) (*clusterResult, error) {
	pg, err := pgtest.Start()
	if err != nil {
		return nil, fmt.Errorf("starting PostgreSQL: %w", err)
	}
	defer pg.Close()
	dsn := pg.URL("postgres")
	config, err := h.clusterCaddyfile()
	if err != nil {
		return nil, err
	}
	var nodes []*target
	defer func() {
		for _, n := range nodes {
			n.proc.stop()
		}
	}()
	for i := range clusterNodes {
		name := fmt.Sprintf("cluster-%d", i)
		n, err := h.startCaddyWith(name, "gateway", config, []string{
			"GATEWAYZ_DATABASE_URL=" + dsn, "XDG_DATA_HOME=" + filepath.Join(h.dir, name, "data")})
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		nodes = append(nodes, n)
	}
	key, err := setupGateway("http://"+nodes[0].addr, h.adminKey)
	if err != nil {
		return nil, fmt.Errorf("cluster setup: %w\n%s", err, nodes[0].proc.tail(20))
	}
	l := newLoad(setupBare, mock.AnswerTiny, false, 32)
	hdr := h.headersFor(l)
	hdr["Authorization"] = "Bearer " + key
	for _, n := range nodes {
		b, err := probe("http://"+n.addr+apiPath, hdr, l.body())
		if err == nil {
			err = checkAnswer(l, b)
		}
		if err != nil {
			return nil, fmt.Errorf("probe %s: %w", n.proc.name, err)
		}
	}
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer db.Close(context.WithoutCancel(ctx))

	res := &clusterResult{load: l.name, samples: map[int][]clusterSample{}}
	for r := range h.cfg.rounds {
		order := []int{1, clusterNodes} // which runs first alternates
		if r%2 == 1 {
			order = []int{clusterNodes, 1}
		}
		for _, n := range order {
			s, err := h.clusterRound(ctx, rn, db, nodes[:n], hdr, l)
			if err != nil {
				return nil, err
			}
			log.Printf("round %d/%d cluster %d node(s) %8.0f req/s  p99 %-9s gateway cpu %5.0f µs/req  database cpu %5.0f µs/req  non-2xx %d errors %d",
				r+1, h.cfg.rounds, n, s.rps, fmtDur(s.p99), s.cpuPerReq, s.dbPerReq, s.non2xx, s.errors)
			res.samples[n] = append(res.samples[n], s)
		}
	}
	bases := make([]string, len(nodes))
	for i, n := range nodes {
		bases[i] = "http://" + n.addr
	}
	if res.revocation, err = measureRevocation(bases, key); err != nil {
		return nil, fmt.Errorf("revocation latency: %w", err)
	}
	log.Printf("revocation latency: %s", strings.TrimSpace(res.revocation.markdown()))
	return res, nil
}

// clusterRound applies l spread over nodes (a share of the connections
// each, at once) and measures the total.
func (h *harness) clusterRound(ctx context.Context, rn runner, db *pgx.Conn, nodes []*target, hdr map[string]string, l load) (clusterSample, error) {
	read := func() (gw, pg time.Duration) {
		for _, n := range nodes {
			c, _ := cpuTime(n.proc.pid())
			gw += c
		}
		return gw, backendsCPU(ctx, db)
	}
	var gw0, pg0 time.Duration
	timer := time.AfterFunc(h.cfg.warmup, func() { gw0, pg0 = read() })
	samples := make([]sample, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		share := l
		share.conns = l.conns / len(nodes)
		if i < l.conns%len(nodes) {
			share.conns++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			samples[i], errs[i] = rn.run(ctx, n.addr, hdr, share, h.cfg.warmup, h.cfg.duration)
		}()
	}
	wg.Wait()
	gw1, pg1 := read()
	timer.Stop()
	s := clusterSample{nodes: len(nodes)}
	var requests int64
	for i, x := range samples {
		if errs[i] != nil {
			return s, fmt.Errorf("cluster node %d: %w", i, errs[i])
		}
		requests += x.requests
		s.rps += x.rps
		s.p99 = max(s.p99, x.p99)
		s.non2xx += x.non2xx
		s.errors += x.errors
	}
	for _, n := range nodes {
		n.proc.trimLog()
	}
	if requests > 0 {
		s.cpuPerReq = float64(gw1-gw0) / float64(time.Microsecond) / float64(requests)
		s.dbPerReq = float64(pg1-pg0) / float64(time.Microsecond) / float64(requests)
	}
	return s, nil
}

// backendsCPU is the CPU time so far of the database's server processes
// serving the gateway nodes (their connections stay open in the pools).
func backendsCPU(ctx context.Context, db *pgx.Conn) time.Duration {
	rows, err := db.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = 'gatewayz'`)
	if err != nil {
		return 0
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, pid := range pids {
		c, _ := cpuTime(int(pid))
		total += c
	}
	return total
}

// markdown is the report's section of the multi-node run.
func (c *clusterResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### Several nodes on PostgreSQL (%s, one node vs %d)\n\n", c.load, clusterNodes)
	b.WriteString("The gateway on a private PostgreSQL server (fsync off) on this machine: one node with all the connections, " +
		"then the nodes sharing the database with a share of the connections each, alternating over the rounds. Medians over the rounds. " +
		"*Gateway CPU/req* is utime+stime of all the nodes per request; *database CPU/req* that of the server processes serving " +
		"the nodes' connections. Rate limits and plan quotas are on (counted in the reservation's statement).\n\n")
	b.WriteString("| nodes | req/s | vs one node | p99 (slowest node) | gateway CPU/req | database CPU/req | non-2xx / errors |\n|---:|---:|---:|---:|---:|---:|---:|\n")
	one := c.samples[1]
	for _, n := range []int{1, clusterNodes} {
		ss := c.samples[n]
		if len(ss) == 0 {
			continue
		}
		rps := median(mapSamples(ss, func(s clusterSample) float64 { return s.rps }))
		vs := "1.00"
		if n != 1 && len(one) > 0 {
			vs = fmtRatio(rps / median(mapSamples(one, func(s clusterSample) float64 { return s.rps })))
		}
		var bad int64
		for _, s := range ss {
			bad += s.non2xx + s.errors
		}
		fmt.Fprintf(&b, "| %d | %.0f | %s | %s | %s | %s | %d |\n", n, rps, vs,
			fmtDur(time.Duration(median(mapSamples(ss, func(s clusterSample) float64 { return float64(s.p99) })))),
			fmtMicros(median(mapSamples(ss, func(s clusterSample) float64 { return s.cpuPerReq }))),
			fmtMicros(median(mapSamples(ss, func(s clusterSample) float64 { return s.dbPerReq }))), bad)
	}
	b.WriteString(c.revocation.markdown())
	return b.String()
}

// fmtMicros formats a time per request in µs (fmtUs is for differences).
func fmtMicros(v float64) string { return fmt.Sprintf("%.0f µs", v) }

func mapSamples(ss []clusterSample, f func(clusterSample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}
