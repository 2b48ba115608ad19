// Package outbox writes outbox events inside the application's own
// transaction, so an event exists if and only if the business change it
// describes was committed. outbox-relay publishes them from the WAL.
//
// Two modes, same record on the broker:
//
//   - Table mode (Writer.Write, Write): one row per event in the outbox
//     table; a batch is one multi-row INSERT, one statement.
//   - Table-free mode (Emit): one transactional logical decoding message per
//     event, pg_logical_emit_message(true, prefix, envelope): no table, no
//     bloat, nothing to prune. A rolled-back transaction's messages are
//     never decoded.
//
// Both take the caller's transaction through Tx; Pgx and SQL adapt a
// pgx.Tx and a *sql.Tx.
package outbox

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

// Event is one event to publish.
type Event struct {
	// ID is the event id, a UUID; empty means a new random (version 4)
	// one. Consumers dedupe on it (the record's id header).
	ID string
	// AggregateType routes the event to a topic (required).
	AggregateType string
	// AggregateID is the record key: one aggregate's events keep their
	// order (required).
	AggregateID string
	// EventType names what happened (required; the event_type header).
	EventType string
	// Payload is the record value. With PayloadJSON (the default) it must
	// be valid JSON.
	Payload []byte
	// Headers become record headers.
	Headers map[string]string
}

// ErrInvalidEvent is wrapped by every error about an event that cannot be
// written: a required field empty, a payload that is not JSON.
var ErrInvalidEvent = errors.New("invalid outbox event")

// Tx is what the writer needs from the caller's transaction: one statement
// with arguments. Use Pgx or SQL to adapt a transaction.
type Tx interface {
	Exec(ctx context.Context, sql string, args ...any) error
}

// PgxExecer is satisfied by pgx.Tx, *pgx.Conn and *pgxpool.Pool.
type PgxExecer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SQLExecer is satisfied by *sql.Tx, *sql.Conn and *sql.DB. The driver
// must accept []string arguments for text[] parameters, as pgx's
// database/sql driver (github.com/jackc/pgx/v5/stdlib) does.
type SQLExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

type pgxTx struct{ tx PgxExecer }

func (t pgxTx) Exec(ctx context.Context, sql string, args ...any) error {
	_, err := t.tx.Exec(ctx, sql, args...)
	return err
}

type sqlTx struct{ tx SQLExecer }

func (t sqlTx) Exec(ctx context.Context, sql string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, sql, args...)
	return err
}

// Pgx adapts a pgx transaction (pgx.Tx).
func Pgx(tx PgxExecer) Tx { return pgxTx{tx} }

// SQL adapts a database/sql transaction (*sql.Tx).
func SQL(tx SQLExecer) Tx { return sqlTx{tx} }

// PayloadKind says what the payload column holds, and so how payloads are
// checked and sent.
type PayloadKind uint8

const (
	// PayloadJSON is a jsonb or json column: payloads must be valid JSON.
	PayloadJSON PayloadKind = iota
	// PayloadText is a text or varchar column: payloads must be UTF-8.
	PayloadText
	// PayloadBytes is a bytea column: payloads are any bytes.
	PayloadBytes
)

// Columns names the outbox table's columns, as the relay's --columns does.
type Columns struct {
	ID, AggregateType, AggregateID, EventType, Payload string
	// Headers is the JSON object column; empty means the table has none,
	// and an event with headers is then an error.
	Headers string
}

