// Command soak runs the gateway binary (Caddyfile.example) against the mock
// upstream with mixed traffic for a set time: JSON completions, streams with
// and without usage, clients that disconnect mid-stream, management calls
// (keys, balances, top-ups, usage) and requests that must be refused (401,
// 402, 429). At the end it checks that nothing failed beyond the expected
// refusals, that every balance equals its ledger exactly, and that the
// process's goroutines and RSS came back near where they started.
//
//	make soak                       # 10 minutes
//	SOAK_DURATION=2m make soak
//	go run ./bench/cmd/soak -duration 30s -binary bin/caddy
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/loadgen"
	"github.com/gatewayz/caddy-gatewayz/bench/mock"
	"github.com/gatewayz/caddy-gatewayz/e2e"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

const (
	adminKey     = "soak-admin-key-4b7e1f9a0c3d5e62"
	secret       = "soak-server-secret-8a1c3e5f7b9d0f24"
	initial      = 1_000_000_000
	poorCredits  = 5
	limitedRPM   = 30
	streamChunks = 16
)

func main() {
	def := 10 * time.Minute
	if s := os.Getenv("SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			fatalf("SOAK_DURATION: %v", err)
		}
		def = d
	}
	duration := flag.Duration("duration", def, "how long to run the mixed traffic (env SOAK_DURATION)")
	workers := flag.Int("c", 16, "concurrent clients")
	users := flag.Int("users", 8, "paying users")
	binary := flag.String("binary", "bin/caddy", "the gateway binary (make build)")
	caddyfile := flag.String("caddyfile", "Caddyfile.example", "the configuration to run")
	sample := flag.Duration("sample", 10*time.Second, "interval of the goroutine/RSS samples")
	flag.Parse()

	s, err := newSoak(*binary, *caddyfile, *users)
	if err != nil {
		fatalf("%v", err)
	}
	defer s.close()
	ok := s.run(*duration, *workers, *sample)
	if !ok {
		fmt.Println("SOAK FAILED")
		os.Exit(1)
	}
	fmt.Println("SOAK PASSED")
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak: "+format+"\n", args...)
	os.Exit(1)
}

type soak struct {
	dir      string
	upstream *httptest.Server
	mockH    *mock.Handler
	gw       *e2e.Gateway
	api      *e2e.API
	client   *http.Client

	users   []*e2e.User
	poor    *e2e.User // too few credits for any request: 402
	limited *e2e.User // limitedRPM requests a minute: 429 beyond

	topUps   sync.Map // user id -> *atomic.Int64 credits added
	counts   sync.Map // kind -> *atomic.Int64
	failures atomic.Int64
	failMu   sync.Mutex
	failLog  []string
	lat      sync.Mutex
	latency  map[string]*loadgen.Histogram
}

func newSoak(binary, caddyfile string, nUsers int) (*soak, error) {
	for _, p := range []*string{&binary, &caddyfile} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		*p = abs
	}
	if _, err := os.Stat(binary); err != nil {
		return nil, fmt.Errorf("%v (run make build first)", err)
	}
	dir, err := os.MkdirTemp("", "gatewayz-soak-")
	if err != nil {
		return nil, err
	}
	s := &soak{dir: dir, latency: map[string]*loadgen.Histogram{}}
	s.mockH = mock.NewHandler(mock.Options{ChunkDelay: 5 * time.Millisecond, StreamChunks: streamChunks})
	s.upstream = httptest.NewServer(s.mockH)
	s.gw, err = e2e.Start(e2e.Config{
		Binary: binary, Caddyfile: caddyfile, Dir: dir, Upstream: s.upstream.URL,
		AdminKey: adminKey, Secret: secret, APIKey: "sk-soak-upstream", SignupCredits: "1000",
	})
	if err != nil {
		s.upstream.Close()
		return nil, err
	}
	s.client = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	s.api = e2e.NewAPI(s.gw.URL, adminKey)
	s.api.Client = s.client
	plan, err := s.api.BigPlan("soak")
	if err != nil {
		return nil, err
	}
	for i := range nUsers {
		u, err := s.api.Register(fmt.Sprintf("soak%d", i), fmt.Sprintf("soak%d@example.com", i), initial)
		if err != nil {
			return nil, err
		}
		if err := s.api.AssignPlan(u.ID, plan); err != nil {
			return nil, err
		}
		s.users = append(s.users, u)
	}
	if s.poor, err = s.api.Register("poor", "poor@example.com", poorCredits); err != nil {
		return nil, err
	}
	if s.limited, err = s.api.Register("limited", "limited@example.com", initial); err != nil {
		return nil, err
	}
	// Past the trial plan's daily limits, every refusal would be a 429.
	for _, u := range []*e2e.User{s.poor, s.limited} {
		if err := s.api.AssignPlan(u.ID, plan); err != nil {
			return nil, err
		}
	}
	resp, err := s.api.Do("POST", "/admin/limit", adminKey, map[string]any{"user_id": s.limited.ID,
		"rate_limits": map[string]any{"requests_per_minute": limitedRPM}})
	if err != nil || resp.Status != 200 {
		return nil, fmt.Errorf("set limits: %v %v", err, resp)
	}
	return s, nil
}

