package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/replication"
)

// ---- pgoutput bytes, as the walsender sends them --------------------------

const outboxOID = 16400

var outboxCols = []string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}

func pgBegin(final pglogrepl.LSN) []byte {
	b := []byte{'B'}
	b = binary.BigEndian.AppendUint64(b, uint64(final))
	b = binary.BigEndian.AppendUint64(b, 0)
	return binary.BigEndian.AppendUint32(b, 7)
}

func pgCommit(end pglogrepl.LSN) []byte {
	b := []byte{'C', 0}
	b = binary.BigEndian.AppendUint64(b, uint64(end-8))
	b = binary.BigEndian.AppendUint64(b, uint64(end))
	return binary.BigEndian.AppendUint64(b, 0)
}

func pgRelation() []byte {
	b := []byte{'R'}
	b = binary.BigEndian.AppendUint32(b, outboxOID)
	b = append(b, "public\x00outbox\x00"...)
	b = append(b, 'd')
	b = binary.BigEndian.AppendUint16(b, uint16(len(outboxCols)))
	types := []uint32{2950, 25, 25, 25, 3802, 3802, 1184}
	for i, c := range outboxCols {
		b = append(b, 0)
		b = append(b, c...)
		b = append(b, 0)
		b = binary.BigEndian.AppendUint32(b, types[i])
		b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
	}
	return b
}

// pgInsert is an outbox row; headers is the headers column's JSON text.
func pgInsert(id, agg, payload, headers string) []byte {
	b := []byte{'I'}
	b = binary.BigEndian.AppendUint32(b, outboxOID)
	b = append(b, 'N')
	vals := []string{id, "order", agg, "Placed", payload, headers, "2026-11-30 12:00:00+00"}
	b = binary.BigEndian.AppendUint16(b, uint16(len(vals)))
	for _, v := range vals {
		b = append(b, 't')
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}

// wal hands out increasing positions for the messages of a test stream.
type wal struct{ lsn pglogrepl.LSN }

func (w *wal) msg(data []byte) replication.Message {
	w.lsn += 0x100
	return replication.Message{WALStart: w.lsn, Data: data}
}

// txn is one transaction: Begin, the given inserts, Commit; it returns
// the messages and the commit's end LSN.
func (w *wal) txn(inserts ...[]byte) ([]replication.Message, pglogrepl.LSN) {
	msgs := []replication.Message{w.msg(pgBegin(w.lsn + pglogrepl.LSN(0x100*(len(inserts)+2))))}
	for _, ins := range inserts {
		msgs = append(msgs, w.msg(ins))
	}
	end := w.lsn + 0x200
	msgs = append(msgs, w.msg(pgCommit(end)))
	return msgs, end
}

// ---- a publisher the test drives ------------------------------------------

type published struct {
	ev  decoder.Event
	ack func(error)
}

// fakePublisher records what is published; acks are the test's to call
// unless autoAck. reject, if set, makes Publish refuse an event at once.
type fakePublisher struct {
	mu      sync.Mutex
	events  []published
	autoAck bool
	reject  func(ev *decoder.Event) error
	block   chan struct{} // if set, Publish blocks until closed or ctx ends
	signal  chan struct{}
}

func newFakePublisher(autoAck bool) *fakePublisher {
	return &fakePublisher{autoAck: autoAck, signal: make(chan struct{}, 1<<16)}
}

func (f *fakePublisher) Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error {
	if f.block != nil {
		f.signal <- struct{}{} // the test may wait for Publish to be entered
		select {
		case <-f.block:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	if f.reject != nil {
		if err := f.reject(ev); err != nil {
			return err
		}
	}
	cp := *ev
	cp.Payload = append([]byte(nil), ev.Payload...)
	cp.Headers = append([]decoder.Header(nil), ev.Headers...)
	f.mu.Lock()
	f.events = append(f.events, published{ev: cp, ack: ack})
	f.mu.Unlock()
	f.signal <- struct{}{}
	if f.autoAck {
		ack(nil)
	}
	return nil
}

func (f *fakePublisher) Close() error { return nil }

func (f *fakePublisher) all() []published {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]published(nil), f.events...)
}

// waitN waits until n events were published.
func (f *fakePublisher) waitN(t *testing.T, n int) []published {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		if evs := f.all(); len(evs) >= n {
			return evs
		}
		select {
		case <-f.signal:
		case <-deadline:
			t.Fatalf("%d events published, want %d", len(f.all()), n)
		}
	}
}

// rejected is a publisher error about the record itself.
type rejected struct{ msg string }

func (e rejected) Error() string        { return e.msg }
func (e rejected) RecordRejected() bool { return true }

