package decoder

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// messageMsg builds a pgoutput logical decoding message.
func messageMsg(transactional bool, prefix string, content []byte) []byte {
	b := []byte{'M', 0}
	if transactional {
		b[1] = 1
	}
	b = binary.BigEndian.AppendUint64(b, 0x16B3750)
	b = append(append(b, prefix...), 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(content)))
	return append(b, content...)
}

func envelopeJSON(t *testing.T, env outbox.Envelope) []byte {
	t.Helper()
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var goodEnvelope = outbox.Envelope{V: 1, ID: goodID, AggregateType: "order", AggregateID: "order-1", EventType: "OrderCreated",
	Payload: json.RawMessage(`{"a":1}`), Headers: map[string]string{"h": "v", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, CreatedAt: "2026-11-23T12:00:00.5Z"}

// decodeInTxn decodes msgs after a Begin and returns the last op.
func decodeInTxn(t *testing.T, cfg Config, msgs ...[]byte) (Op, error) {
	t.Helper()
	if cfg.Table == "" {
		cfg.Table = "outbox"
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Decode(beginMsg(), 1); err != nil {
		t.Fatal(err)
	}
	var op Op
	for _, m := range msgs {
		if op, err = d.Decode(m, 0x16B3750); err != nil {
			return op, err
		}
	}
	return op, nil
}

// A transactional message with the configured prefix is an event with the
// same fields and topic a row would have.
func TestMessageBecomesAnEventLikeARow(t *testing.T) {
	op, err := decodeInTxn(t, Config{MessagePrefix: "outbox", Topic: "t.{aggregate_type}.{h}"}, messageMsg(true, "outbox", envelopeJSON(t, goodEnvelope)))
	if err != nil || op.Kind != KindEvent {
		t.Fatalf("got %v, %v; want an event", op.Kind, err)
	}
	ev := op.Event
	if ev.ID != goodID || ev.AggregateType != "order" || ev.AggregateID != "order-1" || ev.EventType != "OrderCreated" ||
		ev.Topic != "t.order.v" || string(ev.Payload) != `{"a":1}` || ev.LSN != 0x16B3750 || !ev.CommitTime.Equal(beginTime) ||
		!ev.CreatedAt.Equal(time.Date(2026, 11, 23, 12, 0, 0, 5e8, time.UTC)) {
		t.Fatalf("event %+v", ev)
	}
	want := []Header{h("h", "v"), h("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")}
	if !slices.EqualFunc(ev.Headers, want, func(a, b Header) bool { return a.Key == b.Key && string(a.Value) == string(b.Value) }) {
		t.Fatalf("headers %q, want %q", ev.Headers, want)
	}

	// Base64 payloads, no headers, no created_at (the commit time).
	env := goodEnvelope
	env.Payload, env.PayloadEncoding, env.Headers, env.CreatedAt = json.RawMessage(`"AAH/"`), "base64", nil, ""
	op, err = decodeInTxn(t, Config{MessagePrefix: "outbox"}, messageMsg(true, "outbox", envelopeJSON(t, env)))
	if err != nil || string(op.Event.Payload) != "\x00\x01\xff" || op.Event.Headers != nil || !op.Event.CreatedAt.Equal(beginTime) || op.Event.Topic != "outbox.order" {
		t.Fatalf("base64 envelope: %+v, %v", op.Event, err)
	}
}

// Messages that are not table-free events are skipped.
func TestMessagesThatAreNotEventsAreSkipped(t *testing.T) {
	good := envelopeJSON(t, goodEnvelope)
	for name, tt := range map[string]struct {
		cfg Config
		msg []byte
	}{
		"non-transactional":   {Config{MessagePrefix: "outbox"}, messageMsg(false, "outbox", good)},
		"heartbeat":           {Config{MessagePrefix: "outbox"}, messageMsg(false, DefaultHeartbeatPrefix, []byte("x"))},
		"transactional beat":  {Config{MessagePrefix: "outbox"}, messageMsg(true, DefaultHeartbeatPrefix, []byte("x"))},
		"other prefix":        {Config{MessagePrefix: "outbox"}, messageMsg(true, "outbox2", good)},
		"message mode is off": {Config{}, messageMsg(true, "outbox", good)},
	} {
		op, err := decodeInTxn(t, tt.cfg, tt.msg)
		if err != nil || op.Kind != KindSkip {
			t.Errorf("%s: %v, %v; want a skip", name, op.Kind, err)
		}
	}
	d, _ := New(Config{Table: "outbox", MessagePrefix: "outbox"})
	if _, err := d.Decode(messageMsg(true, "outbox", good), 1); !errors.Is(err, ErrMalformed) {
		t.Errorf("transactional message outside a transaction: %v", err)
	}
	if _, err := d.Decode(messageMsg(true, "outbox", good)[:20], 1); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated message: %v", err)
	}
}

// A malformed envelope is a clear *RowError that quotes no content.
func TestMalformedEnvelopesAreRowErrors(t *testing.T) {
	with := func(f func(*outbox.Envelope)) []byte { e := goodEnvelope; f(&e); return envelopeJSON(t, e) }
	for _, tt := range []struct {
		content []byte
		wantErr string
	}{
		{[]byte(`{"v":1, "secret`), "envelope is not valid JSON"},
		{[]byte(`[1,2]`), "does not have the version 1 layout"},
		{[]byte(`{"v":"1"}`), "does not have the version 1 layout"},
		{with(func(e *outbox.Envelope) { e.V = 2 }), `"v": 2; this relay reads version 1`},
		{with(func(e *outbox.Envelope) { e.ID = "" }), `member "id" is missing or empty`},
		{with(func(e *outbox.Envelope) { e.AggregateID = "" }), `member "aggregate_id" is missing or empty`},
		{[]byte(`{"v":1,"id":"x","aggregate_type":"a","aggregate_id":"b","event_type":"c"}`), `"payload" is missing`},
		{with(func(e *outbox.Envelope) { e.PayloadEncoding = "base64" }), `"payload" is not a string`},
		{with(func(e *outbox.Envelope) { e.Payload, e.PayloadEncoding = json.RawMessage(`"secret!"`), "base64" }), "not standard base64"},
		{with(func(e *outbox.Envelope) { e.PayloadEncoding = "hex" }), `"payload_encoding" is "hex"`},
		{[]byte(`{"v":1,"id":"x","aggregate_type":"a","aggregate_id":"b","event_type":"c","payload":1,"headers":["secret"]}`), `"headers" is not a JSON object`},
		{with(func(e *outbox.Envelope) { e.CreatedAt = "yesterday" }), `"created_at" is "yesterday"`},
		{with(func(e *outbox.Envelope) { e.AggregateType = "" }), `member "aggregate_type" is missing or empty`},
	} {
		_, err := decodeInTxn(t, Config{MessagePrefix: "outbox"}, messageMsg(true, "outbox", tt.content))
		var re *RowError
		if !errors.As(err, &re) || re.Prefix != "outbox" || re.LSN != 0x16B3750 || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: error %v, want a *RowError with %q", tt.content, err, tt.wantErr)
			continue
		}
		if !strings.HasPrefix(err.Error(), "outbox message (prefix outbox) at LSN 0/16B3750") || strings.Contains(err.Error(), "secret") {
			t.Errorf("error %q: want the message's position and no content", err)
		}
	}
}

// Header columns become headers; NULL adds none; a missing one is a schema
// error: no row of the table can have it.
func TestHeaderColumns(t *testing.T) {
	cols := append(slices.Clone(defaultCols), col{"tenant", oidText}, col{"correlation_id", 2950})
	row := append(goodRow(), "acme", null)
	cfg := Config{HeaderColumns: []string{"tenant", "correlation_id", "h"}}
	// The column h is absent: a row error naming it.
	_, err := decodeInTxn(t, cfg, relationMsg(16400, "public", "outbox", cols), insertMsg(16400, row...))
	var se *SchemaError
	if !errors.As(err, &se) || se.Column != "h" || !strings.Contains(err.Error(), "is a header column but missing") {
		t.Fatalf("error %v, want a schema error about column h", err)
	}
	cols = append(cols, col{"h", oidText})
	row = append(row, "from-column")
	op, err := decodeInTxn(t, cfg, relationMsg(16400, "public", "outbox", cols), insertMsg(16400, row...))
	if err != nil {
		t.Fatal(err)
	}
	want := []Header{h("h", "from-column"), h("tenant", "acme")}
	if !slices.EqualFunc(op.Event.Headers, want, func(a, b Header) bool { return a.Key == b.Key && string(a.Value) == string(b.Value) }) {
		t.Fatalf("headers %q, want %q (column h replaces the JSON key h)", op.Event.Headers, want)
	}
}

// traceparent comes once: from the trace column if well-formed, else from
// the headers JSON if well-formed; malformed values are dropped.
func TestTraceparent(t *testing.T) {
	const (
		tp1 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		tp2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
	)
	cols := append(slices.Clone(defaultCols), col{"traceparent", oidText})
	row := func(column, json string) []string {
		r := goodRow()
		r[5] = json
		return append(r, column)
	}
	for _, tt := range []struct {
		name, column, json, want string
		cfg                      Config
	}{
		{"column", tp1, `{}`, tp1, Config{TraceColumn: "traceparent"}},
		{"column wins over JSON", tp1, `{"traceparent": "` + tp2 + `"}`, tp1, Config{TraceColumn: "traceparent"}},
		{"NULL column, JSON", null, `{"traceparent": "` + tp2 + `"}`, tp2, Config{TraceColumn: "traceparent"}},
		{"bad column, JSON", "garbage", `{"traceparent": "` + tp2 + `"}`, tp2, Config{TraceColumn: "traceparent"}},
		{"bad JSON dropped", null, `{"traceparent": "00-xyz"}`, "", Config{TraceColumn: "traceparent"}},
		{"zero trace id dropped", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", `{}`, "", Config{TraceColumn: "traceparent"}},
		{"future version with a suffix", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", `{}`, "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", Config{TraceColumn: "traceparent"}},
		{"trace column off", tp1, `{}`, "", Config{}},
	} {
		op, err := decodeInTxn(t, tt.cfg, relationMsg(16400, "public", "outbox", cols), insertMsg(16400, row(tt.column, tt.json)...))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var got []string
		for _, hd := range op.Event.Headers {
			if hd.Key == "traceparent" {
				got = append(got, string(hd.Value))
			}
		}
		if tt.want == "" && len(got) != 0 || tt.want != "" && (len(got) != 1 || got[0] != tt.want) {
			t.Errorf("%s: traceparent headers %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestMessageConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		cfg     Config
		wantErr string
	}{
		{Config{Table: "outbox", MessagePrefix: DefaultHeartbeatPrefix}, "also the heartbeat prefix"},
		{Config{Table: "outbox", HeaderColumns: []string{"a", "a"}}, `"a" listed twice`},
		{Config{Table: "outbox", HeaderColumns: []string{"id"}}, "would clash"},
		{Config{Table: "outbox", HeaderColumns: []string{"tenant", "event_type"}}, `column "event_type" would clash`},
		{Config{Table: "outbox", HeaderColumns: []string{"aggregate_type"}}, `column "aggregate_type" would clash`},
		{Config{Table: "outbox", HeaderColumns: []string{""}}, "empty column name"},
	} {
		if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Validate(%+v): %v, want %q", tt.cfg, err, tt.wantErr)
		}
	}
	if c, err := ParseColumnsOver(DebeziumColumns(), "payload=body"); err != nil || c.Payload != "body" || c.AggregateType != "aggregatetype" || c.Headers != "" {
		t.Errorf("ParseColumnsOver: %+v, %v", c, err)
	}
}
