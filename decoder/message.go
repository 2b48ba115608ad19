package decoder

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
)

// EnvelopeVersion is the only version of the table-free envelope this
// decoder reads.
//
// The envelope is the content of a transactional logical decoding message
// (pg_logical_emit_message(true, prefix, content)), one JSON object:
//
//	{
//	  "v": 1,                        required, must be 1
//	  "id": "<uuid>",                required, the event id (the id header)
//	  "aggregate_type": "order",     required
//	  "aggregate_id": "42",          required, the record key
//	  "event_type": "OrderPlaced",   required
//	  "payload": {...},              required, any JSON value: the record value, as written
//	  "payload_encoding": "base64",  optional: "json" (default) or "base64", then
//	                                 payload is a JSON string of standard base64
//	  "headers": {"k": "v"},         optional, as the headers column of a row (keys
//	                                 id, event_type, aggregate_type and "" are left out)
//	  "created_at": "2026-...Z"      optional, RFC 3339; default the commit time
//	}
//
// Unknown members are ignored, so version 1 may grow optional members.
const EnvelopeVersion = 1

// envelope is the decoded form of a table-free event.
type envelope struct {
	V               int             `json:"v"`
	ID              string          `json:"id"`
	AggregateType   string          `json:"aggregate_type"`
	AggregateID     string          `json:"aggregate_id"`
	EventType       string          `json:"event_type"`
	Payload         json.RawMessage `json:"payload"`
	PayloadEncoding string          `json:"payload_encoding"`
	Headers         json.RawMessage `json:"headers"`
	CreatedAt       string          `json:"created_at"`
}

// message decodes a logical decoding message: an event when it is
// transactional and carries the configured prefix, else nothing.
func (d *Decoder) message(r *reader, walStart pglogrepl.LSN) (Op, error) {
	flags, _, prefix := r.u8(), r.u64(), r.cstring()
	n := int(r.u32())
	start := r.off
	r.bytes(n)
	if err := r.done(walStart, "logical decoding message"); err != nil {
		return Op{}, err
	}
	// Heartbeats, other prefixes and non-transactional messages (which are
	// sent even when their transaction rolls back) carry nothing.
	if d.msgPrefix == "" || flags&1 == 0 || string(prefix) != d.msgPrefix {
		return Op{Kind: KindSkip}, nil
	}
	if !d.inTxn {
		return Op{}, malformed(walStart, "transactional message outside a transaction")
	}
	ev, err := d.messageEvent(r.b[start:start+n], walStart)
	if err != nil {
		return Op{}, err
	}
	return Op{Kind: KindEvent, Event: ev}, nil
}

// messageEvent builds the Event of an envelope. Errors never quote the
// content: payloads and headers may carry secrets.
func (d *Decoder) messageEvent(content []byte, walStart pglogrepl.LSN) (Event, error) {
	var env envelope
	var topic string
	rowErr := func(reason string) error {
		return &RowError{LSN: walStart, EventID: env.ID, AggregateID: env.AggregateID, Topic: topic,
			Prefix: d.msgPrefix, Reason: reason, Raw: bytes.Clone(content)}
	}
	if err := json.Unmarshal(content, &env); err != nil {
		env = envelope{} // partly filled: nothing in it is reliable
		if !json.Valid(content) {
			return Event{}, rowErr("envelope is not valid JSON")
		}
		return Event{}, rowErr(fmt.Sprintf("envelope does not have the version 1 layout: %v", err))
	}
	if env.V != EnvelopeVersion {
		return Event{}, rowErr(fmt.Sprintf(`envelope has version "v": %d; this relay reads version %d`, env.V, EnvelopeVersion))
	}
	for _, f := range [...]struct{ name, value string }{
		{"id", env.ID}, {"aggregate_type", env.AggregateType}, {"aggregate_id", env.AggregateID}, {"event_type", env.EventType},
	} {
		if f.value == "" {
			return Event{}, rowErr(fmt.Sprintf("envelope member %q is missing or empty", f.name))
		}
	}
	ev := Event{
		ID:            env.ID,
		AggregateType: env.AggregateType,
		AggregateID:   env.AggregateID,
		EventType:     env.EventType,
		LSN:           walStart,
		CommitTime:    d.commitTime,
		CreatedAt:     d.commitTime,
	}
	// Headers first: a raw topic placeholder reads them. The topic next, so
	// later errors can say where the event was going.
	if len(env.Headers) > 0 && string(env.Headers) != "null" {
		hs, err := d.parseHeaders(env.Headers, d.msgRelation)
		if err != nil {
			return Event{}, rowErr(`envelope member "headers" ` + err.Error())
		}
		ev.Headers = mergeHeaders(hs, nil, nil)
	}
	// A message has no columns: a raw topic placeholder reads a header.
	t, seg, ok := d.renderTopic(&ev, func(seg int) ([]byte, bool) {
		for _, h := range ev.Headers {
			if h.Key == d.topic[seg].Text {
				return h.Value, true
			}
		}
		return nil, false
	})
	if !ok {
		if seg < 0 {
			return Event{}, rowErr("the topic template renders an empty topic")
		}
		return Event{}, rowErr(fmt.Sprintf("topic placeholder {%s} names no envelope header", d.topic[seg].Text))
	}
	topic = t
	ev.Topic = t

	if len(env.Payload) == 0 {
		return Event{}, rowErr(`envelope member "payload" is missing`)
	}
	switch env.PayloadEncoding {
	case "", "json":
		ev.Payload = []byte(env.Payload)
	case "base64":
		var s string
		if err := json.Unmarshal(env.Payload, &s); err != nil {
			return Event{}, rowErr(`envelope member "payload" is not a string, but "payload_encoding" is "base64"`)
		}
		p, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return Event{}, rowErr(`envelope member "payload" is not standard base64`)
		}
		ev.Payload = p
	default:
		return Event{}, rowErr(fmt.Sprintf(`envelope member "payload_encoding" is %q; want "json" or "base64"`, truncate([]byte(env.PayloadEncoding), 32)))
	}
	if env.CreatedAt != "" {
		t, ok := parseTimestamp([]byte(env.CreatedAt))
		if !ok {
			return Event{}, rowErr(fmt.Sprintf(`envelope member "created_at" is %q, not an RFC 3339 timestamp`, truncate([]byte(env.CreatedAt), 64)))
		}
		ev.CreatedAt = t
	}
	return ev, nil
}

