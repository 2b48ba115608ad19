package test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// inTx runs fn in a transaction and commits it, or rolls it back when
// commit is false.
func inTx(t *testing.T, conn *pgx.Conn, commit bool, fn func(tx pgx.Tx)) {
	t.Helper()
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	fn(tx)
	if commit {
		err = tx.Commit(t.Context())
	} else {
		err = tx.Rollback(t.Context())
	}
	if err != nil {
		t.Fatal(err)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// Events written with the library, in table mode and in message mode, reach
// the broker as the same kind of record, in commit order per aggregate;
// rolled-back and non-transactional messages never do; a consumer using the
// inbox applies a redelivered event once.
func TestLibraryEventsAndMessagesArriveInOrder(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	cluster := kafkatest.NewCluster(t)
	startRelay(t, "--pg-url", db.URL, "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","), "--slot", "lib", "--publication", "lib")
	waitSlotActive(t, db, "lib")
	conn := db.Conn(t)
	ids := must[[]string](t)
	ev := func(aggID, eventType string) outbox.Event {
		return outbox.Event{AggregateType: "order", AggregateID: aggID, EventType: eventType,
			Payload: []byte(`{"type":"` + eventType + `"}`), Headers: map[string]string{"tenant": "acme", "traceparent": traceparent}}
	}

	var want []string // event ids in the order they must arrive (one aggregate)
	inTx(t, conn, true, func(tx pgx.Tx) {
		want = append(want, ids(outbox.Write(ctx, outbox.Pgx(tx), ev("o-1", "placed")))...)
	})
	inTx(t, conn, false, func(tx pgx.Tx) {
		ids(outbox.Emit(ctx, outbox.Pgx(tx), "outbox", ev("o-1", "rolled-back-message")))
		ids(outbox.Write(ctx, outbox.Pgx(tx), ev("o-1", "rolled-back-row")))
	})
	// Row, message, row in one transaction: three records in that order.
	inTx(t, conn, true, func(tx pgx.Tx) {
		want = append(want, ids(outbox.Write(ctx, outbox.Pgx(tx), ev("o-1", "row-1")))...)
		want = append(want, ids(outbox.Emit(ctx, outbox.Pgx(tx), "outbox", ev("o-1", "message")))...)
		want = append(want, ids(outbox.Write(ctx, outbox.Pgx(tx), ev("o-1", "row-2")))...)
	})
	// Non-transactional messages and other prefixes are ignored.
	db.Exec(t, `select pg_logical_emit_message(false, 'outbox', '{"v":1,"id":"0e4b5f3c-0000-4000-8000-000000000000","aggregate_type":"order","aggregate_id":"o-1","event_type":"non-transactional","payload":{}}')`)
	db.Exec(t, `select pg_logical_emit_message(true, 'other', 'whatever')`)
	// The pure-SQL form from README.md.
	var sqlID string
	if err := conn.QueryRow(ctx, `
		WITH e AS (SELECT gen_random_uuid() AS id)
		SELECT e.id::text, pg_logical_emit_message(true, 'outbox', jsonb_build_object(
		    'v', 1,
		    'id', e.id,
		    'aggregate_type', 'order',
		    'aggregate_id', 'o-1',
		    'event_type', 'from-sql',
		    'payload', jsonb_build_object('total', 10),
		    'headers', jsonb_build_object('tenant', 'acme'),
		    'created_at', now())::text)
		FROM e`).Scan(&sqlID, new(string)); err != nil {
		t.Fatal(err)
	}
	want = append(want, sqlID)

	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	recs, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), []string{"outbox.order"}, len(want))
	if err != nil {
		t.Fatalf("reading %d records: got %d: %v", len(want), len(recs), err)
	}
	more, _ := kafkatest.ReadAll(ctx, cluster.ListenAddrs(), []string{"outbox.order"}, 2*time.Second)
	if len(more) != len(want) {
		t.Fatalf("topic holds %d records, want %d (rolled-back or non-transactional events published?)", len(more), len(want))
	}
	wantTypes := []string{"placed", "row-1", "message", "row-2", "from-sql"}
	for i, r := range recs {
		if r.Headers["id"] != want[i] || r.Headers["event_type"] != wantTypes[i] || string(r.Key) != "o-1" ||
			r.Headers["aggregate_type"] != "order" || r.Headers["tenant"] != "acme" {
			t.Fatalf("record %d: key %q headers %v; want id %s, type %s", i, r.Key, r.Headers, want[i], wantTypes[i])
		}
		if i < 4 && r.Headers["traceparent"] != traceparent {
			t.Errorf("record %d: traceparent %q, want %q", i, r.Headers["traceparent"], traceparent)
		}
		var p map[string]any
		if err := json.Unmarshal(r.Value, &p); err != nil {
			t.Fatalf("record %d value %q: %v", i, r.Value, err)
		}
	}

	// An idempotent consumer: every record twice, each applied once.
	consumer := db.Conn(t)
	if err := inbox.Migrate(ctx, consumer, inbox.DefaultTable); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `create table applied (event_id text)`)
	applied := 0
	for _, r := range append(recs, recs...) {
		ok, err := inbox.Process(ctx, consumer, r.Headers["id"], func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `insert into applied values ($1)`, r.Headers["id"])
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			applied++
		}
	}
	var n int
	if err := consumer.QueryRow(ctx, `select count(*) from applied`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if applied != len(recs) || n != len(recs) {
		t.Fatalf("applied %d (rows %d) of %d deliveries of %d events; want each once", applied, n, 2*len(recs), len(recs))
	}
}

