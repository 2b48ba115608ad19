package sink

import (
	"fmt"
	"strings"

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
