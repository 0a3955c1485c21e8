package caddymodule

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/http/httptest"
	"reflect"
	"testing"
)

// FuzzSSEScanner checks that the scanner's results do not depend on where
// the stream is split, that without strip it never forwards anything itself,
// and that stripping only ever removes whole lines.
func FuzzSSEScanner(f *testing.F) {
	f.Add([]byte(testStream), uint16(17), true)
	f.Add([]byte(testStream), uint16(300), false)
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r\ndata: [DONE]"), uint16(5), true)
	f.Add([]byte("data:{\"content\":\"\\u00e9\\\"\"}\n\n:comment\nevent: x\n"), uint16(9), true)
	f.Fuzz(func(t *testing.T, stream []byte, cut uint16, strip bool) {
		i := int(cut) % (len(stream) + 1)
		whole, outWhole := runScanner(strip, [][]byte{stream})
		split, outSplit := runScanner(strip, [][]byte{stream[:i:i], stream[i:]})
		if !bytes.Equal(outWhole, outSplit) {
			t.Fatalf("output depends on split at %d: %q vs %q", i, outWhole, outSplit)
		}
		if whole.usage != split.usage || whole.haveUsage != split.haveUsage ||
			whole.generated != split.generated || whole.events != split.events || whole.sawDone != split.sawDone {
			t.Fatalf("results depend on split at %d: %+v vs %+v", i, whole, split)
		}
		if !strip && !bytes.Equal(outWhole, stream) {
			t.Fatal("pass-through changed the stream")
		}
		if strip && len(outWhole) > len(stream) {
			t.Fatal("strip added bytes")
		}
		if whole.generated.ascii < 0 || whole.generated.other < 0 || whole.usage.TotalTokens < 0 {
			t.Fatal("negative count")
		}
	})
}

// FuzzUsageFromJSON checks that usage extraction never panics, never
// returns negative or inconsistent counts, and agrees with a full decode.
func FuzzUsageFromJSON(f *testing.F) {
	f.Add([]byte(`{"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}`))
	f.Add([]byte(`{"usage":{"total_tokens":9}}`))
	f.Add([]byte(`{"usage":null,"choices":[{"message":{"content":"usage"}}]}`))
	f.Add([]byte(`{"usage":{"input_tokens":3,"output_tokens":"4"}}`))
	f.Add([]byte(`{"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4,"cache_write_tokens":2},"prompt_tokens_details":null}}`))
	f.Add([]byte(`{"usage":{"input_tokens":3,"cache_read_input_tokens":8,"cache_creation_input_tokens":"2","input_tokens_details":{"cached_tokens":1}}}`))
	// Keys matched case-insensitively: ASCII, a Kelvin sign for k, an escape.
	f.Add([]byte(`{"usage":{"PROMPT_tokens":5,"completion_toKens":2,"total_tok\u0065ns":7,"prompt_tokens_details":{"Cached_Tokens":1}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		u, ok := usageFromJSON(body)
		// On valid JSON the byte scan must agree with a full decode.
		// (Keys spelled with other cases or \u escapes are out of scope.)
		exotic := bytes.Contains(body, []byte(`\u`)) ||
			bytes.Count(bytes.ToLower(body), usageKey) != bytes.Count(body, usageKey)
		if json.Valid(body) && !exotic {
			var v struct {
				Usage *usageJSON `json:"usage"`
			}
			var want usage
			var wantOK bool
			if json.Unmarshal(body, &v) == nil && v.Usage != nil {
				want, wantOK = v.Usage.normalize()
			}
			if ok != wantOK || u != want {
				t.Fatalf("usageFromJSON = %+v %v, full decode %+v %v", u, ok, want, wantOK)
			}
		}
		if !ok {
			if u != (usage{}) {
				t.Fatal("usage returned without ok")
			}
			return
		}
		if u.PromptTokens < 0 || u.CompletionTokens < 0 || u.TotalTokens != u.PromptTokens+u.CompletionTokens ||
			u.CacheReadTokens < 0 || u.CacheWriteTokens < 0 || u.CacheReadTokens+u.CacheWriteTokens > u.PromptTokens {
			t.Fatalf("inconsistent usage %+v", u)
		}
		if out, ok := addGatewayUsage(body, gatewayUsage{TokensCharged: u.TotalTokens}); ok && json.Valid(body) && !json.Valid(out) {
			t.Fatalf("gateway_usage broke the JSON: %q", out)
		}
		var tc textCounter
		countGeneratedText(body, &tc)
	})
}

// FuzzReadInference checks that any body gives either a 4xx or a request
// whose rewritten body is valid JSON carrying every original field.
func FuzzReadInference(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`), uint8(0))
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"}]}],"max_tokens":5,"n":2}`), uint8(0))
	f.Add([]byte(`{"model":"m","prompt":[[1,2],[3]],"best_of":2}`), uint8(1))
	f.Add([]byte(`{"model":"e","input":["a","b"]}`), uint8(2))
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":false,"x":[1]},"stream":true}`), uint8(0))
	f.Add([]byte(`{"model":"c","max_tokens":9,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":[{"type":"tool_result","content":[{"type":"text","text":"x"}]}]}]}`), uint8(3))
	f.Add([]byte(`{"model":"r","input":[{"role":"user","content":[{"type":"input_text","text":"a"}]}],"instructions":"i","max_output_tokens":3}`), uint8(4))
	endpoints := []string{endpointChat, endpointCompletions, endpointEmbeddings, endpointMessages, endpointResponses}
	f.Fuzz(func(t *testing.T, body []byte, ep uint8) {
		endpoint := endpoints[int(ep)%len(endpoints)]
		r := httptest.NewRequest("POST", "/v1/x", bytes.NewReader(body))
		ir, gerr := readInference(httptest.NewRecorder(), r, endpoint, 1<<16)
		if gerr != nil {
			if gerr.Status < 400 || gerr.Status >= 500 {
				t.Fatalf("status %d", gerr.Status)
			}
			return
		}
		if ir.PromptTokens < 0 || ir.MaxTokens < 0 || ir.choices < 1 {
			t.Fatalf("bad counts %+v", ir)
		}
		ir.injectIncludeUsage()
		ir.setMaxTokens(7, "max_tokens")
		var before, after map[string]json.RawMessage
		if err := json.Unmarshal(body, &before); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(ir.body(), &after); err != nil {
			t.Fatalf("rewritten body invalid: %v", err)
		}
		for k := range before {
			if _, ok := after[k]; !ok {
				t.Fatalf("field %q dropped", k)
			}
		}
		if _, err := parseInference(ir.body(), endpoint); err != nil {
			t.Fatalf("rewritten body no longer valid: %+v", err)
		}
	})
}

