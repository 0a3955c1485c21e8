package caddymodule

import (
	"bytes"
	"sync"
)

// SSE line bounds.
const (
	// maxSSELine bounds the bytes of one line the scanner keeps. A longer
	// line (never a usage chunk, which is a few hundred bytes) is passed
	// through without inspection, so memory stays bounded per stream.
	maxSSELine = 256 << 10
)

// sseScanner watches an OpenAI-style server-sent-event stream as it passes
// to the client. It carries partial lines across writes, decodes only the
// events that carry a usage object (found by a byte scan first), counts the
// generated text of the other events for an estimate, and, when strip is
// set, removes the usage-only event (`"choices":[]` plus usage) that the
// gateway asked the upstream for on the client's behalf.
//
// Nothing is buffered beyond the current incomplete line: when strip is
// off every byte goes to the client as soon as it arrives; when it is on,
// complete lines go out at once and only an incomplete trailing line (which
// the client could not parse yet anyway) waits for its newline.
type sseScanner struct {
	strip   bool
	dialect sseDialect // whose events these are (sse_anthropic.go)

	line     []byte  // the current incomplete line (held for output when strip)
	lineBuf  *[]byte // the pooled buffer line was taken from
	overflow bool    // the current line exceeded maxSSELine: passing it through
	dropping bool    // inside a stripped event: drop lines up to its blank line

	usage     usage
	haveUsage bool
	generated textCounter // characters of generated text seen in deltas
	events    int64       // data events seen (excluding [DONE])
	sawDone   bool

	shape     *eventShape // the last content event counted in full (pooled)
	shapeHits int64       // events counted from the kept shape

	// The Anthropic dialect's usage so far: message_start gives the
	// prompt side (prompt, with its cache counts, is billed from it when
	// the stream ends early), message_delta the final counts.
	anthropic  anthropicUsage
	prompt     usage
	havePrompt bool
}

// eventShape is the last content event (no usage object, no escaped
// quote) that the scanner counted in full, kept so that the next event
// need not be scanned again where it repeats it. A stream's content events
// are one JSON text with another string in the same place: ids, model,
// timestamps and keys stay. An event whose bytes equal the kept one's up
// to the first generated-text string is, there, where the full scan of the
// kept event was, so only that string and what follows it are scanned; and
// what follows is known too when it equals the kept event's, byte for byte.
//
// OpenAI's streams end every event with a string that changes each time
// (`"obfuscation":"…"`, random padding of random length). When the kept
// event's last string is such a value (of a key without generated text,
// with no quote after it), an event that equals the kept one everywhere
// but inside that string is counted without scanning its tail either.
type eventShape struct {
	data  []byte      // the kept event's data; empty: none
	span  textSpan    // its first generated-text string
	after textCounter // the generated text after that string
	last  textSpan    // its last string, when it may vary (see above); open 0: none
}

// shapePool recycles the shapes (and their buffers) of ended streams.
var shapePool = sync.Pool{New: func() any { return &eventShape{data: make([]byte, 0, 512)} }}

// maxShape bounds the events kept as a shape.
const maxShape = 4 << 10

// count counts the generated text of an event of the kept shape; ok is
// false when the event needs a full scan (another shape, a usage object,
// or an escaped quote after the shape's prefix outside its first string
// of generated text).
func (sh *eventShape) count(d []byte) (tc textCounter, ok bool) {
	if sh == nil || len(sh.data) == 0 {
		return tc, false
	}
	open := sh.span.open
	if len(d) <= open || !bytes.Equal(d[:open], sh.data[:open]) {
		return tc, false
	}
	end, escQuote := stringEndEsc(d, open)
	if end < 0 || string(d[open:end]) == "usage" { // the scan checks what follows "usage"
		return tc, false
	}
	countJSONString(d[open:end], &tc)
	if bytes.Equal(d[end:], sh.data[sh.span.close:]) || sh.sameButLast(d, end) {
		// An escaped quote in the string (a tool call's arguments are
		// JSON) leaves the count as it is; the scan then decides on a
		// usage object by looking for "usage" in the raw bytes.
		if escQuote && hasUsageObject(d) {
			return textCounter{}, false
		}
		tc.add(sh.after)
		return tc, true
	}
	if escQuote {
		return textCounter{}, false
	}
	var after textCounter
	last := firstText{span: textSpan{open: -1}}
	if usageObj, exact := scanGeneratedFrom(d, end+1, end, &after, &last); usageObj || !exact {
		return textCounter{}, false
	}
	sh.keep(d, textSpan{open: open, close: end}, after, last.last)
	tc.add(after)
	return tc, true
}

