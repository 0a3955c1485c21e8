package caddymodule

import (
	"bytes"
	"net/http"
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

// bufSink collects what a strip-mode scanner forwards, and counts the calls.
type bufSink struct {
	out         bytes.Buffer
	runs, helds int
}

func (b *bufSink) forward(run []byte) {
	if len(run) == 0 {
		panic("empty run forwarded")
	}
	b.runs++
	b.out.Write(run)
}

func (b *bufSink) forwardHeld(p []byte) {
	b.helds++
	b.out.Write(p)
}

func runScanner(strip bool, chunks [][]byte) (*sseScanner, []byte) {
	s := &sseScanner{strip: strip}
	var sink bufSink
	for _, c := range chunks {
		if !strip {
			sink.out.Write(c) // the meter writes first, then scans
			s.feed(c, nil)
		} else {
			s.feed(c, &sink)
		}
	}
	s.finish(&sink)
	s.release()
	return s, sink.out.Bytes()
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
			haveUsage: true, usage: usage{PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3},
		},
		{
			name: "cumulative usage: last wins", strip: true,
			in:        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n",
			want:      "data: [DONE]\n\n",
			haveUsage: true, usage: usage{PromptTokens: 1, CompletionTokens: 5, TotalTokens: 6},
		},
		{
			name: "client asked for usage: not stripped", strip: false,
			in:        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
			haveUsage: true, usage: usage{PromptTokens: 2, CompletionTokens: 3, TotalTokens: 5},
		},
		{
			name: "final line without newline", strip: true,
			in: "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]",
		},
		{
			name: "usage-only event with id line", strip: true,
			in:        "id: 1\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
			want:      "id: 1\ndata: [DONE]\n\n",
			haveUsage: true, usage: usage{PromptTokens: 2, CompletionTokens: 3, TotalTokens: 5},
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

// BenchmarkSSEScan measures the scan per event: passthrough and strip feed
// one content event again and again (after the first, counted from the kept
// shape, as most events of a stream are); full makes every event a full
// scan.
func BenchmarkSSEScan(b *testing.B) {
	ev := []byte("data: " + benchSSEData + "\n\n")
	for _, strip := range []bool{false, true} {
		name := "passthrough"
		if strip {
			name = "strip"
		}
		b.Run(name, func(b *testing.B) {
			s := &sseScanner{strip: strip}
			var sink discardSink
			b.SetBytes(int64(len(ev)))
			b.ReportAllocs()
			for b.Loop() {
				s.feed(ev, &sink)
			}
		})
	}
	// Events of two shapes in turn: each one is scanned in full.
	other := []byte("data: " + strings.Replace(benchSSEData, `"index":0,`, "", 1) + "\n\n")
	b.Run("full", func(b *testing.B) {
		s := &sseScanner{}
		b.SetBytes(int64(len(ev)))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if i++; i&1 == 0 {
				s.feed(ev, nil)
			} else {
				s.feed(other, nil)
			}
		}
		if s.shapeHits != 0 {
			b.Fatalf("%d shape hits", s.shapeHits)
		}
	})
}

// benchSSEData is the data of a typical content event.
const benchSSEData = `{"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}],"usage":null}`

type discardSink struct{}

func (discardSink) forward([]byte)     {}
func (discardSink) forwardHeld([]byte) {}

// Whole events in one write go out as one run per stretch between stripped
// events, without copying.
func TestSSEScannerForwardsRuns(t *testing.T) {
	s := &sseScanner{strip: true}
	var sink bufSink
	s.feed([]byte(testStream), &sink)
	if sink.out.String() != testStreamStripped || sink.runs != 2 || sink.helds != 0 {
		t.Fatalf("runs %d helds %d: %q", sink.runs, sink.helds, sink.out.String())
	}
	// A split line: the held start of the line, then one run.
	s, sink = &sseScanner{strip: true}, bufSink{}
	s.feed([]byte(testStream[:30]), &sink)
	s.feed([]byte(testStream[30:200]), &sink)
	if sink.runs != 1 || sink.helds != 1 || sink.out.String() != testStream[:len(sink.out.String())] {
		t.Fatalf("runs %d helds %d: %q", sink.runs, sink.helds, sink.out.String())
	}
	s.release()
	if s.line != nil || s.lineBuf != nil {
		t.Fatal("line buffer kept after release")
	}
}

// sseScannerRef is the scanner as it was before it forwarded runs of the
// caller's buffer, with the reference byte scanners: the differential
// tests hold the current one to its output and results.
type sseScannerRef struct {
	strip     bool
	line      []byte
	overflow  bool
	dropping  bool
	usage     usage
	haveUsage bool
	generated textCounter
	events    int64
	sawDone   bool
}

func (s *sseScannerRef) feed(p []byte, emit func([]byte)) {
	for len(p) > 0 {
		var seg []byte
		nl := bytes.IndexByte(p, '\n')
		complete := nl >= 0
		if complete {
			seg, p = p[:nl+1], p[nl+1:]
		} else {
			seg, p = p, nil
		}
		if s.overflow {
			if s.strip {
				emit(seg)
			}
			if complete {
				s.overflow = false
			}
			continue
		}
		if len(s.line)+len(seg) > maxSSELine {
			if s.strip {
				if len(s.line) > 0 {
					emit(s.line)
				}
				emit(seg)
			}
			s.line = s.line[:0]
			s.overflow = !complete
			continue
		}
		if !complete {
			s.line = append(s.line, seg...)
			continue
		}
		line := seg
		if len(s.line) > 0 {
			s.line = append(s.line, seg...)
			line = s.line
		}
		if !s.processLine(line) && s.strip {
			emit(line)
		}
		s.line = s.line[:0]
	}
}

func (s *sseScannerRef) finish(emit func([]byte)) {
	if len(s.line) == 0 {
		return
	}
	line := s.line
	s.line = nil
	if !s.processLine(line) && s.strip {
		emit(line)
	}
}

func (s *sseScannerRef) processLine(line []byte) (drop bool) {
	content := bytes.TrimRight(line, "\r\n")
	if len(content) == 0 {
		if s.dropping {
			s.dropping = false
			return true
		}
		return false
	}
	if s.dropping {
		return true
	}
	data, ok := bytes.CutPrefix(content, []byte("data:"))
	if !ok {
		return false
	}
	if len(data) > 0 && data[0] == ' ' {
		data = data[1:]
	}
	if string(data) == "[DONE]" {
		s.sawDone = true
		return false
	}
	s.events++
	if usageObjectAtRef(data) < 0 {
		countGeneratedTextRef(data, &s.generated)
		return false
	}
	u, hasUsage, hasChoices, ok := decodeUsageEvent(data)
	if !ok || !hasUsage {
		countGeneratedTextRef(data, &s.generated)
		return false
	}
	if u, ok := u.normalize(); ok {
		s.usage, s.haveUsage = u, true
	}
	if hasChoices {
		countGeneratedTextRef(data, &s.generated)
		return false
	}
	if s.strip {
		s.dropping = true
		return true
	}
	return false
}

// splitAt cuts stream at the given offsets (taken modulo its length, kept
// in order); each chunk is a copy with no spare capacity.
func splitAt(stream []byte, cuts ...uint16) [][]byte {
	var chunks [][]byte
	prev := 0
	for _, c := range cuts {
		i := max(prev, int(c)%(len(stream)+1))
		chunks = append(chunks, bytes.Clone(stream[prev:i]))
		prev = i
	}
	return append(chunks, bytes.Clone(stream[prev:]))
}

// checkScannerMatchesReference runs the scanner, the reference scanner and
// a strip-mode meter over the same chunks: same bytes out, same results,
// and at most one downstream write per upstream write.
func checkScannerMatchesReference(t *testing.T, chunks [][]byte, strip bool) {
	t.Helper()
	ref := &sseScannerRef{strip: strip}
	var want bytes.Buffer
	emit := func(b []byte) { want.Write(b) }
	for _, c := range chunks {
		if !strip {
			want.Write(c)
		}
		ref.feed(c, emit)
	}
	ref.finish(emit)
	got, out := runScanner(strip, chunks)
	if !bytes.Equal(out, want.Bytes()) {
		t.Fatalf("output %q, reference %q", out, want.Bytes())
	}
	if got.usage != ref.usage || got.haveUsage != ref.haveUsage || got.generated != ref.generated ||
		got.events != ref.events || got.sawDone != ref.sawDone || got.dropping != ref.dropping || got.overflow != ref.overflow {
		t.Fatalf("results %+v, reference %+v", got, ref)
	}
	if !strip {
		return
	}
	ew := &eventWriter{h: http.Header{"Content-Type": {"text/event-stream"}}}
	m := newMeter(ew, true, 0, nil)
	m.WriteHeader(200)
	for _, c := range chunks {
		if n, err := m.Write(c); n != len(c) || err != nil {
			t.Fatalf("meter write: %d, %v", n, err)
		}
	}
	m.finishStream()
	if !bytes.Equal(ew.body.Bytes(), want.Bytes()) {
		t.Fatalf("meter output %q, reference %q", ew.body.Bytes(), want.Bytes())
	}
	if writes := len(ew.events) - 1; writes > len(chunks)+1 { // +1: finishStream
		t.Fatalf("%d downstream writes for %d upstream writes", writes, len(chunks))
	}
	if m.sse.usage != ref.usage || m.sse.generated != ref.generated || m.sse.events != ref.events {
		t.Fatalf("meter results %+v, reference %+v", m.sse, ref)
	}
}

func TestSSEScannerMatchesReference(t *testing.T) {
	streams := []string{
		testStream,
		strings.ReplaceAll(testStream, "\n", "\r\n"),
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2}}\ndata: x\n\ndata: [DONE]",
		"id: 7\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n\n\n: c\ndata: {\"content\":\"\\u00e9\"}",
	}
	for _, st := range streams {
		b := []byte(st)
		for _, strip := range []bool{false, true} {
			for i := 0; i <= len(b); i += 3 {
				for j := i; j <= len(b); j += 11 {
					checkScannerMatchesReference(t, splitAt(b, uint16(i), uint16(j)), strip)
				}
			}
		}
	}
	// lines around maxSSELine, split and whole
	long := "data: {\"content\":\"" + strings.Repeat("a", maxSSELine-20) + "\"}\n\n"
	in := []byte(long + long[:maxSSELine/2] + "\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n")
	for _, cuts := range [][]uint16{{}, {100}, {4096, 65535}} {
		chunks := splitAt(in, cuts...)
		for off := 0; off < len(in); off += maxSSELine / 3 {
			chunks = append(chunks[:0], bytes.Clone(in[:off]), bytes.Clone(in[off:]))
			checkScannerMatchesReference(t, chunks, true)
		}
		checkScannerMatchesReference(t, splitAt(in, cuts...), true)
		checkScannerMatchesReference(t, splitAt(in, cuts...), false)
	}
}

