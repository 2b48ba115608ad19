package kafka

import (
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// TestRecordSizeIsSaramas: Publish's size check counts what sarama's
// counts against Producer.MaxMessageBytes.
func TestRecordSizeIsSaramas(t *testing.T) {
	for _, ev := range []decoder.Event{
		{},
		{ID: "0195f3b2-7c1e-7000-8000-000000000001", AggregateType: "order", AggregateID: "order-1", EventType: "created",
			Topic: "outbox.order", Payload: []byte(`{"total":3}`), CreatedAt: time.Now()},
		{ID: "x", AggregateID: "k", Payload: []byte{}, Headers: []decoder.Header{{Key: "trace", Value: []byte("abc")}, {Key: "nil"}}},
		{ID: "x", AggregateID: "k", Payload: make([]byte, 100_000), Headers: make([]decoder.Header, 12)},
	} {
		r := newRecord(&ev, nil)
		if got, want := recordSize(&ev), r.msg.ByteSize(2); got != want {
			t.Errorf("recordSize = %d, sarama's ByteSize = %d for %+v", got, want, ev.Headers)
		}
	}
}

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
