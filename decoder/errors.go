package decoder

import (
	"errors"
	"strings"

	"github.com/jackc/pglogrepl"
)

// ErrMalformed is wrapped by errors about bytes that are not valid pgoutput
// (protocol version 1): truncated or unknown messages, rows for relations
// never described. They mean a bug or a mismatch between the relay and the
// server, never a bad outbox row.
var ErrMalformed = errors.New("malformed pgoutput message")

// RowError is a problem with one outbox row: the stream is well-formed but
// the row cannot become an event. The relay must not skip it silently, so it
// identifies the row for the operator.
type RowError struct {
	// LSN is the WAL position of the row's insert.
	LSN pglogrepl.LSN
	// EventID is the row's id, when it could be read.
	EventID string
	// Column is the table's column name the problem is about, if any.
	Column string
	// Reason says what is wrong.
	Reason string
	// Prefix is the logical decoding message prefix when the event came
	// from a table-free message rather than a row; Column is then empty.
	Prefix string
}

// Error returns e.g. "outbox row at LSN 0/16B3748 (id 3f...): column
// aggregate_id is NULL".
func (e *RowError) Error() string {
	var b strings.Builder
	if e.Prefix != "" {
		b.WriteString("outbox message (prefix ")
		b.WriteString(e.Prefix)
		b.WriteString(") at LSN ")
	} else {
		b.WriteString("outbox row at LSN ")
	}
	b.WriteString(e.LSN.String())
	if e.EventID != "" {
		b.WriteString(" (id ")
		b.WriteString(e.EventID)
		b.WriteString(")")
	}
	b.WriteString(": ")
	if e.Column != "" {
		b.WriteString("column ")
		b.WriteString(e.Column)
		b.WriteString(" ")
	}
	b.WriteString(e.Reason)
	return b.String()
}