// FuzzSSEScannerReference holds the scanner (and the strip-mode meter) to
// the reference scanner on any stream cut in up to three writes.
func FuzzSSEScannerReference(f *testing.F) {
	f.Add([]byte(testStream), uint16(17), uint16(200), true)
	f.Add([]byte(testStream), uint16(300), uint16(301), false)
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r\ndata: [DONE]"), uint16(5), uint16(60), true)
	f.Add([]byte("data:{\"content\":\"\\u00e9\\\"\"}\n\n:comment\nevent: x\n"), uint16(9), uint16(0), true)
	f.Fuzz(func(t *testing.T, stream []byte, cut1, cut2 uint16, strip bool) {
		checkScannerMatchesReference(t, splitAt(stream, cut1, cut2), strip)
	})
}

// repeatedStream is a stream of events that repeat one shape: event i is
// prefix, contents[i] and suffixes[i%len(suffixes)], then [DONE].
func repeatedStream(prefix string, suffixes, contents []string) []byte {
	var b bytes.Buffer
	for i, c := range contents {
		b.WriteString("data: " + prefix + c + suffixes[i%len(suffixes)] + "\n\n")
	}
	b.WriteString("data: [DONE]\n\n")
	return b.Bytes()
}

// Streams whose events repeat a shape count the same as the reference,
// whether the kept shape is reused whole (same tail), reused up to its
// string (another tail: OpenAI's obfuscation padding) or refused (an
// escaped quote, a string "usage", a usage object in a content event).
func TestSSEScannerRepeatedShapes(t *testing.T) {
	mockPrefix := `{"choices":[{"delta":{"content":"`
	mockTail := `"},"finish_reason":null,"index":0}],"created":1735689600,"id":"chatcmpl-mock","model":"m","object":"chat.completion.chunk"}`
	oaPrefix := `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"`
	oaTail := `"},"logprobs":null,"finish_reason":null}],"usage":null`
	words := []string{"Hello", ",", " w\u00f6rld", "", " \\n", "\\u00e9", "usage", " again", "x", "y"}
	cases := []struct {
		name     string
		stream   []byte
		minHits  int64
		ascii    int64
		other    int64
		hasUsage bool
	}{
		{"same tail", repeatedStream(mockPrefix, []string{mockTail}, words), 7, 26, 2, false},
		{"tails vary", repeatedStream(oaPrefix, []string{oaTail + `,"obfuscation":"ab"}`, oaTail + `,"obfuscation":"abcdef"}`, oaTail + `}`}, words), 7, 26, 2, false},
		{"escaped quotes", repeatedStream(mockPrefix, []string{mockTail}, []string{"a", `\"`, "b", `c\"d`, "e"}), 2, 7, 0, false},
		{"generated text in the tail", repeatedStream(`{"choices":[{"delta":{"content":"`, []string{`","reasoning":"hm"}}]}`, `","reasoning":"hmm"}}]}`}, words), 7, 26 + 25, 2, false},
		{"same length, other text in the tail", repeatedStream(mockPrefix, []string{`","reasoning":"abcdef"}`, `","reasoning":"\u00e9"}`}, words), 7, 26 + 5*6, 2 + 5, false},
		{"usage in a content event", repeatedStream(oaPrefix, []string{oaTail + "}", `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}`}, []string{"a", "b", "c", "d"}), 1, 4, 0, true},
		// The last string varies (OpenAI's obfuscation padding): counted
		// from the kept shape whatever it holds, unless it is generated
		// text, holds a quote or a backslash, or reads "usage".
		{"last string varies", repeatedStream(oaPrefix, []string{oaTail + `,"obfuscation":"ab"}`, oaTail + `,"obfuscation":"abcdef"}`, oaTail + `,"obfuscation":""}`}, words), 8, 26, 2, false},
		{"last string varies, with escapes", repeatedStream(oaPrefix, []string{oaTail + `,"obfuscation":"a\"b"}`, oaTail + `,"obfuscation":"\\"}`, oaTail + `,"obfuscation":"\u0022"}`, oaTail + `,"obfuscation":"usage"}`}, words), 4, 26, 2, false},
		{"last string is generated text", repeatedStream(oaPrefix, []string{oaTail + `,"refusal":"no"}`, oaTail + `,"refusal":"never"}`, oaTail + `,"refusal":""}`}, words), 8, 26 + 4*2 + 3*5, 2, false},
		{"last string is a key", repeatedStream(oaPrefix, []string{oaTail + `,"obfuscation":1}`, oaTail + `,"obf":1}`}, words), 8, 26, 2, false},
		{"last string then usage", repeatedStream(oaPrefix, []string{oaTail + `,"obfuscation":"ab"}`, oaTail + `,"obfuscation":"usage":{"total_tokens":3}}`}, words), 2, 26, 2, false},
		{"escaped quotes in the string", repeatedStream(oaPrefix, []string{oaTail + `,"obfuscation":"ab"}`, oaTail + `,"obfuscation":"abc"}`}, []string{"a", `{\"lo`, "cati", `on\":`, `\"usage\":{`, `\"usage`, `x\"`}), 5, 30, 0, false},
	}
	for _, tc := range cases {
		for _, strip := range []bool{false, true} {
			s, _ := runScanner(strip, [][]byte{tc.stream})
			if s.shapeHits < tc.minHits || s.generated != (textCounter{ascii: tc.ascii, other: tc.other}) || s.haveUsage != tc.hasUsage {
				t.Errorf("%s (strip %v): %d shape hits (want >= %d), generated %+v (want %d, %d), usage %v",
					tc.name, strip, s.shapeHits, tc.minHits, s.generated, tc.ascii, tc.other, s.haveUsage)
			}
			for cut := 0; cut < len(tc.stream); cut += 7 {
				checkScannerMatchesReference(t, splitAt(tc.stream, uint16(cut), uint16(cut+90)), strip)
			}
		}
	}
}

