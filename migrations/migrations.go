// Package migrations holds the SQL that creates the default outbox table
// (the one README.md describes) and applies it.
//
// The SQL lives in the embedded *.sql files, run in name order. A file names
// the table through placeholders that Apply replaces with quoted
// identifiers:
//
//	{{table}}             the schema-qualified table, e.g. "public"."outbox"
//	{{created_at_index}}  the name of the created_at index, e.g. "outbox_created_at_idx"
//
// Apply runs the files only when the table does not exist yet, all in one
// transaction: the table and its index appear together or not at all, and an
// existing table (possibly with other columns) is never altered. There is no
// migration-history table; statements still say IF NOT EXISTS, to be safe to
// run by hand. So the CHECK constraints of 0001_outbox.sql reach new tables
// only; README.md gives the statements that add them to an existing one.
package migrations

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

//go:embed *.sql
var files embed.FS

// lockKey is the advisory lock that serializes concurrent Apply calls on one
// database: two CREATE TABLE IF NOT EXISTS racing can both pass the check and
// one then fails on the catalog's unique index.
const lockKey = 0x6f7574626f78 // "outbox"

// Apply creates the outbox table named table ("name" or "schema.name", as
// pgname.ParseTable reads it: the schema defaults to public) with its
// created_at index, and the schema when it is missing. Names are taken literally (case included) and quoted.
// When the table exists Apply changes nothing, even if its columns differ
// from the default; running it again is fine.
func Apply(ctx context.Context, conn *pgx.Conn, table string) error {
	t, err := pgname.ParseTable(table)
	if err != nil {
		return err
	}
	schema, name := t.Schema, t.Name
	stmts, err := render(t)
	if err != nil {
		return err
	}
	qualified := t.String()
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock($1)", int64(lockKey)); err != nil {
			return fmt.Errorf("locking for the migration of table %s: %w", qualified, err)
		}
		// An existing table is the user's: it may have other columns (a
		// Debezium-style table) and the role may lack the CREATE privilege
		// that even CREATE ... IF NOT EXISTS checks.
		var tableExists, schemaExists bool
		err := tx.QueryRow(ctx, `select
			exists (select 1 from pg_namespace where nspname = $1),
			exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1 and c.relname = $2)`,
			schema, name).Scan(&schemaExists, &tableExists)
		if err != nil {
			return fmt.Errorf("looking up table %s: %w", qualified, err)
		}
		if tableExists {
			return nil
		}
		if !schemaExists {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgname.Quote(schema)); err != nil {
				return fmt.Errorf("creating schema %s: %w", schema, err)
			}
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s.sql); err != nil {
				return fmt.Errorf("applying migration %s to table %s: %w", s.file, qualified, err)
			}
		}
		return nil
	})
}

// Exists reports whether the table named table ("name" or "schema.name")
// exists, so a caller can say whether Apply created it.
func Exists(ctx context.Context, conn *pgx.Conn, table string) (bool, error) {
	t, err := pgname.ParseTable(table)
	if err != nil {
		return false, err
	}
	var exists bool
	err = conn.QueryRow(ctx, `select exists (
		select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where n.nspname = $1 and c.relname = $2)`, t.Schema, t.Name).Scan(&exists)
	if err != nil {
		return false, fmt.Errorf("looking up table %s: %w", t, err)
	}
	return exists, nil
}

type statement struct {
	file, sql string
}

// render returns the embedded files, in name order, with the placeholders
// replaced.
func render(t pgname.Table) ([]statement, error) {
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	r := strings.NewReplacer(
		"{{table}}", t.Quoted(),
		"{{created_at_index}}", pgname.Quote(truncate(t.Name+"_created_at_idx", pgname.MaxLen)),
	)
	out := make([]statement, 0, len(names))
	for _, n := range names {
		b, err := files.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, statement{file: n, sql: r.Replace(string(b))})
	}
	return out, nil
}

// truncate cuts s to at most n bytes without splitting a character, as
// PostgreSQL does with long identifiers.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
