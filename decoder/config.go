package decoder

import (
	"errors"
	"fmt"

	"github.com/outbox-relay/outbox-relay/internal/placeholder"
	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

// DefaultTopic is the topic template used when Config.Topic is empty.
const DefaultTopic = "outbox.{aggregate_type}"

// DefaultHeartbeatPrefix is the logical decoding message prefix of the
// relay's own heartbeats when Config.HeartbeatPrefix is empty.
const DefaultHeartbeatPrefix = "outbox-relay.heartbeat"

// DefaultMessagePrefix is the logical decoding message prefix of table-free
// outbox events (outbox.Emit). The relay's --message-prefix defaults to it;
// in a Config an empty MessagePrefix turns message mode off.
const DefaultMessagePrefix = "outbox"

// DefaultTraceColumn is the column the relay's --trace-column defaults to.
const DefaultTraceColumn = "traceparent"

// DebeziumTopic is the topic template of Debezium's outbox EventRouter.
const DebeziumTopic = "outbox.event.{aggregate_type}"

// Config says which table holds the outbox and how its rows become events.
type Config struct {
	// Table is "schema.name" or "name" (schema public, as package pgname
	// reads it). Names are raw, as in the catalog, compared exactly: no SQL
	// quoting or case folding.
	Table string
	// Columns maps logical columns to the table's; the zero value means
	// DefaultColumns.
	Columns Columns
	// Topic is the topic template, default DefaultTopic. A {name}
	// placeholder is a logical name (id, aggregate_type, aggregate_id,
	// event_type) or else any column of the row, rendered as its text.
	Topic string
	// HeartbeatPrefix marks logical decoding messages that are the relay's
	// own heartbeats, default DefaultHeartbeatPrefix.
	HeartbeatPrefix string
	// MessagePrefix is the prefix of transactional logical decoding
	// messages that carry table-free events (see Envelope); empty means
	// messages are never events. It must differ from HeartbeatPrefix.
	MessagePrefix string
	// HeaderColumns are extra columns of the row passed as record headers,
	// keyed by column name, valued by the column's text; a NULL column
	// adds no header. A column missing from the table is a *SchemaError.
	HeaderColumns []string
	// TraceColumn is a column holding a W3C traceparent, passed as the
	// record header "traceparent" when the table has that column; empty
	// means none (a "traceparent" key of the headers column still works).
	TraceColumn string
	// DroppedHeader, if set, is told about each key of a headers JSON
	// object (the headers column, or an envelope's "headers") that Decode
	// leaves out: a header every record already carries (id, event_type,
	// aggregate_type; a second id would let a row forge what consumers
	// dedupe on) or an empty name. reason is DroppedReserved or
	// DroppedEmptyKey; relation is "schema.table" or "message prefix P".
	// A JSON null value is no header either, but not reported: it means
	// none, as a NULL header column does. Decode calls it synchronously,
	// for every event, so it must be cheap and must not call the Decoder.
	DroppedHeader func(relation, key, reason string)
}

// Reasons given to Config.DroppedHeader.
const (
	// DroppedReserved: every record carries a header of that name already.
	DroppedReserved = "the relay sets this header itself"
	// DroppedEmptyKey: the key is the empty string.
	DroppedEmptyKey = "the header name is empty"
)

// withDefaults fills empty fields, so a zero Config plus a table works.
func (c Config) withDefaults() Config {
	if c.Columns == (Columns{}) {
		c.Columns = DefaultColumns()
	}
	if c.Topic == "" {
		c.Topic = DefaultTopic
	}
	if c.HeartbeatPrefix == "" {
		c.HeartbeatPrefix = DefaultHeartbeatPrefix
	}
	return c
}

// Validate reports the first problem with the configuration, with empty
// fields taken as their defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	if _, err := parseTable(c.Table); err != nil {
		return err
	}
	if err := c.Columns.validate(); err != nil {
		return err
	}
	if c.MessagePrefix != "" && c.MessagePrefix == c.HeartbeatPrefix {
		return fmt.Errorf("message prefix %q: it is also the heartbeat prefix; pick another", c.MessagePrefix)
	}
	seen := make(map[string]bool, len(c.HeaderColumns))
	for _, col := range c.HeaderColumns {
		switch {
		case col == "":
			return errors.New("header columns: empty column name")
		case seen[col]:
			return fmt.Errorf("header columns: column %q listed twice", col)
		case reservedHeader(col):
			return fmt.Errorf("header columns: column %q would clash with the record header %q the relay sets itself", col, col)
		}
		seen[col] = true
	}
	_, err := compileTopic(c.Topic)
	return err
}

