package relay

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/slot"
)

// testPruner prunes db's outbox table of rows older than an hour, as far
// as *confirmed allows.
func testPruner(t *testing.T, db *pgtest.DB, confirmed *atomic.Uint64) (*pruner, *logRecorder, *atomic.Int64) {
	t.Helper()
	logs := newLogRecorder()
	var pruned atomic.Int64
	p := &pruner{
		connString: db.URL, table: pgx.Identifier{"public", "outbox"}, idColumn: "id", ageColumn: "created_at",
		after: time.Hour, interval: time.Hour, log: slog.New(logs),
		confirmed: func() pglogrepl.LSN { return pglogrepl.LSN(confirmed.Load()) },
		pruned: func(n int) {
			if n > pruneBatch {
				t.Errorf("one statement deleted %d rows, more than %d", n, pruneBatch)
			}
			pruned.Add(int64(n))
		},
	}
	t.Cleanup(func() {
		if p.conn != nil {
			p.conn.Close(context.Background())
		}
	})
	return p, logs, &pruned
}

func insertOld(t *testing.T, db *pgtest.DB, n int) {
	t.Helper()
	db.Exec(t, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
		SELECT 'order', 'old', 'Placed', '{}', now() - interval '2 hours' FROM generate_series(1, $1::int)`, n)
}

func outboxRows(t *testing.T, db *pgtest.DB) (old, recent int) {
	t.Helper()
	err := db.Conn(t).QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE aggregate_id = 'old'), count(*) FILTER (WHERE aggregate_id <> 'old') FROM outbox`).Scan(&old, &recent)
	if err != nil {
		t.Fatal(err)
	}
	return old, recent
}

// Old rows are deleted only once the confirmed position reaches the WAL
// position read with their snapshot; rows committed after it wait for a
// later round, and recent rows stay.
func TestPrunerDeletesOnlyRowsTheConfirmedPositionCovers(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	insertOld(t, db, 3)
	insertEvent(t, db, "recent")
	var confirmed atomic.Uint64
	p, logs, pruned := testPruner(t, db, &confirmed)

	if err := p.round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if old, _ := outboxRows(t, db); old != 3 || len(p.pending) != 3 || p.lsn == 0 {
		t.Fatalf("nothing confirmed: %d old rows left, %d pending at %s", old, len(p.pending), p.lsn)
	}
	logs.waitFor(t, "pruning: old rows wait for the relay to confirm their transactions")
	insertOld(t, db, 1) // after the snapshot

	confirmed.Store(uint64(p.lsn - 1))
	if err := p.round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if old, _ := outboxRows(t, db); old != 4 {
		t.Fatalf("confirmed short of the snapshot's position: %d old rows left, want 4", old)
	}

	confirmed.Store(uint64(p.lsn))
	if err := p.round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if old, recent := outboxRows(t, db); old != 1 || recent != 1 || pruned.Load() != 3 {
		t.Fatalf("confirmed at the snapshot's position: %d old and %d recent rows left, %d pruned; want 1, 1, 3", old, recent, pruned.Load())
	}
	if rec := logs.waitFor(t, "pruned outbox rows"); attr(rec, "rows").Int64() != 3 {
		t.Fatalf("logged %v rows pruned, want 3", attr(rec, "rows"))
	}

	// The late row is collected with a newer position.
	if err := p.round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if old, _ := outboxRows(t, db); old != 1 || len(p.pending) != 1 {
		t.Fatalf("the late row: %d old rows left, %d pending, want it pending", old, len(p.pending))
	}
	confirmed.Store(uint64(p.lsn))
	if err := p.round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if old, recent := outboxRows(t, db); old != 0 || recent != 1 {
		t.Fatalf("%d old and %d recent rows left, want 0 and 1", old, recent)
	}
}

// A backlog larger than one snapshot's collection is deleted in one round,
// pruneBatch rows per statement.
func TestPrunerDrainsABacklogInOneRound(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	insertOld(t, db, pruneScan+5)
	var confirmed atomic.Uint64
	confirmed.Store(uint64(walPosition(t, db)) + 1<<30) // everything written is confirmed
	p, _, pruned := testPruner(t, db, &confirmed)
	if err := p.round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if old, _ := outboxRows(t, db); old != 0 || pruned.Load() != pruneScan+5 {
		t.Fatalf("%d old rows left, %d pruned, want all %d in one round", old, pruned.Load(), pruneScan+5)
	}
}

// A failed round is logged and retried; pruning never stops the relay.
func TestPrunerRetriesAfterAFailure(t *testing.T) {
	db := pgtest.New(t) // no outbox table
	var confirmed atomic.Uint64
	p, logs, _ := testPruner(t, db, &confirmed)
	p.interval = 5 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		p.run(ctx)
	}()
	eventually(t, "two failed rounds logged", func() bool { return len(logs.find("pruning the outbox table")) >= 2 })
	cancel()
	waitClosed(t, finished, "the pruner")
}

// --prune-after checks, before a session, what it needs, and says what to
// do when it is missing.
func TestCheckPruneSaysWhatIsMissing(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	conn := db.Conn(t)
	cfg := testConfig(db.URL)
	cfg.PruneAfter = time.Hour
	if err := checkPrune(t.Context(), conn, cfg); err != nil {
		t.Fatalf("the default table: %v", err)
	}
	for _, tc := range []struct {
		createdAt string
		want      string
	}{
		{"", `--prune-after needs the age of each row, but no created_at column is mapped for "public"."outbox"`},
		{"made_at", `--prune-after: table "public"."outbox" has no column made_at`},
	} {
		cfg := cfg
		cfg.Decoder.Columns = decoder.DefaultColumns()
		cfg.Decoder.Columns.CreatedAt = tc.createdAt
		err := checkPrune(t.Context(), conn, cfg)
		var problem *slot.Problem
		if !errors.As(err, &problem) || problem.What != tc.want {
			t.Fatalf("created_at %q: %v, want the problem %q", tc.createdAt, err, tc.want)
		}
	}

	role := "no_delete_" + strings.ToLower(db.Name)
	role = role[:min(len(role), 63)]
	if _, err := conn.Exec(t.Context(), "CREATE ROLE "+pgx.Identifier{role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Exec(context.Background(), "RESET ROLE")
		conn.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{role}.Sanitize())
	})
	if _, err := conn.Exec(t.Context(), "SET ROLE "+pgx.Identifier{role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	err := checkPrune(t.Context(), conn, cfg)
	var problem *slot.Problem
	if !errors.As(err, &problem) || !strings.Contains(problem.What, "may not delete from") || !strings.HasPrefix(problem.Fix, "GRANT DELETE ON") {
		t.Fatalf("a role without DELETE: %v", err)
	}
}
