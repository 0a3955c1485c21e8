package caddymodule

import (
	"bytes"
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
	strip bool

	line     []byte // the current incomplete line (held for output when strip)
	overflow bool   // the current line exceeded maxSSELine: passing it through
	dropping bool   // inside a stripped event: drop lines up to its blank line

	usage     usage
	haveUsage bool
	generated textCounter // characters of generated text seen in deltas
	events    int64       // data events seen (excluding [DONE])
	sawDone   bool
}

// feed scans p. With strip off the caller has already written p; with strip
// on, emit receives every byte to forward, in order (emit may be called
// several times; slices are only valid during the call).
func (s *sseScanner) feed(p []byte, emit func([]byte)) {
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

// finish processes a last line left without a newline when the stream
// ends, and forwards it (unless stripped) when strip is on.
func (s *sseScanner) finish(emit func([]byte)) {
	if len(s.line) == 0 {
		return
	}
	line := s.line
	s.line = nil
	if !s.processLine(line) && s.strip {
		emit(line)
	}
}

// processLine inspects one line (with its line ending) and reports whether
// it must be dropped from the client's stream (strip mode only).
func (s *sseScanner) processLine(line []byte) (drop bool) {
	content := bytes.TrimRight(line, "\r\n")
	if len(content) == 0 { // blank line: end of event
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
	if usageObjectAt(data) < 0 {
		countGeneratedText(data, &s.generated)
		return false
	}
	u, hasUsage, hasChoices, ok := decodeUsageEvent(data)
	if !ok || !hasUsage {
		countGeneratedText(data, &s.generated)
		return false
	}
	if u, ok := u.normalize(); ok {
		// Providers that repeat cumulative usage on several events: the
		// last one wins, never a sum.
		s.usage, s.haveUsage = u, true
	}
	if hasChoices {
		countGeneratedText(data, &s.generated)
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
// would be non-nil; hasChoices where Choices would be non-empty.
func decodeUsageEvent(data []byte) (u usageFields, hasUsage, hasChoices, ok bool) {
	if !validJSON(data) {
		return u, false, false, false
	}
	i := skipSpace(data, 0)
	switch data[i] {
	case 'n': // null: nothing decoded
		return u, false, false, true
	case '{':
	default:
		return u, false, false, false
	}
	for it := (objIter{b: data, i: i}); it.next(); {
		v := it.val
		switch {
		case keyFold(it.key, "choices"):
			switch v[0] {
			case '[':
				hasChoices = skipSpace(v, 1) != len(v)-1
			case 'n':
				hasChoices = false
			default:
				return u, false, false, false
			}
		case keyFold(it.key, "usage"):
			switch v[0] {
			case '{':
				if !hasUsage {
					u = usageFields{}
				}
				if !decodeUsageObject(v, &u) {
					return u, false, false, false
				}
				hasUsage = true
			case 'n':
				hasUsage = false
			default:
				return u, false, false, false
			}
		}
	}
	return u, hasUsage, hasChoices, true
}