// ---- the pipeline under test ------------------------------------------------

type testPipeline struct {
	*pipeline
	msgs    chan []replication.Message
	readerC chan struct{}
	expired chan struct{}
	cancel  context.CancelFunc
	done    chan error
	bg      sync.WaitGroup
}

// startPipeline runs a pipeline over pub until the test ends. With
// deadLetter set, poison goes to the topic "dlq"; otherwise it stops.
func startPipeline(t *testing.T, pub Publisher, deadLetter bool, budget int64) *testPipeline {
	t.Helper()
	dec, err := decoder.New(decoder.Config{Table: "public.outbox"})
	if err != nil {
		t.Fatal(err)
	}
	tracker := checkpoint.New(1)
	p := &pipeline{
		log: slog.New(slog.DiscardHandler), slot: "s", dec: dec, pub: pub, tracker: tracker,
		obs: nopObserver{}, commits: &commitLog{}, budget: newByteBudget(budget),
	}
	p.newPubCtx()
	tp := &testPipeline{pipeline: p, msgs: make(chan []replication.Message, 16), readerC: make(chan struct{}),
		expired: make(chan struct{}), done: make(chan error, 1)}
	if deadLetter {
		p.deadLetters = &deadLetters{pub: pub, topic: "dlq", limit: 64 << 10, slot: "s", tracker: tracker, obs: nopObserver{},
			log: p.log, release: p.budget.release, sent: &deadLettered{}, signal: make(chan struct{}, 1)}
		bgCtx, stop := context.WithCancel(context.Background())
		tp.bg.Add(1)
		go func() {
			defer tp.bg.Done()
			p.deadLetters.run(bgCtx, p.fail)
		}()
		t.Cleanup(func() { stop(); tp.bg.Wait() })
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp.cancel = cancel
	go func() { tp.done <- p.run(ctx, tp.msgs, tp.readerC, tp.expired) }()
	t.Cleanup(func() {
		cancel()
		p.fail(errors.New("test over")) // what the stop's deadline does
		close(tp.readerC)
		<-tp.done
	})
	tp.msgs <- []replication.Message{{WALStart: 1, Data: pgRelation()}}
	return tp
}

func (tp *testPipeline) waitSafe(t *testing.T, want pglogrepl.LSN) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for tp.tracker.Safe() < want {
		if time.Now().After(deadline) {
			t.Fatalf("safe position %s, want %s", tp.tracker.Safe(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func (tp *testPipeline) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-tp.done:
		tp.done <- err // for the cleanup
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("the pipeline did not return")
		return nil
	}
}

// ---- the behaviour ---------------------------------------------------------

// A row whose headers are a JSON array is poison: its dead letter carries
// the id, the error, the original topic and the raw row, the slot moves
// past it, and the events after it flow.
func TestPoisonRowIsDeadLetteredAndTheStreamGoesOn(t *testing.T) {
	pub := newFakePublisher(true)
	tp := startPipeline(t, pub, true, 1<<20)
	var w wal
	m1, _ := w.txn(pgInsert("e1", "a1", `{"n":1}`, `{}`), pgInsert("bad", "a1", `{"n":2}`, `["not","an","object"]`))
	m2, end := w.txn(pgInsert("e3", "a1", `{"n":3}`, `{}`))
	tp.msgs <- m1
	tp.msgs <- m2
	evs := pub.waitN(t, 3)
	tp.waitSafe(t, end)
	if evs[0].ev.ID != "e1" || evs[2].ev.ID != "e3" {
		t.Fatalf("published %s, %s, %s; want e1, the dead letter, e3", evs[0].ev.ID, evs[1].ev.ID, evs[2].ev.ID)
	}
	dl := evs[1].ev
	hdr := map[string]string{}
	for _, h := range dl.Headers {
		hdr[h.Key] = string(h.Value)
	}
	if dl.Topic != "dlq" || dl.ID != "bad" || dl.AggregateID != "a1" || hdr[HeaderOriginalTopic] != "outbox.order" ||
		!strings.Contains(hdr[HeaderDeadLetterError], "headers") || hdr[HeaderLSN] == "" {
		t.Fatalf("dead letter %+v headers %v", dl, hdr)
	}
	if !strings.Contains(string(dl.Payload), `"not","an","object"`) && !strings.Contains(string(dl.Payload), `not`) {
		t.Fatalf("dead letter payload %q does not carry the raw row", dl.Payload)
	}
}

// With --on-error stop, a poison row stops the relay with a message that
// names the event, its position and the command that skips it; nothing
// from its transaction on is confirmed.
func TestPoisonRowStopsWithTheSkipCommand(t *testing.T) {
	pub := newFakePublisher(true)
	tp := startPipeline(t, pub, false, 1<<20)
	var w wal
	m1, end1 := w.txn(pgInsert("e1", "a1", `{}`, `{}`))
	m2, _ := w.txn(pgInsert("bad", "a1", `{}`, `42`))
	tp.msgs <- m1
	tp.msgs <- m2
	err := tp.result(t)
	var pe *PoisonError
	if !errors.As(err, &pe) || !errors.As(err, new(fatalError)) {
		t.Fatalf("run = %v, want a fatal PoisonError", err)
	}
	msg := err.Error()
	for _, want := range []string{"event bad", "outbox-relay slot skip --slot s --event bad --lsn " + pe.LSN.String(), "headers"} {
		if !strings.Contains(msg, want) {
			t.Errorf("stop message %q lacks %q", msg, want)
		}
	}
	if got := tp.tracker.Safe(); got != end1 {
		t.Fatalf("safe position %s, want %s (the end of the transaction before the poison row)", got, end1)
	}
}

// A record the publisher refuses for its size is dead-lettered cut down
// to fit; a dead letter refused again is sent minimal; one refused even
// then stops the relay: never a loop.
func TestRejectedRecordDeadLetterIsCutDownAndNeverLoops(t *testing.T) {
	huge := `{"blob":"` + strings.Repeat("x", 200<<10) + `"}`
	bigHeader := `{"h":"` + strings.Repeat("y", 100<<10) + `"}`
	for _, tc := range []struct {
		name       string
		refuseDLQ  func(ev *decoder.Event) bool
		wantStop   bool
		maxPayload int
	}{
		{name: "cut", refuseDLQ: func(*decoder.Event) bool { return false }, maxPayload: 64 << 10},
		{name: "minimal", refuseDLQ: func(ev *decoder.Event) bool { return len(ev.Payload) > 0 }, maxPayload: 0},
		{name: "stop", refuseDLQ: func(*decoder.Event) bool { return true }, wantStop: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := newFakePublisher(true)
			attempts := 0
			pub.reject = func(ev *decoder.Event) error {
				if ev.Topic == "dlq" {
					attempts++
					if attempts > 5 {
						t.Errorf("dead letter attempted %d times: a loop", attempts)
					}
					if tc.refuseDLQ(ev) {
						return rejected{"dead letter refused"}
					}
					return nil
				}
				if len(ev.Payload) > 100<<10 {
					return rejected{"record too large"}
				}
				return nil
			}
			tp := startPipeline(t, pub, true, 1<<20)
			var w wal
			m1, _ := w.txn(pgInsert("big", "a1", huge, bigHeader))
			m2, end := w.txn(pgInsert("after", "a1", `{}`, `{}`))
			tp.msgs <- m1
			tp.msgs <- m2
			if tc.wantStop {
				err := tp.result(t)
				var pe *PoisonError
				if !errors.As(err, &pe) || pe.EventID != "big" {
					t.Fatalf("run = %v, want a PoisonError for event big", err)
				}
				if len(pub.all()) != 0 {
					t.Fatalf("%d records published after an event that could not even be dead-lettered", len(pub.all()))
				}
				return
			}
			evs := pub.waitN(t, 2)
			tp.waitSafe(t, end)
			dl := evs[0].ev
			if dl.Topic != "dlq" || dl.ID != "big" || evs[1].ev.ID != "after" {
				t.Fatalf("published %s to %s, then %s", dl.ID, dl.Topic, evs[1].ev.ID)
			}
			if len(dl.Payload) > tc.maxPayload || estimateSize(&dl) > 64<<10 {
				t.Fatalf("dead letter of %d bytes (payload %d), limit 64 KiB", estimateSize(&dl), len(dl.Payload))
			}
			var truncated bool
			for _, h := range dl.Headers {
				truncated = truncated || h.Key == HeaderTruncated
				if h.Key == "h" {
					t.Fatal("the 100 KiB header was kept in a cut-down dead letter")
				}
			}
			if !truncated {
				t.Fatalf("cut-down dead letter without %s", HeaderTruncated)
			}
		})
	}
}

// A stop while Publish is blocked (a broker that answers nothing) ends the
// pipeline when the stop's deadline passes, not hours later.
func TestStopEndsABlockedPublishAtTheDeadline(t *testing.T) {
	pub := newFakePublisher(true)
	pub.block = make(chan struct{})
	tp := startPipeline(t, pub, false, 1<<20)
	var w wal
	m, _ := w.txn(pgInsert("e1", "a1", `{}`, `{}`), pgInsert("e2", "a1", `{}`, `{}`))
	tp.msgs <- m
	select {
	case <-pub.signal: // inside the transaction, in Publish
	case <-time.After(5 * time.Second):
		t.Fatal("Publish not reached")
	}
	tp.cancel()
	select {
	case err := <-tp.done:
		t.Fatalf("the pipeline returned %v before the deadline, inside a transaction", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(tp.expired)
	if err := tp.result(t); !errors.Is(err, errShutdownTimeout) {
		t.Fatalf("run = %v, want %v", err, errShutdownTimeout)
	}
	if n := tp.unconfirmed.after(tp.tracker.Safe()); n == 0 {
		t.Fatal("no unconfirmed events counted after a stop inside a transaction")
	}
}

// The byte budget holds back an event that does not fit until an ack
// frees room; an event larger than the whole budget goes alone.
func TestByteBudgetBoundsTheBytesInFlight(t *testing.T) {
	pub := newFakePublisher(false)
	tp := startPipeline(t, pub, false, 300<<10)
	payload := `"` + strings.Repeat("p", 100<<10) + `"`
	var w wal
	var inserts [][]byte
	for i := range 5 {
		inserts = append(inserts, pgInsert(fmt.Sprintf("e%d", i), "a1", payload, `{}`))
	}
	m, _ := w.txn(inserts...)
	tp.msgs <- m
	pub.waitN(t, 2)
	time.Sleep(50 * time.Millisecond) // give a third a chance to slip through
	if n := len(pub.all()); n != 2 {
		t.Fatalf("%d events of ~100 KiB in flight with a 300 KiB budget, want 2", n)
	}
	if used := tp.budget.inUse(); used > 300<<10 {
		t.Fatalf("%d bytes in flight, budget 300 KiB", used)
	}
	pub.all()[0].ack(nil)
	pub.waitN(t, 3)

	// One event over the whole budget is admitted when nothing is in flight.
	b := newByteBudget(10)
	if err := b.acquire(t.Context(), 100); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := b.acquire(ctx, 1); err == nil {
		t.Fatal("a second event admitted beside one over the budget")
	}
}

// An event `slot skip` recorded is not published, and the stream goes on.
func TestSkippedEventIsNotPublished(t *testing.T) {
	pub := newFakePublisher(true)
	tp := startPipeline(t, pub, false, 1<<20)
	tp.skips = &skipList{ids: map[string]bool{"bad": true}}
	var w wal
	m, end := w.txn(pgInsert("e1", "a1", `{}`, `{}`), pgInsert("bad", "a1", `{}`, `[1]`), pgInsert("e3", "a1", `{}`, `{}`))
	tp.msgs <- m
	evs := pub.waitN(t, 2)
	tp.waitSafe(t, end)
	if evs[0].ev.ID != "e1" || evs[1].ev.ID != "e3" || len(pub.all()) != 2 {
		t.Fatalf("published %v", pub.all())
	}
}

// A publisher that acknowledges one event twice is a bug that would
// confirm another event: it panics instead.
func TestSecondAckOfAnEventPanics(t *testing.T) {
	pub := newFakePublisher(false)
	tp := startPipeline(t, pub, false, 1<<20)
	var w wal
	m, _ := w.txn(pgInsert("e1", "a1", `{}`, `{}`), pgInsert("e2", "a1", `{}`, `{}`))
	tp.msgs <- m
	evs := pub.waitN(t, 2)
	evs[0].ack(nil)
	defer func() {
		if recover() == nil {
			t.Fatal("a second ack did not panic")
		}
	}()
	evs[0].ack(nil)
}

// A publish that fails for good ends the session naming the event and, in
// the sink's own words, where it went (a NATS subject, a RabbitMQ
// exchange), not the Kafka-style topic the sink may not use.
func TestFailedPublishNamesTheSinksDestinationNotTheTopic(t *testing.T) {
	pub := newFakePublisher(false)
	tp := startPipeline(t, pub, false, 1<<20)
	var w wal
	m, _ := w.txn(pgInsert("e1", "a1", `{"n":1}`, `{}`))
	tp.msgs <- m
	evs := pub.waitN(t, 1)
	evs[0].ack(errors.New("publishing to NATS subject orders.a1 after 3 attempts: nats: no response from stream"))
	err := tp.result(t)
	if err == nil || !strings.Contains(err.Error(), "e1") || !strings.Contains(err.Error(), "NATS subject orders.a1") ||
		strings.Contains(err.Error(), evs[0].ev.Topic) {
		t.Fatalf("session error %v: want the event id and the subject, not the topic %s", err, evs[0].ev.Topic)
	}
}
