package relay

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// Headers a dead-lettered record carries besides the original ones.
const (
	HeaderDeadLetterError = "outbox-relay-error"
	HeaderOriginalTopic   = "outbox-relay-original-topic"
	// HeaderLSN is the WAL position of the row or message.
	HeaderLSN = "outbox-relay-lsn"
	// HeaderTruncated is set ("payload", "headers" or both, with the
	// original sizes) when the dead letter had to be cut down to fit.
	HeaderTruncated = "outbox-relay-truncated"
)

// DefaultDeadLetterMaxBytes is the size a dead letter is cut down to when
// Config.DeadLetterMaxBytes is zero: Kafka's default max.message.bytes.
const DefaultDeadLetterMaxBytes = 1 << 20

// PoisonError stops the relay at an event it cannot publish: with
// OnErrorStop, or when not even a cut-down dead letter could be delivered.
// Nothing at or after the event was confirmed; the message says how to
// skip exactly this event.
type PoisonError struct {
	// Slot is the replication slot the relay streams from.
	Slot string
	// EventID is the event's id, empty when the row's id could not be read.
	EventID string
	// LSN is the WAL position of the event's row or message.
	LSN pglogrepl.LSN
	// Err says why the event cannot be published.
	Err error
}

func (e *PoisonError) Error() string {
	which := "--event " + e.EventID + " --lsn " + e.LSN.String()
	what := "event " + e.EventID
	if e.EventID == "" {
		which = "--lsn " + e.LSN.String()
		what = "the event"
	}
	return fmt.Sprintf("%s at LSN %s cannot be published: %v; nothing from its transaction on was confirmed. "+
		"To skip exactly this event, run `outbox-relay slot skip --slot %s %s` (with the same --pg-url; it shows the event before it skips it), then start the relay again",
		what, e.LSN, e.Err, e.Slot, which)
}

func (e *PoisonError) Unwrap() error { return e.Err }

// poison is an event that cannot be published as it is: a row the decoder
// could not turn into an event (row), or an event the publisher refused
// (ev). err says why.
type poison struct {
	ev  *decoder.Event
	row *decoder.RowError
	lsn pglogrepl.LSN
	err error
}

func (pz poison) eventID() string {
	if pz.ev != nil {
		return pz.ev.ID
	}
	return pz.row.EventID
}

func (pz poison) originalTopic() string {
	if pz.ev != nil {
		return pz.ev.Topic
	}
	return pz.row.Topic
}

// stop is the fatal error that ends the relay at pz.
func (pz poison) stop(slot string, err error) error {
	return fatal(&PoisonError{Slot: slot, EventID: pz.eventID(), LSN: pz.lsn, Err: err})
}

// isRejected reports whether err is about the record itself, so a dead
// letter can stand in for it (see the sinks' RecordRejected).
func isRejected(err error) bool {
	var rr interface{ RecordRejected() bool }
	return errors.As(err, &rr) && rr.RecordRejected()
}

// Dead letters are cut down in two steps. A full one carries the event's
// payload (or the raw row) and headers. If that does not fit the limit,
// the original headers go and the payload is truncated. If the publisher
// refuses even that, a minimal one carries only the identifying fields,
// the error and the sizes: small enough for any broker, so a dead letter
// never loops.
const (
	dlFull = iota
	dlCut
	dlMinimal
)

// Bounds of the cut-down fields, in bytes.
const (
	dlFieldMax = 256  // id, aggregate type and id, event type, topic
	dlErrorMax = 1024 // the error text
	dlOverhead = 1024 // record framing the size estimate does not count
)

// deadLetterRecord builds the record that stands for pz on the dead-letter
// topic, no larger than limit bytes (as far as an estimate can tell), at
// the given level of cutting down.
func deadLetterRecord(pz poison, topic string, limit, level int) *decoder.Event {
	var rec decoder.Event
	var payload []byte
	var headers []decoder.Header
	if ev := pz.ev; ev != nil {
		rec = decoder.Event{ID: ev.ID, AggregateType: ev.AggregateType, AggregateID: ev.AggregateID, EventType: ev.EventType,
			CreatedAt: ev.CreatedAt, LSN: ev.LSN, CommitTime: ev.CommitTime}
		payload, headers = ev.Payload, ev.Headers
	} else {
		rec = decoder.Event{ID: pz.row.EventID, AggregateID: pz.row.AggregateID, LSN: pz.lsn}
		payload = pz.row.Raw
	}
	rec.Topic = topic
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = time.Now()
	}
	errText := pz.err.Error()
	meta := []decoder.Header{
		{Key: HeaderDeadLetterError, Value: []byte(errText)},
		{Key: HeaderOriginalTopic, Value: []byte(pz.originalTopic())},
		{Key: HeaderLSN, Value: []byte(pz.lsn.String())},
	}
	if level == dlFull {
		rec.Payload = payload
		rec.Headers = append(append(make([]decoder.Header, 0, len(headers)+len(meta)), headers...), meta...)
		if estimateSize(&rec) <= max(limit-dlOverhead, 0) {
			return &rec
		}
		level = dlCut
	}

	// Cut down: the identifying fields and the error bounded, the original
	// headers dropped, the payload truncated to what is left (none at all
	// for a minimal one).
	rec.ID = clip(rec.ID, dlFieldMax)
	rec.AggregateType = clip(rec.AggregateType, dlFieldMax)
	rec.AggregateID = clip(rec.AggregateID, dlFieldMax)
	rec.EventType = clip(rec.EventType, dlFieldMax)
	meta[0].Value = []byte(clip(errText, dlErrorMax))
	meta[1].Value = []byte(clip(pz.originalTopic(), dlFieldMax))
	hdrBytes := 0
	for _, h := range headers {
		hdrBytes += len(h.Key) + len(h.Value)
	}
	truncated := "payload=" + strconv.Itoa(len(payload)) + " bytes; headers=" + strconv.Itoa(len(headers)) + " (" + strconv.Itoa(hdrBytes) + " bytes) dropped"
	rec.Headers = append(meta, decoder.Header{Key: HeaderTruncated, Value: []byte(truncated)})
	rec.Payload = nil
	if level == dlCut {
		room := limit - dlOverhead - estimateSize(&rec)
		if room > 0 {
			rec.Payload = payload[:min(len(payload), room)]
		}
	}
	return &rec
}

// estimateSize is roughly what a record of ev takes on the wire: key,
// value, the relay's three headers and the event's own, and a few bytes of
// framing per header.
func estimateSize(ev *decoder.Event) int {
	n := len(ev.AggregateID) + len(ev.Payload) + len(ev.ID) + len(ev.EventType) + len(ev.AggregateType) + 3*24
	for _, h := range ev.Headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

// clip shortens s to at most n bytes.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
