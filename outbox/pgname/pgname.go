// Package pgname parses and quotes the PostgreSQL names this repository
// uses: the relay, `outbox-relay migrate`, and the outbox and inbox
// libraries all name a table the same way through it.
//
// A table is written "schema.name" or "name", raw as in the catalog: no
// quotes, case kept, at most 63 bytes a part (PostgreSQL's NAMEDATALEN - 1).
//
// The default schema is always public (DefaultSchema), never search_path:
// pgoutput's Relation messages name a table's schema explicitly, so the
// relay must know the concrete schema of the table it watches, and a writer
// that resolved "outbox" through its own search_path could fill a different
// table than the one the relay streams.
//
// Quoting is pgx.Identifier's Sanitize: each part in double quotes, inner
// double quotes doubled, NUL bytes dropped.
package pgname

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DefaultSchema is the schema of a table named without one.
const DefaultSchema = "public"

// MaxLen is the longest identifier PostgreSQL keeps, in bytes; longer
// ones are truncated by the server, so they are refused here.
const MaxLen = 63

// Table is a schema-qualified table name, raw (unquoted).
type Table struct {
	Schema, Name string
}

// ParseTable parses "schema.name" or "name" (schema DefaultSchema).
func ParseTable(s string) (Table, error) {
	if s == "" {
		return Table{}, errors.New("table name is empty")
	}
	t := Table{Schema: DefaultSchema, Name: s}
	if schema, name, ok := strings.Cut(s, "."); ok {
		t = Table{Schema: schema, Name: name}
	}
	if t.Schema == "" || t.Name == "" || strings.Contains(t.Name, ".") {
		return Table{}, fmt.Errorf("table name %q: want schema.name or name", s)
	}
	if len(t.Schema) > MaxLen || len(t.Name) > MaxLen {
		return Table{}, fmt.Errorf("table name %q: names are limited to %d bytes", s, MaxLen)
	}
	if strings.ContainsRune(s, 0) {
		return Table{}, errors.New("table name contains a NUL byte")
	}
	return t, nil
}

// String returns "schema.name", unquoted: for messages and flags, not SQL.
func (t Table) String() string { return t.Schema + "." + t.Name }

// Quoted returns the name for SQL, e.g. "public"."outbox".
func (t Table) Quoted() string { return t.Identifier().Sanitize() }

// Identifier returns the name as a pgx.Identifier.
func (t Table) Identifier() pgx.Identifier { return pgx.Identifier{t.Schema, t.Name} }

// Quote quotes one identifier for SQL (a column, an index, a schema, a
// publication or a replication slot).
func Quote(name string) string { return pgx.Identifier{name}.Sanitize() }
