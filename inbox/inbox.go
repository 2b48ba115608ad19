// Package inbox makes a consumer idempotent: it records each processed
// event id in the consumer's own database, in the same transaction as the
// side effect, so a redelivered event (at-least-once delivery repeats
// events after a crash) is skipped instead of applied twice.
//
// It works with any consumer loop: call Process (pgx) or ProcessSQL
// (database/sql) for each record with the record's id header, or Record
// inside a transaction of your own, which Pgx and SQL adapt as the outbox
// package's adapters do.
package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

// DefaultTable is the inbox table of Process, Migrate and Prune: public.inbox.
const DefaultTable = "inbox"

// Beginner starts transactions: *pgxpool.Pool, *pgx.Conn and pgx.Tx
// (a savepoint) satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Execer runs a statement: *pgxpool.Pool, *pgx.Conn and pgx.Tx satisfy it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SQLBeginner starts database/sql transactions: *sql.DB and *sql.Conn
// satisfy it.
type SQLBeginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// SQLExecer is satisfied by *sql.Tx, *sql.Conn and *sql.DB.
type SQLExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Tx is what Record needs from the caller's transaction: one statement
// and the number of rows it changed. Use Pgx or SQL to adapt one.
type Tx interface {
	Exec(ctx context.Context, sql string, args ...any) (rowsAffected int64, err error)
}

type pgxTx struct{ tx Execer }

func (t pgxTx) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	tag, err := t.tx.Exec(ctx, sql, args...)
	return tag.RowsAffected(), err
}

type sqlTx struct{ tx SQLExecer }

