// Command inbox-consumer shows package inbox in a consumer: each event is
// handled once however often the broker delivers it. The deliveries are a
// fixed list standing in for a consumer loop: one event comes twice (as
// after a consumer crash), one fails once and is redelivered, and one
// comes again through database/sql. Run it again and every delivery is a
// repeat: the ids are in the database, not in the process.
//
//	go run ./examples/inbox-consumer -pg-url postgres://app@localhost/billing
//
// main_test.go runs it, twice, against a private PostgreSQL in `make test`.
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
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/outbox-relay/outbox-relay/inbox"
)

func main() {
	url := flag.String("pg-url", os.Getenv("DATABASE_URL"), "PostgreSQL URL or DSN")
	flag.Parse()
	if err := run(context.Background(), *url, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "inbox-consumer:", err)
		os.Exit(1)
	}
}

// delivery is a record as a consumer gets it: the event id is the record's
// id header.
type delivery struct {
	id, orderID string
	fail        bool // the handler fails this time, as on a lost connection
}

var deliveries = []delivery{
	{id: "0b6f4c52-0001-4000-8000-000000000001", orderID: "42"},
	{id: "0b6f4c52-0001-4000-8000-000000000001", orderID: "42"}, // redelivered
	{id: "0b6f4c52-0002-4000-8000-000000000002", orderID: "43", fail: true},
	{id: "0b6f4c52-0002-4000-8000-000000000002", orderID: "43"}, // redelivered after the failure
}

var errTransient = errors.New("transient failure")

func run(ctx context.Context, url string, out io.Writer) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := inbox.Migrate(ctx, conn, inbox.DefaultTable); err != nil {
		return err
	}
	// invoices stands for the consumer's own tables: the side effect.
	if _, err := conn.Exec(ctx, `create table if not exists invoices (order_id text not null, created_at timestamptz not null default now())`); err != nil {
		return err
	}

	for _, d := range deliveries {
		processed, err := inbox.Process(ctx, conn, d.id, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `insert into invoices (order_id) values ($1)`, d.orderID); err != nil {
				return err
			}
			if d.fail {
				return errTransient // the invoice above rolls back with the id
			}
			return nil
		})
		switch {
		case errors.Is(err, errTransient):
			fmt.Fprintf(out, "event %s: failed (%v), left for redelivery\n", short(d.id), err)
		case err != nil:
			return err
		case processed:
			fmt.Fprintf(out, "event %s: invoiced order %s\n", short(d.id), d.orderID)
		default:
			fmt.Fprintf(out, "event %s: repeat, skipped\n", short(d.id))
		}
	}

	// The same table through database/sql: the id recorded above counts.
	db, err := sql.Open("pgx", url)
	if err != nil {
		return err
	}
	defer db.Close()
	first := deliveries[0]
	processed, err := inbox.ProcessSQL(ctx, db, first.id, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `insert into invoices (order_id) values ($1)`, first.orderID)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "event %s through database/sql: processed %v\n", short(first.id), processed)

	rows, _ := conn.Query(ctx, `select order_id from invoices order by created_at, order_id`)
	orders, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "invoices for orders: %s\n", strings.Join(orders, ", "))

	// Keep ids longer than any redelivery can take.
	n, err := inbox.Prune(ctx, conn, 7*24*time.Hour)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pruned %d ids older than a week\n", n)
	return nil
}

// short is the id's last group, enough to tell the deliveries apart.
func short(id string) string { return id[len(id)-4:] }
