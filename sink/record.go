package sink

import (
	"github.com/IBM/sarama"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// Header keys set on every record, ahead of the event's own headers. Shared
// and never written: sarama only reads header keys.
var (
	headerID            = []byte("id")
	headerEventType     = []byte("event_type")
	headerAggregateType = []byte("aggregate_type")
)

// inlineHeaders is how many headers fit in a record without another
// allocation: the three fixed ones and a few of the event's.
const inlineHeaders = 8

// record is one published event: the sarama message plus everything it
// points to, in (usually) two allocations, the record and one byte buffer.
// The message's Metadata points back to the record, so the ack goroutine
// finds the ack without a map lookup; its Key and Value are the record
// itself seen as a sarama.Encoder, which boxes without allocating.
type record struct {
	msg     sarama.ProducerMessage
	ack     func(error)
	id      string // the event id, for error messages
	buf     []byte // key, then payload, then header bytes
	keyLen  int
	valLen  int
	headers [inlineHeaders]sarama.RecordHeader
}

type (
	recordKey   record
	recordValue record
)

// Encode returns the key bytes. Called more than once (partitioner,
// request encoding), so it returns the stored bytes rather than converting.
func (k *recordKey) Encode() ([]byte, error) { return k.buf[:k.keyLen:k.keyLen], nil }

// Length returns the key length.
func (k *recordKey) Length() int { return k.keyLen }

// Encode returns the payload bytes.
func (v *recordValue) Encode() ([]byte, error) {
	return v.buf[v.keyLen : v.keyLen+v.valLen : v.keyLen+v.valLen], nil
}

// Length returns the payload length.
func (v *recordValue) Length() int { return v.valLen }

// newRecord maps ev to a producer message carrying ack. It copies every
// byte it needs, so the caller may reuse ev and its slices.
func newRecord(ev *decoder.Event, ack func(error)) *sarama.ProducerMessage {
	n := len(ev.AggregateID) + len(ev.Payload) + len(ev.ID) + len(ev.EventType) + len(ev.AggregateType)
	for _, h := range ev.Headers {
		n += len(h.Key) + len(h.Value)
	}
	r := &record{ack: ack, id: ev.ID, buf: make([]byte, 0, n)}
	r.buf = append(r.buf, ev.AggregateID...)
	r.keyLen = len(ev.AggregateID)
	r.buf = append(r.buf, ev.Payload...)
	r.valLen = len(ev.Payload)

	hs := r.headers[:0]
	if nh := 3 + len(ev.Headers); nh > inlineHeaders {
		hs = make([]sarama.RecordHeader, 0, nh)
	}
	hs = append(hs,
		sarama.RecordHeader{Key: headerID, Value: appendBytes(r, ev.ID)},
		sarama.RecordHeader{Key: headerEventType, Value: appendBytes(r, ev.EventType)},
		sarama.RecordHeader{Key: headerAggregateType, Value: appendBytes(r, ev.AggregateType)},
	)
	for _, h := range ev.Headers {
		k := appendBytes(r, h.Key)
		hs = append(hs, sarama.RecordHeader{Key: k, Value: appendBytes(r, h.Value)})
	}

	r.msg = sarama.ProducerMessage{
		Topic:     ev.Topic,
		Key:       (*recordKey)(r),
		Headers:   hs,
		Timestamp: ev.CreatedAt,
		Metadata:  r,
	}
	if ev.Payload != nil {
		r.msg.Value = (*recordValue)(r)
	}
	return &r.msg
}

// appendBytes copies s into r.buf, which has room for it, and returns the
// copy.
func appendBytes[S string | []byte](r *record, s S) []byte {
	start := len(r.buf)
	r.buf = append(r.buf, s...)
	return r.buf[start:len(r.buf):len(r.buf)]
}

// done calls the record's ack, if any.
func (r *record) done(err error) {
	if r.ack != nil {
		r.ack(err)
	}
}
