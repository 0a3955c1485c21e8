package admin

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// TestDocsRequestExamples: every operation with a body gives Swagger UI's
// "try it out" a real example (not a schema-generated "string" or
// additionalProp1) that its schema accepts; the inference ones name a real
// model and, for chat, send one user message.
func TestDocsRequestExamples(t *testing.T) {
	doc := mustLoadOpenAPI(t)
	n := 0
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.RequestBody == nil || op.RequestBody.Value == nil {
				continue
			}
			mt := op.RequestBody.Value.Content.Get("application/json")
			if mt == nil {
				continue
			}
			n++
			what := method + " " + path
			if mt.Example == nil {
				t.Errorf("%s: no request example", what)
				continue
			}
			if err := mt.Schema.Value.VisitJSON(mt.Example, openapi3.MultiErrors()); err != nil {
				t.Errorf("%s: the example does not match the schema: %v", what, err)
			}
			raw, _ := json.Marshal(mt.Example)
			if s := string(raw); strings.Contains(s, `"string"`) || strings.Contains(s, "additionalProp") {
				t.Errorf("%s: placeholder example %s", what, s)
			}
			if strings.HasPrefix(path, "/v1/") {
				var body struct {
					Model    string `json:"model"`
					Messages []struct{ Role, Content string }
				}
				_ = json.Unmarshal(raw, &body)
				if body.Model == "" || (path == "/v1/chat/completions" && (len(body.Messages) != 1 || body.Messages[0].Role != "user")) {
					t.Errorf("%s: example %s needs a real model (and one user message for chat)", what, raw)
				}
			}
		}
	}
	if n < 14 {
		t.Fatalf("only %d operations with a JSON body", n)
	}
}