// The streams of bench/mock's realistic answers (every field OpenAI
// sends, obfuscation padding included) count as the reference does, with
// all their content events counted from the kept shape but the first few
// (the role chunk, the first content chunks until one without an escaped
// quote is kept, the final chunk and the usage event).
func TestSSEScannerRealisticStreams(t *testing.T) {
	for _, a := range stageAnswers {
		_, pieces := upstreamAnswer(t, a, stageRequest(a, true), true)
		for _, strip := range []bool{false, true} {
			checkScannerMatchesReference(t, pieces, strip)
			s, _ := runScanner(strip, pieces)
			if s.shapeHits < s.events-5 {
				t.Errorf("%s: %d of %d events counted from the shape", a, s.shapeHits, s.events)
			}
		}
	}
}

// FuzzSSEScannerVaryingLastString holds the scanner to the reference on
// streams of events that repeat a shape whose last string changes from
// event to event (NUL separates the contents and the last strings).
func FuzzSSEScannerVaryingLastString(f *testing.F) {
	f.Add(`{"id":"c","choices":[{"index":0,"delta":{"content":"`, `"},"finish_reason":null}],"usage":null,"obfuscation":"`, `"}`,
		"Hello\x00 there\x00!", "Af\x00nSx27\x00\x00usage\x00a\"b", uint16(40), true)
	f.Add(`{"choices":[{"delta":{"content":"`, `"}}],"refusal":"`, `"}`, "a\x00b\x00c", "x\x00yy\x00", uint16(0), false)
	f.Add(`{"choices":[{"delta":{"content":"`, `"}}],"obfuscation":"`, `":{"total_tokens":3}}`, "a\x00b\x00c", "x\x00usage\x00y", uint16(7), true)
	f.Fuzz(func(t *testing.T, prefix, middle, end, contents, lasts string, cut uint16, strip bool) {
		cs, ls := strings.Split(contents, "\x00"), strings.Split(lasts, "\x00")
		var b bytes.Buffer
		for i, c := range cs {
			b.WriteString("data: " + prefix + c + middle + ls[i%len(ls)] + end + "\n\n")
		}
		b.WriteString("data: [DONE]\n\n")
		checkScannerMatchesReference(t, splitAt(b.Bytes(), cut, cut+300), strip)
	})
}

// FuzzSSEScannerRepeatedEvents holds the scanner to the reference on
// streams of events that repeat a shape with other strings in it (NUL
// separates the contents), with tails that change every other event: the
// events the kept shape (eventShape) counts.
func FuzzSSEScannerRepeatedEvents(f *testing.F) {
	f.Add(`{"choices":[{"delta":{"content":"`, `"},"index":0}],"usage":null}`, `,"obfuscation":"x"}`, "hi\x00 there\x00usage\x00\\\"\x00\u00e9", uint16(50), false)
	f.Add(`{"id":"a","choices":[{"delta":{"role":"assistant","content":"`, `"}}],"usage":{"total_tokens":`, `4}}`, "a\x00b\x00c", uint16(0), true)
	f.Fuzz(func(t *testing.T, prefix, tail, extra, contents string, cut uint16, strip bool) {
		stream := repeatedStream(prefix, []string{tail, tail + extra}, strings.Split(contents, "\x00"))
		checkScannerMatchesReference(t, splitAt(stream, cut, cut+300), strip)
	})
}