func (s *soak) close() {
	if s.gw != nil {
		s.gw.Kill()
	}
	if s.upstream != nil {
		s.upstream.Close()
	}
	os.RemoveAll(s.dir)
}

func (s *soak) count(kind string) {
	v, _ := s.counts.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (s *soak) fail(format string, args ...any) {
	s.failures.Add(1)
	s.failMu.Lock()
	if len(s.failLog) < 50 {
		s.failLog = append(s.failLog, fmt.Sprintf(format, args...))
	}
	s.failMu.Unlock()
}

func (s *soak) observe(kind string, d time.Duration) {
	s.lat.Lock()
	h := s.latency[kind]
	if h == nil {
		h = &loadgen.Histogram{}
		s.latency[kind] = h
	}
	h.Record(d)
	s.lat.Unlock()
}

// sample is one reading of the gateway process. rssKiB is the anonymous
// resident memory (heap, stacks: RssAnon); fileKiB the resident pages of
// mapped files, mostly the bbolt database, which is mmapped and grows
// with the ledger and usage records by design.
type sample struct {
	at         time.Duration
	goroutines int
	rssKiB     int64
	fileKiB    int64
}

func (s *soak) sampleNow(start time.Time, gc bool) (sample, error) {
	sm := sample{at: time.Since(start).Round(time.Second)}
	if gc {
		// A heap profile with gc=1 runs a collection in the gateway.
		if resp, err := s.client.Get("http://" + s.gw.AdminAddr + "/debug/pprof/heap?gc=1"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	resp, err := s.client.Get("http://" + s.gw.AdminAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return sm, err
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if err != nil {
		return sm, err
	}
	m := regexp.MustCompile(`total (\d+)`).FindStringSubmatch(line)
	if m == nil {
		return sm, fmt.Errorf("goroutine profile: %q", line)
	}
	sm.goroutines, _ = strconv.Atoi(m[1])
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.gw.Pid()))
	if err != nil {
		return sm, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "RssAnon:":
			sm.rssKiB, _ = strconv.ParseInt(f[1], 10, 64)
		case "RssFile:":
			sm.fileKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return sm, nil
}

func (s *soak) run(duration time.Duration, workers int, every time.Duration) bool {
	start := time.Now()
	base, err := s.sampleNow(start, true)
	if err != nil {
		fmt.Println("sampling:", err)
		return false
	}
	fmt.Printf("soak: %v with %d clients against %s (pid %d); start: %d goroutines, RSS anon %d MiB, file %d MiB\n",
		duration, workers, s.gw.URL, s.gw.Pid(), base.goroutines, base.rssKiB>>10, base.fileKiB>>10)

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			for ctx.Err() == nil {
				s.step(ctx, rng)
			}
		}()
	}
	samples := []sample{base}
	peak := base
	tick := time.NewTicker(every)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			sm, err := s.sampleNow(start, false)
			if err != nil {
				s.fail("sampling: %v", err)
				continue
			}
			samples = append(samples, sm)
			peak.goroutines = max(peak.goroutines, sm.goroutines)
			peak.rssKiB = max(peak.rssKiB, sm.rssKiB)
			peak.fileKiB = max(peak.fileKiB, sm.fileKiB)
			fmt.Printf("  t=%-6v goroutines %-5d RSS anon %4d MiB, file %4d MiB  upstream streams active %d  failures %d\n",
				sm.at, sm.goroutines, sm.rssKiB>>10, sm.fileKiB>>10, s.mockH.Stats().ActiveStreams, s.failures.Load())
		}
	}
	wg.Wait()
	elapsed := time.Since(start)

	// Let abandoned streams settle, then read the end state. The clients'
	// idle keep-alive connections each hold a server goroutine: close them
	// first, so what remains above the start is a leak.
	if tr, ok := s.client.Transport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
	deadline := time.Now().Add(30 * time.Second)
	var end sample
	for {
		end, err = s.sampleNow(start, true)
		if err == nil && end.goroutines <= base.goroutines+10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	ok := s.report(elapsed, base, peak, end)
	return s.checkLedger() && ok
}

