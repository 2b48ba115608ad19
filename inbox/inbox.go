// Package inbox makes a consumer idempotent: it records each processed
// event id in the consumer's own database, in the same transaction as the
// side effect, so a redelivered event (at-least-once delivery repeats
// events after a crash) is skipped instead of applied twice.
//
// It works with any consumer loop: call Process for each record with the
// record's id header.
package inbox

import (
	"context"
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
	t, err := parseTable(in.table())
	if err != nil {
		return false, err
	}
	table := t.Quoted()
	tx, err := db.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("inbox: beginning a transaction for event %s: %w", eventID, err)
	}
	defer func() {
		if !processed || err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	tag, err := tx.Exec(ctx, "INSERT INTO "+table+" (event_id) VALUES ($1) ON CONFLICT (event_id) DO NOTHING", eventID)
	if err != nil {
		return false, fmt.Errorf("inbox: recording event %s in %s: %w", eventID, in.table(), err)
	}
	if tag.RowsAffected() == 0 {
		return false, nil // a repeat
	}
	if err := fn(tx); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("inbox: committing event %s: %w", eventID, err)
	}
	return true, nil
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
