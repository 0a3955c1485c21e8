package main

import (
	"context"
	"fmt"
	"log"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
	"github.com/gatewayz/caddy-gatewayz/storage/pgtest"
)

// The PostgreSQL run (-postgres): one gateway node on a private PostgreSQL
// server with the durability of a production one (fsync, full_page_writes
// and synchronous_commit on: every settlement is on disk before its
// request's settlement returns; the node's concurrent settlements share
// commits), against plain Caddy, interleaved as the main comparison: JSON
// and SSE with the tiny answer at 32 connections, with one hot user and
// with pgUsers users taking turns.

// pgUsers is the number of users of the spread-out loads.
const pgUsers = 1000

// pgSample is one round of one load through one target.
type pgSample struct {
	sample
	cpuPerReq float64 // µs of Caddy CPU per request
	dbPerReq  float64 // µs of database CPU per request (gateway only)
}

// pgResult is the PostgreSQL run's report.
type pgResult struct {
	loads              []load
	samples            map[string]map[string][]pgSample // load -> plain/gateway -> rounds
	loadStart, loadEnd string
}

// pgLoads are the measured loads: JSON and SSE, one user and pgUsers.
func pgLoads(keys []string) []load {
	var ls []load
	for _, stream := range []bool{false, true} {
		for _, many := range []bool{false, true} {
			l := newLoad(setupBare, mock.AnswerTiny, stream, 32)
			if many {
				l.keys = keys
				l.name += fmt.Sprintf(", %d users", len(keys))
			} else {
				l.name += ", 1 user"
			}
			ls = append(ls, l)
		}
	}
	return ls
}

// postgres runs the PostgreSQL comparison against the bare plain Caddy.
func (h *harness) postgres(ctx context.Context, rn runner) (*pgResult, error) {
	res := &pgResult{samples: map[string]map[string][]pgSample{}, loadStart: loadAvg()}
	pg, err := pgtest.Start("fsync = on", "full_page_writes = on")
	if err != nil {
		return nil, fmt.Errorf("starting PostgreSQL: %w", err)
	}
	defer pg.Close()
	dsn := pg.URL("postgres")
	// The database_url shorthand: the store's defaults (durable
	// reservations, no commit window).
	config, err := h.clusterCaddyfile()
	if err != nil {
		return nil, err
	}
	gw, err := h.startCaddyWith("postgres", "gateway", config, []string{
		"GATEWAYZ_DATABASE_URL=" + dsn, "XDG_DATA_HOME=" + filepath.Join(h.dir, "postgres", "data")})
	if err != nil {
		return nil, err
	}
	defer gw.proc.stop()
	base := "http://" + gw.addr
	hot, keys, err := h.pgUsers(base)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL setup: %w\n%s", err, gw.proc.tail(20))
	}
	res.loads = pgLoads(keys)
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer db.Close(context.WithoutCancel(ctx))
	for _, l := range res.loads {
		hdr := h.headersFor(l)
		hdr["Authorization"] = "Bearer " + hot
		b, err := probe(base+apiPath, hdr, l.body())
		if err == nil {
			err = checkAnswer(l, b)
		}
		if err != nil {
			return nil, fmt.Errorf("probe %s: %w", l.name, err)
		}
		res.samples[l.name] = map[string][]pgSample{}
	}
	for r := range h.cfg.rounds {
		for _, l := range res.loads {
			hdr := h.headersFor(l)
			hdr["Authorization"] = "Bearer " + hot
			for _, t := range roundOrder([]*target{h.plain, gw}, r) {
				s, err := h.pgRound(ctx, rn, db, t, hdr, l)
				if err != nil {
					return nil, fmt.Errorf("%s %s: %w", l.name, t.name, err)
				}
				dbCPU := "-"
				if !math.IsNaN(s.dbPerReq) {
					dbCPU = fmtMicros(s.dbPerReq)
				}
				log.Printf("round %d/%d postgres %-34s %-7s %8.0f req/s  p99 %-9s cpu %5.0f µs/req  database cpu %s/req  non-2xx %d errors %d",
					r+1, h.cfg.rounds, l.name, t.name, s.rps, fmtDur(s.p99), s.cpuPerReq, dbCPU, s.non2xx, s.errors)
				res.samples[l.name][t.name] = append(res.samples[l.name][t.name], s)
			}
		}
	}
	res.loadEnd = loadAvg()
	return res, nil
}

// pgUsers sets up the hot user and pgUsers others (on one plan, all limits
// on and out of reach) and returns their keys.
func (h *harness) pgUsers(base string) (hot string, keys []string, err error) {
	plan, err := benchPlan(base, h.adminKey)
	if err != nil {
		return "", nil, err
	}
	if hot, err = benchUser(base, h.adminKey, plan); err != nil {
		return "", nil, err
	}
	keys = make([]string, pgUsers)
	errs := make([]error, pgUsers)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				keys[i], errs[i] = benchUser(base, h.adminKey, plan)
			}
		})
	}
	for i := range keys {
		work <- i
	}
	close(work)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return "", nil, err
		}
	}
	return hot, keys, nil
}