// A Debezium-shaped outbox table relays unchanged with --compat debezium:
// Debezium's topic names and id header, plus extra header columns and a
// trace column.
func TestDebeziumTableWithCompatPreset(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, `create table outboxevent (
		id uuid primary key, aggregatetype varchar(255) not null, aggregateid varchar(255) not null,
		type varchar(255) not null, payload jsonb, tenant text, traceparent text)`)
	cluster := kafkatest.NewCluster(t)
	startRelay(t, "--pg-url", db.URL, "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","), "--slot", "dbz", "--publication", "dbz",
		"--table", "outboxevent", "--compat", "debezium", "--header-columns", "tenant")
	waitSlotActive(t, db, "dbz")

	w, err := outbox.NewWriter(outbox.Config{Table: "outboxevent", Columns: outbox.DebeziumColumns()})
	if err != nil {
		t.Fatal(err)
	}
	conn := db.Conn(t)
	var ids []string
	inTx(t, conn, true, func(tx pgx.Tx) {
		ids = must[[]string](t)(w.Write(ctx, outbox.Pgx(tx), outbox.Event{AggregateType: "customer", AggregateID: "c-7", EventType: "CustomerCreated", Payload: []byte(`{"name":"Ada"}`)}))
		// Written as Debezium users do, by hand, with the extra columns.
		_, err := tx.Exec(ctx, `insert into outboxevent values (gen_random_uuid(), 'customer', 'c-7', 'CustomerRenamed', '{"name":"Grace"}', 'acme', $1) returning id`, traceparent)
		if err != nil {
			t.Fatal(err)
		}
	})
	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	recs, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), []string{"outbox.event.customer"}, 2)
	if err != nil {
		t.Fatalf("reading outbox.event.customer: got %d of 2: %v", len(recs), err)
	}
	r0, r1 := recs[0], recs[1]
	if r0.Headers["id"] != ids[0] || string(r0.Key) != "c-7" || string(r0.Value) != `{"name": "Ada"}` || r0.Headers["event_type"] != "CustomerCreated" {
		t.Errorf("first record key %q value %q headers %v", r0.Key, r0.Value, r0.Headers)
	}
	if _, ok := r0.Headers["tenant"]; ok {
		t.Errorf("NULL tenant became a header: %v", r0.Headers)
	}
	if r1.Headers["tenant"] != "acme" || r1.Headers["traceparent"] != traceparent || r1.Headers["event_type"] != "CustomerRenamed" || len(r1.Headers["id"]) != 36 {
		t.Errorf("second record headers %v", r1.Headers)
	}
}
