package sink

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// TestRecordKeepsThePayload: the record points at the event's payload; a
// 900 KB payload is not held twice while in flight.
func TestRecordKeepsThePayload(t *testing.T) {
	ev := decoder.Event{ID: "x", AggregateID: "k", Topic: "t", Payload: make([]byte, 900<<10),
		Headers: []decoder.Header{{Key: "big", Value: make([]byte, 10<<10)}}}
	r := newRecord(&ev, nil)
	v, err := r.msg.Value.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != len(ev.Payload) || &v[0] != &ev.Payload[0] {
		t.Fatal("the record's value is a copy of the payload")
	}
	if h := r.msg.Headers[3].Value; &h[0] != &ev.Headers[0].Value[0] {
		t.Fatal("the record's header value is a copy of the event's")
	}
}