// FuzzParseInferenceReference checks the byte-level parser against the
// encoding/json one it replaced: the same refusal (status and message) or
// the same request, and a rewrite that decodes to what re-marshalling the
// decoded fields would give.
func FuzzParseInferenceReference(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`), uint8(0))
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a\u00e9\ud83d\ude00"},{"TYPE":"image_url"}]}],"max_tokens":5,"n":2}`), uint8(0))
	f.Add([]byte(`{"model":"m","prompt":[[1,2],[3]],"best_of":2,"suffix":"x\ud800"}`), uint8(1))
	f.Add([]byte(`{"model":"e","input":["a","b"]}`), uint8(2))
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":false,"x":[1],"include_usage":null},"stream":true,"stream_options":{}}`), uint8(0))
	f.Add([]byte(`{"mod\u0065l":"m","messages":[null],"max_tokens":null,"max_tokens":3}`), uint8(0))
	f.Add([]byte(` {"model":"m\xff","messages":[{"role":null,"content":null,"name":"n","tool_calls":[{}]}],"tools":[1]} `), uint8(0))
	// A message's error, and an element that is not an object after it:
	// the element is reported.
	f.Add([]byte(`{"model":"m","messages":[{"content":"x"},{"role":"user","content":[{"type":"text"}]},1]}`), uint8(0))
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":[{"type":"text"}]},{}]}`), uint8(0))
	endpoints := []string{endpointChat, endpointCompletions, endpointEmbeddings}
	f.Fuzz(func(t *testing.T, body []byte, ep uint8) {
		endpoint := endpoints[int(ep)%len(endpoints)]
		ir, gerr := parseInference(body, endpoint)
		ref, rerr := parseInferenceRef(body, endpoint)
		if (gerr == nil) != (rerr == nil) {
			t.Fatalf("parse error %+v, reference %+v", gerr, rerr)
		}
		if gerr != nil {
			if gerr.Status != rerr.Status || gerr.Message != rerr.Message {
				t.Fatalf("error %d %q, reference %d %q", gerr.Status, gerr.Message, rerr.Status, rerr.Message)
			}
			return
		}
		var keys uint8
		for _, k := range ref.maxTokensKeys {
			keys |= map[string]uint8{"max_tokens": capMaxTokens, "max_completion_tokens": capMaxCompletionTokens}[k]
		}
		if ir.Model != ref.Model || ir.Stream != ref.Stream || ir.MaxTokens != ref.MaxTokens || ir.PromptTokens != ref.PromptTokens ||
			ir.ClientIncludeUsage != ref.ClientIncludeUsage || ir.choices != ref.choices || ir.capKeys != keys {
			t.Fatalf("parsed %+v, reference %+v", ir, ref)
		}
		// The rewrite: as the reference did it on its decoded map.
		for _, field := range []string{"", maxTokensFieldDefault, maxTokensFieldCompletionOnly} {
			ir, _ := parseInference(body, endpoint)
			want := maps.Clone(ref.fields)
			if field != "" {
				ir.setMaxTokens(7, field)
				v := json.RawMessage("7")
				if len(ref.maxTokensKeys) == 0 {
					want[field] = v
				}
				for _, k := range ref.maxTokensKeys {
					want[k] = v
				}
			}
			if ir.injectIncludeUsage() {
				so := map[string]json.RawMessage{}
				if v, ok := want["stream_options"]; ok && !isNull(v) {
					_ = json.Unmarshal(v, &so)
				}
				so["include_usage"] = json.RawMessage("true")
				want["stream_options"], _ = json.Marshal(so)
			}
			var got map[string]any
			if err := json.Unmarshal(ir.body(), &got); err != nil {
				t.Fatalf("rewritten body %q invalid: %v", ir.body(), err)
			}
			var wantAny map[string]any
			wb, _ := json.Marshal(want)
			_ = json.Unmarshal(wb, &wantAny)
			if !reflect.DeepEqual(got, wantAny) {
				t.Fatalf("rewritten body %s, want %s", ir.body(), wb)
			}
		}
	})
}

