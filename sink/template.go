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
	"github.com/outbox-relay/outbox-relay/internal/placeholder"
)

// Template renders a destination name (a NATS subject, a Redis stream, a
// RabbitMQ exchange or routing key, a webhook URL) from an event's fields.
// Placeholders are {id}, {aggregate_type}, {aggregate_id}, {event_type} and
// {topic} (the event's topic, rendered from --topic); everything else is
// literal. The syntax is the topic template's (internal/placeholder). The
// zero Template renders the empty string.
type Template struct {
	t placeholder.Template
}

// The fields a Template's placeholders stand for.
const (
	fieldID = placeholder.Literal + 1 + iota
	fieldAggregateType
	fieldAggregateID
	fieldEventType
	fieldTopic
)

// templateFields are the placeholders a Template may use.
var templateFields = map[string]int{
	"id": fieldID, "aggregate_type": fieldAggregateType, "aggregate_id": fieldAggregateID,
	"event_type": fieldEventType, "topic": fieldTopic,
}

// ParseTemplate compiles s once, so rendering is a concatenation.
func ParseTemplate(s string) (Template, error) {
	t, err := placeholder.Parse(s, func(name string) (int, error) {
		if f, ok := templateFields[name]; ok {
			return f, nil
		}
		return 0, fmt.Errorf("unknown placeholder {%s}; use {id}, {aggregate_type}, {aggregate_id}, {event_type} or {topic}", name)
	})
	if err != nil {
		return Template{}, fmt.Errorf("template %q: %w", s, err)
	}
	return Template{t}, nil
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
func (t Template) String() string { return t.t.String() }

// IsZero reports whether t is the zero Template.
func (t Template) IsZero() bool { return t.t.String() == "" }

// Prefix returns the literal text before the first placeholder.
func (t Template) Prefix() string { return t.t.Prefix() }

// Constant reports whether t has no placeholders.
func (t Template) Constant() bool { return t.t.Constant() }

// Render returns the template filled with ev's fields.
func (t Template) Render(ev *decoder.Event) string { return t.RenderEscaped(ev, nil) }

// RenderEscaped fills the template, passing every field value through
// escape if it is set (URL templates escape path segments).
func (t Template) RenderEscaped(ev *decoder.Event, escape func(string) string) string {
	segs := t.t.Segments()
	if len(segs) == 1 && segs[0].Field == placeholder.Literal {
		return segs[0].Text
	}
	var b strings.Builder
	for _, s := range segs {
		if s.Field == placeholder.Literal {
			b.WriteString(s.Text)
			continue
		}
		v := fieldValue(ev, s.Field)
		if escape != nil {
			v = escape(v)
		}
		b.WriteString(v)
	}
	return b.String()
}

func fieldValue(ev *decoder.Event, field int) string {
	switch field {
	case fieldID:
		return ev.ID
	case fieldAggregateType:
		return ev.AggregateType
	case fieldAggregateID:
		return ev.AggregateID
	case fieldEventType:
		return ev.EventType
	case fieldTopic:
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
