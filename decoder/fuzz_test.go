package decoder

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/jackc/pglogrepl"
)

// FuzzDecode feeds arbitrary bytes to a decoder that has already seen the
// captured relation messages, so inserts reach the row decoding. Decode
// must never panic, must return either an op or an error, never both, and
// must never let a headers key through that the relay sets itself.
func FuzzDecode(f *testing.F) {
	var prime [][]byte
	for _, c := range captures {
		for _, m := range readCapture(f, c) {
			f.Add(m.data)
			if m.data[0] == 'R' || m.data[0] == 'B' {
				prime = append(prime, m.data)
			}
		}
	}
	f.Add(relationMsg(16400, "public", "outbox", defaultCols))
	f.Add(insertMsg(16400, goodRow()...))
	env := `{"v":1,"id":"i","aggregate_type":"order","aggregate_id":"1","event_type":"e","payload":{"a":1},"headers":{"tenant":"t"},"created_at":"2026-11-23T12:00:00Z"}`
	f.Add(messageMsg(true, "outbox", []byte(env)))
	f.Add(messageMsg(true, "outbox", []byte(`{"v":1,"id":"i","aggregate_type":"o","aggregate_id":"1","event_type":"e","payload":"AAE=","payload_encoding":"base64"}`)))
	f.Add(messageMsg(false, "outbox", []byte(env)))
	f.Add(messageMsg(true, "outbox", []byte(`{"v":1,"id":"i","aggregate_type":"o","aggregate_id":"1","event_type":"e","payload":1,"headers":{"id":"x","":"y","tenant":null}}`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, table := range []string{"outbox", "outbox_bytea"} {
			dropped := func(relation, key, reason string) {
				if relation == "" || reason == "" || key != "" && !ownHeader([]byte(key)) {
					t.Fatalf("dropped header %q of %q: %s", key, relation, reason)
				}
			}
			d, err := New(Config{Table: table, Topic: "{tenant}.{aggregate_type}", MessagePrefix: "outbox", HeaderColumns: []string{"tenant"}, TraceColumn: "tenant",
				DroppedHeader: dropped})
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range prime {
				if _, err := d.Decode(m, 1); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := d.Decode(relationMsg(16400, "public", table, append(defaultCols, col{"tenant", oidText})), 1); err != nil {
				t.Fatal(err)
			}
			op, err := d.Decode(data, pglogrepl.LSN(len(data)))
			if err != nil {
				var re *RowError
				var se *SchemaError
				if op.Kind != KindSkip || op.Event.ID != "" {
					t.Fatalf("error %v with op %+v", err, op)
				}
				if !errors.Is(err, ErrMalformed) && !errors.As(err, &re) && !errors.As(err, &se) {
					t.Fatalf("error %v is neither malformed nor a row or schema error", err)
				}
				if re != nil && re.Prefix == "" && !json.Valid(re.Raw) {
					t.Fatalf("row error with Raw %q, not JSON", re.Raw)
				}
				continue
			}
			if op.Kind == KindEvent && (op.Event.ID == "" || op.Event.Topic == "") {
				t.Fatalf("event without id or topic: %+v", op.Event)
			}
			for _, h := range op.Event.Headers {
				if h.Key == "" || ownHeader([]byte(h.Key)) {
					t.Fatalf("event with header %q: %+v", h.Key, op.Event)
				}
			}
			// A second decode of the same message must not disturb state.
			if _, err2 := d.Decode(data, 1); (err2 == nil) != (err == nil) && data[0] != 'R' {
				t.Fatalf("decoding twice: %v then %v", err, err2)
			}
		}
	})
}
