package loadgen

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 100000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 50 * time.Millisecond},
		{0.99, 99 * time.Millisecond},
		{0.999, 99900 * time.Microsecond},
		{1, 100 * time.Millisecond},
	}
	for _, tc := range tests {
		got := h.Quantile(tc.q)
		if diff := float64(got-tc.want) / float64(tc.want); diff > 0.01 || diff < -0.01 {
			t.Errorf("q%.3f = %s, want %s ±1%%", tc.q, got, tc.want)
		}
	}
	var small Histogram
	small.Record(100)
	small.Record(3)
	if small.Quantile(0) != 3 || small.Quantile(1) != 100 || small.Count() != 2 {
		t.Errorf("small histogram: %s %s %d", small.Quantile(0), small.Quantile(1), small.Count())
	}
	var m Histogram
	m.Merge(&h)
	m.Merge(&small)
	if m.Count() != h.Count()+2 || m.Max() != h.Max() {
		t.Errorf("merge: count %d max %s", m.Count(), m.Max())
	}
}

func TestParseChunkSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"1a\r\n", 26, false},
		{"0\r\n", 0, false},
		{"FF;ext=1\r\n", 255, false},
		{"\r\n", 0, true},
		{"zz\r\n", 0, true},
	}
	for _, tc := range tests {
		got, err := parseChunkSize([]byte(tc.in))
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseChunkSize(%q) = %d, %v", tc.in, got, err)
		}
	}
}

func TestReadResponses(t *testing.T) {
	raw := "HTTP/1.1 100 Continue\r\n\r\n" +
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" +
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" +
		"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
	br := bufio.NewReader(strings.NewReader(raw))
	want := []struct {
		status int
		n      int64
		close  bool
	}{{200, 5, false}, {200, 5, false}, {404, 0, true}}
	for i, w := range want {
		h, err := readHead(br)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		n, err := readBody(br, h, "POST")
		if err != nil || h.status != w.status || n != w.n || h.close != w.close {
			t.Fatalf("%d: status %d n %d close %v err %v", i, h.status, n, h.close, err)
		}
	}
}

// TestRunAgainstMock is the harness smoke test: mock plus load generator for
// a short while, JSON and SSE.
func TestRunAgainstMock(t *testing.T) {
	srv := httptest.NewServer(mock.NewHandler(mock.Options{StreamChunks: 8}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	hdr := map[string]string{"Content-Type": "application/json"}
	for _, body := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
	} {
		// A machine busy with other work may complete nothing in a short
		// window: the window grows until responses arrive, so the test
		// checks what was measured, not how fast.
		var res *Result
		for d := 400 * time.Millisecond; ; d *= 2 {
			r, err := Run(context.Background(), Config{
				Addr: addr, Request: BuildRequest("POST", addr, "/v1/chat/completions", hdr, []byte(body)),
				Conns: 4, Warmup: 100 * time.Millisecond, Duration: d,
			})
			if err != nil {
				t.Fatal(err)
			}
			if res = r; res.Requests > 0 || d > 30*time.Second {
				break
			}
		}
		if res.Requests == 0 || res.Non2xx != 0 || res.Errors != 0 || res.Status[200] != res.Requests ||
			res.P50() <= 0 || res.P99() < res.P50() || res.BodyBytes == 0 {
			t.Fatalf("%s: %s (first error %q)", body, res, res.FirstError)
		}
		t.Logf("%s", res)
	}
	// A status error is counted, not hidden.
	res, err := Run(context.Background(), Config{
		Addr: addr, Request: BuildRequest("GET", addr, "/nope", nil, nil),
		Conns: 1, Duration: 100 * time.Millisecond,
	})
	if err != nil || res.Requests == 0 || res.Non2xx != res.Requests || res.Status[404] != res.Requests {
		t.Fatalf("404 run: %v %s", err, res)
	}
}

func TestHoldStreams(t *testing.T) {
	h := mock.NewHandler(mock.Options{StreamChunks: 1000, ChunkDelay: 50 * time.Millisecond})
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = nil
	srv.Start()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	req := BuildRequest("POST", addr, "/v1/chat/completions", nil, []byte(`{"stream":true}`))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hold, err := Hold(ctx, addr, req, 50, 10)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := hold.Failed(); hold.Open() != 50 || n != 0 {
		t.Fatalf("open %d failed %d (%v)", hold.Open(), n, err)
	}
	if got := h.Stats().ActiveStreams; got != 50 {
		t.Fatalf("mock sees %d active streams", got)
	}
	hold.Close()
	if hold.Ended() != 0 {
		t.Fatalf("%d streams ended early", hold.Ended())
	}
}

// With Requests, each connection sends them in turn: every one arrives.
func TestRunRequestsInTurn(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("Authorization")]++
		mu.Unlock()
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	var reqs [][]byte
	for _, k := range []string{"a", "b", "c"} {
		reqs = append(reqs, BuildRequest("GET", addr, "/", map[string]string{"Authorization": k}, nil))
	}
	for d := 200 * time.Millisecond; ; d *= 2 {
		res, err := Run(context.Background(), Config{Addr: addr, Requests: reqs, Conns: 2, Duration: d})
		if err != nil {
			t.Fatal(err)
		}
		if res.Requests >= 6 || d > 10*time.Second {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen["a"] == 0 || seen["b"] == 0 || seen["c"] == 0 {
		t.Fatalf("requests by key: %v", seen)
	}
}