// FuzzValidJSON checks validJSON against json.Valid.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, ` {"a":[1,-0.5e+3,true,false,null,"\u00e9\n"]} `, `{"a":}`, `[1,]`, `01`, `-`, `1.`, `1e`, "\"\x01\"", `"\x"`, `{"a" 1}`, `[[[]]]`, `{"a":1}x`, `tru`, `"\ud800"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid %v", b, got, want)
		}
	})
}

// FuzzUsageEvent checks decodeUsageEvent and decodeUsage against the
// encoding/json decodes they replace.
func FuzzUsageEvent(f *testing.F) {
	f.Add([]byte(`{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}`))
	f.Add([]byte(`{"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":"1","COMPLETION_TOKENS":2.5}}`))
	f.Add([]byte(`{"usage":{"prompt_tokens":1},"usage":null,"usage":{"completion_tokens":2},"usage":{"total_tokens":"\u0033"}}`))
	f.Add([]byte(`{"choices":null,"usage":{"input_tokens":3,"output_tokens":-4,"prompt_tokens":true}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev struct {
			Choices []json.RawMessage `json:"choices"`
			Usage   *usageJSON        `json:"usage"`
		}
		err := json.Unmarshal(data, &ev)
		u, hasUsage, hasChoices, ok := decodeUsageEvent(data)
		if ok != (err == nil) {
			t.Fatalf("ok %v, json.Unmarshal: %v", ok, err)
		}
		if !ok {
			return
		}
		if hasUsage != (ev.Usage != nil) || hasChoices != (len(ev.Choices) > 0) {
			t.Fatalf("usage %v choices %v, json: %+v", hasUsage, hasChoices, ev)
		}
		if hasUsage {
			got, gotOK := u.normalize()
			want, wantOK := ev.Usage.normalize()
			if got != want || gotOK != wantOK {
				t.Fatalf("usage %+v %v, json %+v %v", got, gotOK, want, wantOK)
			}
		}
		// decodeUsage on an object: as json.Unmarshal into usageJSON.
		var uj usageJSON
		jerr := json.Unmarshal(data, &uj)
		got, gotOK := decodeUsage(data)
		want, wantOK := uj.normalize()
		if jerr != nil || bytes.TrimSpace(data)[0] != '{' {
			want, wantOK = usage{}, false
		}
		if got != want || gotOK != wantOK {
			t.Fatalf("decodeUsage %+v %v, json %+v %v (%v)", got, gotOK, want, wantOK, jerr)
		}
	})
}
