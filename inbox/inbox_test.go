package inbox_test

// Pure unit tests, without a database. The tests against a real
// PostgreSQL are in libtest/ of the relay's module (libtest/libtest.go says
// why).

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/inbox"
)

// recorder is a Tx that keeps the statements and reports n rows changed.
type recorder struct {
	n    int64
	err  error
	sql  []string
	args [][]any
}

func (r *recorder) Exec(_ context.Context, sql string, args ...any) (int64, error) {
	r.sql = append(r.sql, sql)
	r.args = append(r.args, args)
	return r.n, r.err
}

func TestRecordInsertsTheIDOnce(t *testing.T) {
	ctx := context.Background()
	r := &recorder{n: 1}
	first, err := inbox.Record(ctx, r, "ev-1")
	if err != nil || !first {
		t.Fatalf("Record: %v, %v; want first", first, err)
	}
	if want := `INSERT INTO "public"."inbox" (event_id) VALUES ($1) ON CONFLICT (event_id) DO NOTHING`; r.sql[0] != want || r.args[0][0] != "ev-1" {
		t.Errorf("sent %q %v, want %q [ev-1]", r.sql[0], r.args[0], want)
	}
	r.n = 0
	if first, err := inbox.Record(ctx, r, "ev-1"); err != nil || first {
		t.Errorf("a repeat: %v, %v; want not first", first, err)
	}
	boom := errors.New("boom")
	r.err = boom
	if _, err := (inbox.Inbox{Table: "billing.Processed"}).Record(ctx, r, "ev-2"); !errors.Is(err, boom) || !strings.Contains(err.Error(), "billing.Processed") {
		t.Errorf("failed insert: %v", err)
	}
	if want := `INSERT INTO "billing"."Processed"`; !strings.HasPrefix(r.sql[2], want) {
		t.Errorf("sent %q, want it to start with %q", r.sql[2], want)
	}
}

func TestBadInputSendsNothing(t *testing.T) {
	ctx := context.Background()
	r := &recorder{n: 1}
	if _, err := inbox.Record(ctx, r, ""); err == nil || !strings.Contains(err.Error(), "event id is empty") {
		t.Errorf("empty id: %v", err)
	}
	if _, err := (inbox.Inbox{Table: "a.b.c"}).Record(ctx, r, "e"); err == nil || !strings.Contains(err.Error(), "want schema.name or name") {
		t.Errorf("bad table: %v", err)
	}
	if _, err := inbox.Process(ctx, nil, "", nil); err == nil {
		t.Error("Process accepted an empty event id")
	}
	if _, err := inbox.ProcessSQL(ctx, nil, "", nil); err == nil {
		t.Error("ProcessSQL accepted an empty event id")
	}
	if err := inbox.Migrate(ctx, nil, ""); err == nil || !strings.Contains(err.Error(), "table name is empty") {
		t.Errorf("Migrate with no table: %v", err)
	}
	if len(r.sql) != 0 {
		t.Errorf("sent %q", r.sql)
	}
}
