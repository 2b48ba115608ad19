package decoder

import (
	"fmt"
	"strings"
)

// Columns maps the relay's logical columns to the outbox table's column
// names, so tables laid out for other tools (Debezium's aggregatetype,
// aggregateid, type, payload) work unchanged.
type Columns struct {
	// ID is the event id column (required, non-NULL).
	ID string
	// AggregateType is the column routing the event to a topic (required).
	AggregateType string
	// AggregateID is the record key column (required).
	AggregateID string
	// EventType is the column naming what happened (required).
	EventType string
	// Payload is the record value column: jsonb, json, text, varchar or bytea.
	Payload string
	// Headers is the optional JSON object column; empty means none.
	Headers string
	// CreatedAt is the optional record timestamp column; empty means none.
	CreatedAt string
}

// DefaultColumns returns the column names of the table `outbox-relay migrate`
// creates.
func DefaultColumns() Columns {
	return Columns{
		ID:            "id",
		AggregateType: "aggregate_type",
		AggregateID:   "aggregate_id",
		EventType:     "event_type",
		Payload:       "payload",
		Headers:       "headers",
		CreatedAt:     "created_at",
	}
}

// DebeziumColumns returns the column names of Debezium's outbox table
// (id, aggregatetype, aggregateid, type, payload), which has no headers or
// created_at column.
func DebeziumColumns() Columns {
	return Columns{
		ID:            "id",
		AggregateType: "aggregatetype",
		AggregateID:   "aggregateid",
		EventType:     "type",
		Payload:       "payload",
	}
}

// logicalNames lists the logical column names in the order a spec or an
// error message shows them.
var logicalNames = []string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}

// field returns the address of the field for a logical name, or nil.
func (c *Columns) field(logical string) *string {
	switch logical {
	case "id":
		return &c.ID
	case "aggregate_type":
		return &c.AggregateType
	case "aggregate_id":
		return &c.AggregateID
	case "event_type":
		return &c.EventType
	case "payload":
		return &c.Payload
	case "headers":
		return &c.Headers
	case "created_at":
		return &c.CreatedAt
	}
	return nil
}

// ParseColumns applies a mapping such as
// "aggregate_type=aggregatetype,aggregate_id=aggregateid,event_type=type"
// over DefaultColumns. An empty value ("headers=") turns an optional column
// off. Names are raw column names, compared exactly (no SQL quoting).
func ParseColumns(spec string) (Columns, error) {
	return ParseColumnsOver(DefaultColumns(), spec)
}

// ParseColumnsOver is ParseColumns over base instead of DefaultColumns,
// e.g. over DebeziumColumns for a preset plus the user's changes.
func ParseColumnsOver(base Columns, spec string) (Columns, error) {
	c := base
	if strings.TrimSpace(spec) == "" {
		return c, nil
	}
	seen := make(map[string]bool, len(logicalNames))
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok {
			return Columns{}, fmt.Errorf("column mapping %q: want logical=column", part)
		}
		f := c.field(name)
		if f == nil {
			return Columns{}, fmt.Errorf("column mapping %q: unknown logical column %q (known: %s)", part, name, strings.Join(logicalNames, ", "))
		}
		if seen[name] {
			return Columns{}, fmt.Errorf("column mapping %q: logical column %q mapped twice", part, name)
		}
		seen[name] = true
		*f = value
	}
	return c, c.validate()
}

// validate checks that every column the relay cannot do without is named.
func (c Columns) validate() error {
	for _, name := range logicalNames[:5] {
		if *c.field(name) == "" {
			return fmt.Errorf("column mapping: logical column %q needs a column name", name)
		}
	}
	return nil
}
