package outbox_test

// These examples are compiled, not run: they need a database. The
// relay's module runs examples/outbox-writer against PostgreSQL.

import (
	"context"
	"database/sql"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Write an event in the same pgx transaction as the business change.
func ExampleWrite() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, "postgres://app@localhost/shop") // or a *pgxpool.Pool
	if err != nil {
		log.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `update orders set status = 'placed' where id = $1`, 42); err != nil {
		log.Fatal(err)
	}
	_, err = outbox.Write(ctx, outbox.Pgx(tx), outbox.Event{
		AggregateType: "order",
		AggregateID:   "42",
		EventType:     "OrderPlaced",
		Payload:       []byte(`{"order_id":42,"total":"19.90"}`),
		Headers:       map[string]string{"tenant": "acme"},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
}

// The same with database/sql (driver "pgx" from github.com/jackc/pgx/v5/stdlib),
// a Debezium-style table and a batch in one statement.
func ExampleWriter_Write() {
	ctx := context.Background()
	db, err := sql.Open("pgx", "postgres://app@localhost/shop")
	if err != nil {
		log.Fatal(err)
	}
	w, err := outbox.NewWriter(outbox.Config{Table: "outboxevent", Columns: outbox.DebeziumColumns()})
	if err != nil {
		log.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	ids, err := w.Write(ctx, outbox.SQL(tx),
		outbox.Event{AggregateType: "order", AggregateID: "42", EventType: "OrderPlaced", Payload: []byte(`{}`)},
		outbox.Event{AggregateType: "order", AggregateID: "42", EventType: "OrderPaid", Payload: []byte(`{}`)},
	)
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	log.Println("event ids", ids)
}

// Table-free mode: no outbox table, a logical decoding message instead.
func ExampleEmit() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, "postgres://app@localhost/shop") // or a *pgxpool.Pool
	if err != nil {
		log.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx)
	_, err = outbox.Emit(ctx, outbox.Pgx(tx), "outbox", outbox.Event{
		AggregateType: "order",
		AggregateID:   "42",
		EventType:     "OrderPlaced",
		Payload:       []byte(`{"order_id":42}`),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
}
