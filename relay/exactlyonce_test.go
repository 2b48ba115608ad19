package relay

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/replication"
	"github.com/outbox-relay/outbox-relay/slot"
)

// txnRecorder is a TransactionalPublisher that records the checkpoints of
// its commits.
type txnRecorder struct{ commits []checkpoint.Position }

func (c *txnRecorder) Publish(context.Context, *decoder.Event, func(error)) error { return nil }
func (c *txnRecorder) Close() error                                               { return nil }
func (c *txnRecorder) ReadCheckpoint(context.Context) ([]byte, error)             { return nil, nil }
func (c *txnRecorder) Commit(_ context.Context, cp []byte) error {
	p, err := checkpoint.ParsePosition(cp)
	if err != nil {
		return err
	}
	c.commits = append(c.commits, p)
	return nil
}

func newTestDriver(pub TransactionalPublisher, maxEvents int, linger time.Duration, resume checkpoint.Position) *txnDriver {
	cfg := Config{Slot: slot.Config{Slot: "s"}, TxnMaxEvents: maxEvents, TxnMaxBytes: 1 << 20, TxnLinger: linger}
	return newTxnDriver(pub, cfg, slog.New(slog.DiscardHandler), nopObserver{}, resume, replication.System{SystemID: "42", Timeline: 1})
}

// A Kafka transaction ends at a PostgreSQL commit only once it is as old as
// the linger; its checkpoint is the newest whole transaction's end.
func TestTxnDriverCommitsAtAPostgresCommitAfterTheLinger(t *testing.T) {
	ctx := t.Context()
	pub := &txnRecorder{}
	d := newTestDriver(pub, 100, time.Hour, checkpoint.Position{})
	d.begin(0x100)
	d.nextRow()
	d.published(10)
	if err := d.committed(ctx, 0x180, false); err != nil || len(pub.commits) != 0 {
		t.Fatalf("commit before the linger: %v, %d commits", err, len(pub.commits))
	}
	d.linger = 0
	d.begin(0x200)
	d.nextRow()
	d.published(10)
	if err := d.committed(ctx, 0x280, false); err != nil {
		t.Fatal(err)
	}
	if len(pub.commits) != 1 {
		t.Fatalf("%d commits, want 1", len(pub.commits))
	}
	got := pub.commits[0]
	if got.EndLSN != 0x280 || got.PartialRows != 0 || got.SystemID != "42" || got.Slot != "s" {
		t.Fatalf("checkpoint %+v: want end 0/280, no partial rows, the database's identity", got)
	}
	// Nothing open: a commit of an empty transaction commits nothing.
	d.begin(0x300)
	if err := d.committed(ctx, 0x380, false); err != nil || len(pub.commits) != 1 {
		t.Fatalf("an empty transaction was committed: %v, %d commits", err, len(pub.commits))
	}
}

// At the event bound a Kafka transaction ends inside a PostgreSQL one, and
// its checkpoint counts the rows of it published; a relay resuming from
// that checkpoint skips exactly those rows.
func TestTxnDriverSplitsALargeTransactionAndResumesInsideIt(t *testing.T) {
	ctx := t.Context()
	pub := &txnRecorder{}
	d := newTestDriver(pub, 3, time.Hour, checkpoint.Position{EndLSN: 0x50})
	d.begin(0x1000)
	for row := range 7 {
		if d.nextRow() {
			t.Fatalf("row %d skipped with nothing published", row)
		}
		if err := d.makeRoom(ctx, 10); err != nil {
			t.Fatal(err)
		}
		d.published(10)
	}
	if len(pub.commits) != 2 {
		t.Fatalf("%d commits of 7 rows at 3 a transaction before the PostgreSQL commit, want 2", len(pub.commits))
	}
	for i, want := range []int64{3, 6} {
		c := pub.commits[i]
		if c.PartialCommitLSN != 0x1000 || c.PartialRows != want || c.EndLSN != 0x50 {
			t.Fatalf("commit %d: %+v, want %d rows of the transaction at 0/1000 and the end LSN carried", i, c, want)
		}
	}
	resumed := newTestDriver(&txnRecorder{}, 3, time.Hour, pub.commits[1])
	resumed.begin(0x1000)
	for row := range 7 {
		if skipped := resumed.nextRow(); skipped != (row < 6) {
			t.Fatalf("resumed: row %d skipped = %v", row, skipped)
		}
	}
	resumed.begin(0x2000)
	if resumed.nextRow() {
		t.Fatal("resumed: a later transaction's row skipped")
	}
}