// sameButLast reports whether the tail of d from end (the closing quote of
// its first generated-text string) equals the kept event's tail except
// for the contents of the last string, which hold neither a quote nor a
// backslash in d and are not "usage". The scan of such a tail walks over
// the same strings in the same places, the last one being a value that is
// not counted, so it counts what the kept tail counted.
func (sh *eventShape) sameButLast(d []byte, end int) bool {
	if sh.last.open <= sh.span.close {
		return false
	}
	lo := end + sh.last.open - sh.span.close // where d's last string starts
	suffix := sh.data[sh.last.close:]        // its closing quote and what follows
	hi := len(d) - len(suffix)
	if lo > hi || !bytes.Equal(d[hi:], suffix) || !bytes.Equal(d[end:lo], sh.data[sh.span.close:sh.last.open]) {
		return false
	}
	for _, c := range d[lo:hi] {
		if c == '"' || c == '\\' {
			return false
		}
	}
	return string(d[lo:hi]) != "usage" // a "usage" followed by an object is looked at
}

// keep makes d, whose first generated-text string is at span and which has
// the generated text after after it, the kept shape; last is its last
// string when that one may vary (eventShape.last).
func (sh *eventShape) keep(d []byte, span textSpan, after textCounter, last textSpan) {
	if len(d) > maxShape {
		sh.data = sh.data[:0]
		return
	}
	sh.data = append(sh.data[:0], d...)
	sh.span, sh.after, sh.last = span, after, last
}

// keepShape keeps d as the stream's shape (see eventShape).
func (s *sseScanner) keepShape(d []byte, span textSpan, after textCounter, last textSpan) {
	if s.shape == nil {
		if len(d) > maxShape {
			return
		}
		s.shape = shapePool.Get().(*eventShape)
	}
	s.shape.keep(d, span, after, last)
}

// sseSink receives the bytes a strip-mode scanner forwards, in order.
type sseSink interface {
	// forward is given a run of the p passed to feed. Runs come in order
	// and are maximal: two runs of one feed are separated by a stripped
	// line.
	forward(run []byte)
	// forwardHeld is given bytes held from an earlier write (the start of
	// a line completed now, or a line found too long); they come before
	// any run of the current write and are valid only during the call.
	forwardHeld(b []byte)
}

// sseLinePool recycles the buffers that hold a line split across writes.
var sseLinePool = sync.Pool{New: func() any {
	b := make([]byte, 0, 1024)
	return &b
}}

// maxPooledLine bounds the buffers returned to sseLinePool.
const maxPooledLine = 64 << 10

// feed scans p. With strip off the caller has already written p (out may
// be nil); with strip on, out receives every byte to forward, in order:
// normally a single run of p, with no copy.
func (s *sseScanner) feed(p []byte, out sseSink) {
	run, stop := 0, len(p) // strip: p[run:stop] is yet to be forwarded
	for i := 0; i < len(p); {
		end := len(p)
		nl := bytes.IndexByte(p[i:], '\n')
		complete := nl >= 0
		if complete {
			end = i + nl + 1
		}
		if s.overflow {
			s.overflow = !complete
			i = end
			continue
		}
		// A held line is only ever completed by the first segment (i is
		// 0), so what is held goes out before any run of p.
		if len(s.line)+end-i > maxSSELine {
			if s.strip && len(s.line) > 0 {
				out.forwardHeld(s.line)
			}
			s.line = s.line[:0]
			s.overflow = !complete
			i = end
			continue
		}
		if !complete {
			s.hold(p[i:])
			stop = i
			break
		}
		var drop bool
		if held := len(s.line); held > 0 {
			s.line = append(s.line, p[i:end]...)
			drop = s.processLine(s.line)
			if !drop && s.strip {
				out.forwardHeld(s.line[:held])
			}
			s.line = s.line[:0]
		} else {
			drop = s.processLine(p[i:end])
		}
		if drop { // strip mode only
			if i > run {
				out.forward(p[run:i])
			}
			run = end
		}
		i = end
	}
	if s.strip && stop > run {
		out.forward(p[run:stop])
	}
}

// hold appends an incomplete line to the held one.
func (s *sseScanner) hold(seg []byte) {
	if s.lineBuf == nil {
		s.lineBuf = sseLinePool.Get().(*[]byte)
		s.line = (*s.lineBuf)[:0]
	}
	s.line = append(s.line, seg...)
}

// finish processes a last line left without a newline when the stream
// ends, and forwards it (unless stripped) when strip is on.
func (s *sseScanner) finish(out sseSink) {
	if len(s.line) == 0 {
		return
	}
	line := s.line
	s.line = s.line[:0]
	if !s.processLine(line) && s.strip {
		out.forwardHeld(line)
	}
}

