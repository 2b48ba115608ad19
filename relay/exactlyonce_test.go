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
	if err := d.committed(ctx, 0x180); err != nil || len(pub.commits) != 0 {
		t.Fatalf("commit before the linger: %v, %d commits", err, len(pub.commits))
	}
	d.linger = 0
	d.begin(0x200)
	d.nextRow()
	d.published(10)
	if err := d.committed(ctx, 0x280); err != nil {
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
	if err := d.committed(ctx, 0x380); err != nil || len(pub.commits) != 1 {
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
	if err := d.lingered(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if len(pub.commits) != 1 || pub.commits[0].PartialRows != 2 || pub.commits[0].PartialCommitLSN != pglogrepl.LSN(0x100) {
		t.Fatalf("commits %+v: want one with 2 rows of the transaction at 0/100", pub.commits)
	}
}