// traceHeader is the W3C Trace Context header.
const traceHeader = "traceparent"

// mergeHeaders returns hs (from the headers JSON, sorted by key) with the
// header columns' extra headers and the trace context added, sorted by key.
// A header column replaces a JSON header of the same key. traceparent
// appears at most once: the trace column's value if it is well-formed, else
// the headers JSON's if it is; a malformed value is dropped, as W3C Trace
// Context tells receivers to ignore one, and a trace must never stop the
// outbox.
func mergeHeaders(hs, extra []Header, traceCol []byte) []Header {
	ti, hasTrace := slices.BinarySearchFunc(hs, traceHeader, func(h Header, k string) int { return strings.Compare(h.Key, k) })
	if len(extra) == 0 && traceCol == nil && (!hasTrace || validTraceparent(hs[ti].Value)) {
		return hs // the common case: nothing to change
	}
	var trace []byte
	switch {
	case validTraceparent(traceCol):
		trace = append([]byte(nil), traceCol...)
	case hasTrace && validTraceparent(hs[ti].Value):
		trace = hs[ti].Value
	}
	out := make([]Header, 0, len(hs)+len(extra)+1)
	for _, h := range hs {
		if h.Key == traceHeader || slices.ContainsFunc(extra, func(e Header) bool { return e.Key == h.Key }) {
			continue
		}
		out = append(out, h)
	}
	out = append(out, extra...)
	if trace != nil {
		out = append(out, Header{Key: traceHeader, Value: trace})
	}
	slices.SortStableFunc(out, func(a, b Header) int { return strings.Compare(a.Key, b.Key) })
	if len(out) == 0 {
		return nil
	}
	return out
}

// validTraceparent checks the layout of a W3C traceparent loosely:
// version-traceid-parentid-flags as 2, 32, 16 and 2 hex digits, with the
// all-zero ids and version ff refused. Later versions may append fields
// after another '-'.
func validTraceparent(v []byte) bool {
	if len(v) < 55 || len(v) > 55 && v[55] != '-' {
		return false
	}
	if v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return false
	}
	allHex := func(b []byte) bool {
		for _, c := range b {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
		return true
	}
	allZero := func(b []byte) bool {
		for _, c := range b {
			if c != '0' {
				return false
			}
		}
		return true
	}
	version, traceID, parentID, flags := v[0:2], v[3:35], v[36:52], v[53:55]
	if !allHex(version) || !allHex(traceID) || !allHex(parentID) || !allHex(flags) {
		return false
	}
	if string(version) == "ff" || string(version) == "FF" || allZero(traceID) || allZero(parentID) {
		return false
	}
	return string(version) != "00" || len(v) == 55
}
