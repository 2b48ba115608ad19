package sink

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// Template renders a destination name (a NATS subject, a Redis stream, a
// RabbitMQ exchange or routing key, a webhook URL) from an event's fields.
// Placeholders are {id}, {aggregate_type}, {aggregate_id}, {event_type} and
// {topic} (the event's topic, rendered from --topic); everything else is
// literal. The zero Template renders the empty string.
type Template struct {
	src  string
	segs []tmplSegment
}

type tmplSegment struct {
	lit   string
	field string // set for a placeholder
}

// templateFields are the placeholders a Template may use.
var templateFields = map[string]bool{
	"id": true, "aggregate_type": true, "aggregate_id": true, "event_type": true, "topic": true,
}

// ParseTemplate compiles s once, so rendering is a concatenation.
func ParseTemplate(s string) (Template, error) {
	t := Template{src: s}
	rest := s
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if close := strings.IndexByte(rest, '}'); close >= 0 && (open < 0 || close < open) {
			return Template{}, fmt.Errorf("template %q: '}' without '{'", s)
		}
		if open < 0 {
			t.segs = append(t.segs, tmplSegment{lit: rest})
			break
		}
		if open > 0 {
			t.segs = append(t.segs, tmplSegment{lit: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return Template{}, fmt.Errorf("template %q: unclosed '{'", s)
		}
		name := rest[open+1 : open+end]
		if !templateFields[name] {
			return Template{}, fmt.Errorf("template %q: unknown placeholder {%s}; use {id}, {aggregate_type}, {aggregate_id}, {event_type} or {topic}", s, name)
		}
		t.segs = append(t.segs, tmplSegment{field: name})
		rest = rest[open+end+1:]
	}
	return t, nil
}

// MustParseTemplate is ParseTemplate for constants; it panics on an error.
func MustParseTemplate(s string) Template {
	t, err := ParseTemplate(s)
	if err != nil {
		panic(err)
	}
	return t
}

// String returns the template as written.
func (t Template) String() string { return t.src }

// IsZero reports whether t is the zero Template.
func (t Template) IsZero() bool { return t.src == "" }

// Prefix returns the literal text before the first placeholder.
func (t Template) Prefix() string {
	if len(t.segs) > 0 && t.segs[0].field == "" {
		return t.segs[0].lit
	}
	return ""
}

// Constant reports whether t has no placeholders.
func (t Template) Constant() bool {
	for _, s := range t.segs {
		if s.field != "" {
			return false
		}
	}
	return true
}

// Render returns the template filled with ev's fields.
func (t Template) Render(ev *decoder.Event) string { return t.render(ev, nil) }

// render fills the template, passing every field value through escape if
// it is set (URL templates escape path segments).
func (t Template) render(ev *decoder.Event, escape func(string) string) string {
	if len(t.segs) == 1 && t.segs[0].field == "" {
		return t.segs[0].lit
	}
	var b strings.Builder
	for _, s := range t.segs {
		if s.field == "" {
			b.WriteString(s.lit)
			continue
		}
		v := fieldValue(ev, s.field)
		if escape != nil {
			v = escape(v)
		}
		b.WriteString(v)
	}
	return b.String()
}

func fieldValue(ev *decoder.Event, field string) string {
	switch field {
	case "id":
		return ev.ID
	case "aggregate_type":
		return ev.AggregateType
	case "aggregate_id":
		return ev.AggregateID
	case "event_type":
		return ev.EventType
	case "topic":
		return ev.Topic
	}
	return ""
}

// EventJSON is the JSON shape of an event in the webhook body and the
// stdout sink's lines. Payload is the stored payload itself when it is
// valid JSON, otherwise a base64 string of its bytes; null when NULL.
type EventJSON struct {
	ID            string            `json:"id"`
	AggregateType string            `json:"aggregate_type"`
	AggregateID   string            `json:"aggregate_id"`
	EventType     string            `json:"event_type"`
	Payload       json.RawMessage   `json:"payload"`
	Headers       map[string]string `json:"headers"`
	CreatedAt     time.Time         `json:"created_at"`
}

// appendEventJSON appends ev's EventJSON encoding (no newline) to b.
func appendEventJSON(b []byte, ev *decoder.Event) ([]byte, error) {
	doc := EventJSON{
		ID:            ev.ID,
		AggregateType: ev.AggregateType,
		AggregateID:   ev.AggregateID,
		EventType:     ev.EventType,
		Headers:       make(map[string]string, len(ev.Headers)),
		CreatedAt:     ev.CreatedAt.UTC(),
	}
	for _, h := range ev.Headers {
		doc.Headers[h.Key] = string(h.Value)
	}
	switch {
	case ev.Payload == nil:
		doc.Payload = json.RawMessage("null")
	case json.Valid(ev.Payload):
		doc.Payload = json.RawMessage(ev.Payload)
	default:
		s, _ := json.Marshal(base64.StdEncoding.EncodeToString(ev.Payload))
		doc.Payload = s
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return b, fmt.Errorf("encoding event %s as JSON: %w", ev.ID, err)
	}
	return append(b, out...), nil
}

// errSinkClosed is wrapped by the non-Kafka sinks' ErrClosed returns.
var errSinkClosed = errors.New("sink closed")

// RedactURL returns u without its password, for logs and errors. A value
// that does not parse as a URL is shown only by scheme.
func RedactURL(u string) string {
	parts := strings.Split(u, ",")
	for i, p := range parts {
		pu, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			parts[i] = "(unparsable URL)"
			continue
		}
		if pu.User != nil {
			if _, hasPassword := pu.User.Password(); !hasPassword && pu.User.Username() != "" {
				// A lone user part is often a token (nats://token@host).
				pu.User = url.User("xxxxx")
			}
		}
		parts[i] = pu.Redacted()
	}
	return strings.Join(parts, ",")
}

// headersJSON encodes headers as one JSON object of strings.
func headersJSON(hs []decoder.Header) (string, error) {
	m := make(map[string]string, len(hs))
	for _, h := range hs {
		m[h.Key] = string(h.Value)
	}
	b, err := json.Marshal(m)
	return string(b), err
}
