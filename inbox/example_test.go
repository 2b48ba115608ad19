package inbox_test

// These examples are compiled, not run: they need a database. The
// relay's module runs examples/inbox-consumer against PostgreSQL.

import (
	"context"
	"database/sql"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/inbox"
)

// Handle each record once: the side effect and the record's id commit
// together, and a redelivered record is skipped.
func ExampleProcess() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, "postgres://app@localhost/billing") // or a *pgxpool.Pool
	if err != nil {
		log.Fatal(err)
	}
	if err := inbox.Migrate(ctx, conn, inbox.DefaultTable); err != nil {
		log.Fatal(err)
	}
	recordID := "3f2a0c7e-1111-4111-8111-111111111111" // the record's id header
	processed, err := inbox.Process(ctx, conn, recordID, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `insert into invoices (order_id) values ($1)`, "42")
		return err
	})
	if err != nil {
		log.Fatal(err) // nothing was kept: the redelivery processes it again
	}
	if !processed {
		log.Println("a repeat, skipped")
	}
}

// The same with database/sql (driver "pgx" from github.com/jackc/pgx/v5/stdlib).
func ExampleProcessSQL() {
	ctx := context.Background()
	db, err := sql.Open("pgx", "postgres://app@localhost/billing")
	if err != nil {
		log.Fatal(err)
	}
	recordID := "3f2a0c7e-1111-4111-8111-111111111111"
	_, err = inbox.ProcessSQL(ctx, db, recordID, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `insert into invoices (order_id) values ($1)`, "42")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}

// In a transaction of your own, with a custom table: Record says whether
// the event is new, and the id is kept only if the transaction commits.
func ExampleInbox_Record() {
	ctx := context.Background()
	db, err := sql.Open("pgx", "postgres://app@localhost/billing")
	if err != nil {
		log.Fatal(err)
	}
	in := inbox.Inbox{Table: "billing.processed_events"}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	first, err := in.Record(ctx, inbox.SQL(tx), "3f2a0c7e-1111-4111-8111-111111111111")
	if err != nil {
		log.Fatal(err)
	}
	if !first {
		return // a repeat: nothing to do
	}
	if _, err := tx.ExecContext(ctx, `insert into invoices (order_id) values ($1)`, "42"); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
}
