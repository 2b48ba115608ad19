package libtest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func count(t *testing.T, conn *pgx.Conn, sql string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(t.Context(), sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A redelivered event is skipped; a failed one is processed again.
func TestProcessSkipsRepeatsAndRetriesFailures(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	conn := db.Conn(t)
	if err := inbox.Migrate(ctx, conn, inbox.DefaultTable); err != nil {
		t.Fatal(err)
	}
	if err := inbox.Migrate(ctx, conn, inbox.DefaultTable); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	db.Exec(t, `create table effects (n int)`)
	apply := func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `insert into effects values (1)`)
		return err
	}
	for i, want := range []bool{true, false, false} {
		got, err := inbox.Process(ctx, conn, "ev-1", apply)
		if err != nil || got != want {
			t.Fatalf("delivery %d: processed %v, %v; want %v", i, got, err, want)
		}
	}
	if n := count(t, conn, `select count(*) from effects`); n != 1 {
		t.Fatalf("side effect applied %d times, want once", n)
	}

	boom := errors.New("boom")
	if _, err := inbox.Process(ctx, conn, "ev-2", func(tx pgx.Tx) error { apply(tx); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failing fn: %v", err)
	}
	if got, err := inbox.Process(ctx, conn, "ev-2", apply); err != nil || !got {
		t.Fatalf("redelivery after a failure: processed %v, %v; want true", got, err)
	}
	if n := count(t, conn, `select count(*) from effects`); n != 2 {
		t.Fatalf("effects %d, want 2 (the failed attempt rolled back)", n)
	}

	if _, err := conn.Exec(ctx, `update inbox set processed_at = now() - interval '2 hours' where event_id = 'ev-1'`); err != nil {
		t.Fatal(err)
	}
	n, err := inbox.Prune(ctx, conn, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("prune: %d, %v; want 1", n, err)
	}
	if n := count(t, conn, `select count(*) from inbox`); n != 1 {
		t.Fatalf("inbox holds %d ids after pruning, want 1", n)
	}
	if _, err := inbox.Process(context.Background(), conn, "", apply); err == nil {
		t.Fatal("empty event id accepted")
	}
}

// A custom table in another schema works the same way.
func TestCustomTable(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	conn := db.Conn(t)
	db.Exec(t, `create schema billing`)
	if err := inbox.Migrate(ctx, conn, "billing.Processed"); err != nil {
		t.Fatal(err)
	}
	in := inbox.Inbox{Table: "billing.Processed"}
	for i, want := range []bool{true, false} {
		got, err := in.Process(ctx, conn, "e", func(pgx.Tx) error { return nil })
		if err != nil || got != want {
			t.Fatalf("delivery %d: %v, %v", i, got, err)
		}
	}
}