// step performs one randomly chosen action.
func (s *soak) step(ctx context.Context, rng *rand.Rand) {
	u := s.users[rng.IntN(len(s.users))]
	switch p := rng.IntN(100); {
	case p < 35:
		s.chat(ctx, "json", u.APIKey, false, 0, http.StatusOK)
	case p < 55:
		s.stream(ctx, "stream+usage", u.APIKey, true, false)
	case p < 65:
		s.stream(ctx, "stream", u.APIKey, false, false)
	case p < 73:
		s.stream(ctx, "disconnect", u.APIKey, rng.IntN(2) == 0, true)
	case p < 88:
		s.manage(ctx, rng, u)
	case p < 92:
		s.chat(ctx, "refused 402", s.poor.APIKey, false, 100, http.StatusPaymentRequired)
	case p < 95:
		s.chat(ctx, "refused 401", "gw_live_"+strings.Repeat("x", 43), false, 0, http.StatusUnauthorized)
	default:
		// The limited user: 200 until the minute's budget is spent, then 429.
		s.chat(ctx, "limited", s.limited.APIKey, false, 0, http.StatusOK, http.StatusTooManyRequests)
	}
}

func chatBody(stream, usage bool, maxTokens int) []byte {
	b := map[string]any{"model": "mock-model", "messages": []map[string]string{{"role": "user", "content": "Tell me something"}}}
	if stream {
		b["stream"] = true
		if usage {
			b["stream_options"] = map[string]any{"include_usage": true}
		}
	}
	if maxTokens > 0 {
		b["max_tokens"] = maxTokens
	}
	js, _ := json.Marshal(b)
	return js
}

func (s *soak) post(ctx context.Context, key string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", s.gw.URL+"/v1/chat/completions", strings.NewReader(string(body)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	return s.client.Do(req)
}

func (s *soak) chat(ctx context.Context, kind, key string, stream bool, maxTokens int, want ...int) {
	t0 := time.Now()
	resp, err := s.post(ctx, key, chatBody(stream, false, maxTokens))
	if err != nil {
		if ctx.Err() == nil {
			s.fail("%s: %v", kind, err)
		}
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for _, w := range want {
		if resp.StatusCode == w {
			s.count(fmt.Sprintf("%s %d", kind, w))
			s.observe(kind, time.Since(t0))
			return
		}
	}
	s.fail("%s: status %d, want %v", kind, resp.StatusCode, want)
}

// stream reads a stream to the end, or, with disconnect, drops the
// connection after a few events.
func (s *soak) stream(ctx context.Context, kind, key string, usage, disconnect bool) {
	t0 := time.Now()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := s.post(rctx, key, chatBody(true, usage, 0))
	if err != nil {
		if ctx.Err() == nil {
			s.fail("%s: %v", kind, err)
		}
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		s.fail("%s: status %d: %.200s", kind, resp.StatusCode, b)
		return
	}
	sc := bufio.NewScanner(resp.Body)
	events, done, sawUsage := 0, false, false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "data: [DONE]":
			done = true
		case strings.HasPrefix(line, "data: "):
			events++
			if strings.Contains(line, `"usage"`) {
				sawUsage = true
			}
		}
		if disconnect && events == 3 {
			cancel()
			s.count(kind)
			return
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		s.fail("%s: reading: %v", kind, err)
		return
	}
	if ctx.Err() != nil {
		return // the soak ended mid-stream
	}
	if !done || sawUsage != usage {
		s.fail("%s: [DONE] %v, usage chunk %v (asked %v), %d events", kind, done, sawUsage, usage, events)
		return
	}
	s.count(kind)
	s.observe(kind, time.Since(t0))
}