// DefaultColumns returns the columns of the table `outbox-relay migrate`
// creates.
func DefaultColumns() Columns {
	return Columns{ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type", Payload: "payload", Headers: "headers"}
}

// DebeziumColumns returns the columns of Debezium's outbox table.
func DebeziumColumns() Columns {
	return Columns{ID: "id", AggregateType: "aggregatetype", AggregateID: "aggregateid", EventType: "type", Payload: "payload"}
}

// Config says where Writer writes.
type Config struct {
	// Table is "schema.name" or "name", raw names as in the catalog (the
	// writer quotes them); default "outbox". A name without a schema is in
	// public, not resolved through search_path (see package pgname).
	Table string
	// Columns default to DefaultColumns.
	Columns Columns
	// Payload is the payload column's kind, default PayloadJSON.
	Payload PayloadKind
}

// Writer inserts events into an outbox table. It holds no connection and
// is safe for concurrent use.
type Writer struct {
	insert  string
	kind    PayloadKind
	headers bool
}

// NewWriter returns a Writer for cfg; empty fields take their defaults.
func NewWriter(cfg Config) (*Writer, error) {
	if cfg.Table == "" {
		cfg.Table = "outbox"
	}
	if cfg.Columns == (Columns{}) {
		cfg.Columns = DefaultColumns()
	}
	c := cfg.Columns
	for _, f := range [...]struct{ name, col string }{
		{"id", c.ID}, {"aggregate_type", c.AggregateType}, {"aggregate_id", c.AggregateID}, {"event_type", c.EventType}, {"payload", c.Payload},
	} {
		if f.col == "" {
			return nil, fmt.Errorf("outbox columns: %s needs a column name", f.name)
		}
	}
	table, err := pgname.ParseTable(cfg.Table)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	// The arrays travel as text[] (bytea[] for bytes) and the select list
	// casts: json, not jsonb, keeps a json column's text as written, and
	// PostgreSQL assigns json to a jsonb column (and uuid to text) itself.
	payloadArray, payloadExpr := "text[]", "p::json"
	switch cfg.Payload {
	case PayloadJSON:
	case PayloadText:
		payloadExpr = "p"
	case PayloadBytes:
		payloadArray, payloadExpr = "bytea[]", "p"
	default:
		return nil, fmt.Errorf("outbox payload kind %d: want PayloadJSON, PayloadText or PayloadBytes", cfg.Payload)
	}
	cols := []string{c.ID, c.AggregateType, c.AggregateID, c.EventType, c.Payload}
	arrays := []string{"text[]", "text[]", "text[]", "text[]", payloadArray}
	exprs := []string{"i::uuid", "t", "a", "e", payloadExpr}
	aliases := []string{"i", "t", "a", "e", "p"}
	if c.Headers != "" {
		cols = append(cols, c.Headers)
		arrays = append(arrays, "text[]")
		exprs = append(exprs, "h::json")
		aliases = append(aliases, "h")
	}
	quoted := make([]string, len(cols))
	params := make([]string, len(cols))
	for i, col := range cols {
		quoted[i] = pgname.Quote(col)
		params[i] = fmt.Sprintf("$%d::%s", i+1, arrays[i])
	}
	// unnest over parallel arrays: one statement and a fixed number of
	// parameters whatever the batch size; WITH ORDINALITY keeps the rows
	// (and so the events of one aggregate) in the caller's order.
	insert := fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM unnest(%s) WITH ORDINALITY AS u(%s, n) ORDER BY n",
		table.Quoted(), strings.Join(quoted, ", "), strings.Join(exprs, ", "), strings.Join(params, ", "), strings.Join(aliases, ", "))
	return &Writer{insert: insert, kind: cfg.Payload, headers: c.Headers != ""}, nil
}

// defaultWriter writes to the default table.
var defaultWriter, _ = NewWriter(Config{})

// Write inserts events into the default outbox table (public.outbox, the
// table `outbox-relay migrate` creates) in the caller's transaction.
func Write(ctx context.Context, tx Tx, events ...Event) ([]string, error) {
	return defaultWriter.Write(ctx, tx, events...)
}

// Write inserts events in one statement in the caller's transaction and
// returns their ids, in order. Nothing is written unless every event is
// valid. The events are published when, and only when, the transaction
// commits.
func (w *Writer) Write(ctx context.Context, tx Tx, events ...Event) ([]string, error) {
	if len(events) == 0 {
		return nil, nil
	}
	n := len(events)
	ids := make([]string, n)
	aggTypes := make([]string, n)
	aggIDs := make([]string, n)
	types := make([]string, n)
	var textPayloads []string
	var bytePayloads [][]byte
	if w.kind == PayloadBytes {
		bytePayloads = make([][]byte, n)
	} else {
		textPayloads = make([]string, n)
	}
	var headers []string
	if w.headers {
		headers = make([]string, n)
	}
	for i, ev := range events {
		if err := validate(i, &ev, w.kind); err != nil {
			return nil, err
		}
		if !w.headers && len(ev.Headers) > 0 {
			return nil, invalid(i, &ev, "has headers, but the outbox table has no headers column")
		}
		id, err := eventID(i, &ev)
		if err != nil {
			return nil, err
		}
		ids[i], aggTypes[i], aggIDs[i], types[i] = id, ev.AggregateType, ev.AggregateID, ev.EventType
		if w.kind == PayloadBytes {
			bytePayloads[i] = ev.Payload
			if bytePayloads[i] == nil {
				bytePayloads[i] = []byte{} // NULL would violate NOT NULL
			}
		} else {
			textPayloads[i] = string(ev.Payload)
		}
		if w.headers {
			h, err := headersJSON(ev.Headers)
			if err != nil {
				return nil, invalid(i, &ev, err.Error())
			}
			headers[i] = h
		}
	}
	args := []any{ids, aggTypes, aggIDs, types}
	if w.kind == PayloadBytes {
		args = append(args, bytePayloads)
	} else {
		args = append(args, textPayloads)
	}
	if w.headers {
		args = append(args, headers)
	}
	if err := tx.Exec(ctx, w.insert, args...); err != nil {
		return nil, fmt.Errorf("inserting %d outbox events: %w", n, err)
	}
	return ids, nil
}

// emitSQL emits one transactional message per envelope, in array order.
const emitSQL = "SELECT pg_logical_emit_message(true, $1::text, m) FROM unnest($2::text[]) WITH ORDINALITY AS e(m, i) ORDER BY i"