// pgRound measures l through t, with the CPU of t's Caddy and, for the
// gateway, of the database's processes serving it.
func (h *harness) pgRound(ctx context.Context, rn runner, db *pgx.Conn, t *target, hdr map[string]string, l load) (pgSample, error) {
	gateway := t.name == "gateway"
	read := func() (caddy, pg time.Duration) {
		caddy, _ = cpuTime(t.proc.pid())
		if gateway {
			pg = backendsCPU(ctx, db)
		}
		return caddy, pg
	}
	var c0, p0 time.Duration
	timer := time.AfterFunc(h.cfg.warmup, func() { c0, p0 = read() })
	s, err := rn.run(ctx, t.addr, hdr, l, h.cfg.warmup, h.cfg.duration)
	c1, p1 := read()
	timer.Stop()
	t.proc.trimLog()
	if err != nil {
		return pgSample{}, err
	}
	out := pgSample{sample: s}
	if s.requests > 0 {
		out.cpuPerReq = float64(c1-c0) / float64(time.Microsecond) / float64(s.requests)
		out.dbPerReq = float64(p1-p0) / float64(time.Microsecond) / float64(s.requests)
	}
	if !gateway || p1 < p0 {
		// A server process that ended in the window took its CPU time
		// with it: no figure rather than a wrong one.
		out.dbPerReq = math.NaN()
	}
	return out, nil
}

// markdown is the report's section of the PostgreSQL run.
func (p *pgResult) markdown() string {
	var b strings.Builder
	b.WriteString("\n### The gateway on PostgreSQL (one node, tiny answer, 32 connections)\n\n")
	fmt.Fprintf(&b, "One gateway node on a private PostgreSQL server on this machine with a production server's durability "+
		"(fsync, full_page_writes and synchronous_commit on; reservations durable too, the default), against plain Caddy, interleaved. "+
		"*1 user*: every request on one account row; *%d users*: the requests take the users' keys in turn. "+
		"Medians over the rounds. *CPU/req* is the gateway's (or plain Caddy's) utime+stime per request, *database CPU/req* that of the "+
		"server processes serving the node. Rate limits and plan quotas are on. Load average %s at the start of this run, %s at its end "+
		"(2 cores shared with the database and the load generator).\n\n", pgUsers, p.loadStart, p.loadEnd)
	b.WriteString("| load | plain req/s | gateway req/s | gateway ÷ plain | gateway p99 | gateway CPU/req | database CPU/req | non-2xx / errors |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, l := range p.loads {
		plain, gw := p.samples[l.name]["plain"], p.samples[l.name]["gateway"]
		if len(plain) == 0 || len(gw) == 0 {
			continue
		}
		med := func(ss []pgSample, f func(pgSample) float64) float64 {
			var xs []float64
			for _, s := range ss {
				if v := f(s); !math.IsNaN(v) {
					xs = append(xs, v)
				}
			}
			return median(xs)
		}
		micros := func(v float64) string {
			if math.IsNaN(v) {
				return "n/a"
			}
			return fmtMicros(v)
		}
		rps := func(s pgSample) float64 { return s.rps }
		var bad int64
		for _, s := range gw {
			bad += s.non2xx + s.errors
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s | %s | %s | %s | %d |\n", l.name, med(plain, rps), med(gw, rps),
			fmtRatio(med(gw, rps)/med(plain, rps)),
			fmtDur(time.Duration(med(gw, func(s pgSample) float64 { return float64(s.p99) }))),
			micros(med(gw, func(s pgSample) float64 { return s.cpuPerReq })),
			micros(med(gw, func(s pgSample) float64 { return s.dbPerReq })), bad)
	}
	return b.String()
}

// pgSettleBench names the microbenchmark of durable settlements through
// the PostgreSQL store (storage/postgres, a server with fsync on, 1,000
// users, 32 goroutines settling reservations made before).
const pgSettleBench = `ReserveSettleDurable/settle-only/users=1000`

// postgresChecks are the targets of the PostgreSQL backend: gateway ÷
// plain at 32 connections from the -postgres run, and the durable
// settlements/s of the microbenchmark.
func (r *report) postgresChecks() []check {
	var cs []check
	if p := r.postgres; p != nil {
		for _, l := range p.loads {
			plain, gw := p.samples[l.name]["plain"], p.samples[l.name]["gateway"]
			v := math.NaN()
			if len(plain) > 0 && len(gw) > 0 {
				rps := func(ss []pgSample) float64 {
					xs := make([]float64, len(ss))
					for i, s := range ss {
						xs[i] = s.rps
					}
					return median(xs)
				}
				v = rps(gw) / rps(plain)
			}
			cs = append(cs, check{"PostgreSQL, " + l.name + ": gateway/plain req/s", fmtRatio(v), "≥ 0.75", nanPass(v, v >= 0.75)})
		}
	}
	if m := r.findMicro(pgSettleBench); m != nil {
		v := settlementsPerSec(m)
		cs = append(cs, check{"durable settlements on PostgreSQL (" + m.pkg + "." + m.name + ")", fmt.Sprintf("%.0f/s", v), "≥ 10,000/s", passFail(v >= 10000)})
	}
	return cs
}