// reservedHeader reports whether every record already carries header k:
// the relay's own headers, and traceparent, which header columns must not
// name since the trace column and the headers JSON decide it.
func reservedHeader(k string) bool {
	return ownHeader([]byte(k)) || k == traceHeader
}

// ownHeader reports whether k is a header the sinks write on every record
// themselves.
func ownHeader(k []byte) bool {
	switch string(k) {
	case "id", "event_type", "aggregate_type":
		return true
	}
	return false
}

// parseTable parses "schema.name" or "name" with pgname's rule (schema
// public): Relation messages carry the schema, so it must be concrete.
func parseTable(t string) (pgname.Table, error) {
	if t == "" {
		return pgname.Table{}, errors.New("outbox table: name is empty")
	}
	return pgname.ParseTable(t)
}

// Placeholders a topic template may use besides raw column names.
const (
	fieldID = placeholder.Literal + 1 + iota
	fieldAggregateType
	fieldAggregateID
	fieldEventType
	fieldRaw
)

// compileTopic parses a template once, so rendering is a concatenation.
// Which characters a topic may hold is the destination's rule (Kafka's
// differs from a NATS subject's or stdout's), so it is not checked here.
func compileTopic(tmpl string) ([]placeholder.Segment, error) {
	t, err := placeholder.Parse(tmpl, func(name string) (int, error) {
		switch name {
		case "":
			return 0, errors.New("empty placeholder {}")
		case "id":
			return fieldID, nil
		case "aggregate_type":
			return fieldAggregateType, nil
		case "aggregate_id":
			return fieldAggregateID, nil
		case "event_type":
			return fieldEventType, nil
		}
		// Checked against the table's columns when rows arrive: the
		// decoder learns the columns from the stream, not from SQL.
		return fieldRaw, nil
	})
	if err != nil {
		return nil, fmt.Errorf("topic template %q: %w", tmpl, err)
	}
	if len(t.Segments()) == 0 {
		return nil, errors.New("topic template is empty")
	}
	return t.Segments(), nil
}

// ColumnRole says why a Config needs a column of the outbox table.
type ColumnRole uint8

const (
	// RoleMapped: the column holds a logical column (see Columns).
	RoleMapped ColumnRole = iota
	// RoleTopic: the topic template names the column as a placeholder.
	RoleTopic
	// RoleHeader: the column is one of HeaderColumns.
	RoleHeader
)

// NeededColumn is a column the outbox table must have for a Config.
type NeededColumn struct {
	// Name is the table's column name.
	Name string
	// Role says why it is needed; a column needed for several reasons is
	// listed once, for the first of mapped, topic, header.
	Role ColumnRole
	// Logical is the logical column it holds, for RoleMapped: id,
	// aggregate_type, aggregate_id, event_type, payload, headers or
	// created_at.
	Logical string
	// Optional is set for a mapped column the Config can do without when
	// it is mapped to none (headers, created_at).
	Optional bool
	// Default is set when a mapped column has the name DefaultColumns
	// gives it.
	Default bool
}

// NeededColumns lists the columns the outbox table must have, so a caller
// that can read the catalog can refuse a mismatch before streaming rather
// than at the first row (which is a *SchemaError). The trace column is not
// listed: it is used only when the table has it.
func (c Config) NeededColumns() []NeededColumn {
	c = c.withDefaults()
	defaults := DefaultColumns()
	var out []NeededColumn
	listed := func(name string) bool {
		for _, n := range out {
			if n.Name == name {
				return true
			}
		}
		return false
	}
	for _, logical := range logicalNames {
		name := *c.Columns.field(logical)
		if name == "" || listed(name) {
			continue
		}
		out = append(out, NeededColumn{Name: name, Role: RoleMapped, Logical: logical,
			Optional: logical == "headers" || logical == "created_at", Default: name == *defaults.field(logical)})
	}
	segs, _ := compileTopic(c.Topic)
	for _, seg := range segs {
		if seg.Field == fieldRaw && !listed(seg.Text) {
			out = append(out, NeededColumn{Name: seg.Text, Role: RoleTopic})
		}
	}
	for _, name := range c.HeaderColumns {
		if !listed(name) {
			out = append(out, NeededColumn{Name: name, Role: RoleHeader})
		}
	}
	return out
}
