package libtest_test

import (
	"database/sql"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// The same through database/sql with pgx's driver.
func TestWriteWithDatabaseSQL(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, outboxDDL)
	sdb, err := sql.Open("pgx", db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	tx, err := sdb.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := outbox.Write(ctx, outbox.SQL(tx), placed, outbox.Event{ID: "3f2a0c7e-1111-4111-8111-111111111111", AggregateType: "order", AggregateID: "42", EventType: "OrderPaid", Payload: []byte(`"paid"`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got := rows(t, db.Conn(t))
	if len(got) != 2 || got[0].id != ids[0] || got[1].id != "3f2a0c7e-1111-4111-8111-111111111111" || got[1].payload != `"paid"` || got[1].headers != "{}" {
		t.Fatalf("rows %+v, ids %v", got, ids)
	}
}
