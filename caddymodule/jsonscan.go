package caddymodule

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// Byte-level JSON helpers for the request path: one validation pass over a
// body, then iteration over the members of objects and arrays already known
// to be valid, without decoding what metering does not need.

// maxJSONDepth is encoding/json's nesting limit.
const maxJSONDepth = 10000

// validJSON reports whether b is exactly one JSON value surrounded by
// optional whitespace, with the same answer as json.Valid.
func validJSON(b []byte) bool {
	e := validValue(b, skipSpace(b, 0), 0)
	return e >= 0 && skipSpace(b, e) == len(b)
}

// validValue returns the offset just past the valid JSON value starting
// at i, or -1; depth is the number of containers open around it (counted
// toward maxJSONDepth).
func validValue(b []byte, i, depth int) int {
	var stackBuf [64]byte
	stack := stackBuf[:0] // '{' or '[' per open container
	for {
		// A value starts at i.
		if i >= len(b) {
			return -1
		}
		switch c := b[i]; {
		case c == '{' || c == '[':
			if depth+len(stack) >= maxJSONDepth {
				return -1
			}
			closer := byte('}')
			if c == '[' {
				closer = ']'
			}
			i = skipSpace(b, i+1)
			if i < len(b) && b[i] == closer {
				i++
				break // an empty container is a complete value
			}
			stack = append(stack, c)
			if c == '{' {
				if i = objectKey(b, i); i < 0 {
					return -1
				}
			}
			continue
		case c == '"':
			if i = scanString(b, i); i < 0 {
				return -1
			}
		case c == '-' || (c >= '0' && c <= '9'):
			if i = scanNumber(b, i); i < 0 {
				return -1
			}
		case c == 't':
			if !bytes.HasPrefix(b[i:], []byte("true")) {
				return -1
			}
			i += 4
		case c == 'f':
			if !bytes.HasPrefix(b[i:], []byte("false")) {
				return -1
			}
			i += 5
		case c == 'n':
			if !bytes.HasPrefix(b[i:], []byte("null")) {
				return -1
			}
			i += 4
		default:
			return -1
		}
		// A value ended at i: close containers, or go on to the next value.
		for {
			if len(stack) == 0 {
				return i
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return -1
			}
			top := stack[len(stack)-1]
			if b[i] == ',' {
				i = skipSpace(b, i+1)
				if top == '{' {
					if i = objectKey(b, i); i < 0 {
						return -1
					}
				}
				break
			}
			if (top == '{' && b[i] == '}') || (top == '[' && b[i] == ']') {
				stack = stack[:len(stack)-1]
				i++
				continue
			}
			return -1
		}
	}
}

// objectKey scans `"key" :` at i and returns the offset of the value after
// it, or -1.
func objectKey(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = scanString(b, i); i < 0 {
		return -1
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return -1
	}
	return skipSpace(b, i+1)
}

// scanString returns the offset just past the valid JSON string starting
// at the quote at i, or -1.
func scanString(b []byte, i int) int {
	for i++; i < len(b); {
		c := b[i]
		switch {
		case c == '"':
			return i + 1
		case c == '\\':
			if i+1 >= len(b) {
				return -1
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return -1
				}
				for _, h := range b[i+2 : i+6] {
					if hexVal(h) < 0 {
						return -1
					}
				}
				i += 6
			default:
				return -1
			}
		case c < 0x20:
			return -1
		default:
			i++
		}
	}
	return -1
}

// scanNumber returns the offset just past the valid JSON number at i, or -1.
func scanNumber(b []byte, i int) int {
	digits := func(i int) int {
		j := i
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		return j
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		i = digits(i + 1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// skipValue returns the offset just past the value starting at i of valid
// JSON.
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i+1) + 1
	case '{', '[':
		return valueEnd(b, i)
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
		i++
	}
	return i
}

// objIter iterates over the members of a valid JSON object: b[i] is its
// '{' (or b starts with it when i is 0). After the loop, i is the offset
// of the closing '}'.
type objIter struct {
	b        []byte
	i        int
	key      []byte // raw key, without quotes (escapes not decoded)
	val      []byte // raw value
	valStart int    // offset of val in b
}

func (it *objIter) next() bool {
	b := it.b
	i := skipSpace(b, it.i+1) // past '{' or ','
	if i >= len(b) || b[i] != '"' {
		if i < len(b) { // '}' of an empty object
			it.i = i
		}
		return false
	}
	ke := stringEnd(b, i+1)
	it.key = b[i+1 : ke]
	vs := skipSpace(b, skipSpace(b, ke+1)+1) // past ':'
	ve := skipValue(b, vs)
	it.val, it.valStart = b[vs:ve], vs
	it.i = skipSpace(b, ve) // ',' or '}'
	return true
}

// arrIter iterates over the elements of a valid JSON array starting at
// b[0].
type arrIter struct {
	b   []byte
	i   int
	val []byte
}

func (it *arrIter) next() bool {
	b := it.b
	i := skipSpace(b, it.i+1) // past '[' or ','
	if i >= len(b) || b[i] == ']' || b[it.i] == ']' {
		return false
	}
	ve := skipValue(b, i)
	it.val = b[i:ve]
	it.i = skipSpace(b, ve) // ',' or ']'
	return true
}

// keyIs reports whether the raw key (as objIter gives it) is name, escapes
// decoded.
func keyIs(raw []byte, name string) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw) == name
	}
	k, ok := decodeKey(raw)
	return ok && k == name
}

// keyFold reports whether the raw key matches name as encoding/json
// matches struct fields: exactly or case-insensitively.
func keyFold(raw []byte, name string) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return bytes.EqualFold(raw, []byte(name))
	}
	k, ok := decodeKey(raw)
	return ok && bytes.EqualFold([]byte(k), []byte(name))
}

// foldKey is a raw object key to compare with several names as keyFold
// does, checked once for what makes the comparison cheap: a key with no
// escape and no byte outside ASCII matches an ASCII name only when both
// have the same length (no case folding crosses between ASCII and the
// rest), so most names are ruled out by their length.
type foldKey struct {
	raw   []byte
	plain bool // no backslash, ASCII only
}

func newFoldKey(raw []byte) foldKey {
	for _, c := range raw {
		if c == '\\' || c >= utf8.RuneSelf {
			return foldKey{raw: raw}
		}
	}
	return foldKey{raw: raw, plain: true}
}

// is reports keyFold(k.raw, name) for an ASCII name.
func (k foldKey) is(name string) bool {
	if k.plain {
		return len(k.raw) == len(name) && bytes.EqualFold(k.raw, []byte(name))
	}
	return keyFold(k.raw, name)
}

func decodeKey(raw []byte) (string, bool) {
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	return decodeString(q)
}

// decodeString decodes a JSON string literal as encoding/json does
// (invalid UTF-8 becomes U+FFFD); it reports false for any other value.
func decodeString(lit []byte) (string, bool) {
	if len(lit) < 2 || lit[0] != '"' {
		return "", false
	}
	inner := lit[1 : len(lit)-1]
	if bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return string(inner), true
	}
	var s string
	if json.Unmarshal(lit, &s) != nil {
		return "", false
	}
	return s, true
}
