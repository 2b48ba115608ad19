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

// SchemaError is a problem with the outbox table's shape rather than with
// one row: a column the configuration needs is missing from the relation
// (a mapped column, a header column, a column named in the topic template),
// or the payload column has a type the relay cannot publish. Every later row
// fails the same way until the table or the configuration changes, so it is
// no poison row to set aside: the relay must stop.
type SchemaError struct {
	// Relation is the table, "schema.table".
	Relation string
	// Column is the table's column name the problem is about.
	Column string
	// Reason says what is wrong with it.
	Reason string
	// LSN is the WAL position of the first row that met the problem.
	LSN pglogrepl.LSN
}

// Error returns e.g. "outbox table public.outbox at LSN 0/16B3748: column
// headers is missing (it is mapped as the headers column; map none to do
// without it)".
func (e *SchemaError) Error() string {
	return "outbox table " + e.Relation + " at LSN " + e.LSN.String() + ": column " + e.Column + " " + e.Reason
}

// RowError is a problem with the content of one outbox row or table-free
// message: the stream and the table are fine, but this one cannot become an
// event. It carries what the relay needs to set the row aside (a dead
// letter) or to name it when it stops; it must never be skipped silently.
type RowError struct {
	// LSN is the WAL position of the row's insert.
	LSN pglogrepl.LSN
	// EventID is the row's id, when it could be read.
	EventID string
	// AggregateID is the row's aggregate id (the record key), when it
	// could be read.
	AggregateID string
	// Topic is the topic the event was for, when the template could be
	// rendered; else "".
	Topic string
	// Column is the table's column name the problem is about, if any.
	Column string
	// Reason says what is wrong.
	Reason string
	// Prefix is the logical decoding message prefix when the event came
	// from a table-free message rather than a row; Column is then empty.
	Prefix string
	// Raw is what was received, for a dead letter: for a row, a JSON object
	// of its columns in table order, each the column's text as a JSON
	// string or null for NULL; for a table-free message, the envelope's
	// bytes. It may be as large as the row and may hold secrets: Error
	// never quotes it, and whoever stores it decides how much to keep.
	Raw []byte
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