// Emit writes events as transactional logical decoding messages with the
// given prefix (the relay's --message-prefix, default "outbox"), in one
// statement in the caller's transaction, and returns their ids. Nothing
// is stored in a table; PostgreSQL decodes the messages only if the
// transaction commits. Payloads are taken as JSON; see EmitBytes for
// binary payloads.
func Emit(ctx context.Context, tx Tx, prefix string, events ...Event) ([]string, error) {
	return emit(ctx, tx, prefix, PayloadJSON, events)
}

// EmitBytes is Emit for payloads that are not JSON: they travel base64
// encoded in the envelope and reach the broker as the original bytes.
func EmitBytes(ctx context.Context, tx Tx, prefix string, events ...Event) ([]string, error) {
	return emit(ctx, tx, prefix, PayloadBytes, events)
}

func emit(ctx context.Context, tx Tx, prefix string, kind PayloadKind, events []Event) ([]string, error) {
	if prefix == "" {
		return nil, errors.New("outbox message prefix is empty")
	}
	if len(events) == 0 {
		return nil, nil
	}
	now := time.Now()
	ids := make([]string, len(events))
	envs := make([]string, len(events))
	for i, ev := range events {
		if err := validate(i, &ev, kind); err != nil {
			return nil, err
		}
		id, err := eventID(i, &ev)
		if err != nil {
			return nil, err
		}
		ev.ID = id
		b, err := envelope(&ev, kind, now)
		if err != nil {
			return nil, invalid(i, &ev, err.Error())
		}
		ids[i], envs[i] = id, string(b)
	}
	if err := tx.Exec(ctx, emitSQL, prefix, envs); err != nil {
		return nil, fmt.Errorf("emitting %d outbox messages with prefix %q: %w", len(events), prefix, err)
	}
	return ids, nil
}

// Envelope is the version 1 table-free envelope that Emit writes and the
// relay decodes (documented at decoder.EnvelopeVersion and in README.md).
type Envelope struct {
	V               int               `json:"v"`
	ID              string            `json:"id"`
	AggregateType   string            `json:"aggregate_type"`
	AggregateID     string            `json:"aggregate_id"`
	EventType       string            `json:"event_type"`
	Payload         json.RawMessage   `json:"payload"`
	PayloadEncoding string            `json:"payload_encoding,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
	CreatedAt       string            `json:"created_at"`
}

// envelope encodes ev (with its id set) as a version 1 envelope.
func envelope(ev *Event, kind PayloadKind, now time.Time) ([]byte, error) {
	env := Envelope{
		V:             1,
		ID:            ev.ID,
		AggregateType: ev.AggregateType,
		AggregateID:   ev.AggregateID,
		EventType:     ev.EventType,
		Payload:       ev.Payload,
		Headers:       ev.Headers,
		CreatedAt:     now.UTC().Format(time.RFC3339Nano),
	}
	if kind == PayloadBytes {
		p, _ := json.Marshal(base64.StdEncoding.EncodeToString(ev.Payload))
		env.Payload, env.PayloadEncoding = p, "base64"
	}
	return json.Marshal(env)
}

// validate checks the fields every mode needs.
func validate(i int, ev *Event, kind PayloadKind) error {
	switch {
	case ev.AggregateType == "":
		return invalid(i, ev, "aggregate type is empty")
	case ev.AggregateID == "":
		return invalid(i, ev, "aggregate id is empty")
	case ev.EventType == "":
		return invalid(i, ev, "event type is empty")
	}
	switch kind {
	case PayloadJSON:
		if !json.Valid(ev.Payload) {
			return invalid(i, ev, "payload is not valid JSON (the payload column is JSON)")
		}
	case PayloadText:
		if !utf8.Valid(ev.Payload) {
			return invalid(i, ev, "payload is not valid UTF-8 text")
		}
	}
	for k := range ev.Headers {
		if k == "" {
			return invalid(i, ev, "has a header with an empty key")
		}
	}
	return nil
}

// invalid wraps ErrInvalidEvent with the event's position and identity;
// it never quotes the payload or header values.
func invalid(i int, ev *Event, reason string) error {
	return fmt.Errorf("outbox event %d (aggregate %q %q, type %q): %s: %w", i, ev.AggregateType, ev.AggregateID, ev.EventType, reason, ErrInvalidEvent)
}

// eventID returns ev.ID, checked, or a new version 4 UUID.
func eventID(i int, ev *Event) (string, error) {
	if ev.ID != "" {
		if !isUUID(ev.ID) {
			return "", invalid(i, ev, fmt.Sprintf("id %q is not a UUID", ev.ID))
		}
		return ev.ID, nil
	}
	return NewID(), nil
}

// NewID returns a random (version 4) UUID in its canonical text form.
func NewID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// isUUID reports whether s is a UUID in canonical 8-4-4-4-12 hex form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// headersJSON encodes headers as a JSON object ("{}" when there are none).
func headersJSON(h map[string]string) (string, error) {
	if len(h) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(h)
	if err != nil {
		return "", fmt.Errorf("headers cannot be encoded as JSON: %v", err)
	}
	return string(b), nil
}
