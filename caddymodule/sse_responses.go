package caddymodule

import "strings"

// responsesEvent scans a Responses stream event: the final usage comes in
// response.completed (or response.incomplete and response.failed, which
// end a stream too) inside the response object; every *.delta event's
// delta string is generated text (output text, reasoning, function-call
// arguments), counted for an estimate should the stream end before.
func (s *sseScanner) responsesEvent(ev *sseEvent) {
	switch {
	case ev.typ == "response.completed" || ev.typ == "response.incomplete" || ev.typ == "response.failed":
		if obj := member(ev.response, "usage"); len(obj) > 0 && obj[0] == '{' {
			if u, ok := decodeUsage(obj); ok {
				s.usage, s.haveUsage = u, true
			}
		}
	case strings.HasSuffix(ev.typ, ".delta"):
		if v := ev.delta; len(v) > 0 && v[0] == '"' {
			countJSONString(v[1:len(v)-1], &s.generated)
		}
	}
}