// When the stream goes quiet, the linger timer ends the open Kafka
// transaction, inside a PostgreSQL one counting the rows seen.
func TestTxnDriverLingerCommitsWhenTheStreamIsQuiet(t *testing.T) {
	pub := &txnRecorder{}
	d := newTestDriver(pub, 100, 5*time.Millisecond, checkpoint.Position{})
	d.begin(0x100)
	d.nextRow()
	d.published(1)
	d.nextRow()
	d.published(1)
	select {
	case <-d.expired():
	case <-time.After(10 * time.Second):
		t.Fatal("the linger timer did not fire")
	}
	if err := d.lingered(t.Context(), true, false); err != nil {
		t.Fatal(err)
	}
	if len(pub.commits) != 1 || pub.commits[0].PartialRows != 2 || pub.commits[0].PartialCommitLSN != pglogrepl.LSN(0x100) {
		t.Fatalf("commits %+v: want one with 2 rows of the transaction at 0/100", pub.commits)
	}
}

// While more WAL waits behind it, a Kafka transaction past its linger goes
// on filling, at PostgreSQL commits and when the linger timer fires, until
// it is backlogHold old or the wait ends: behind a backlog, commits (each a
// broker round trip or several, with the pipeline waiting) would otherwise
// come every linger and the relay would fall further behind.
func TestTxnDriverKeepsFillingWhileWALWaits(t *testing.T) {
	ctx := t.Context()
	pub := &txnRecorder{}
	d := newTestDriver(pub, 1000, time.Millisecond, checkpoint.Position{})
	d.begin(0x100)
	d.nextRow()
	d.published(10)
	d.began = time.Now().Add(-10 * time.Millisecond) // past the linger
	if err := d.committed(ctx, 0x180, true); err != nil || len(pub.commits) != 0 {
		t.Fatalf("committed with more WAL waiting, younger than %s: %v, %d commits", backlogHold, err, len(pub.commits))
	}
	d.begin(0x200)
	d.nextRow()
	d.published(10)
	if err := d.lingered(ctx, true, true); err != nil || len(pub.commits) != 0 {
		t.Fatalf("the linger timer committed with more WAL waiting: %v, %d commits", err, len(pub.commits))
	}
	if err := d.committed(ctx, 0x280, false); err != nil || len(pub.commits) != 1 || pub.commits[0].EndLSN != 0x280 {
		t.Fatalf("nothing more waiting: %v, commits %+v, want one ending at 0/280", err, pub.commits)
	}
	// Held back by a backlog, a transaction still ends at backlogHold.
	d.begin(0x300)
	d.nextRow()
	d.published(10)
	d.began = time.Now().Add(-backlogHold)
	if err := d.committed(ctx, 0x380, true); err != nil || len(pub.commits) != 2 || pub.commits[1].EndLSN != 0x380 {
		t.Fatalf("a transaction %s old with more WAL waiting: %v, commits %+v, want a second ending at 0/380", backlogHold, err, pub.commits)
	}
	d.begin(0x400)
	d.nextRow()
	d.published(10)
	d.began = time.Now().Add(-backlogHold)
	if err := d.lingered(ctx, true, true); err != nil || len(pub.commits) != 3 || pub.commits[2].PartialRows != 1 {
		t.Fatalf("the linger timer, %s old with more WAL waiting: %v, commits %+v, want a third with 1 row of 0/400", backlogHold, err, pub.commits)
	}
}

// The pipeline tells the broker transaction whether the reader has queued
// more WAL: with a batch queued, a PostgreSQL commit past the linger does
// not end the broker transaction; with none queued, the next one does.
func TestPipelineHoldsTheBrokerTransactionWhileWALIsQueued(t *testing.T) {
	ctx := t.Context()
	pub := &txnRecorder{}
	p := newTestPipeline(t, pub)
	p.eos, p.poisoned = newTestDriver(pub, 1000, 0, checkpoint.Position{}), &knownPoison{}
	queued := make(chan []replication.Message, 1)
	handle := func(batch []replication.Message) {
		t.Helper()
		if done, err := p.handleBatch(ctx, ctx, batch, queued); done || err != nil {
			t.Fatalf("handleBatch = %v, %v", done, err)
		}
	}
	handle([]replication.Message{{WALStart: 1, Data: pgRelation()}})
	var w wal
	m1, _ := w.txn(pgInsert("e1", "a1", `{}`, `{}`))
	queued <- nil // a batch waits behind this one
	handle(m1)
	if len(pub.commits) != 0 {
		t.Fatalf("%d broker commits with a batch queued behind, want 0", len(pub.commits))
	}
	<-queued
	m2, end2 := w.txn(pgInsert("e2", "a1", `{}`, `{}`))
	handle(m2)
	if len(pub.commits) != 1 || pub.commits[0].EndLSN != end2 {
		t.Fatalf("commits %+v with nothing queued, want one ending at %s (both transactions)", pub.commits, end2)
	}
}