// manage makes one management call, as a front end would.
func (s *soak) manage(ctx context.Context, rng *rand.Rand, u *e2e.User) {
	if ctx.Err() != nil {
		return
	}
	t0 := time.Now()
	var kind string
	var err error
	var resp *e2e.Response
	switch rng.IntN(6) {
	case 0:
		kind = "balance"
		resp, err = s.api.Do("GET", "/user/balance", u.APIKey, nil)
	case 1:
		kind = "list keys"
		resp, err = s.api.Do("GET", "/user/api-keys", u.APIKey, nil)
	case 2:
		kind = "usage"
		resp, err = s.api.Do("GET", "/user/monitor", u.APIKey, nil)
	case 3:
		kind = "top-up"
		amount := int64(rng.IntN(1000) + 1)
		idem := fmt.Sprintf("soak-%d-%d", u.ID, rng.Uint64())
		resp, err = s.api.Do("POST", "/admin/add_credits", adminKey, map[string]any{"user_id": u.ID, "credits": amount},
			"Idempotency-Key: "+idem)
		if err == nil && resp.Status == 200 {
			v, _ := s.topUps.LoadOrStore(u.ID, new(atomic.Int64))
			v.(*atomic.Int64).Add(amount)
			// A retry with the same key changes nothing.
			r2, err2 := s.api.Do("POST", "/admin/add_credits", adminKey, map[string]any{"user_id": u.ID, "credits": amount},
				"Idempotency-Key: "+idem)
			if err2 != nil || r2.Status != 200 || r2.JSON()["replayed"] != true {
				s.fail("top-up replay: %v %v", err2, r2)
			}
		}
	case 4:
		kind = "create+delete key"
		var key string
		var id int64
		key, id, err = s.api.CreateKey(u.APIKey, map[string]any{"key_name": fmt.Sprintf("soak-%d", rng.Uint64())})
		if err == nil {
			if r, e := s.api.Do("GET", "/user/balance", key, nil); e != nil || r.Status != 200 {
				s.fail("new key does not authenticate: %v %v", e, r)
			}
			resp, err = s.api.Do("DELETE", fmt.Sprintf("/user/api-keys/%d", id), u.APIKey, map[string]any{"confirmation": "DELETE_KEY"})
			if err == nil && resp.Status == 200 {
				if r, e := s.api.Do("GET", "/user/balance", key, nil); e != nil || r.Status != 401 {
					s.fail("deleted key still authenticates: %v %v", e, r)
				}
			}
		}
	default:
		kind = "admin user"
		resp, err = s.api.Do("GET", fmt.Sprintf("/admin/users/%d", u.ID), adminKey, nil)
	}
	switch {
	case err != nil:
		if ctx.Err() == nil {
			s.fail("%s: %v", kind, err)
		}
	case resp != nil && resp.Status != 200:
		s.fail("%s: status %d: %.200s", kind, resp.Status, resp.Body)
	default:
		s.count(kind)
		s.observe("management", time.Since(t0))
	}
}

