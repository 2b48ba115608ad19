package relay

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/replication"
)

// runningPipeline is p.run on a goroutine, with the channels the session
// would give it.
type runningPipeline struct {
	msgs       chan []replication.Message
	readerDone chan struct{}
	expired    chan struct{}
	stop       context.CancelFunc
	finished   chan struct{}
	err        error
}

func runPipeline(t *testing.T, p *pipeline) *runningPipeline {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rp := &runningPipeline{msgs: make(chan []replication.Message, 16), readerDone: make(chan struct{}),
		expired: make(chan struct{}), stop: cancel, finished: make(chan struct{})}
	go func() {
		defer close(rp.finished)
		rp.err = p.run(ctx, rp.msgs, rp.readerDone, rp.expired)
	}()
	t.Cleanup(func() {
		cancel()
		p.fail(errors.New("test over"))
		<-rp.finished
	})
	rp.msgs <- []replication.Message{{WALStart: 1, Data: pgRelation()}}
	return rp
}

func (rp *runningPipeline) result(t *testing.T) error {
	t.Helper()
	select {
	case <-rp.finished:
		return rp.err
	case <-time.After(10 * time.Second):
		t.Fatal("the pipeline did not return")
		return nil
	}
}

// A stop inside a transaction publishes the rest of it and returns at its
// commit; the next transaction, in the same batch, is left for the next
// start.
func TestGracefulStopFinishesTheOpenTransaction(t *testing.T) {
	pub := newFakePublisher(true)
	p := newTestPipeline(t, pub)
	rp := runPipeline(t, p)
	var w wal
	m1, end1 := w.txn(pgInsert("e1", "a1", `{}`, `{}`), pgInsert("e2", "a1", `{}`, `{}`))
	m2, _ := w.txn(pgInsert("e3", "a1", `{}`, `{}`))
	rp.msgs <- m1[:2] // begin, e1
	pub.waitN(t, 1)
	rp.stop()
	rp.msgs <- append(m1[2:], m2...) // e2, commit; then e3's transaction
	if err := rp.result(t); err != nil {
		t.Fatalf("run after a stop = %v", err)
	}
	if evs := pub.all(); len(evs) != 2 || evs[1].ev.ID != "e2" {
		t.Fatalf("published %d events, want e1 and e2 and not e3", len(evs))
	}
	if got := p.tracker.Safe(); got != end1 {
		t.Fatalf("safe position %s, want the stopped transaction's end %s", got, end1)
	}
	if n := p.unconfirmed.after(end1); n != 0 {
		t.Fatalf("%d events unconfirmed after %s", n, end1)
	}
}

// A stop between transactions returns at once.
func TestGracefulStopBetweenTransactionsReturnsAtOnce(t *testing.T) {
	p := newTestPipeline(t, newFakePublisher(true))
	rp := runPipeline(t, p)
	rp.stop()
	if err := rp.result(t); err != nil {
		t.Fatalf("run after a stop = %v", err)
	}
}

// The reader's end ends the pipeline, marked as the reader's failure.
func TestReaderEndEndsThePipeline(t *testing.T) {
	p := newTestPipeline(t, newFakePublisher(true))
	rp := runPipeline(t, p)
	close(rp.readerDone)
	if err := rp.result(t); err == nil || err.Error() != "replication stream ended" || !p.readerFailed {
		t.Fatalf("run = %v, readerFailed %v", err, p.readerFailed)
	}
}

// A keepalive moves the safe position to the server's WAL end only when
// nothing is in flight.
func TestKeepaliveMovesTheSafePositionOnlyWithNothingInFlight(t *testing.T) {
	pub := newFakePublisher(false)
	p := newTestPipeline(t, pub)
	rp := runPipeline(t, p)
	var w wal
	m1, end1 := w.txn(pgInsert("e1", "a1", `{}`, `{}`))
	m2, end2 := w.txn(pgInsert("e2", "a1", `{}`, `{}`))
	rp.msgs <- append(m1, replication.Message{ServerWALEnd: end1 + 0x1000})
	rp.msgs <- m2
	evs := pub.waitN(t, 2) // so the keepalive, before e2, was handled
	if got := p.tracker.Safe(); got >= end1 {
		t.Fatalf("safe position %s with e1 in flight (its transaction ends at %s)", got, end1)
	}
	evs[0].ack(nil)
	evs[1].ack(nil)
	eventually(t, "both commits safe", func() bool { return p.tracker.Safe() == end2 })
	rp.msgs <- []replication.Message{{ServerWALEnd: end2 + 0x1000}}
	eventually(t, "the keepalive's WAL end safe", func() bool { return p.tracker.Safe() == end2+0x1000 })
}

// While streaming, a progress line with the event rate is logged every
// progress interval.
func TestProgressIsLoggedEveryInterval(t *testing.T) {
	pub := newFakePublisher(true)
	p := newTestPipeline(t, pub)
	logs := newLogRecorder()
	p.log = slog.New(logs)
	p.progressEvery = 5 * time.Millisecond
	p.progress = func() Progress { return Progress{Confirmed: 0x100, InFlight: 0} }
	rp := runPipeline(t, p)
	var w wal
	m, _ := w.txn(pgInsert("e1", "a1", `{}`, `{}`))
	rp.msgs <- m
	pub.waitN(t, 1)
	rec := logs.waitFor(t, "progress")
	for _, key := range []string{"events_per_second", "in_flight", "confirmed", "lag_bytes", "lag"} {
		if attr(rec, key).Kind() == slog.KindAny && attr(rec, key).Any() == nil {
			t.Errorf("progress line without %s", key)
		}
	}
	if got := attr(rec, "confirmed").String(); got != "0/100" {
		t.Errorf("progress confirmed %s, want 0/100", got)
	}
}

// The count of what a stop leaves to be sent again covers the open
// transaction and those ending past the confirmed position, and forgets
// the confirmed ones.
func TestUnconfirmedLogCountsOnlyWhatIsPastConfirmed(t *testing.T) {
	var u unconfirmedLog
	for i, n := range []int{2, 0, 3} {
		for range n {
			u.add()
		}
		u.commit(pglogrepl.LSN(0x100*(i+1)), 0)
	}
	u.add() // the open transaction
	for _, tc := range []struct {
		confirmed pglogrepl.LSN
		want      int
	}{{0, 6}, {0x100, 4}, {0x200, 4}, {0x300, 1}} {
		if got := u.after(tc.confirmed); got != tc.want {
			t.Errorf("after(%s) = %d, want %d", tc.confirmed, got, tc.want)
		}
	}
	u.commit(0x400, 0x300)
	if len(u.txns[u.head:]) != 1 || u.after(0x300) != 1 {
		t.Fatalf("after a commit with 0/300 safe: %d transactions kept, %d events after it", len(u.txns[u.head:]), u.after(0x300))
	}
}
