// Package placeholder is the one template engine of the relay: the topic
// template of the decoder (decoder/config.go) and the sinks' destination
// templates (sink/template.go) are both parsed here, so a template means
// the same wherever a user writes it. Text between '{' and '}' is a
// placeholder; everything else is literal. What a name stands for is the
// caller's business: Parse hands every name to a resolve function, which
// maps it to a field of the caller's choosing or refuses it.
package placeholder

import (
	"errors"
	"strings"
)

// Literal is the Field of a segment of literal text; resolve functions
// return other values for placeholders.
const Literal = 0

// Segment is literal text or a placeholder of a parsed template.
type Segment struct {
	// Field is Literal for literal text, otherwise what resolve made of
	// the placeholder's name.
	Field int
	// Text is the literal text, or the placeholder's name.
	Text string
}

// Template is a parsed template: rendering it is a concatenation of its
// segments, done by the caller, which knows the values of its fields.
type Template struct {
	src  string
	segs []Segment
}

// Parse splits src into literal text and {name} placeholders, mapping each
// name through resolve; a resolve error is returned as is. The syntax
// errors say what is wrong without naming the template: callers prefix
// their own context ("topic template %q: ..."). An empty src gives the
// zero Template.
func Parse(src string, resolve func(name string) (int, error)) (Template, error) {
	t := Template{src: src}
	rest := src
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			open = len(rest)
		}
		if open > 0 {
			t.segs = append(t.segs, Segment{Field: Literal, Text: rest[:open]})
			rest = rest[open:]
			continue
		}
		if rest[0] == '}' {
			return Template{}, errors.New("'}' without '{'")
		}
		end := strings.IndexAny(rest[1:], "{}")
		if end < 0 || rest[1+end] != '}' {
			return Template{}, errors.New("unclosed '{'")
		}
		name := rest[1 : 1+end]
		rest = rest[2+end:]
		field, err := resolve(name)
		if err != nil {
			return Template{}, err
		}
		if field == Literal {
			return Template{}, errors.New("placeholder {" + name + "} resolved to literal text") // a resolve bug
		}
		t.segs = append(t.segs, Segment{Field: field, Text: name})
	}
	return t, nil
}

// String returns the template as written.
func (t Template) String() string { return t.src }

// Segments returns the parsed segments, in order; the caller must not
// modify them.
func (t Template) Segments() []Segment { return t.segs }

// Constant reports whether t has no placeholders.
func (t Template) Constant() bool {
	for _, s := range t.segs {
		if s.Field != Literal {
			return false
		}
	}
	return true
}

// Prefix returns the literal text before the first placeholder.
func (t Template) Prefix() string {
	if len(t.segs) > 0 && t.segs[0].Field == Literal {
		return t.segs[0].Text
	}
	return ""
}