// release returns the line buffer and the kept shape to their pools at the
// end of the stream; a line held then is dropped (finish forwards it
// first).
func (s *sseScanner) release() {
	if sh := s.shape; sh != nil {
		s.shape = nil
		if cap(sh.data) <= maxPooledLine {
			*sh = eventShape{data: sh.data[:0]}
			shapePool.Put(sh)
		}
	}
	if s.lineBuf == nil {
		return
	}
	if cap(s.line) <= maxPooledLine {
		*s.lineBuf = s.line[:0]
		sseLinePool.Put(s.lineBuf)
	}
	s.line, s.lineBuf = nil, nil
}

// processLine inspects one line (with its line ending) and reports whether
// it must be dropped from the client's stream (strip mode only).
func (s *sseScanner) processLine(line []byte) (drop bool) {
	n := len(line)
	for n > 0 && (line[n-1] == '\n' || line[n-1] == '\r') {
		n--
	}
	if n == 0 { // blank line: end of event
		if s.dropping {
			s.dropping = false
			return true
		}
		return false
	}
	if s.dropping {
		return true
	}
	data, ok := bytes.CutPrefix(line[:n], []byte("data:"))
	if !ok {
		return false // comment, event:, id:, retry:
	}
	if len(data) > 0 && data[0] == ' ' {
		data = data[1:]
	}
	if string(data) == "[DONE]" {
		s.sawDone = true
		return false
	}
	s.events++
	if s.dialect != dialectOpenAI {
		s.dialectEvent(data)
		return false
	}
	if text, ok := s.shape.count(data); ok {
		s.shapeHits++
		s.generated.add(text)
		return false
	}
	// One pass counts the generated text and looks for a usage object; the
	// count is kept unless this is the usage-only event.
	var text textCounter
	first := firstText{span: textSpan{open: -1}}
	usageObj, exact := scanGeneratedFrom(data, 0, -1, &text, &first)
	if !exact {
		usageObj = hasUsageObject(data)
	}
	if !usageObj {
		if exact && first.span.open >= 0 {
			after := textCounter{ascii: text.ascii - first.through.ascii, other: text.other - first.through.other}
			s.keepShape(data, first.span, after, first.last)
		}
		s.generated.add(text)
		return false
	}
	u, hasUsage, hasChoices, ok := decodeUsageEvent(data)
	if !ok || !hasUsage {
		s.generated.add(text)
		return false
	}
	if u, ok := u.normalize(); ok {
		// Providers that repeat cumulative usage on several events: the
		// last one wins, never a sum.
		s.usage, s.haveUsage = u, true
	}
	if hasChoices {
		s.generated.add(text)
		return false
	}
	if s.strip {
		s.dropping = true
		return true
	}
	return false
}

// decodeUsageEvent reads an event's data as json.Unmarshal into
// struct{Choices []json.RawMessage; Usage *usageJSON} does, without
// allocating: ok is false where that decode fails; hasUsage where Usage
// would be non-nil; hasChoices where Choices would be non-empty. An object
// is validated as its members are read, in the one walk (validJSON and a
// second walk over the members cost a microsecond per stream).
func decodeUsageEvent(data []byte) (u usageFields, hasUsage, hasChoices, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		// null decodes nothing; any other valid value is a type error.
		return u, false, false, validJSON(data) && data[i] == 'n'
	}
	fail := func() (usageFields, bool, bool, bool) { return usageFields{}, false, false, false }
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return u, false, false, skipSpace(data, i+1) == len(data)
	}
	for {
		vs := objectKey(data, i) // validates `"key" :`
		if vs < 0 {
			return fail()
		}
		key := data[i+1 : scanString(data, i)-1]
		ve := validValue(data, vs, 1)
		if ve < 0 {
			return fail()
		}
		v := data[vs:ve]
		switch {
		case keyFold(key, "choices"):
			switch v[0] {
			case '[':
				hasChoices = skipSpace(v, 1) != len(v)-1
			case 'n':
				hasChoices = false
			default:
				return fail()
			}
		case keyFold(key, "usage"):
			switch v[0] {
			case '{':
				if !hasUsage {
					u = usageFields{}
				}
				if !decodeUsageObject(v, &u) {
					return fail()
				}
				hasUsage = true
			case 'n':
				hasUsage = false
			default:
				return fail()
			}
		}
		i = skipSpace(data, ve)
		switch {
		case i < len(data) && data[i] == ',':
			i = skipSpace(data, i+1)
		case i < len(data) && data[i] == '}':
			if skipSpace(data, i+1) != len(data) {
				return fail()
			}
			return u, hasUsage, hasChoices, true
		default:
			return fail()
		}
	}
}