func (s *soak) report(elapsed time.Duration, base, peak, end sample) bool {
	fmt.Printf("\nsoak: ran %v\n", elapsed.Round(time.Second))
	var total int64
	var kinds []string
	s.counts.Range(func(k, v any) bool {
		kinds = append(kinds, k.(string))
		total += v.(*atomic.Int64).Load()
		return true
	})
	sortStrings(kinds)
	for _, k := range kinds {
		v, _ := s.counts.Load(k)
		fmt.Printf("  %-24s %8d\n", k, v.(*atomic.Int64).Load())
	}
	fmt.Printf("  %-24s %8d (%.0f/s)\n", "total", total, float64(total)/elapsed.Seconds())
	s.lat.Lock()
	var lk []string
	for k := range s.latency {
		lk = append(lk, k)
	}
	sortStrings(lk)
	for _, k := range lk {
		h := s.latency[k]
		fmt.Printf("  latency %-16s p50 %-10v p99 %-10v max %v\n", k, h.Quantile(0.5), h.Quantile(0.99), h.Max())
	}
	s.lat.Unlock()
	fmt.Printf("  goroutines: start %d, peak %d, end %d\n", base.goroutines, peak.goroutines, end.goroutines)
	fmt.Printf("  RSS anon: start %d MiB, peak %d MiB, end %d MiB\n", base.rssKiB>>10, peak.rssKiB>>10, end.rssKiB>>10)
	fmt.Printf("  RSS file (mmapped database): start %d MiB, end %d MiB\n", base.fileKiB>>10, end.fileKiB>>10)
	if st, err := os.Stat(filepath.Join(s.dir, "gatewayz.db")); err == nil {
		fmt.Printf("  database file: %d MiB\n", st.Size()>>20)
	}
	ok := true
	if n := s.failures.Load(); n > 0 {
		ok = false
		fmt.Printf("FAIL: %d unexpected results; first ones:\n", n)
		for _, l := range s.failLog {
			fmt.Println("   ", l)
		}
	}
	if end.goroutines > base.goroutines+20 {
		ok = false
		fmt.Printf("FAIL: goroutines did not come back: start %d, end %d\n", base.goroutines, end.goroutines)
	}
	if end.rssKiB > max(2*base.rssKiB, base.rssKiB+128<<10) {
		ok = false
		fmt.Printf("FAIL: anonymous RSS did not come back: start %d MiB, end %d MiB\n", base.rssKiB>>10, end.rssKiB>>10)
	}
	return ok
}

// checkLedger checks every user over the API (balance = initial + top-ups
// - charged credits, nothing reserved), then stops the gateway and checks
// the database file itself (VerifyLedger).
func (s *soak) checkLedger() bool {
	ok := true
	all := append([]*e2e.User{s.poor, s.limited}, s.users...)
	for _, u := range all {
		want := int64(initial)
		if u == s.poor {
			want = poorCredits
		}
		if v, found := s.topUps.Load(u.ID); found {
			want += v.(*atomic.Int64).Load()
		}
		var c e2e.Credits
		var charged int64
		settled := false
		for range 100 { // usage records are group-committed just after the balance
			var err error
			c, err = s.api.UserCredits(u.ID)
			if err != nil {
				fmt.Println("FAIL:", err)
				return false
			}
			resp, err := s.api.Do("GET", "/user/monitor?days=365", u.APIKey, nil)
			if err != nil || resp.Status != 200 {
				fmt.Printf("FAIL: monitor user %d: %v %v\n", u.ID, err, resp)
				return false
			}
			m, _ := resp.JSON()["usage_metrics"].(map[string]any)
			f, _ := m["total_credits"].(float64)
			charged = int64(f)
			if c.Reserved == 0 && c.Credits == want-charged {
				settled = true
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !settled {
			ok = false
			fmt.Printf("FAIL: user %d: credits %d reserved %d; initial+top-ups %d - charged %d = %d\n",
				u.ID, c.Credits, c.Reserved, want, charged, want-charged)
		}
	}
	if err := s.gw.Stop(60 * time.Second); err != nil {
		fmt.Println("FAIL: stopping the gateway:", err)
		return false
	}
	for _, l := range s.gw.Logs().Lines() {
		if strings.Contains(l, `"level":"error"`) || strings.Contains(l, "panic") {
			// Client disconnects are expected and logged below error level.
			ok = false
			fmt.Printf("FAIL: gateway log: %.300s\n", l)
		}
	}
	st, err := storage.Open(filepath.Join(s.dir, "gatewayz.db"), storage.Options{})
	if err != nil {
		fmt.Println("FAIL: opening the database:", err)
		return false
	}
	defer st.Close()
	if err := st.VerifyLedger(context.Background()); err != nil {
		fmt.Println("FAIL: VerifyLedger:", err)
		return false
	}
	if ok {
		fmt.Printf("  ledger: exact for %d users (API and VerifyLedger)\n", len(all))
	}
	return ok
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
