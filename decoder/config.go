package decoder

import (
	"errors"
	"fmt"
	"strings"
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
	// Table is "schema.name" or "name" (schema public). Names are raw, as
	// in the catalog, compared exactly: no SQL quoting or case folding.
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
	// adds no header. A column missing from the table is a *RowError.
	HeaderColumns []string
	// TraceColumn is a column holding a W3C traceparent, passed as the
	// record header "traceparent" when the table has that column; empty
	// means none (a "traceparent" key of the headers column still works).
	TraceColumn string
}

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
	if _, _, err := splitTable(c.Table); err != nil {
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

// reservedHeader reports whether every record already carries header k.
func reservedHeader(k string) bool {
	return k == "id" || k == "event_type" || k == "aggregate_type" || k == traceHeader
}

// splitTable splits "schema.name" or "name" (schema public).
func splitTable(t string) (schema, name string, err error) {
	if t == "" {
		return "", "", errors.New("outbox table: name is empty")
	}
	schema, name, ok := strings.Cut(t, ".")
	if !ok {
		schema, name = "public", t
	}
	if schema == "" || name == "" || strings.Contains(name, ".") {
		return "", "", fmt.Errorf("outbox table %q: want schema.name or name", t)
	}
	return schema, name, nil
}

// Placeholders a topic template may use besides raw column names.
const (
	fieldLiteral = iota
	fieldID
	fieldAggregateType
	fieldAggregateID
	fieldEventType
	fieldRaw
)

// segment is a literal or a placeholder of a compiled topic template.
type segment struct {
	field int
	text  string // literal text, or the raw column name for fieldRaw
}

// compileTopic parses a template once, so rendering is a concatenation.
// Literal text is checked here, not per event: a template that can never
// render a valid topic is a configuration error.
func compileTopic(tmpl string) ([]segment, error) {
	var segs []segment
	rest := tmpl
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			open = len(rest)
		}
		if open > 0 {
			lit := rest[:open]
			for i := 0; i < len(lit); i++ {
				if !topicChar(lit[i]) {
					return nil, fmt.Errorf("topic template %q: character %q is not allowed in a topic (allowed: a-z A-Z 0-9 . _ -)", tmpl, lit[i])
				}
			}
			segs = append(segs, segment{field: fieldLiteral, text: lit})
			rest = rest[open:]
			continue
		}
		if rest[0] == '}' {
			return nil, fmt.Errorf("topic template %q: '}' without '{'", tmpl)
		}
		end := strings.IndexAny(rest[1:], "{}")
		if end < 0 || rest[1+end] != '}' {
			return nil, fmt.Errorf("topic template %q: unclosed '{'", tmpl)
		}
		name := rest[1 : 1+end]
		rest = rest[2+end:]
		switch name {
		case "":
			return nil, fmt.Errorf("topic template %q: empty placeholder {}", tmpl)
		case "id":
			segs = append(segs, segment{field: fieldID})
		case "aggregate_type":
			segs = append(segs, segment{field: fieldAggregateType})
		case "aggregate_id":
			segs = append(segs, segment{field: fieldAggregateID})
		case "event_type":
			segs = append(segs, segment{field: fieldEventType})
		default:
			// Checked against the table's columns when rows arrive: the
			// decoder learns the columns from the stream, not from SQL.
			segs = append(segs, segment{field: fieldRaw, text: name})
		}
	}
	if len(segs) == 0 {
		return nil, errors.New("topic template is empty")
	}
	return segs, nil
}

// topicChar reports whether Kafka accepts c in a topic name.
func topicChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// maxTopicLen is Kafka's limit on topic names.
const maxTopicLen = 249

// validTopic reports whether Kafka accepts t as a topic name.
func validTopic(t []byte) bool {
	if len(t) == 0 || len(t) > maxTopicLen {
		return false
	}
	if string(t) == "." || string(t) == ".." {
		return false
	}
	for _, c := range t {
		if !topicChar(c) {
			return false
		}
	}
	return true
}
