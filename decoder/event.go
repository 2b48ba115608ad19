// Package decoder turns pgoutput messages into outbox events.
//
// It is pure: bytes in, events out, no I/O. A Decoder keeps the relation
// cache that pgoutput requires (Relation messages arrive before the first
// row of a table in every session and again after schema changes), so one
// Decoder must see every message of a replication session, in order.
package decoder

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// Event is one outbox row (or table-free message) ready to be published.
type Event struct {
	// ID is the event id; consumers dedupe on it.
	ID string
	// AggregateType routes the event to a topic.
	AggregateType string
	// AggregateID is the record key: the same aggregate keeps its order.
	AggregateID string
	// EventType names what happened.
	EventType string
	// Topic is the destination, rendered from the topic template.
	Topic string
	// Payload is the record value, as stored (jsonb/json/text as text,
	// bytea as its raw bytes). Nil when the column is NULL.
	Payload []byte
	// Headers are the top-level keys of the headers column, sorted by key.
	// String values are passed as their text, other JSON values as JSON.
	Headers []Header
	// CreatedAt is the record timestamp (created_at, or the commit time
	// when the table has no such column or it is NULL).
	CreatedAt time.Time
	// LSN is the WAL position of the row's change.
	LSN pglogrepl.LSN
	// CommitTime is the commit timestamp of the event's transaction.
	CommitTime time.Time
	// ReceivedAt is when the relay's replication reader received the
	// message carrying the event; zero when the decoder is used alone.
	// CommitTime to ReceivedAt is PostgreSQL's share of the latency,
	// ReceivedAt to the broker's ack the relay's.
	ReceivedAt time.Time
}

// Header is one record header.
type Header struct {
	Key   string
	Value []byte
}

// Kind says what a decoded message means to the relay.
type Kind uint8

const (
	// KindSkip is a message with nothing for the relay: a relation, type
	// or origin message, a row of another table, an update or delete,
	// a heartbeat, a non-transactional message.
	KindSkip Kind = iota
	// KindBegin opens a transaction.
	KindBegin
	// KindEvent is one outbox event inside the open transaction.
	KindEvent
	// KindCommit closes the open transaction.
	KindCommit
)

// Op is the result of decoding one pgoutput message.
type Op struct {
	Kind Kind
	// Event is set for KindEvent.
	Event Event
	// XID is the transaction id, for KindBegin.
	XID uint32
	// CommitLSN is the commit record's LSN (KindBegin: the final LSN;
	// KindCommit: the commit LSN).
	CommitLSN pglogrepl.LSN
	// EndLSN is the end of the commit record, for KindCommit. It is the
	// position to confirm once the transaction is fully acknowledged:
	// confirming CommitLSN instead would replay the transaction.
	EndLSN pglogrepl.LSN
	// CommitTime is the commit timestamp, for KindBegin and KindCommit.
	CommitTime time.Time
}
