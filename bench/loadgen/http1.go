package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
)

// BuildRequest returns the raw bytes of an HTTP/1.1 request with keep-alive,
// built once and written as-is for every request.
func BuildRequest(method, host, path string, headers map[string]string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, host)
	keys := make([]string, 0, len(headers))
	for k := range headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %s\r\n", k, headers[k])
	}
	if body != nil || method == "POST" || method == "PUT" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

var (
	errMalformed = errors.New("malformed HTTP response")
	hdrCL        = []byte("content-length:")
	hdrTE        = []byte("transfer-encoding:")
	hdrConn      = []byte("connection:")
	valChunked   = []byte("chunked")
	valClose     = []byte("close")
)

// respHead is what readHead learned from a status line and headers.
type respHead struct {
	status        int
	contentLength int64 // -1 when absent
	chunked       bool
	close         bool
}

// readHead reads a status line and headers, skipping 1xx responses.
func readHead(br *bufio.Reader) (respHead, error) {
	for {
		h := respHead{contentLength: -1}
		line, err := br.ReadSlice('\n')
		if err != nil {
			return h, err
		}
		// "HTTP/1.1 200 OK\r\n"
		if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
			return h, errMalformed
		}
		h.status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
		if h.status < 100 || h.status > 999 {
			return h, errMalformed
		}
		if line[7] == '0' {
			h.close = true // HTTP/1.0
		}
		for {
			line, err = br.ReadSlice('\n')
			if err != nil {
				return h, err
			}
			if len(line) <= 2 {
				break
			}
			switch {
			case hasPrefixFold(line, hdrCL):
				n, err := strconv.ParseInt(string(bytes.TrimSpace(line[len(hdrCL):])), 10, 64)
				if err != nil {
					return h, errMalformed
				}
				h.contentLength = n
			case hasPrefixFold(line, hdrTE):
				if bytes.Contains(bytes.ToLower(line[len(hdrTE):]), valChunked) {
					h.chunked = true
				}
			case hasPrefixFold(line, hdrConn):
				if bytes.Contains(bytes.ToLower(line[len(hdrConn):]), valClose) {
					h.close = true
				}
			}
		}
		if h.status >= 200 || h.status == 101 {
			return h, nil
		}
	}
}

func hasPrefixFold(s, prefix []byte) bool {
	return len(s) >= len(prefix) && bytes.EqualFold(s[:len(prefix)], prefix)
}

// readBody discards the body that h announces and returns its size. A body
// without length or chunking runs to EOF (the connection is then unusable).
func readBody(br *bufio.Reader, h respHead, method string) (int64, error) {
	if method == "HEAD" || h.status == 204 || h.status == 304 || (h.status >= 100 && h.status < 200) {
		return 0, nil
	}
	switch {
	case h.chunked:
		var total int64
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return total, err
			}
			size, err := parseChunkSize(line)
			if err != nil {
				return total, err
			}
			if size == 0 {
				// trailers until an empty line
				for {
					line, err = br.ReadSlice('\n')
					if err != nil {
						return total, err
					}
					if len(line) <= 2 {
						return total, nil
					}
				}
			}
			if _, err := br.Discard(int(size) + 2); err != nil {
				return total, err
			}
			total += size
		}
	case h.contentLength >= 0:
		n, err := br.Discard(int(h.contentLength))
		return int64(n), err
	default:
		n, err := io.Copy(io.Discard, br)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
}

func parseChunkSize(line []byte) (int64, error) {
	var n int64
	digits := 0
	for _, c := range line {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			if digits == 0 {
				return 0, errMalformed
			}
			return n, nil
		}
		n = n<<4 | int64(d)
		digits++
		if digits > 15 {
			return 0, errMalformed
		}
	}
	return 0, errMalformed
}
