// Command outbox-writer shows package outbox in a service: an order and
// its event commit together (pgx), a rolled-back change leaves no event, a
// batch goes through database/sql with pgx's driver, and one event is
// written in table-free mode. It needs the outbox table that
// `outbox-relay migrate` creates, and wal_level = logical for the
// table-free event.
//
//	go run ./examples/outbox-writer -pg-url postgres://app@localhost/shop
//
// main_test.go runs it against a private PostgreSQL in `make test`.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func main() {
	url := flag.String("pg-url", os.Getenv("DATABASE_URL"), "PostgreSQL URL or DSN")
	flag.Parse()
	if err := run(context.Background(), *url, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "outbox-writer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, url string, out io.Writer) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// orders stands for the service's own tables.
	if _, err := conn.Exec(ctx, `create table if not exists orders (id bigint primary key, status text not null)`); err != nil {
		return err
	}

	// pgx: the order and its event commit together, or neither does.
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `insert into orders values (42, 'placed') on conflict (id) do update set status = 'placed'`); err != nil {
			return err
		}
		_, err := outbox.Write(ctx, outbox.Pgx(tx), outbox.Event{
			AggregateType: "order",
			AggregateID:   "42",
			EventType:     "OrderPlaced",
			Payload:       []byte(`{"order_id": 42, "total": "19.90"}`),
			Headers:       map[string]string{"tenant": "acme"},
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("placing the order: %w", err)
	}
	fmt.Fprintln(out, "order 42 placed")

	// A change that rolls back takes its event with it.
	errOutOfStock := errors.New("out of stock")
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `update orders set status = 'cancelled' where id = 42`); err != nil {
			return err
		}
		if _, err := outbox.Write(ctx, outbox.Pgx(tx), outbox.Event{AggregateType: "order", AggregateID: "42", EventType: "OrderCancelled", Payload: []byte(`{}`)}); err != nil {
			return err
		}
		return errOutOfStock // whatever makes the business change fail
	})
	if !errors.Is(err, errOutOfStock) {
		return fmt.Errorf("cancelling the order: %v", err)
	}
	fmt.Fprintln(out, "order 42 cancellation rolled back, and its event with it")

	// database/sql: two events in one statement, in order.
	db, err := sql.Open("pgx", url)
	if err != nil {
		return err
	}
	defer db.Close()
	stx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer stx.Rollback()
	if _, err := stx.ExecContext(ctx, `update orders set status = 'paid' where id = 42`); err != nil {
		return err
	}
	ids, err := outbox.Write(ctx, outbox.SQL(stx),
		outbox.Event{AggregateType: "order", AggregateID: "42", EventType: "OrderPaid", Payload: []byte(`{"order_id": 42}`)},
		outbox.Event{AggregateType: "invoice", AggregateID: "42", EventType: "InvoiceRequested", Payload: []byte(`{"order_id": 42}`)},
	)
	if err != nil {
		return err
	}
	if err := stx.Commit(); err != nil {
		return err
	}
	fmt.Fprintf(out, "order 42 paid: %d events in one statement\n", len(ids))

	// Table-free mode: a logical decoding message, nothing stored.
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `update orders set status = 'shipped' where id = 42`); err != nil {
			return err
		}
		_, err := outbox.Emit(ctx, outbox.Pgx(tx), "outbox", outbox.Event{AggregateType: "order", AggregateID: "42", EventType: "OrderShipped", Payload: []byte(`{"order_id": 42}`)})
		return err
	})
	if err != nil {
		return fmt.Errorf("shipping the order: %w", err)
	}
	fmt.Fprintln(out, "order 42 shipped: its event is a message, not a row")

	rows, _ := conn.Query(ctx, `select event_type from outbox where aggregate_id = '42' order by created_at, ctid`)
	types, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "outbox rows: %s\n", strings.Join(types, ", "))
	return nil
}
