package libtest_test

import (
	"database/sql"
	"errors"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// ProcessSQL does through database/sql what Process does through pgx: a
// repeat is skipped, a failure rolls back and runs again on redelivery.
func TestProcessSQLSkipsRepeatsAndRetriesFailures(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	conn := db.Conn(t)
	if err := inbox.Migrate(ctx, conn, inbox.DefaultTable); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `create table effects (n int)`)
	sdb, err := sql.Open("pgx", db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	apply := func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `insert into effects values (1)`)
		return err
	}
	for i, want := range []bool{true, false} {
		got, err := inbox.ProcessSQL(ctx, sdb, "ev-1", apply)
		if err != nil || got != want {
			t.Fatalf("delivery %d: processed %v, %v; want %v", i, got, err, want)
		}
	}
	boom := errors.New("boom")
	if _, err := inbox.ProcessSQL(ctx, sdb, "ev-2", func(tx *sql.Tx) error { apply(tx); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failing fn: %v", err)
	}
	if got, err := inbox.ProcessSQL(ctx, sdb, "ev-2", apply); err != nil || !got {
		t.Fatalf("redelivery after a failure: processed %v, %v; want true", got, err)
	}
	if n := count(t, conn, `select count(*) from effects`); n != 2 {
		t.Fatalf("effects %d, want 2 (once per event, the failed attempt rolled back)", n)
	}
	if n := count(t, conn, `select count(*) from inbox`); n != 2 {
		t.Fatalf("inbox holds %d ids, want 2", n)
	}
}

// Record takes the caller's *sql.Tx: a consumer that records the event it
// handles and writes the outbox event it causes in one transaction of its
// own, and so does both once however often the event is delivered.
func TestRecordInTheCallersSQLTransaction(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, outboxDDL)
	conn := db.Conn(t)
	in := inbox.Inbox{Table: "billing.Processed"}
	db.Exec(t, `create schema billing`)
	if err := inbox.Migrate(ctx, conn, in.Table); err != nil {
		t.Fatal(err)
	}
	sdb, err := sql.Open("pgx", db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	deliver := func(commit bool) bool {
		t.Helper()
		tx, err := sdb.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		first, err := in.Record(ctx, inbox.SQL(tx), "3f2a0c7e-2222-4222-8222-222222222222")
		if err != nil {
			t.Fatal(err)
		}
		if !first {
			return false
		}
		if _, err := outbox.Write(ctx, outbox.SQL(tx), outbox.Event{AggregateType: "invoice", AggregateID: "42", EventType: "InvoiceIssued", Payload: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		return true
	}
	if !deliver(false) {
		t.Fatal("first delivery: not first")
	}
	// Rolled back: the id was not kept, so the redelivery is handled.
	for i, want := range []bool{true, false, false} {
		if got := deliver(true); got != want {
			t.Fatalf("delivery %d after the rollback: first %v, want %v", i, got, want)
		}
	}
	if got := rows(t, conn); len(got) != 1 || got[0].eventType != "InvoiceIssued" {
		t.Fatalf("outbox rows %+v, want one InvoiceIssued", got)
	}
	if n := count(t, conn, `select count(*) from billing."Processed"`); n != 1 {
		t.Fatalf("inbox holds %d ids, want 1", n)
	}
}
