package outbox_test

// Pure unit tests: what the writer sends, checked without a database. The
// tests against a real PostgreSQL are in libtest/ of the relay's module
// (libtest/libtest.go says why).

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// recorder is a Tx that keeps the statements instead of running them.
type recorder struct {
	sql  []string
	args [][]any
}

func (r *recorder) Exec(_ context.Context, sql string, args ...any) error {
	r.sql = append(r.sql, sql)
	r.args = append(r.args, args)
	return nil
}

var placed = outbox.Event{AggregateType: "order", AggregateID: "42", EventType: "OrderPlaced", Payload: []byte(`{"total": 10}`), Headers: map[string]string{"tenant": "acme"}}

// Invalid events are refused before any statement, naming the event.
func TestInvalidEventsSendNothing(t *testing.T) {
	with := func(f func(*outbox.Event)) outbox.Event { e := placed; f(&e); return e }
	for _, tt := range []struct {
		ev      outbox.Event
		wantErr string
	}{
		{with(func(e *outbox.Event) { e.AggregateType = "" }), "aggregate type is empty"},
		{with(func(e *outbox.Event) { e.AggregateID = "" }), "aggregate id is empty"},
		{with(func(e *outbox.Event) { e.EventType = "" }), "event type is empty"},
		{with(func(e *outbox.Event) { e.Payload = []byte(`{"a":`) }), "payload is not valid JSON"},
		{with(func(e *outbox.Event) { e.Payload = nil }), "payload is not valid JSON"},
		{with(func(e *outbox.Event) { e.ID = "not-a-uuid" }), `id "not-a-uuid" is not a UUID`},
		{with(func(e *outbox.Event) { e.Headers = map[string]string{"": "x"} }), "empty key"},
	} {
		var r recorder
		_, err := outbox.Write(context.Background(), &r, placed, tt.ev)
		if !errors.Is(err, outbox.ErrInvalidEvent) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "outbox event 1") {
			t.Errorf("Write: error %v, want ErrInvalidEvent with %q about event 1", err, tt.wantErr)
		}
		if _, err := outbox.Emit(context.Background(), &r, "outbox", tt.ev); !errors.Is(err, outbox.ErrInvalidEvent) {
			t.Errorf("Emit: error %v, want ErrInvalidEvent", err)
		}
		if len(r.sql) != 0 {
			t.Errorf("an invalid batch sent %q", r.sql)
		}
	}
}

// Table and column names are quoted, and a bare table name is in public.
func TestWriterQuotesNames(t *testing.T) {
	var r recorder
	if _, err := outbox.Write(context.Background(), &r, placed); err != nil {
		t.Fatal(err)
	}
	if want := `INSERT INTO "public"."outbox" ("id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers") SELECT`; !strings.HasPrefix(r.sql[0], want) {
		t.Errorf("default writer sent %q, want it to start with %q", r.sql[0], want)
	}
	w, err := outbox.NewWriter(outbox.Config{Table: `app.Outbox "Events"`, Columns: outbox.DebeziumColumns(), Payload: outbox.PayloadBytes})
	if err != nil {
		t.Fatal(err)
	}
	r = recorder{}
	ids, err := w.Write(context.Background(), &r, outbox.Event{AggregateType: "order", AggregateID: "1", EventType: "Raw", Payload: []byte{0, 0xff}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `INSERT INTO "app"."Outbox ""Events""" ("id", "aggregatetype", "aggregateid", "type", "payload") SELECT`; !strings.HasPrefix(r.sql[0], want) {
		t.Errorf("sent %q, want it to start with %q", r.sql[0], want)
	}
	if got := r.args[0][0].([]string); len(got) != 1 || got[0] != ids[0] {
		t.Errorf("ids sent %v, returned %v", got, ids)
	}
}

func TestNewWriterRefusesBadConfig(t *testing.T) {
	for _, tt := range []struct {
		cfg     outbox.Config
		wantErr string
	}{
		{outbox.Config{Table: "a.b.c"}, "want schema.name or name"},
		{outbox.Config{Table: ".outbox"}, "want schema.name or name"},
		{outbox.Config{Columns: outbox.Columns{ID: "id"}}, "aggregate_type needs a column name"},
		{outbox.Config{Payload: 9}, "payload kind 9"},
	} {
		if _, err := outbox.NewWriter(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("NewWriter(%+v): %v, want %q", tt.cfg, err, tt.wantErr)
		}
	}
}

func TestEmitNeedsAPrefix(t *testing.T) {
	var r recorder
	if _, err := outbox.Emit(context.Background(), &r, "", placed); err == nil || len(r.sql) != 0 {
		t.Errorf("empty prefix: %v, sent %q", err, r.sql)
	}
}
