package caddymodule

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestUsageFromJSON(t *testing.T) {
	tests := []struct {
		name string
		body string
		want usage
		ok   bool
	}{
		{"openai chat", `{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}`, usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15}, true},
		{"embeddings", `{"data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":8,"total_tokens":8}}`, usage{PromptTokens: 8, CompletionTokens: 0, TotalTokens: 8}, true},
		{"total only", `{"usage":{"total_tokens":9}}`, usage{PromptTokens: 9, CompletionTokens: 0, TotalTokens: 9}, true},
		{"total above parts billed as completion", `{"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":9}}`, usage{PromptTokens: 4, CompletionTokens: 5, TotalTokens: 9}, true},
		{"total missing", `{"usage":{"prompt_tokens":4,"completion_tokens":2}}`, usage{PromptTokens: 4, CompletionTokens: 2, TotalTokens: 6}, true},
		{"anthropic names", `{"usage":{"input_tokens":3,"output_tokens":4}}`, usage{PromptTokens: 3, CompletionTokens: 4, TotalTokens: 7}, true},
		{"whitespace", "{ \"usage\" :\n { \"prompt_tokens\" : 1 , \"completion_tokens\" : 1 } }", usage{PromptTokens: 1, CompletionTokens: 1, TotalTokens: 2}, true},
		{"usage null", `{"usage":null}`, usage{}, false},
		{"openai cached", `{"usage":{"prompt_tokens":100,"completion_tokens":5,"total_tokens":105,"prompt_tokens_details":{"cached_tokens":64,"audio_tokens":0}}}`,
			usage{PromptTokens: 100, CompletionTokens: 5, TotalTokens: 105, CacheReadTokens: 64}, true},
		{"openai cache write", `{"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":"10","cache_write_tokens":20}}}`,
			usage{PromptTokens: 100, CompletionTokens: 5, TotalTokens: 105, CacheReadTokens: 10, CacheWriteTokens: 20}, true},
		{"responses cached", `{"usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":30},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":57}}`,
			usage{PromptTokens: 50, CompletionTokens: 7, TotalTokens: 57, CacheReadTokens: 30}, true},
		{"anthropic cache beside input", `{"usage":{"input_tokens":5,"cache_creation_input_tokens":100,"cache_read_input_tokens":200,"output_tokens":9}}`,
			usage{PromptTokens: 305, CompletionTokens: 9, TotalTokens: 314, CacheReadTokens: 200, CacheWriteTokens: 100}, true},
		{"cached above prompt clamped", `{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":64}}}`,
			usage{PromptTokens: 10, TotalTokens: 10, CacheReadTokens: 10}, true},
		{"details null forgets", `{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":4},"prompt_tokens_details":null}}`,
			usage{PromptTokens: 10, TotalTokens: 10}, true},
		{"bad details", `{"usage":{"prompt_tokens":10,"prompt_tokens_details":5}}`, usage{}, false},
		{"duplicate: last wins", `{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}`, usage{PromptTokens: 2, CompletionTokens: 0, TotalTokens: 2}, true},
		{"duplicate: later null wins", `{"usage":{"prompt_tokens":1},"usage":null}`, usage{}, false},
		{"usage after nested usage", `{"choices":[{"usage":{"prompt_tokens":9}}],"x":"\"usage\":{","usage":{"prompt_tokens":3}}`, usage{PromptTokens: 3, CompletionTokens: 0, TotalTokens: 3}, true},
		{"no usage", `{"choices":[]}`, usage{}, false},
		{"nested usage only", `{"choices":[{"usage":{"prompt_tokens":1}}]}`, usage{}, false},
		{"negative", `{"usage":{"prompt_tokens":-5}}`, usage{}, false},
		{"fraction", `{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}`, usage{PromptTokens: 0, CompletionTokens: 2, TotalTokens: 2}, true},
		{"quoted count", `{"usage":{"prompt_tokens":"7"}}`, usage{PromptTokens: 7, CompletionTokens: 0, TotalTokens: 7}, true},
		{"huge count", `{"usage":{"prompt_tokens":99999999999999999}}`, usage{}, false},
		{"not json", `usage: 5`, usage{}, false},
		{"truncated", `{"usage":{"prompt_tokens":1`, usage{}, false},
		{"array", `[{"usage":{"prompt_tokens":1}}]`, usage{}, false},
		{"empty", ``, usage{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := usageFromJSON([]byte(tt.body))
			if ok != tt.ok || got != tt.want {
				t.Errorf("usageFromJSON = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestUsageFromTail(t *testing.T) {
	body := `{"data":[` + strings.Repeat(`{"embedding":[0.1,0.2]},`, 1000) + `{"embedding":[]}],"model":"m","usage":{"prompt_tokens":42,"total_tokens":42}}`
	got, ok := usageFromTail([]byte(body[len(body)-200:]))
	if !ok || got != (usage{PromptTokens: 42, CompletionTokens: 0, TotalTokens: 42}) {
		t.Fatalf("usageFromTail = %+v, %v", got, ok)
	}
	if _, ok := usageFromTail([]byte(`"usage":{"prompt_tok`)); ok {
		t.Fatal("truncated usage accepted")
	}
}

func TestAddGatewayUsage(t *testing.T) {
	gu := gatewayUsage{TokensCharged: 15, CreditsCharged: 15, UserBalanceAfter: 85, UserAPIKey: "gw_live_ab..."}
	block := `"gateway_usage":{"tokens_charged":15,"credits_charged":15,"user_balance_after":85,"user_api_key":"gw_live_ab..."}`
	tests := []struct {
		in, want string
		ok       bool
	}{
		{`{"id":"x","usage":{"total_tokens":15}}`, `{"id":"x","usage":{"total_tokens":15},` + block + `}`, true},
		{"{\"a\":1}\n", "{\"a\":1," + block + "}\n", true},
		{`{}`, `{` + block + `}`, true},
		{`{ }`, `{ ` + block + `}`, true},
		{`[1]`, `[1]`, false},
		{`{"a":`, `{"a":`, false},
		{`not json}`, `not json}`, false},
		{``, ``, false},
	}
	for _, tt := range tests {
		got, ok := addGatewayUsage([]byte(tt.in), gu)
		if ok != tt.ok || string(got) != tt.want {
			t.Errorf("addGatewayUsage(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
		if ok && !json.Valid(got) {
			t.Errorf("addGatewayUsage(%q) produced invalid JSON %q", tt.in, got)
		}
		// Built in the spare capacity after the body (as settleBuffered
		// does with the meter's buffer), or in a new slice when too small.
		for _, spare := range []int{0, 16, 512} {
			buf := append(make([]byte, 0, len(tt.in)+spare), tt.in...)
			body := buf[:len(tt.in)]
			got, ok := appendGatewayUsage(buf[len(buf):], body, gu)
			if ok != tt.ok || string(got) != tt.want || string(body) != tt.in {
				t.Errorf("appendGatewayUsage(%q) with %d spare = %q, %v (body now %q); want %q, %v", tt.in, spare, got, ok, body, tt.want, tt.ok)
			}
		}
	}
}

func TestCountGeneratedText(t *testing.T) {
	tests := []struct {
		in           string
		ascii, other int64
	}{
		{`{"choices":[{"message":{"role":"assistant","content":"Hello there"}}]}`, 11, 0},
		{`{"choices":[{"text":"abc"},{"text":"de"}]}`, 5, 0},
		{`{"content":"日本語"}`, 0, 3},
		{`{"content":"\u65e5\ud83d\ude00a"}`, 1, 2},
		{`{"content":null,"tool_calls":[{"function":{"name":"f","arguments":"{\"x\":1}"}}]}`, 7, 0},
		{`{"reasoning_content":"ab","refusal":"c"}`, 3, 0},
		{`{"model":"content","id":"text"}`, 0, 0}, // values named like keys
		{`{"content":"unterminated`, 0, 0},
		{`{"content" : "spaced"}`, 6, 0},
		{`["content","x"]`, 0, 0},
	}
	for _, tt := range tests {
		var tc textCounter
		countGeneratedText([]byte(tt.in), &tc)
		if tc.ascii != tt.ascii || tc.other != tt.other {
			t.Errorf("countGeneratedText(%s) = %+v, want ascii %d other %d", tt.in, tc, tt.ascii, tt.other)
		}
	}
}

func TestEstimateText(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"", 0},
		{"a", 1},
		{"abcd", 1},
		{"abcde", 2},
		{"日本語", 3},
		{"héllo", 2}, // 4 ASCII → 1, é → 1
		{"The quick brown fox jumps over the lazy dog.", 11},
	}
	for _, tt := range tests {
		if got := estimateText(tt.in); got != tt.want {
			t.Errorf("estimateText(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func BenchmarkUsageFromJSON(b *testing.B) {
	body := []byte(`{"id":"chatcmpl-abc","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"` + strings.Repeat("word ", 200) + `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":200,"total_tokens":320}}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := usageFromJSON(body); !ok {
			b.Fatal("no usage")
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "gw_live_AbCd...", "a\"b\\c", "\n\r\t\b\f\x00\x1f", "<a&b>", "héllo 日本", "\u2028\u2029", "bad \xff utf8", "\xe6\x97"} {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Errorf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
	}
}

// TestAddGatewayUsageMatchesMarshal: the appended block is what
// encoding/json makes of gatewayUsage.
func TestAddGatewayUsageMatchesMarshal(t *testing.T) {
	for _, gu := range []gatewayUsage{
		{TokensCharged: 1, CreditsCharged: 2, UserBalanceAfter: -3, UserAPIKey: "gw_\"x\"..."},
		{TokensCharged: 1 << 40, CreditsCharged: 0, UserBalanceAfter: 1 << 62, UserAPIKey: "", Estimated: true},
	} {
		block, _ := json.Marshal(gu)
		got, ok := addGatewayUsage([]byte(`{"a":[1,{"b":"}"}]}`), gu)
		if want := `{"a":[1,{"b":"}"}],"gateway_usage":` + string(block) + `}`; !ok || string(got) != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
	for _, bad := range []string{`{"a":"}`, `{"a":1}{"b":2}`, `{"a":[}`, `{"a":1}}`} {
		if got, ok := addGatewayUsage([]byte(bad), gatewayUsage{}); ok || string(got) != bad {
			t.Errorf("addGatewayUsage(%s) = %s, %v", bad, got, ok)
		}
	}
}

// Reference implementations: the straightforward byte-by-byte scanners the
// jumping ones in usage.go replaced. The differential tests below hold the
// fast ones to exactly their results.

func countGeneratedTextRef(b []byte, tc *textCounter) {
	for i := 0; i < len(b); {
		if b[i] != '"' {
			i++
			continue
		}
		kStart := i + 1
		kEnd := stringEndRef(b, kStart)
		if kEnd < 0 {
			return
		}
		j := skipSpace(b, kEnd+1)
		if j >= len(b) || b[j] != ':' {
			i = kEnd + 1
			continue
		}
		j = skipSpace(b, j+1)
		if j >= len(b) || b[j] != '"' {
			i = j
			continue
		}
		vEnd := stringEndRef(b, j+1)
		if vEnd < 0 {
			return
		}
		if isGeneratedTextKey(b[kStart:kEnd]) {
			countJSONStringRef(b[j+1:vEnd], tc)
		}
		i = vEnd + 1
	}
}

func stringEndRef(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case '\\':
			i += 2
		case '"':
			return i
		default:
			i++
		}
	}
	return -1
}

func countJSONStringRef(s []byte, tc *textCounter) {
	for i := 0; i < len(s); {
		if s[i] == '\\' && i+1 < len(s) {
			if s[i+1] == 'u' && i+6 <= len(s) {
				v := hex4(s[i+2 : i+6])
				switch {
				case v < 0:
					tc.other++
				case v < 0x80:
					tc.ascii++
				case v >= 0xD800 && v < 0xDC00 && i+12 <= len(s) && s[i+6] == '\\' && s[i+7] == 'u':
					tc.other++
					if lo := hex4(s[i+8 : i+12]); lo >= 0xDC00 && lo <= 0xDFFF {
						i += 6
					}
				default:
					tc.other++
				}
				i += 6
				continue
			}
			tc.ascii++
			i += 2
			continue
		}
		j := i
		if s[j] == '\\' {
			j++
		}
		for j < len(s) && s[j] != '\\' {
			j++
		}
		tc.addBytes(s[i:j])
		i = j
	}
}

func usageObjectAtRef(b []byte) int {
	if !bytes.Contains(b, usageKey) {
		return -1
	}
	for end := len(b); end > 0; {
		i := bytes.LastIndex(b[:end], usageKey)
		if i < 0 {
			return -1
		}
		j := skipSpace(b, i+len(usageKey))
		if j < len(b) && b[j] == ':' {
			j = skipSpace(b, j+1)
			if j < len(b) && b[j] == '{' {
				return j
			}
		}
		end = i
	}
	return -1
}

// scanCases are inputs for the scanners: real shapes, escapes at every
// awkward place, invalid UTF-8, truncations and usage look-alikes.
var scanCases = []string{
	``, `"`, `\`, `"\`, `"\"`, `"a\\"`, `"\\\"`, `{"content":"\`, `{"content":"a\"`,
	`{"content":"\\"}`, `{"content":"\u00"}`, `{"content":"\uZZZZ"}`, `{"content":"\ud83d"}`,
	`{"content":"\ud83d\u"}`, `{"content":"\ud83d\ude00\ud83d"}`, `{"content":"\ud83dx\ude00"}`,
	"{\"content\":\"a\xffb\xe6\x97\"}", "{\"content\":\"日本語 and more ascii text here\xe2\x82\"}",
	`{"content":"` + strings.Repeat(`ab\n`, 40) + `"}`,
	`{"content":"` + strings.Repeat("0123456789", 30) + `é"}`,
	`{"text"  :  "x" , "text":"y","arguments":"{\"a\":\"b\"}"}`, `{"content"::"x"}`, `{"content":"x"`,
	`{"a":"content","content":"b"}`, `"content":"x"`, `{"content":1,"text":"z"}`,
	`{"usage":{}}`, `{"usage" : {`, `"usage"usage":{`, `"usage":{"usage":{`, `{"x":"\"usage\":{"}`,
	`{"usage":null,"a":"\"usage\"  :{"}`, `"usage"`, `"usage":`, "\"usage\"\t:\r\n{",
	`{"a":"b"usage":{}}`, `{"a":1}"usage" :{`, `{"a":"\\"usage":{"x":1}}`, `"\"usage\"`, `{"k":"\"usage":{"}`,
	`{"content":"x","usage":{"prompt_tokens":1}}`, `{"usage":"usage":{}}`, `"usage""usage":{`,
	testStream,
}

func TestScannersMatchReference(t *testing.T) {
	for _, s := range scanCases {
		checkScannersMatchReference(t, []byte(s))
	}
}

func checkScannersMatchReference(t *testing.T, b []byte) {
	t.Helper()
	var got, want textCounter
	countGeneratedText(b, &got)
	countGeneratedTextRef(b, &want)
	if got != want {
		t.Fatalf("countGeneratedText(%q) = %+v, reference %+v", b, got, want)
	}
	got, want = textCounter{}, textCounter{}
	countJSONString(b, &got)
	countJSONStringRef(b, &want)
	if got != want {
		t.Fatalf("countJSONString(%q) = %+v, reference %+v", b, got, want)
	}
	got = textCounter{}
	countUTF8(b, &got)
	want = textCounter{}
	want.addBytes(b)
	if got != want {
		t.Fatalf("countUTF8(%q) = %+v, addBytes %+v", b, got, want)
	}
	for i := 0; i <= len(b); i++ {
		if g, w := stringEnd(b, i), stringEndRef(b, i); g != w {
			t.Fatalf("stringEnd(%q, %d) = %d, reference %d", b, i, g, w)
		}
	}
	if g, w := usageObjectAt(b), usageObjectAtRef(b); g != w {
		t.Fatalf("usageObjectAt(%q) = %d, reference %d", b, g, w)
	}
	if g, w := hasUsageObject(b), usageObjectAtRef(b) >= 0; g != w {
		t.Fatalf("hasUsageObject(%q) = %v, reference %v", b, g, w)
	}
	got = textCounter{}
	obj, exact := scanGenerated(b, &got)
	if exact && obj != (usageObjectAtRef(b) >= 0) {
		t.Fatalf("scanGenerated(%q) found usage object %v, reference %v", b, obj, !obj)
	}
	if !exact && !bytes.Contains(b, []byte(`\"`)) {
		t.Fatalf("scanGenerated(%q) not exact without an escaped quote", b)
	}
	if got != want0(b) {
		t.Fatalf("scanGenerated(%q) counted %+v, reference %+v", b, got, want0(b))
	}
}

func want0(b []byte) (tc textCounter) {
	countGeneratedTextRef(b, &tc)
	return tc
}

// FuzzScannersReference holds the jumping scanners to the byte-by-byte
// reference implementations.
func FuzzScannersReference(f *testing.F) {
	for _, s := range scanCases {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkScannersMatchReference(t, b)
	})
}

func BenchmarkCountGeneratedText(b *testing.B) {
	ev := []byte(benchSSEData)
	b.SetBytes(int64(len(ev)))
	b.ReportAllocs()
	var tc textCounter
	for b.Loop() {
		countGeneratedText(ev, &tc)
	}
}

func BenchmarkUsageObjectAt(b *testing.B) {
	ev := []byte(benchSSEData)
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		if hasUsageObject(ev) {
			b.Fatal("usage:null taken for an object")
		}
	}
}

func BenchmarkCountGeneratedTextRef(b *testing.B) {
	ev := []byte(benchSSEData)
	b.SetBytes(int64(len(ev)))
	var tc textCounter
	for b.Loop() {
		countGeneratedTextRef(ev, &tc)
	}
}

// estimateText estimates the tokens of one text.
func estimateText(s string) int64 {
	var c textCounter
	c.addString(s)
	return c.tokens()
}

// addGatewayUsage returns body with a top-level "gateway_usage" member
// appended, leaving every other byte untouched. It reports false (and
// returns body unchanged) when body is not a JSON object. The check is
// structural (string-aware bracket matching: the object opened by the
// first byte closes at the last one), not a full validation: a valid body
// stays valid, and an invalid one is not made any worse.
func addGatewayUsage(body []byte, gu gatewayUsage) ([]byte, bool) {
	return appendGatewayUsage(nil, body, gu)
}

// appendGatewayUsage is addGatewayUsage writing the new body to dst[:0]'s
// spare capacity (allocating when it is too small or nil); dst must not
// overlap body.
func appendGatewayUsage(dst, body []byte, gu gatewayUsage) ([]byte, bool) {
	return appendGatewayUsageEnd(dst, body, valueEnd(body, 0), gu)
}

// appendGatewayUsageEnd is appendGatewayUsage given end, valueEnd(body, 0)
// (as answerUsage returns it): the rewritten body in one slice, joined
// from the two parts settleBuffered sends (gatewayUsageCut and
// appendGatewayUsageTail), for the tests that hold them to the previous
// rewrite. The body is rewritten when it is one object
// with optional whitespace around it: the object then ends at end.
func appendGatewayUsageEnd(dst, body []byte, end int, gu gatewayUsage) ([]byte, bool) {
	keep, ok := gatewayUsageCut(body, end)
	if !ok {
		return body, false
	}
	out := dst[:0]
	if need := len(body) + 160 + len(gu.UserAPIKey); cap(out) < need {
		out = make([]byte, 0, need)
	}
	out = append(out, body[:keep]...)
	return appendGatewayUsageTail(out, body, keep, gu), true
}

// usageFromJSONRef is usageFromJSON as it was before answerUsage: a raw
// search for a usage object first, then the top-level walk, then the
// usage object validated and decoded in two passes.
func usageFromJSONRef(body []byte) (usage, bool) {
	if !hasUsageObject(body) {
		return usage{}, false
	}
	start, end, _ := topLevelUsage(body)
	if start < 0 {
		return usage{}, false
	}
	obj := body[start:end]
	var u usageFields
	if !validJSON(obj) || obj[skipSpace(obj, 0)] != '{' || !decodeUsageObject(obj, &u) {
		return usage{}, false
	}
	return u.normalize()
}

// appendGatewayUsageRef is appendGatewayUsage as it was before
// appendGatewayUsageEnd: the body's object matched on its own.
func appendGatewayUsageRef(body []byte, gu gatewayUsage) ([]byte, bool) {
	trimmed := bytes.TrimRight(body, " \t\r\n")
	start := skipSpace(trimmed, 0)
	if len(trimmed)-start < 2 || trimmed[start] != '{' || trimmed[len(trimmed)-1] != '}' ||
		valueEnd(trimmed, start) != len(trimmed) {
		return body, false
	}
	return appendGatewayUsageEnd(nil, body, len(trimmed), gu)
}

// checkAnswerUsage holds the one-pass read and rewrite of a buffered
// answer to the passes it replaced.
func checkAnswerUsage(t *testing.T, b []byte) {
	t.Helper()
	u, ok, end := answerUsage(b)
	if wu, wok := usageFromJSONRef(b); u != wu || ok != wok {
		t.Fatalf("answerUsage(%q) = %+v %v, reference %+v %v", b, u, ok, wu, wok)
	}
	if w := valueEnd(b, 0); end != w {
		t.Fatalf("answerUsage(%q) end %d, valueEnd %d", b, end, w)
	}
	gu := gatewayUsage{TokensCharged: 3, CreditsCharged: 2, UserBalanceAfter: 1, UserAPIKey: "gw_live_ab…"}
	got, gotOK := appendGatewayUsageEnd(nil, b, end, gu)
	want, wantOK := appendGatewayUsageRef(b, gu)
	if gotOK != wantOK || !bytes.Equal(got, want) {
		t.Fatalf("appendGatewayUsageEnd(%q) = %q %v, reference %q %v", b, got, gotOK, want, wantOK)
	}
	var gf, wf usageFields
	gOK := decodeValidUsageObject(b, &gf)
	wOK := validJSON(b) && b[skipSpace(b, 0)] == '{' && decodeUsageObject(b, &wf)
	if len(b) > 0 && b[0] != '{' {
		// Not an object at b[0]: the reference decodes no member, and
		// normalize refuses the empty object.
		wOK = false
	}
	if gOK != wOK || (gOK && !reflect.DeepEqual(gf, wf)) {
		t.Fatalf("decodeValidUsageObject(%q) = %+v %v, reference %+v %v", b, gf, gOK, wf, wOK)
	}
}

var answerUsageCases = []string{
	``, ` `, `{}`, ` {} `, `[]`, `{"usage":{"prompt_tokens":1}}`, " {\"usage\" : {\"total_tokens\":2} }\n",
	`{"usage":{"prompt_tokens":1}} {}`, `{} {"usage":{"prompt_tokens":1}}`, `{"usage":{"prompt_tokens":1}`,
	`{"a":"}","usage":{"prompt_tokens":1,"x":[1,{"y":"]"}]}}`, `{"usage":{"prompt_tokens":1},"usage":null}`,
	`{"usage":null,"usage":{"completion_tokens":4}}`, `{"a":{"usage":{"prompt_tokens":1}}}`,
	`["usage",{"usage":{"prompt_tokens":1}}]`, `{"usage":{"prompt_tokens":1 "x":2}}`, `{"usage":{"prompt_tokens":1,}}`,
	`{"usage":{"prompt_tokens":"1","prompt_tokens_details":{"cached_tokens":1}},"x":"\"usage\""}`,
	`{"usage":{"prompt_tokens":01}}`, `{"usage":{"prompt_tokens":true}}`, `{"usage":{"a":tru}}`,
	`{"usage":{"prompt_tokens":1},"b":"unterminated}`, `}{"usage":{"prompt_tokens":1}}`,
	`{"usage":{ }}`, `{"usage":{"prompt_tokens":1}  }  `, "{\"usage\":{\"prompt_tokens\":1,\"c\":\"\x01\"}}",
}

func TestAnswerUsageMatchesReference(t *testing.T) {
	for _, s := range answerUsageCases {
		checkAnswerUsage(t, []byte(s))
	}
	for _, a := range stageAnswers {
		_, pieces := upstreamAnswer(t, a, stageRequest(a, false), false)
		body := bytes.Join(pieces, nil)
		checkAnswerUsage(t, body)
		if _, ok, _ := answerUsage(body); !ok {
			t.Fatalf("%s: no usage", a)
		}
	}
}

// FuzzAnswerUsageReference holds answerUsage, appendGatewayUsageEnd and
// decodeValidUsageObject to the passes they replaced.
func FuzzAnswerUsageReference(f *testing.F) {
	for _, s := range answerUsageCases {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAnswerUsage(t, b)
	})
}
