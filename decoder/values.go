package decoder

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// decodeBytea decodes the text form of a bytea value in either output
// format, because bytea_output is a session setting the relay may not
// control: hex ("\x0a1b") or escape (printable bytes as is, "\\" for a
// backslash, "\ooo" octal for the rest). The result is freshly allocated.
func decodeBytea(src []byte) ([]byte, error) {
	if len(src) >= 2 && src[0] == '\\' && src[1] == 'x' {
		h := src[2:]
		if len(h)%2 != 0 {
			return nil, errors.New("is bytea in hex format with an odd number of digits")
		}
		out := make([]byte, len(h)/2)
		if _, err := hex.Decode(out, h); err != nil {
			return nil, errors.New("is bytea in hex format with a non-hex digit")
		}
		return out, nil
	}
	// Escape format: count first so the result is one exact allocation.
	n := 0
	for i := 0; i < len(src); n++ {
		if src[i] != '\\' {
			i++
			continue
		}
		switch {
		case i+1 < len(src) && src[i+1] == '\\':
			i += 2
		case i+3 < len(src) && isOctal3(src[i+1:i+4]):
			i += 4
		default:
			return nil, errors.New("is bytea in escape format with a bad backslash sequence")
		}
	}
	out := make([]byte, 0, n)
	for i := 0; i < len(src); {
		c := src[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		if src[i+1] == '\\' {
			out = append(out, '\\')
			i += 2
			continue
		}
		out = append(out, (src[i+1]-'0')<<6|(src[i+2]-'0')<<3|(src[i+3]-'0'))
		i += 4
	}
	return out, nil
}

// isOctal3 reports whether b is three octal digits of a value up to 0377.
func isOctal3(b []byte) bool {
	return len(b) == 3 && b[0] >= '0' && b[0] <= '3' && b[1] >= '0' && b[1] <= '7' && b[2] >= '0' && b[2] <= '7'
}

// parseTimestamp parses PostgreSQL's ISO DateStyle output of timestamptz
// ("2026-11-23 12:00:00.123456+05:30", offsets as +HH, +HH:MM or +HH:MM:SS)
// and of timestamp without time zone (taken as UTC). Other DateStyles print
// zone abbreviations ("IST") that are ambiguous, so they are refused rather
// than guessed; the relay pins DateStyle=ISO on its connection.
func parseTimestamp(s []byte) (time.Time, bool) {
	p := tsParser{s: s}
	year := p.digits(4)
	month := p.sep('-').digits(2)
	day := p.sep('-').digits(2)
	if len(p.s) > 0 && p.s[0] == 'T' {
		p.s = p.s[1:]
	} else {
		p.sep(' ')
	}
	hour := p.digits(2)
	minute := p.sep(':').digits(2)
	sec := p.sep(':').digits(2)
	nsec := 0
	if len(p.s) > 0 && p.s[0] == '.' {
		p.s = p.s[1:]
		scale := 100000000
		n := 0
		for len(p.s) > 0 && p.s[0] >= '0' && p.s[0] <= '9' && n < 9 {
			nsec += int(p.s[0]-'0') * scale
			scale /= 10
			p.s = p.s[1:]
			n++
		}
		if n == 0 {
			p.bad = true
		}
	}
	offset := 0
	if len(p.s) > 0 {
		switch p.s[0] {
		case 'Z':
			p.s = p.s[1:]
		case '+', '-':
			sign := 1
			if p.s[0] == '-' {
				sign = -1
			}
			p.s = p.s[1:]
			oh := p.digits(2)
			om, os := 0, 0
			if len(p.s) > 0 && p.s[0] == ':' {
				om = p.sep(':').digits(2)
				if len(p.s) > 0 && p.s[0] == ':' {
					os = p.sep(':').digits(2)
				}
			}
			if oh > 15 || om > 59 || os > 59 {
				p.bad = true
			}
			offset = sign * (oh*3600 + om*60 + os)
		default:
			p.bad = true
		}
	}
	if p.bad || len(p.s) != 0 || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	if t.Day() != day { // time.Date normalizes 2026-02-30 to March
		return time.Time{}, false
	}
	return t.Add(-time.Duration(offset) * time.Second), true
}

// tsParser consumes fixed-width fields; any mismatch sets bad, so the
// caller checks once at the end.
type tsParser struct {
	s   []byte
	bad bool
}

func (p *tsParser) digits(n int) int {
	if len(p.s) < n {
		p.bad = true
		p.s = nil
		return 0
	}
	v := 0
	for _, c := range p.s[:n] {
		if c < '0' || c > '9' {
			p.bad = true
		}
		v = v*10 + int(c-'0')
	}
	p.s = p.s[n:]
	return v
}

func (p *tsParser) sep(c byte) *tsParser {
	if len(p.s) == 0 || p.s[0] != c {
		p.bad = true
		return p
	}
	p.s = p.s[1:]
	return p
}

// headerEntry locates one top-level member of the headers object while it
// is being decoded into the scratch buffers.
type headerEntry struct {
	keyStart, keyEnd int
	valStart, valEnd int
}

// errNotObject and errBadJSON are the reasons a headers value is refused;
// they never quote the value, which may carry credentials.
var (
	errNotObject = errors.New("is not a JSON object")
	errBadJSON   = errors.New("is not valid JSON")
)

// parseHeaders turns a JSON object into headers sorted by key: string
// values as their text, other values as compact JSON. Keys share one
// string and values one byte slice, to keep allocations per event flat.
// Keys naming a header the relay sets itself, and empty keys, are left out
// and reported to Config.DroppedHeader under relation; null values are
// left out too.
func (d *Decoder) parseHeaders(src []byte, relation string) ([]Header, error) {
	src = trimJSONSpace(src)
	if len(src) == 2 && src[0] == '{' && src[1] == '}' {
		return nil, nil
	}
	if !json.Valid(src) {
		return nil, errBadJSON
	}
	if len(src) == 0 || src[0] != '{' {
		return nil, errNotObject
	}
	keys, vals, ents := d.keyBuf[:0], d.valBuf[:0], d.hdrBuf[:0]
	i := 1
	for {
		i = skipJSONSpace(src, i)
		if src[i] == '}' {
			break
		}
		if src[i] == ',' {
			i = skipJSONSpace(src, i+1)
		}
		// Key.
		end := stringEnd(src, i)
		var e headerEntry
		e.keyStart = len(keys)
		keys = appendJSONString(keys, src[i:end])
		e.keyEnd = len(keys)
		i = skipJSONSpace(src, end)
		i = skipJSONSpace(src, i+1) // ':'
		// Value.
		end = valueEnd(src, i)
		key, reason := keys[e.keyStart:e.keyEnd], ""
		switch {
		case len(key) == 0:
			reason = DroppedEmptyKey
		case ownHeader(key):
			reason = DroppedReserved
		}
		// After json.Valid, a value starting with 'n' is null: no header,
		// as with a NULL header column.
		if reason != "" || src[i] == 'n' {
			if reason != "" && d.droppedHeader != nil {
				d.droppedHeader(relation, string(key), reason)
			}
			keys = keys[:e.keyStart]
			i = skipJSONSpace(src, end)
			continue
		}
		e.valStart = len(vals)
		if src[i] == '"' {
			vals = appendJSONString(vals, src[i:end])
		} else {
			vals = appendCompactJSON(vals, src[i:end])
		}
		e.valEnd = len(vals)
		ents = append(ents, e)
		i = skipJSONSpace(src, end)
	}
	d.keyBuf, d.valBuf, d.hdrBuf = keys, vals, ents
	if len(ents) == 0 {
		return nil, nil
	}
	keyStr := string(keys)
	valBytes := make([]byte, len(vals))
	copy(valBytes, vals)
	hs := make([]Header, len(ents))
	for j, e := range ents {
		// Full slice expressions: a caller appending to one value must not
		// overwrite the next.
		hs[j] = Header{Key: keyStr[e.keyStart:e.keyEnd], Value: valBytes[e.valStart:e.valEnd:e.valEnd]}
	}
	slices.SortStableFunc(hs, func(a, b Header) int { return strings.Compare(a.Key, b.Key) })
	return hs, nil
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func trimJSONSpace(b []byte) []byte {
	for len(b) > 0 && isJSONSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isJSONSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// The helpers below walk JSON already checked by json.Valid, so they only
// find extents; bounds are still checked so a mistake cannot panic.

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && isJSONSpace(b[i]) {
		i++
	}
	if i >= len(b) {
		return len(b) - 1
	}
	return i
}

// stringEnd returns the index after the string starting at b[i] == '"'.
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// valueEnd returns the index after the value starting at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = stringEnd(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && !isJSONSpace(b[j]) {
		j++
	}
	return j
}