func (t sqlTx) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	res, err := t.tx.ExecContext(ctx, sql, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// Pgx adapts a pgx transaction (pgx.Tx).
func Pgx(tx Execer) Tx { return pgxTx{tx} }

// SQL adapts a database/sql transaction (*sql.Tx).
func SQL(tx SQLExecer) Tx { return sqlTx{tx} }

// Inbox is an inbox table. The zero value uses DefaultTable.
type Inbox struct {
	// Table is "schema.name" or "name", raw names (quoted by the package).
	// A name without a schema is in public, not resolved through
	// search_path (see package pgname).
	Table string
}

// Process runs fn once per eventID with the default inbox table; see
// Inbox.Process.
func Process(ctx context.Context, db Beginner, eventID string, fn func(tx pgx.Tx) error) (processed bool, err error) {
	return Inbox{}.Process(ctx, db, eventID, fn)
}

// ProcessSQL is Process for database/sql with the default inbox table;
// see Inbox.ProcessSQL.
func ProcessSQL(ctx context.Context, db SQLBeginner, eventID string, fn func(tx *sql.Tx) error) (processed bool, err error) {
	return Inbox{}.ProcessSQL(ctx, db, eventID, fn)
}

// Record records eventID in the default inbox table; see Inbox.Record.
func Record(ctx context.Context, tx Tx, eventID string) (first bool, err error) {
	return Inbox{}.Record(ctx, tx, eventID)
}

// Migrate creates the inbox table and its index if they do not exist.
func Migrate(ctx context.Context, db Execer, table string) error {
	t, err := parseTable(table)
	if err != nil {
		return err
	}
	q := t.Quoted()
	idx := pgname.Quote(strings.ReplaceAll(t.Name, `"`, "") + "_processed_at_idx")
	sql := fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
    event_id     text        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS %s ON %s (processed_at)`, q, idx, q)
	if _, err := db.Exec(ctx, sql); err != nil {
		return fmt.Errorf("creating inbox table %s: %w", table, err)
	}
	return nil
}

// Prune deletes ids processed more than olderThan ago from the default
// inbox table; see Inbox.Prune.
func Prune(ctx context.Context, db Execer, olderThan time.Duration) (int64, error) {
	return Inbox{}.Prune(ctx, db, olderThan)
}

// Process runs fn in a transaction that also records eventID, and commits
// both, unless eventID was recorded before: then fn is not called and
// processed is false. An error from fn rolls everything back, so the event
// is processed again on redelivery. A concurrent Process of the same id
// waits for the first to commit or roll back.
func (in Inbox) Process(ctx context.Context, db Beginner, eventID string, fn func(tx pgx.Tx) error) (processed bool, err error) {
	if eventID == "" {
		return false, errors.New("inbox: event id is empty")
	}
	if _, err := parseTable(in.table()); err != nil {
		return false, err
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("inbox: beginning a transaction for event %s: %w", eventID, err)
	}
	defer func() {
		if !processed || err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if first, err := in.Record(ctx, Pgx(tx), eventID); err != nil || !first {
		return false, err // an error, or a repeat
	}
	if err := fn(tx); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("inbox: committing event %s: %w", eventID, err)
	}
	return true, nil
}

// ProcessSQL is Process for database/sql: fn gets the *sql.Tx that also
// records eventID. The driver must be PostgreSQL's, e.g. pgx's
// github.com/jackc/pgx/v5/stdlib.
func (in Inbox) ProcessSQL(ctx context.Context, db SQLBeginner, eventID string, fn func(tx *sql.Tx) error) (processed bool, err error) {
	if eventID == "" {
		return false, errors.New("inbox: event id is empty")
	}
	if _, err := parseTable(in.table()); err != nil {
		return false, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("inbox: beginning a transaction for event %s: %w", eventID, err)
	}
	defer func() {
		if !processed || err != nil {
			_ = tx.Rollback()
		}
	}()
	if first, err := in.Record(ctx, SQL(tx), eventID); err != nil || !first {
		return false, err // an error, or a repeat
	}
	if err := fn(tx); err != nil {
		return false, err
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("inbox: committing event %s: %w", eventID, err)
	}
	return true, nil
}

// Record records eventID in the caller's transaction and reports whether
// it is new. When first is false the event was recorded before: skip its
// side effect. The id stays recorded only if tx commits, so do the side
// effect in tx too. A concurrent Record of the same id in another
// transaction waits for that one to commit or roll back.
func (in Inbox) Record(ctx context.Context, tx Tx, eventID string) (first bool, err error) {
	if eventID == "" {
		return false, errors.New("inbox: event id is empty")
	}
	t, err := parseTable(in.table())
	if err != nil {
		return false, err
	}
	n, err := tx.Exec(ctx, "INSERT INTO "+t.Quoted()+" (event_id) VALUES ($1) ON CONFLICT (event_id) DO NOTHING", eventID)
	if err != nil {
		return false, fmt.Errorf("inbox: recording event %s in %s: %w", eventID, in.table(), err)
	}
	return n == 1, nil
}

// Prune deletes ids processed more than olderThan ago and returns how many.
// Keep them longer than any redelivery can take: a pruned id processes
// again if its event comes back.
func (in Inbox) Prune(ctx context.Context, db Execer, olderThan time.Duration) (int64, error) {
	t, err := parseTable(in.table())
	if err != nil {
		return 0, err
	}
	table := t.Quoted()
	tag, err := db.Exec(ctx, "DELETE FROM "+table+" WHERE processed_at < now() - $1::bigint * interval '1 microsecond'", olderThan.Microseconds())
	if err != nil {
		return 0, fmt.Errorf("inbox: pruning %s older than %s: %w", in.table(), olderThan, err)
	}
	return tag.RowsAffected(), nil
}

func (in Inbox) table() string {
	if in.Table == "" {
		return DefaultTable
	}
	return in.Table
}

// parseTable parses "schema.name" or "name" (schema public).
func parseTable(t string) (pgname.Table, error) {
	tbl, err := pgname.ParseTable(t)
	if err != nil {
		return pgname.Table{}, fmt.Errorf("inbox: %w", err)
	}
	return tbl, nil
}
