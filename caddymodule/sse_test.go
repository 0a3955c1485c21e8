package caddymodule

import (
	"bytes"
	"strings"
	"testing"
)

// A real-shaped chat stream with include_usage: role chunk, content deltas
// (with escapes and non-ASCII), a tool-call delta, the finish chunk, the
// usage-only chunk, and [DONE]. Every chunk carries "usage":null as OpenAI
// sends it when include_usage is on.
const testStream = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n" +
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}],\"usage\":null}\n\n" +
	": keep-alive comment\n\n" +
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\", w\\u00f6rld\\n\\\"x\\\"\"},\"finish_reason\":null}],\"usage\":null}\r\n\r\n" +
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n" +
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\n" +
	"data: [DONE]\n\n"

// testStreamStripped is testStream without the usage-only event.
var testStreamStripped = strings.Replace(testStream,
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\n", "", 1)

// generated text of testStream: "Hello" (5) + ", wörld\n\"x\"" (10 ASCII + ö)
// + "{}" (2), plus the empty role delta.
const testStreamASCII, testStreamOther = 17, 1

func runScanner(strip bool, chunks [][]byte) (*sseScanner, []byte) {
	s := &sseScanner{strip: strip}
	var out bytes.Buffer
	emit := func(b []byte) { out.Write(b) }
	for _, c := range chunks {
		if !strip {
			out.Write(c) // the meter writes first, then scans
			s.feed(c, nil)
		} else {
			s.feed(c, emit)
		}
	}
	s.finish(emit)
	return s, out.Bytes()
}

func checkScan(t *testing.T, name string, strip bool, s *sseScanner, out []byte) {
	t.Helper()
	want := testStream
	if strip {
		want = testStreamStripped
	}
	if string(out) != want {
		t.Fatalf("%s: output differs:\n got %q\nwant %q", name, out, want)
	}
	if !s.haveUsage || s.usage != (usage{PromptTokens: 12, CompletionTokens: 7, TotalTokens: 19}) {
		t.Fatalf("%s: usage = %+v (have %v)", name, s.usage, s.haveUsage)
	}
	if s.generated.ascii != testStreamASCII || s.generated.other != testStreamOther {
		t.Fatalf("%s: generated = %+v, want ascii %d other %d", name, s.generated, testStreamASCII, testStreamOther)
	}
	if !s.sawDone || s.events != 5 {
		t.Fatalf("%s: sawDone=%v events=%d", name, s.sawDone, s.events)
	}
}

func TestSSEScannerEveryBoundary(t *testing.T) {
	b := []byte(testStream)
	for _, strip := range []bool{false, true} {
		for i := 0; i <= len(b); i++ {
			// copies, so that the scanner cannot rely on the caller's buffer
			a := append([]byte(nil), b[:i]...)
			c := append([]byte(nil), b[i:]...)
			s, out := runScanner(strip, [][]byte{a, c})
			checkScan(t, "split", strip, s, out)
		}
		// three pieces at every pair of offsets (coarser stride)
		for i := 0; i <= len(b); i += 7 {
			for j := i; j <= len(b); j += 5 {
				s, out := runScanner(strip, [][]byte{b[:i:i], b[i:j:j], b[j:]})
				checkScan(t, "split3", strip, s, out)
			}
		}
	}
}

func TestSSEScannerOneByteWrites(t *testing.T) {
	for _, strip := range []bool{false, true} {
		var chunks [][]byte
		for i := range len(testStream) {
			chunks = append(chunks, []byte{testStream[i]})
		}
		s, out := runScanner(strip, chunks)
		checkScan(t, "1-byte", strip, s, out)
	}
}

func TestSSEScannerCases(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		strip     bool
		want      string // expected output (strip mode); "" means same as in
		haveUsage bool
		usage     usage
	}{
		{
			name: "no usage (client abandoned)", strip: true,
			in: "data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"}}]}\n\n",
		},
		{
			name: "usage attached to a content chunk is kept", strip: true,
			in:        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n",
			haveUsage: true, usage: usage{1, 2, 3},
		},
		{
			name: "cumulative usage: last wins", strip: true,
			in:        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n",
			want:      "data: [DONE]\n\n",
			haveUsage: true, usage: usage{1, 5, 6},
		},
		{
			name: "client asked for usage: not stripped", strip: false,
			in:        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
			haveUsage: true, usage: usage{2, 3, 5},
		},
		{
			name: "final line without newline", strip: true,
			in: "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]",
		},
		{
			name: "usage-only event with id line", strip: true,
			in:        "id: 1\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
			want:      "id: 1\ndata: [DONE]\n\n",
			haveUsage: true, usage: usage{2, 3, 5},
		},
		{
			name: "malformed usage ignored", strip: true,
			in: "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-1}}\n\ndata: [DONE]\n\n",
			// decoded, no usable count, still the usage-only shape: stripped
			want: "data: [DONE]\n\n",
		},
		{
			name: "invalid JSON passes", strip: true,
			in: "data: {\"usage\":{oops\n\ndata: [DONE]\n\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want == "" {
				want = tt.in
			}
			s, out := runScanner(tt.strip, [][]byte{[]byte(tt.in)})
			if string(out) != want {
				t.Errorf("output %q, want %q", out, want)
			}
			if s.haveUsage != tt.haveUsage || s.usage != tt.usage {
				t.Errorf("usage %+v (%v), want %+v (%v)", s.usage, s.haveUsage, tt.usage, tt.haveUsage)
			}
		})
	}
}

func TestSSEScannerLongLine(t *testing.T) {
	long := "data: {\"choices\":[{\"delta\":{\"content\":\"" + strings.Repeat("a", maxSSELine) + "\"}}]}\n\n"
	in := long + "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\ndata: [DONE]\n\n"
	var chunks [][]byte
	for i := 0; i < len(in); i += 4096 {
		chunks = append(chunks, []byte(in[i:min(i+4096, len(in))]))
	}
	s, out := runScanner(true, chunks)
	if string(out) != long+"data: [DONE]\n\n" {
		t.Fatalf("long line not passed through intact (len %d)", len(out))
	}
	if !s.haveUsage || s.usage.TotalTokens != 2 {
		t.Fatalf("usage after a long line: %+v", s.usage)
	}
	if cap(s.line) > 2*maxSSELine {
		t.Fatalf("line buffer grew to %d", cap(s.line))
	}
}

func BenchmarkSSEScan(b *testing.B) {
	ev := []byte("data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"finish_reason\":null}],\"usage\":null}\n\n")
	for _, strip := range []bool{false, true} {
		name := "passthrough"
		if strip {
			name = "strip"
		}
		b.Run(name, func(b *testing.B) {
			s := &sseScanner{strip: strip}
			emit := func([]byte) {}
			b.SetBytes(int64(len(ev)))
			b.ReportAllocs()
			for b.Loop() {
				s.feed(ev, emit)
			}
		})
	}
}
