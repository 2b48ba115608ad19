package main

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The example runs as documented against a fresh database with the table
// of `outbox-relay migrate`, and what it says is what is in the database.
func TestRun(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	conn := db.Conn(t)
	if err := migrations.Apply(ctx, conn, "outbox"); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `select pg_create_logical_replication_slot('example', 'test_decoding')`)

	var out strings.Builder
	if err := run(ctx, db.URL, &out); err != nil {
		t.Fatal(err)
	}
	const want = `order 42 placed
order 42 cancellation rolled back, and its event with it
order 42 paid: 2 events in one statement
order 42 shipped: its event is a message, not a row
outbox rows: OrderPlaced, OrderPaid, InvoiceRequested
`
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
	var status string
	if err := conn.QueryRow(ctx, `select status from orders where id = 42`).Scan(&status); err != nil || status != "shipped" {
		t.Errorf("order status %q, %v; want shipped", status, err)
	}
	r, err := conn.Query(ctx, `select data from pg_logical_slot_get_changes('example', null, null) where data like 'message:%'`)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || !strings.Contains(msgs[0], `"event_type":"OrderShipped"`) || !strings.Contains(msgs[0], "transactional: 1 prefix: outbox") {
		t.Errorf("decoded messages %q, want the one OrderShipped", msgs)
	}
}
