package mock

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func post(t *testing.T, srv *httptest.Server, path, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func TestChatJSON(t *testing.T) {
	var seen string
	h := NewHandler(Options{PromptTokens: 7, CompletionTokens: 30, OnRequest: func(r *http.Request, b []byte) { seen = string(b) }})
	srv := httptest.NewServer(h)
	defer srv.Close()

	tests := []struct {
		name, body     string
		hdr            map[string]string
		wantModel      string
		wantCompletion int
	}{
		{"default", `{"model":"m1","messages":[]}`, nil, "m1", 30},
		{"max_tokens caps", `{"model":"m2","max_tokens":5}`, nil, "m2", 5},
		{"no model", `{}`, nil, "mock-model", 30},
		{"header completion", `{"model":"m1"}`, map[string]string{HeaderCompletion: "3"}, "m1", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, srv, "/v1/chat/completions", tc.body, tc.hdr)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			var got struct {
				Model string `json:"model"`
				Usage *usage `json:"usage"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if got.Model != tc.wantModel || got.Usage == nil || got.Usage.CompletionTokens != tc.wantCompletion ||
				got.Usage.PromptTokens != 7 || got.Usage.TotalTokens != 7+tc.wantCompletion {
				t.Fatalf("got model %q usage %+v", got.Model, got.Usage)
			}
			if seen != tc.body {
				t.Fatalf("OnRequest saw %q", seen)
			}
		})
	}
}

// readStream returns the data payloads of an SSE body and whether it ended
// cleanly.
func readStream(t *testing.T, r io.Reader) ([]string, error) {
	t.Helper()
	var events []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "data: ") {
			events = append(events, strings.TrimPrefix(line, "data: "))
		}
	}
	return events, sc.Err()
}

func TestStream(t *testing.T) {
	h := NewHandler(Options{StreamChunks: 4, PromptTokens: 2})
	srv := httptest.NewServer(h)
	defer srv.Close()

	for _, include := range []bool{false, true} {
		body := `{"model":"m","stream":true}`
		if include {
			body = `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`
		}
		resp := post(t, srv, "/v1/chat/completions", body, nil)
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("content type %q", ct)
		}
		events, err := readStream(t, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		want := 4 + 1 + 1 // content chunks, final chunk, [DONE]
		if include {
			want++
		}
		if len(events) != want || events[len(events)-1] != "[DONE]" {
			t.Fatalf("include=%v: %d events: %q", include, len(events), events)
		}
		if include {
			var u struct {
				Choices []any  `json:"choices"`
				Usage   *usage `json:"usage"`
			}
			if err := json.Unmarshal([]byte(events[len(events)-2]), &u); err != nil {
				t.Fatal(err)
			}
			if u.Usage == nil || u.Usage.CompletionTokens != 4 || u.Usage.TotalTokens != 6 || len(u.Choices) != 0 {
				t.Fatalf("usage chunk %s", events[len(events)-2])
			}
		}
	}
	if s := h.Stats(); s.Streams != 2 || s.StreamsDone != 2 || s.ActiveStreams != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFaults(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{}))
	defer srv.Close()

	resp := post(t, srv, "/v1/chat/completions", `{"model":"m"}`, map[string]string{HeaderStatus: "503"})
	if resp.StatusCode != 503 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var e struct {
		Error struct {
			Type string `json:"type"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error.Type != "server_error" {
		t.Fatalf("error body %v %+v", err, e)
	}

	resp = post(t, srv, "/v1/chat/completions", `{"model":"m"}`, map[string]string{HeaderTruncate: "1"})
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("truncated body read without error")
	}

	resp = post(t, srv, "/v1/chat/completions", `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
		map[string]string{HeaderCutAfter: "2"})
	events, err := readStream(t, resp.Body)
	if err == nil || len(events) != 2 {
		t.Fatalf("cut stream: err %v, events %q", err, events)
	}

	resp = post(t, srv, "/v1/chat/completions", `{"model":"m"}`, map[string]string{HeaderNoUsage: "1"})
	b, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(b), "usage") {
		t.Fatalf("usage present: %s", b)
	}

	resp = post(t, srv, "/v1/chat/completions", `{not json`, nil)
	if resp.StatusCode != 400 {
		t.Fatalf("bad json status %d", resp.StatusCode)
	}
}

func TestModelsAndEmbeddings(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{Model: "x"}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"id":"x"`) {
		t.Fatalf("models %d %s", resp.StatusCode, b)
	}
	r2 := post(t, srv, "/v1/embeddings", `{"model":"e","input":"hi"}`, nil)
	var emb struct {
		Data  []struct{ Embedding []float64 } `json:"data"`
		Usage usage                           `json:"usage"`
	}
	if err := json.NewDecoder(r2.Body).Decode(&emb); err != nil || len(emb.Data) != 1 || len(emb.Data[0].Embedding) == 0 || emb.Usage.PromptTokens != 12 {
		t.Fatalf("embeddings %v %+v", err, emb)
	}
	r3 := post(t, srv, "/nope", ``, nil)
	if r3.StatusCode != 404 {
		t.Fatalf("unknown route %d", r3.StatusCode)
	}
}

func BenchmarkChatJSON(b *testing.B) {
	h := NewHandler(Options{})
	body := `{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":64}`
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
	}
}
