package sink

import (
	"net/url"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/decoder"
)

func TestTemplateRender(t *testing.T) {
	ev := &decoder.Event{ID: "e1", AggregateType: "order", AggregateID: "a/1", EventType: "created", Topic: "outbox.order"}
	for src, want := range map[string]string{
		"":                                  "",
		"fixed":                             "fixed",
		"{topic}.{event_type}":              "outbox.order.created",
		"x.{aggregate_type}.{aggregate_id}": "x.order.a/1",
		"{id}":                              "e1",
	} {
		tm, err := ParseTemplate(src)
		if err != nil {
			t.Fatalf("ParseTemplate(%q): %v", src, err)
		}
		if got := tm.Render(ev); got != want {
			t.Errorf("%q renders %q, want %q", src, got, want)
		}
	}
	tm := MustParseTemplate("http://h/{aggregate_id}")
	if got := tm.RenderEscaped(ev, url.PathEscape); got != "http://h/a%2F1" {
		t.Errorf("escaped render = %q", got)
	}
	if tm.Prefix() != "http://h/" || tm.Constant() || tm.IsZero() {
		t.Errorf("Prefix %q, Constant %v, IsZero %v", tm.Prefix(), tm.Constant(), tm.IsZero())
	}
}

// The error texts are what a user sees for a bad --nats-subject and the like.
func TestParseTemplateErrors(t *testing.T) {
	for src, want := range map[string]string{
		"a.{nope}": `template "a.{nope}": unknown placeholder {nope}; use {id}, {aggregate_type}, {aggregate_id}, {event_type} or {topic}`,
		"a.{}":     `template "a.{}": unknown placeholder {}`,
		"a.{id":    `template "a.{id": unclosed '{'`,
		"a}":       `template "a}": '}' without '{'`,
	} {
		_, err := ParseTemplate(src)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("ParseTemplate(%q) = %v, want %q", src, err, want)
		}
	}
}
