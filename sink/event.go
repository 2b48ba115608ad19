package sink

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// EventJSON is the JSON shape of an event in the webhook body and the
// stdout sink's lines. Payload is the stored payload itself when it is
// valid JSON, otherwise a base64 string of its bytes; null when NULL.
type EventJSON struct {
	ID            string            `json:"id"`
	AggregateType string            `json:"aggregate_type"`
	AggregateID   string            `json:"aggregate_id"`
	EventType     string            `json:"event_type"`
	Payload       json.RawMessage   `json:"payload"`
	Headers       map[string]string `json:"headers"`
	CreatedAt     time.Time         `json:"created_at"`
}

// AppendEventJSON appends ev's EventJSON encoding (no newline) to b.
func AppendEventJSON(b []byte, ev *decoder.Event) ([]byte, error) {
	doc := EventJSON{
		ID:            ev.ID,
		AggregateType: ev.AggregateType,
		AggregateID:   ev.AggregateID,
		EventType:     ev.EventType,
		Headers:       make(map[string]string, len(ev.Headers)),
		CreatedAt:     ev.CreatedAt.UTC(),
	}
	for _, h := range ev.Headers {
		doc.Headers[h.Key] = string(h.Value)
	}
	switch {
	case ev.Payload == nil:
		doc.Payload = json.RawMessage("null")
	case json.Valid(ev.Payload):
		doc.Payload = json.RawMessage(ev.Payload)
	default:
		s, _ := json.Marshal(base64.StdEncoding.EncodeToString(ev.Payload))
		doc.Payload = s
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return b, fmt.Errorf("encoding event %s as JSON: %w", ev.ID, err)
	}
	return append(b, out...), nil
}

// HeadersJSON encodes headers as one JSON object of strings.
func HeadersJSON(hs []decoder.Header) (string, error) {
	m := make(map[string]string, len(hs))
	for _, h := range hs {
		m[h.Key] = string(h.Value)
	}
	b, err := json.Marshal(m)
	return string(b), err
}
