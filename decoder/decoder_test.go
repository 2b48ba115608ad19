package decoder

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// decodeAll feeds every captured message to a fresh decoder and returns
// the ops, failing on any error.
func decodeAll(t *testing.T, cfg Config, capture string) []Op {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ops []Op
	for _, m := range readCapture(t, capture) {
		op, err := d.Decode(m.data, m.walStart)
		if err != nil {
			t.Fatalf("%s: message %c at %s: %v", capture, m.data[0], m.walStart, err)
		}
		ops = append(ops, op)
	}
	return ops
}

// wantEvent is the part of an Event a capture pins down exactly; LSNs and
// commit times come from the server and are checked by relation instead.
type wantEvent struct {
	id, aggType, aggID, eventType, topic string
	payload                              []byte
	headers                              []Header
	createdAt                            time.Time // zero: the commit time
}

func utc(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04:05.999999", s)
	if err != nil {
		panic(err)
	}
	return t
}

// checkEvents checks the events of ops against want, and the transaction
// framing every consumer relies on: events sit between a Begin and a Commit
// of the same commit LSN, carry the transaction's commit time, and the
// position to confirm (EndLSN) is past the commit LSN.
func checkEvents(t *testing.T, ops []Op, want []wantEvent) {
	t.Helper()
	var got []Event
	var begin *Op
	for i := range ops {
		op := &ops[i]
		switch op.Kind {
		case KindBegin:
			if begin != nil {
				t.Fatalf("op %d: begin inside a transaction", i)
			}
			begin = op
		case KindCommit:
			if begin == nil {
				t.Fatalf("op %d: commit without begin", i)
			}
			if op.CommitLSN != begin.CommitLSN {
				t.Errorf("op %d: commit LSN %s, begin announced %s", i, op.CommitLSN, begin.CommitLSN)
			}
			if op.EndLSN <= op.CommitLSN {
				t.Errorf("op %d: end LSN %s not after commit LSN %s", i, op.EndLSN, op.CommitLSN)
			}
			if !op.CommitTime.Equal(begin.CommitTime) || op.CommitTime.IsZero() {
				t.Errorf("op %d: commit time %v, begin said %v", i, op.CommitTime, begin.CommitTime)
			}
			begin = nil
		case KindEvent:
			if begin == nil {
				t.Fatalf("op %d: event outside a transaction", i)
			}
			ev := op.Event
			if !ev.CommitTime.Equal(begin.CommitTime) {
				t.Errorf("event %s: commit time %v, want %v", ev.ID, ev.CommitTime, begin.CommitTime)
			}
			if ev.LSN == 0 || ev.LSN > begin.CommitLSN {
				t.Errorf("event %s: LSN %s not inside its transaction (commit %s)", ev.ID, ev.LSN, begin.CommitLSN)
			}
			got = append(got, ev)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.ID != w.id || g.AggregateType != w.aggType || g.AggregateID != w.aggID || g.EventType != w.eventType || g.Topic != w.topic {
			t.Errorf("event %d: got id %q type %q key %q event %q topic %q, want %q %q %q %q %q",
				i, g.ID, g.AggregateType, g.AggregateID, g.EventType, g.Topic, w.id, w.aggType, w.aggID, w.eventType, w.topic)
		}
		if !bytes.Equal(g.Payload, w.payload) || (g.Payload == nil) != (w.payload == nil) {
			t.Errorf("event %s: payload %q, want %q", g.ID, g.Payload, w.payload)
		}
		if !slices.EqualFunc(g.Headers, w.headers, func(a, b Header) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
			t.Errorf("event %s: headers %q, want %q", g.ID, g.Headers, w.headers)
		}
		wantCreated := w.createdAt
		if wantCreated.IsZero() {
			wantCreated = g.CommitTime
		}
		if !g.CreatedAt.Equal(wantCreated) {
			t.Errorf("event %s: created at %v, want %v", g.ID, g.CreatedAt, wantCreated)
		}
	}
}

func h(k, v string) Header { return Header{Key: k, Value: []byte(v)} }

func TestCapturedOutboxBecomesEventsAndSkipsTheRest(t *testing.T) {
	ops := decodeAll(t, Config{Table: "outbox"}, "outbox")
	checkEvents(t, ops, []wantEvent{
		{"11111111-1111-4111-8111-111111111111", "order", "order-1", "OrderCreated", "outbox.order",
			[]byte(`{"items": [1, 2], "total": 42.5}`),
			// "none": null adds no header, as a NULL header column.
			[]Header{h("attempt", "2"), h("esc", "quote\" tab\t é"), h("flag", "true"), h("meta", `{"a":[1,2]}`), h("trace_id", "abc-123")},
			utc("2026-11-23 12:00:00.123456")},
		// One transaction, three rows, plus a row of another published table.
		{"22222222-2222-4222-8222-222222222222", "order", "order-2", "OrderCreated", "outbox.order", []byte(`{"n": 2}`), nil, utc("2026-11-23 12:00:01")},
		{"33333333-3333-4333-8333-333333333333", "order", "order-2", "OrderPaid", "outbox.order", []byte(`{"n": 3}`), []Header{h("k", "v")}, utc("2026-11-23 12:00:01.5")},
		{"44444444-4444-4444-8444-444444444444", "customer", "cust-9", "CustomerMoved", "outbox.customer", []byte(`[]`), nil, utc("2026-11-23 12:00:01.000001")},
		// Updates, deletes, truncates and heartbeats in between make
		// nothing; the insert after ALTER TABLE follows the new relation.
		{"55555555-5555-4555-8555-555555555555", "order", "order-5", "OrderShipped", "outbox.order", []byte(`{"n": 5}`), nil, utc("2026-11-23 12:00:05")},
	})
	var kinds []byte
	for _, m := range readCapture(t, "outbox") {
		kinds = append(kinds, m.data[0])
	}
	for _, k := range []byte("BCRIUDTM") {
		if !bytes.Contains(kinds, []byte{k}) {
			t.Errorf("capture has no %c message: the scenario no longer covers it", k)
		}
	}
}

func TestCapturedRelationAfterAlterTableFeedsRawTopicPlaceholders(t *testing.T) {
	d, err := New(Config{Table: "public.outbox", Topic: "{tenant}.{event_type}"})
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	var schemaErrs []*SchemaError
	for _, m := range readCapture(t, "outbox") {
		op, err := d.Decode(m.data, m.walStart)
		var se *SchemaError
		switch {
		case errors.As(err, &se):
			schemaErrs = append(schemaErrs, se)
		case err != nil:
			t.Fatal(err)
		case op.Kind == KindEvent:
			events = append(events, op.Event.Topic)
		}
	}
	// Rows before the ALTER TABLE have no tenant column: the table's shape,
	// not the rows, is wrong for the template.
	if len(schemaErrs) != 4 || schemaErrs[0].Column != "tenant" || schemaErrs[0].Relation != "public.outbox" {
		t.Errorf("schema errors %v, want 4 about the missing tenant column", schemaErrs)
	}
	if !slices.Equal(events, []string{"acme.OrderShipped"}) {
		t.Errorf("topics %q, want [acme.OrderShipped]", events)
	}
}

func TestCapturedByteaPayloadDecodesInBothOutputFormats(t *testing.T) {
	raw := []byte{0x00, 0x01, '\\', 'A', 0xff, '~', ' '}
	t.Run("hex", func(t *testing.T) {
		checkEvents(t, decodeAll(t, Config{Table: "outbox_bytea"}, "outbox"), []wantEvent{
			{"66666666-6666-4666-8666-666666666666", "blob", "blob-1", "BlobStored", "outbox.blob", raw, nil, utc("2026-11-23 12:00:06")},
			// NULL payload, headers and created_at: nil value, no headers,
			// commit time.
			{"66666666-6666-4666-8666-666666666667", "blob", "blob-2", "BlobEmpty", "outbox.blob", nil, nil, time.Time{}},
		})
	})
	t.Run("escape", func(t *testing.T) {
		checkEvents(t, decodeAll(t, Config{Table: "outbox_bytea"}, "bytea_escape"), []wantEvent{
			{"99999999-9999-4999-8999-999999999999", "blob", "blob-9", "BlobStored", "outbox.blob", raw, nil, utc("2026-11-23 12:00:09")},
		})
	})
}

func TestCapturedTextPayloadAndTimestampWithoutTimeZone(t *testing.T) {
	cols, err := ParseColumns("headers=") // the table has none
	if err != nil {
		t.Fatal(err)
	}
	checkEvents(t, decodeAll(t, Config{Table: "outbox_text", Columns: cols}, "outbox"), []wantEvent{
		{"77777777-7777-4777-8777-777777777777", "note", "note-1", "NoteTaken", "outbox.note", []byte("plain text ünïcode"), nil, utc("2026-11-23 12:00:07.25")},
	})
}

func TestCapturedDebeziumTableWorksWithAColumnMapping(t *testing.T) {
	cols, err := ParseColumns("aggregate_type=aggregatetype,aggregate_id=aggregateid,event_type=type,headers=,created_at=")
	if err != nil {
		t.Fatal(err)
	}
	checkEvents(t, decodeAll(t, Config{Table: "public.outbox_debezium", Columns: cols}, "outbox"), []wantEvent{
		{"88888888-8888-4888-8888-888888888888", "Order", "order-8", "OrderCreated", "outbox.Order", []byte(`{"id": 8}`), nil, time.Time{}},
	})
}

func TestCapturedISOTimestampsInAnyTimeZoneAreTheSameInstant(t *testing.T) {
	for capture, id := range map[string]string{"iso_kolkata": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "iso_sao_paulo": "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"} {
		t.Run(capture, func(t *testing.T) {
			checkEvents(t, decodeAll(t, Config{Table: "outbox"}, capture), []wantEvent{
				{id, "order", "order-tz", "TimeZoned", "outbox.order", []byte(`{}`), nil, utc("2026-11-23 12:00:00.123456")},
			})
		})
	}
}

func TestCapturedSQLDateStyleIsAClearRowError(t *testing.T) {
	d, err := New(Config{Table: "outbox"})
	if err != nil {
		t.Fatal(err)
	}
	var re *RowError
	for _, m := range readCapture(t, "sql_dmy_kolkata") {
		if _, err := d.Decode(m.data, m.walStart); err != nil && !errors.As(err, &re) {
			t.Fatal(err)
		}
	}
	if re == nil {
		t.Fatal("a created_at in SQL DateStyle with a zone abbreviation decoded; it is ambiguous and must be refused")
	}
	msg := re.Error()
	for _, want := range []string{"id cccccccc-cccc-4ccc-8ccc-cccccccccccc", "column created_at", `"23/11/2026 17:30:00.123456 IST"`, "DateStyle=ISO"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
}

func TestDecodedEventDoesNotAliasTheMessage(t *testing.T) {
	d, err := New(Config{Table: "outbox"})
	if err != nil {
		t.Fatal(err)
	}
	var ev Event
	for _, m := range readCapture(t, "outbox") {
		op, err := d.Decode(m.data, m.walStart)
		if err != nil {
			t.Fatal(err)
		}
		if op.Kind == KindEvent && ev.ID == "" {
			ev = op.Event
			for i := range m.data {
				m.data[i] = 'X' // the caller reuses its buffer
			}
		}
	}
	if ev.ID != "11111111-1111-4111-8111-111111111111" || string(ev.Payload) != `{"items": [1, 2], "total": 42.5}` || string(ev.Headers[4].Value) != "abc-123" {
		t.Errorf("event changed with the message buffer: %+v", ev)
	}
}

// Truncating any captured message the decoder parses must give an error
// wrapping ErrMalformed, never a panic or a half-decoded op.
func TestTruncatedMessagesAreMalformed(t *testing.T) {
	d, err := New(Config{Table: "outbox"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range readCapture(t, "outbox") {
		op, err := d.Decode(m.data, m.walStart)
		if err != nil {
			t.Fatal(err)
		}
		parsed := strings.IndexByte("BCRM", m.data[0]) >= 0 || op.Kind == KindEvent
		if !parsed {
			continue
		}
		for n := 0; n < len(m.data); n++ {
			_, err := d.Decode(m.data[:n], m.walStart)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%c message cut to %d of %d bytes: error %v, want ErrMalformed", m.data[0], n, len(m.data), err)
			}
		}
		// Trailing garbage is as wrong as missing bytes.
		if _, err := d.Decode(append(slices.Clip(m.data), 0), m.walStart); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%c message with a trailing byte: error %v, want ErrMalformed", m.data[0], err)
		}
		// Put the relation cache back the way the full message left it.
		if _, err := d.Decode(m.data, m.walStart); err != nil {
			t.Fatal(err)
		}
	}
}

// Builders for synthetic messages, for cases a real server will not send.

type col struct {
	name string
	typ  uint32
}

var defaultCols = []col{{"id", 2950}, {"aggregate_type", oidText}, {"aggregate_id", oidText}, {"event_type", oidText}, {"payload", oidJSONB}, {"headers", oidJSONB}, {"created_at", 1184}}

func relationMsg(oid uint32, ns, name string, cols []col) []byte {
	b := []byte{'R'}
	b = binary.BigEndian.AppendUint32(b, oid)
	b = append(append(b, ns...), 0)
	b = append(append(b, name...), 0)
	b = append(b, 'd')
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, 0)
		b = append(append(b, c.name...), 0)
		b = binary.BigEndian.AppendUint32(b, c.typ)
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

// null marks a NULL value for insertMsg.
const null = "\x00NULL"

func insertMsg(oid uint32, vals ...string) []byte {
	b := []byte{'I'}
	b = binary.BigEndian.AppendUint32(b, oid)
	b = append(b, 'N')
	b = binary.BigEndian.AppendUint16(b, uint16(len(vals)))
	for _, v := range vals {
		if v == null {
			b = append(b, 'n')
			continue
		}
		b = append(b, 't')
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}

func beginMsg() []byte {
	b := []byte{'B'}
	b = binary.BigEndian.AppendUint64(b, 0x16B3800)
	b = binary.BigEndian.AppendUint64(b, 817_000_000_000_000) // beginTime in PostgreSQL microseconds
	return binary.BigEndian.AppendUint32(b, 740)
}

// beginTime is the commit time beginMsg announces.
var beginTime = time.Date(2025, 11, 21, 0, 26, 40, 0, time.UTC)

const goodID = "3f2a0c7e-1111-4111-8111-111111111111"

func goodRow() []string {
	return []string{goodID, "order", "order-1", "OrderCreated", `{"a": 1}`, `{"h": "v"}`, "2026-11-23 12:00:00+00"}
}

func TestRowEdgeCases(t *testing.T) {
	const lsn = pglogrepl.LSN(0x16B3748)
	with := func(i int, v string) []string { r := goodRow(); r[i] = v; return r }
	without := func(i int) ([]col, []string) {
		return slices.Delete(slices.Clone(defaultCols), i, i+1), slices.Delete(goodRow(), i, i+1)
	}
	tests := []struct {
		name    string
		cfg     Config
		cols    []col
		row     []string
		wantCol string // error column; "" with wantErr "" means success
		wantErr string // substring of the error
		schema  bool   // a *SchemaError rather than a *RowError
		check   func(t *testing.T, ev Event)
	}{
		{name: "good row", row: goodRow(), check: func(t *testing.T, ev Event) {
			if ev.ID != goodID || ev.Topic != "outbox.order" || string(ev.Payload) != `{"a": 1}` || len(ev.Headers) != 1 || ev.LSN != lsn ||
				!ev.CreatedAt.Equal(utc("2026-11-23 12:00:00")) || !ev.CommitTime.Equal(beginTime) {
				t.Errorf("event %+v", ev)
			}
		}},
		{name: "NULL aggregate_id", row: with(2, null), wantCol: "aggregate_id", wantErr: "outbox row at LSN 0/16B3748 (id " + goodID + "): column aggregate_id is NULL"},
		{name: "NULL id", row: with(0, null), wantCol: "id", wantErr: "outbox row at LSN 0/16B3748: column id is NULL"},
		{name: "NULL event_type", row: with(3, null), wantCol: "event_type", wantErr: "is NULL"},
		{name: "dropped aggregate_type", cols: func() []col { c, _ := without(1); return c }(), row: func() []string { _, r := without(1); return r }(),
			schema: true, wantCol: "aggregate_type", wantErr: "outbox table public.outbox at LSN 0/16B3748: column aggregate_type is missing"},
		{name: "dropped mapped aggregate_type", cfg: Config{Columns: Columns{ID: "id", AggregateType: "kind", AggregateID: "aggregate_id", EventType: "event_type", Payload: "payload"}},
			schema: true, row: goodRow(), wantCol: "kind", wantErr: "column kind is missing (it is mapped as the aggregate_type column)"},
		{name: "dropped payload", cols: func() []col { c, _ := without(4); return c }(), row: func() []string { _, r := without(4); return r }(),
			schema: true, wantCol: "payload", wantErr: "is missing"},
		// A mapped optional column that is gone would otherwise make events
		// without headers or timestamps, silently.
		{name: "dropped headers", cols: func() []col { c, _ := without(5); return c }(), row: func() []string { _, r := without(5); return r }(),
			schema: true, wantCol: "headers", wantErr: "column headers is missing (it is mapped as the headers column; map none to do without it)"},
		{name: "dropped created_at", cols: func() []col { c, _ := without(6); return c }(), row: func() []string { _, r := without(6); return r }(),
			schema: true, wantCol: "created_at", wantErr: "column created_at is missing"},
		{name: "no headers column, mapped to none", cfg: Config{Columns: func() Columns { c := DefaultColumns(); c.Headers = ""; return c }()},
			cols: func() []col { c, _ := without(5); return c }(), row: func() []string { _, r := without(5); return r }(),
			check: func(t *testing.T, ev Event) {
				if ev.Headers != nil {
					t.Errorf("headers %q", ev.Headers)
				}
			}},
		{name: "no created_at column, mapped to none: commit time", cfg: Config{Columns: func() Columns { c := DefaultColumns(); c.CreatedAt = ""; return c }()},
			cols: func() []col { c, _ := without(6); return c }(), row: func() []string { _, r := without(6); return r }(),
			check: func(t *testing.T, ev Event) {
				if !ev.CreatedAt.Equal(ev.CommitTime) {
					t.Errorf("created at %v, commit time %v", ev.CreatedAt, ev.CommitTime)
				}
			}},
		{name: "NULL payload", row: with(4, null), check: func(t *testing.T, ev Event) {
			if ev.Payload != nil {
				t.Errorf("payload %q, want nil", ev.Payload)
			}
		}},
		{name: "empty text payload is not NULL", cols: with2(defaultCols, 4, col{"payload", oidText}), row: with(4, ""), check: func(t *testing.T, ev Event) {
			if ev.Payload == nil || len(ev.Payload) != 0 {
				t.Errorf("payload %#v, want empty non-nil", ev.Payload)
			}
		}},
		{name: "varchar and json payloads", cols: with2(defaultCols, 4, col{"payload", oidVarchar}), row: goodRow()},
		{name: "int payload", cols: with2(defaultCols, 4, col{"payload", 23}), row: with(4, "42"), schema: true, wantCol: "payload", wantErr: "has type OID 23; the payload must be jsonb, json, text, varchar or bytea"},
		{name: "bad bytea", cols: with2(defaultCols, 4, col{"payload", oidBytea}), row: with(4, `\x0`), wantCol: "payload", wantErr: "odd number"},
		{name: "headers an array", row: with(5, `[1, 2]`), wantCol: "headers", wantErr: "column headers is not a JSON object"},
		{name: "headers a string", row: with(5, `"x"`), wantCol: "headers", wantErr: "not a JSON object"},
		{name: "headers not JSON", row: with(5, `{"secret": `), wantCol: "headers", wantErr: "is not valid JSON"},
		{name: "headers NULL", row: with(5, null), check: func(t *testing.T, ev Event) {
			if ev.Headers != nil {
				t.Errorf("headers %q", ev.Headers)
			}
		}},
		{name: "headers sorted, nested compacted, escapes decoded", row: with(5, "{\"b\": {\"x\" : [1, \"a b\"]},\n \"a\": \"\\u00e9\\\"\", \"\\u0063\": 1.5e3, \"b\": false}"),
			check: func(t *testing.T, ev Event) {
				want := []Header{h("a", "é\""), h("b", `{"x":[1,"a b"]}`), h("b", "false"), h("c", "1.5e3")}
				if !slices.EqualFunc(ev.Headers, want, func(a, b Header) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
					t.Errorf("headers %q, want %q", ev.Headers, want)
				}
			}},
		{name: "bad created_at", row: with(6, "infinity"), wantCol: "created_at", wantErr: `holds "infinity"`},
		{name: "created_at NULL", row: with(6, null), check: func(t *testing.T, ev Event) {
			if !ev.CreatedAt.Equal(ev.CommitTime) {
				t.Errorf("created at %v", ev.CreatedAt)
			}
		}},
		// Which topics are valid is the destination's rule (Kafka's is not a
		// NATS subject's), so any non-empty topic renders.
		{name: "topic with a space", row: with(1, "my order"), check: func(t *testing.T, ev Event) {
			if ev.Topic != "outbox.my order" {
				t.Errorf("topic %q", ev.Topic)
			}
		}},
		{name: "topic longer than Kafka allows", row: with(1, strings.Repeat("a", 243)), check: func(t *testing.T, ev Event) {
			if len(ev.Topic) != 250 {
				t.Errorf("topic of %d bytes, want 250", len(ev.Topic))
			}
		}},
		{name: "topic from raw columns", cfg: Config{Topic: "{created_at}"}, row: goodRow(), check: func(t *testing.T, ev Event) {
			if ev.Topic != "2026-11-23 12:00:00+00" {
				t.Errorf("topic %q", ev.Topic)
			}
		}},
		{name: "empty topic", cfg: Config{Topic: "{aggregate_type}"}, row: with(1, ""), wantErr: "outbox row at LSN 0/16B3748 (id " + goodID + "): the topic template renders an empty topic"},
		{name: "topic placeholder of an absent column", cfg: Config{Topic: "t.{tenant}"}, row: goodRow(), schema: true, wantCol: "tenant", wantErr: "is used in the topic template but missing"},
		{name: "topic placeholder NULL", cfg: Config{Topic: "t.{tenant}"}, cols: append(slices.Clone(defaultCols), col{"tenant", oidText}), row: append(goodRow(), null), wantCol: "tenant", wantErr: "is used in the topic template but NULL"},
		{name: "topic placeholder", cfg: Config{Topic: "{tenant}.{aggregate_type}.{event_type}.{aggregate_id}.x"}, cols: append(slices.Clone(defaultCols), col{"tenant", oidText}), row: append(goodRow(), "acme"),
			check: func(t *testing.T, ev Event) {
				if ev.Topic != "acme.order.OrderCreated.order-1.x" {
					t.Errorf("topic %q", ev.Topic)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Table = "outbox"
			d, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			cols := tt.cols
			if cols == nil {
				cols = defaultCols
			}
			for _, m := range [][]byte{relationMsg(16400, "public", "outbox", cols), beginMsg()} {
				if _, err := d.Decode(m, 0); err != nil {
					t.Fatal(err)
				}
			}
			op, err := d.Decode(insertMsg(16400, tt.row...), lsn)
			if tt.wantErr == "" && tt.wantCol == "" {
				if err != nil || op.Kind != KindEvent {
					t.Fatalf("got %v, %v; want an event", op.Kind, err)
				}
				if tt.check != nil {
					tt.check(t, op.Event)
				}
				return
			}
			var re *RowError
			var se *SchemaError
			var col string
			var at pglogrepl.LSN
			switch {
			case tt.schema && errors.As(err, &se):
				col, at = se.Column, se.LSN
				if se.Relation != "public.outbox" {
					t.Errorf("schema error for relation %q", se.Relation)
				}
			case !tt.schema && errors.As(err, &re):
				col, at = re.Column, re.LSN
			default:
				t.Fatalf("error %v (%T), want a schema error: %v", err, err, tt.schema)
			}
			if col != tt.wantCol || at != lsn || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q (column %q), want column %q and %q", err, col, tt.wantCol, tt.wantErr)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q quotes a header value", err)
			}
		})
	}
}

func with2(cols []col, i int, c col) []col { cols = slices.Clone(cols); cols[i] = c; return cols }

func TestProtocolEdgeCases(t *testing.T) {
	rel := relationMsg(16400, "public", "outbox", defaultCols)
	good := insertMsg(16400, goodRow()...)
	tuple := func(kind byte) []byte {
		b := insertMsg(16400, goodRow()[:6]...)
		b[6], b[7] = 0, 7 // 7 columns announced, 6 sent
		return append(b, kind)
	}
	msg := func(flags byte, prefix, content string) []byte {
		b := append([]byte{'M', flags}, make([]byte, 8)...)
		b = append(append(b, prefix...), 0)
		b = binary.BigEndian.AppendUint32(b, uint32(len(content)))
		return append(b, content...)
	}
	tests := []struct {
		name     string
		msgs     [][]byte // all but the last must succeed
		wantKind Kind
		wantErr  string // wraps ErrMalformed when set
	}{
		{name: "insert for an unknown relation OID", msgs: [][]byte{beginMsg(), good}, wantErr: "insert into relation OID 16400 before its relation message"},
		{name: "insert outside a transaction", msgs: [][]byte{rel, good}, wantErr: "insert outside a transaction"},
		{name: "insert into another table", msgs: [][]byte{relationMsg(16401, "public", "orders", defaultCols), beginMsg(), insertMsg(16401, "x")}, wantKind: KindSkip},
		{name: "same name, other schema", msgs: [][]byte{relationMsg(16401, "audit", "outbox", defaultCols), beginMsg(), insertMsg(16401, goodRow()...)}, wantKind: KindSkip},
		{name: "relation replaced by a later message", msgs: [][]byte{rel, relationMsg(16400, "public", "renamed", defaultCols), beginMsg(), good}, wantKind: KindSkip},
		{name: "too few columns", msgs: [][]byte{rel, beginMsg(), insertMsg(16400, goodRow()[:6]...)}, wantErr: "with 6 columns, relation message had 7"},
		{name: "unchanged toast in insert", msgs: [][]byte{rel, beginMsg(), tuple('u')}, wantErr: "unchanged TOAST value"},
		{name: "binary tuple value", msgs: [][]byte{rel, beginMsg(), tuple('b')}, wantErr: "binary value"},
		{name: "unknown tuple kind", msgs: [][]byte{rel, beginMsg(), tuple('?')}, wantErr: "unknown tuple value kind '?'"},
		{name: "insert without new tuple", msgs: [][]byte{rel, beginMsg(), append(good[:5:5], 'K')}, wantErr: "without a new tuple"},
		{name: "huge length", msgs: [][]byte{rel, beginMsg(), append(tuple('t'), 0xff, 0xff, 0xff, 0xff)}, wantErr: "truncated insert"},
		{name: "empty message", msgs: [][]byte{{}}, wantErr: "empty message"},
		{name: "unknown message type", msgs: [][]byte{{'S', 0, 0, 0, 1, 1}}, wantErr: "unknown message type 'S'"},
		{name: "heartbeat", msgs: [][]byte{msg(1, DefaultHeartbeatPrefix, "x")}, wantKind: KindSkip},
		{name: "non-transactional message", msgs: [][]byte{msg(0, "app", "hello")}, wantKind: KindSkip},
		{name: "message with a lying length", msgs: [][]byte{msg(0, "app", "hello")[:20]}, wantErr: "truncated logical decoding message"},
		{name: "message without NUL", msgs: [][]byte{[]byte("M\x01\x00\x00\x00\x00\x00\x00\x00\x00abc")}, wantErr: "truncated logical decoding message"},
		{name: "update, delete, truncate, type, origin", msgs: [][]byte{{'U'}, {'D'}, {'T'}, {'Y'}, {'O'}}, wantKind: KindSkip},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := New(Config{Table: "outbox"})
			if err != nil {
				t.Fatal(err)
			}
			var op Op
			for i, m := range tt.msgs {
				op, err = d.Decode(m, 0x16B3748)
				if i < len(tt.msgs)-1 && err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
			}
			if tt.wantErr == "" {
				if err != nil || op.Kind != tt.wantKind {
					t.Fatalf("got %v, %v; want kind %v", op.Kind, err, tt.wantKind)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "0/16B3748") {
				t.Errorf("error %v, want ErrMalformed mentioning %q and the LSN", err, tt.wantErr)
			}
		})
	}
}

func TestBeginAndCommit(t *testing.T) {
	d, err := New(Config{Table: "outbox"})
	if err != nil {
		t.Fatal(err)
	}
	op, err := d.Decode(beginMsg(), 1)
	if err != nil || op.Kind != KindBegin || op.XID != 740 || op.CommitLSN != 0x16B3800 || !op.CommitTime.Equal(beginTime) {
		t.Fatalf("begin: %+v, %v", op, err)
	}
	c := []byte{'C', 0}
	c = binary.BigEndian.AppendUint64(c, 0x16B3800)
	c = binary.BigEndian.AppendUint64(c, 0x16B3830)
	c = binary.BigEndian.AppendUint64(c, 817_000_000_000_000)
	op, err = d.Decode(c, 2)
	if err != nil || op.Kind != KindCommit || op.CommitLSN != 0x16B3800 || op.EndLSN != 0x16B3830 || !op.CommitTime.Equal(beginTime) {
		t.Fatalf("commit: %+v, %v", op, err)
	}
}

func TestDecodeBytea(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{`\x`, "", true},
		{`\x00ff5c41`, "\x00\xff\\A", true},
		{`\xDEADbeef`, "\xde\xad\xbe\xef", true},
		{`\x0`, "", false},
		{`\xzz`, "", false},
		{``, "", true},
		{`plain`, "plain", true},
		{`\000\001\\A\377~ `, "\x00\x01\\A\xff~ ", true},
		{`\\x41`, `\x41`, true}, // escape format of the bytes `\x41`
		{`a\\`, `a\`, true},
		{`\`, "", false},
		{`\4`, "", false},
		{`\400`, "", false}, // above 0377
		{`\08`, "", false},
		{`\12`, "", false},
	}
	for _, tt := range tests {
		got, err := decodeBytea([]byte(tt.in))
		if (err == nil) != tt.ok || (tt.ok && string(got) != tt.want) {
			t.Errorf("decodeBytea(%q) = %q, %v; want %q ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseTimestamp(t *testing.T) {
	base := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time // zero: must fail
	}{
		{"2026-11-23 12:00:00+00", base},
		{"2026-11-23 12:00:00", base},
		{"2026-11-23T12:00:00Z", base},
		{"2026-11-23 12:00:00.123456+00", base.Add(123456 * time.Microsecond)},
		{"2026-11-23 12:00:00.1+00", base.Add(100 * time.Millisecond)},
		{"2026-11-23 12:00:00.000001", base.Add(time.Microsecond)},
		{"2026-11-23 17:30:00+05:30", base},
		{"2026-11-23 09:00:00-03", base},
		{"2026-11-23 17:45:00+05:45", base},
		{"2026-11-23 12:19:32+00:19:32", base}, // local mean time offsets have seconds
		{"2026-11-23 12:00:00.5-00", base.Add(500 * time.Millisecond)},
		{"2024-02-29 00:00:00", time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)},
		{"2026-02-29 00:00:00", time.Time{}},
		{"2026-13-01 00:00:00", time.Time{}},
		{"2026-11-23 24:00:00", time.Time{}},
		{"2026-11-23 12:00:00.", time.Time{}},
		{"2026-11-23 12:00:00+", time.Time{}},
		{"2026-11-23 12:00:00+16", time.Time{}},
		{"2026-11-23 12:00:00 UTC", time.Time{}},
		{"23/11/2026 17:30:00.123456 IST", time.Time{}},
		{"Mon Nov 23 12:00:00 2026 UTC", time.Time{}},
		{"23.11.2026 12:00:00 UTC", time.Time{}},
		{"2026-11-23 12:00:00+00 BC", time.Time{}},
		{"infinity", time.Time{}},
		{"", time.Time{}},
		{"2026-11-2", time.Time{}},
	}
	for _, tt := range tests {
		got, ok := parseTimestamp([]byte(tt.in))
		if ok != !tt.want.IsZero() || !got.Equal(tt.want) {
			t.Errorf("parseTimestamp(%q) = %v, %v; want %v", tt.in, got, ok, tt.want)
		}
	}
}

func TestParseColumns(t *testing.T) {
	got, err := ParseColumns("aggregate_type=aggregatetype, aggregate_id=aggregateid,event_type=type")
	want := Columns{ID: "id", AggregateType: "aggregatetype", AggregateID: "aggregateid", EventType: "type", Payload: "payload", Headers: "headers", CreatedAt: "created_at"}
	if err != nil || got != want {
		t.Errorf("got %+v, %v; want %+v", got, err, want)
	}
	if got, err := ParseColumns(""); err != nil || got != DefaultColumns() {
		t.Errorf("empty spec: %+v, %v", got, err)
	}
	if got, err := ParseColumns("headers=,created_at="); err != nil || got.Headers != "" || got.CreatedAt != "" {
		t.Errorf("turning optional columns off: %+v, %v", got, err)
	}
	for spec, wantErr := range map[string]string{
		"aggregatetype=x":      `unknown logical column "aggregatetype"`,
		"aggregate_type":       "want logical=column",
		"id=a,id=b":            `"id" mapped twice`,
		"aggregate_id=":        `"aggregate_id" needs a column name`,
		"payload=,headers=hdr": `"payload" needs a column name`,
	} {
		if _, err := ParseColumns(spec); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("ParseColumns(%q): error %v, want %q", spec, err, wantErr)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{Table: "outbox"}).Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	for _, tt := range []struct {
		cfg     Config
		wantErr string
	}{
		{Config{}, "outbox table: name is empty"},
		{Config{Table: "a.b.c"}, "want schema.name or name"},
		{Config{Table: ".b"}, "want schema.name or name"},
		{Config{Table: "outbox", Topic: "outbox.{aggregate_type"}, "unclosed '{'"},
		{Config{Table: "outbox", Topic: "outbox.{}"}, "empty placeholder"},
		{Config{Table: "outbox", Topic: "outbox}"}, "'}' without '{'"},
		{Config{Table: "outbox", Topic: "{a{b}}"}, "unclosed '{'"},
		{Config{Table: "outbox", Columns: Columns{ID: "id"}}, `"aggregate_type" needs a column name`},
	} {
		if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Validate(%+v): %v, want %q", tt.cfg, err, tt.wantErr)
		}
		if _, err := New(tt.cfg); err == nil {
			t.Errorf("New(%+v) accepted a bad config", tt.cfg)
		}
	}
}
