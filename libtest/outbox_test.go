package libtest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// outboxDDL is the table `outbox-relay migrate` creates.
const outboxDDL = `create table outbox (
    id             uuid        primary key default gen_random_uuid(),
    aggregate_type text        not null,
    aggregate_id   text        not null,
    event_type     text        not null,
    payload        jsonb       not null,
    headers        jsonb       not null default '{}',
    created_at     timestamptz not null default now())`

type row struct {
	id, aggType, aggID, eventType, payload, headers string
}

func rows(t *testing.T, conn *pgx.Conn) []row {
	t.Helper()
	r, err := conn.Query(t.Context(), `select id::text, aggregate_type, aggregate_id, event_type, payload::text, headers::text from outbox order by created_at, ctid`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(r, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.id, &x.aggType, &x.aggID, &x.eventType, &x.payload, &x.headers)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var placed = outbox.Event{AggregateType: "order", AggregateID: "42", EventType: "OrderPlaced", Payload: []byte(`{"total": 10}`), Headers: map[string]string{"tenant": "acme"}}

// Events written in a pgx transaction are there after commit, as written.
func TestWriteWithPgx(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, outboxDDL)
	conn := db.Conn(t)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := outbox.Write(ctx, outbox.Pgx(tx), placed)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := rows(t, conn)
	want := row{ids[0], "order", "42", "OrderPlaced", `{"total": 10}`, `{"tenant": "acme"}`}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("rows %+v, want %+v", got, want)
	}
}

// countingTracer counts the statements a connection sends.
type countingTracer struct{ n atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// A batch of 1,000 events is one statement, and keeps its order.
func TestBatchIsOneStatement(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, outboxDDL)
	cfg, err := pgx.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	tr := &countingTracer{}
	cfg.Tracer = tr
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	events := make([]outbox.Event, 1000)
	for i := range events {
		events[i] = outbox.Event{AggregateType: "order", AggregateID: "agg", EventType: "n", Payload: fmt.Appendf(nil, `{"seq": %d}`, i)}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := tr.n.Load()
	ids, err := outbox.Write(ctx, outbox.Pgx(tx), events...)
	if err != nil {
		t.Fatal(err)
	}
	if n := tr.n.Load() - before; n != 1 {
		t.Fatalf("writing 1,000 events took %d statements, want 1", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := rows(t, conn)
	if len(got) != 1000 || len(ids) != 1000 {
		t.Fatalf("%d rows, %d ids; want 1000", len(got), len(ids))
	}
	for i, r := range got {
		if r.id != ids[i] || r.payload != fmt.Sprintf(`{"seq": %d}`, i) {
			t.Fatalf("row %d: %+v, want id %s seq %d", i, r, ids[i], i)
		}
	}
}

// A rolled-back transaction leaves no event behind.
func TestRollbackLeavesNothing(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, outboxDDL)
	conn := db.Conn(t)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Write(ctx, outbox.Pgx(tx), placed, placed); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rows(t, conn); len(got) != 0 {
		t.Fatalf("rows after rollback: %+v", got)
	}
}

// Invalid events are refused before anything is sent, through a real
// connection too (the texts of every refusal: outbox/outbox_test.go).
func TestValidation(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, outboxDDL)
	conn := db.Conn(t)
	invalid := placed
	invalid.Payload = []byte(`{"a":`)
	if _, err := outbox.Write(ctx, outbox.Pgx(conn), placed, invalid); !errors.Is(err, outbox.ErrInvalidEvent) || !strings.Contains(err.Error(), "outbox event 1") {
		t.Errorf("Write: error %v, want ErrInvalidEvent about event 1", err)
	}
	if _, err := outbox.Emit(ctx, outbox.Pgx(conn), "outbox", invalid); !errors.Is(err, outbox.ErrInvalidEvent) {
		t.Errorf("Emit: error %v, want ErrInvalidEvent", err)
	}
	if got := rows(t, conn); len(got) != 0 {
		t.Fatalf("an invalid batch wrote rows: %+v", got)
	}
	w, err := outbox.NewWriter(outbox.Config{Columns: outbox.DebeziumColumns()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(ctx, outbox.Pgx(conn), placed); err == nil || !strings.Contains(err.Error(), "no headers column") {
		t.Errorf("headers without a headers column: %v", err)
	}
}

// A Debezium-shaped table with a bytea payload and a quoted name.
func TestWriteCustomTableAndBytes(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, `create schema app; create table app."Outbox Events" (id uuid primary key, aggregatetype varchar(255) not null, aggregateid varchar(255) not null, type varchar(255) not null, payload bytea)`)
	w, err := outbox.NewWriter(outbox.Config{Table: "app.Outbox Events", Columns: outbox.DebeziumColumns(), Payload: outbox.PayloadBytes})
	if err != nil {
		t.Fatal(err)
	}
	conn := db.Conn(t)
	ids, err := w.Write(ctx, outbox.Pgx(conn), outbox.Event{AggregateType: "order", AggregateID: "1", EventType: "Raw", Payload: []byte{0, 1, 0xff}})
	if err != nil {
		t.Fatal(err)
	}
	var id string
	var p []byte
	if err := conn.QueryRow(ctx, `select id::text, payload from app."Outbox Events"`).Scan(&id, &p); err != nil {
		t.Fatal(err)
	}
	if id != ids[0] || string(p) != "\x00\x01\xff" {
		t.Fatalf("row %s %x, want %s 0001ff", id, p, ids[0])
	}
}

// Emit writes one transactional message per event, in order, and a
// rolled-back transaction's messages are never decoded.
func TestEmitWritesTransactionalMessages(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	conn := db.Conn(t)
	db.Exec(t, `select pg_create_logical_replication_slot('emit', 'test_decoding')`)

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Emit(ctx, outbox.Pgx(tx), "outbox", with("rolled-back")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := outbox.Emit(ctx, outbox.Pgx(tx), "outbox", with("first"), with("second"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := conn.Query(ctx, `select data from pg_logical_slot_get_changes('emit', null, null) where data like 'message:%'`)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || !strings.Contains(msgs[0], ids[0]) || !strings.Contains(msgs[0], `"event_type":"first"`) ||
		!strings.Contains(msgs[1], `"event_type":"second"`) || !strings.Contains(msgs[0], "transactional: 1 prefix: outbox") {
		t.Fatalf("decoded messages %q, want the two committed ones in order", msgs)
	}
}

func with(eventType string) outbox.Event {
	e := placed
	e.EventType = eventType
	return e
}