// appendJSONString appends the text of a quoted JSON string.
func appendJSONString(dst, quoted []byte) []byte {
	if len(quoted) < 2 {
		return dst
	}
	inner := quoted[1 : len(quoted)-1]
	if !slices.Contains(inner, '\\') {
		return append(dst, inner...)
	}
	// Escapes are rare in header keys and values; let encoding/json get
	// \u surrogate pairs right.
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return append(dst, inner...)
	}
	return append(dst, s...)
}

// appendQuotedJSON appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as with encoding/json, so the result is always valid JSON.
func appendQuotedJSON[S string | []byte](dst []byte, s S) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
			if r == utf8.RuneError && n == 1 {
				dst = append(dst, `\ufffd`...)
			} else {
				dst = append(dst, s[i:i+n]...)
			}
			i += n
			continue
		}
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			dst = append(dst, c)
		}
		i++
	}
	return append(dst, '"')
}

// appendCompactJSON appends v without insignificant whitespace (jsonb's text
// output puts spaces after ':' and ',').
func appendCompactJSON(dst, v []byte) []byte {
	inString := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if inString {
			dst = append(dst, c)
			switch c {
			case '\\':
				if i+1 < len(v) {
					i++
					dst = append(dst, v[i])
				}
			case '"':
				inString = false
			}
			continue
		}
		if isJSONSpace(c) {
			continue
		}
		if c == '"' {
			inString = true
		}
		dst = append(dst, c)
	}
	return dst
}
