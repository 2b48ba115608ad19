package kafka

import (
	"encoding/binary"

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

// emptyValue stands in for a nil header value, which sarama would send as
// a null value rather than an empty one.
var emptyValue = []byte{}

// inlineHeaders is how many headers fit in a record without another
// allocation: the three fixed ones and a few of the event's.
const inlineHeaders = 8

// record is one published event: the sarama message plus what it points
// to. The payload and the header values are the event's own slices, not
// copies (Publish's contract keeps them unmodified until the ack), so a
// large payload is held once; the small strings are copied into one
// buffer, since sarama needs them as bytes. The message's Metadata points
// back to the record, so the ack goroutine finds the ack without a map
// lookup; its Key and Value are the record itself seen as a
// sarama.Encoder, which boxes without allocating.
type record struct {
	msg sarama.ProducerMessage
	ack func(error)
	id  string // the event id, for error messages
	// partition is the partition sarama will send to, known before it
	// gets the message.
	partition int32
	value     []byte // the event's payload
	// room is the bytes it holds of its partition's room (partitionRoom),
	// 0 for none.
	room   int
	buf    []byte // key, then the small header bytes
	keyLen int

	// Links in Kafka.pending, guarded by its mutex; pending is false once
	// the record left the list (acked, or failed by Abort).
	prev, next *record
	pending    bool

	// noSlot: the record holds no in-flight slot (a checkpoint record).
	noSlot bool
	// txnErr is the record's error in a transaction, kept until the
	// transaction ends (txn.go).
	txnErr error

	headers [inlineHeaders]sarama.RecordHeader
}

type (
	recordKey   record
	recordValue record
)

// Encode returns the key bytes. Called more than once (request encoding,
// retries), so it returns the stored bytes rather than converting.
func (k *recordKey) Encode() ([]byte, error) { return k.buf[:k.keyLen:k.keyLen], nil }

// Length returns the key length.
func (k *recordKey) Length() int { return k.keyLen }

// Encode returns the payload bytes.
func (v *recordValue) Encode() ([]byte, error) { return v.value, nil }

// Length returns the payload length.
func (v *recordValue) Length() int { return len(v.value) }

// newRecord maps ev to a record carrying ack. It keeps ev.Payload and the
// header values, and copies the rest.
func newRecord(ev *decoder.Event, ack func(error)) *record {
	n := len(ev.AggregateID) + len(ev.ID) + len(ev.EventType) + len(ev.AggregateType)
	for _, h := range ev.Headers {
		n += len(h.Key)
	}
	r := &record{ack: ack, id: ev.ID, partition: -1, value: ev.Payload, buf: make([]byte, 0, n)}
	r.buf = append(r.buf, ev.AggregateID...)
	r.keyLen = len(ev.AggregateID)

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
		v := h.Value
		if v == nil {
			v = emptyValue
		}
		hs = append(hs, sarama.RecordHeader{Key: appendBytes(r, h.Key), Value: v})
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
	return r
}

// appendBytes copies s into r.buf, which has room for it, and returns the
// copy.
func appendBytes(r *record, s string) []byte {
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

// recordSize is the size of ev's record as sarama counts it against
// Producer.MaxMessageBytes (ProducerMessage.ByteSize for record batches,
// message format 2): key, value, headers and the most a record's framing
// can take.
func recordSize(ev *decoder.Event) int {
	const (
		recordOverhead = 5*binary.MaxVarintLen32 + binary.MaxVarintLen64 + 1
		headerOverhead = 2 * binary.MaxVarintLen32
	)
	n := recordOverhead + len(ev.AggregateID) + len(ev.Payload)
	n += len(headerID) + len(ev.ID) + len(headerEventType) + len(ev.EventType) + len(headerAggregateType) + len(ev.AggregateType) + 3*headerOverhead
	for _, h := range ev.Headers {
		n += len(h.Key) + len(h.Value) + headerOverhead
	}
	return n
}
