package relay

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/replication"
)

// slowCloser is a publisher whose Close returns once release is closed.
type slowCloser struct {
	entered chan struct{} // closed when Close is called
	release chan struct{}
	closed  chan struct{}
}

func newSlowCloser() *slowCloser {
	return &slowCloser{entered: make(chan struct{}), release: make(chan struct{}), closed: make(chan struct{})}
}

func (p *slowCloser) Publish(context.Context, *decoder.Event, func(error)) error { return nil }

func (p *slowCloser) Close() error {
	close(p.entered)
	<-p.release
	close(p.closed)
	return nil
}

// abortableCloser is a slowCloser with Abort, which lets Close return.
type abortableCloser struct {
	*slowCloser
	aborts atomic.Int32
}

func (p *abortableCloser) Abort() {
	if p.aborts.Add(1) == 1 {
		close(p.release)
	}
}

func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s not closed after 10s", what)
	}
}

// A publisher that drains in time is neither aborted nor waited for by
// the next session.
func TestDrainWaitsForAPublisherThatDrainsInTime(t *testing.T) {
	r, logs := newTestRelay(t, testConfig(""), nil)
	pub := &abortableCloser{slowCloser: newSlowCloser()}
	go func() { <-pub.entered; close(pub.release) }() // the broker's last acks, once Close waits for them
	r.drain(pub, time.Now().Add(10*time.Second))
	select {
	case <-pub.closed:
	default:
		t.Fatal("drain returned before the publisher closed")
	}
	if pub.aborts.Load() != 0 || r.prevPublisher != nil || len(logs.find("the publisher did not drain")) != 0 {
		t.Fatalf("aborted %d times, prevPublisher %v: a publisher that drained in time", pub.aborts.Load(), r.prevPublisher)
	}
}

// A publisher that cannot drain by the deadline is aborted.
func TestDrainAbortsAPublisherThatCannotDrainInTime(t *testing.T) {
	r, logs := newTestRelay(t, testConfig(""), nil)
	pub := &abortableCloser{slowCloser: newSlowCloser()}
	r.drain(pub, time.Now())
	if pub.aborts.Load() != 1 {
		t.Fatalf("aborted %d times, want once", pub.aborts.Load())
	}
	logs.waitFor(t, "the publisher did not drain in time; aborting it")
	waitClosed(t, pub.closed, "the aborted publisher")
	if r.prevPublisher != nil {
		waitClosed(t, r.prevPublisher, "prevPublisher")
	}
}

// A publisher without Abort that cannot drain in time is left closing, and
// the next session's publisher connects only once it has closed.
func TestNextPublisherWaitsForThePreviousToClose(t *testing.T) {
	var connected atomic.Bool
	next := newFakePublisher(true)
	r, logs := newTestRelay(t, testConfig(""), func(context.Context) (Publisher, error) {
		connected.Store(true)
		return next, nil
	})
	prev := newSlowCloser()
	r.drain(prev, time.Now())
	logs.waitFor(t, "the publisher did not drain in time; confirming only what was acknowledged")
	if r.prevPublisher == nil {
		t.Fatal("a publisher still closing was not remembered")
	}

	type result struct {
		pub Publisher
		err error
	}
	done := make(chan result, 1)
	go func() {
		pub, err := r.startPublisher(t.Context())
		done <- result{pub, err}
	}()
	logs.waitFor(t, "waiting for the previous session's publisher to close before publishing again")
	if connected.Load() {
		t.Fatal("the next publisher connected while the previous one was still closing")
	}
	close(prev.release)
	select {
	case res := <-done:
		if res.err != nil || res.pub != next || !connected.Load() {
			t.Fatalf("startPublisher = %v, %v", res.pub, res.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("startPublisher still waiting after the previous publisher closed")
	}
	if r.prevPublisher != nil {
		t.Fatal("prevPublisher kept after it closed")
	}
}

// A stop while waiting for the previous publisher connects none.
func TestStartPublisherGivesUpWhenStopped(t *testing.T) {
	var connected atomic.Bool
	r, _ := newTestRelay(t, testConfig(""), func(context.Context) (Publisher, error) {
		connected.Store(true)
		return nil, errors.New("unreachable")
	})
	r.prevPublisher = make(chan struct{}) // never closes
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := r.startPublisher(ctx); !errors.Is(err, context.Canceled) || connected.Load() {
		t.Fatalf("startPublisher = %v (connected %v), want context.Canceled and no publisher", err, connected.Load())
	}
}

type configProblem struct{ error }

func (configProblem) ConfigProblem() bool { return true }

// Credentials a broker rejects end Run; any other connect error is the
// sink's, and the session is retried.
func TestStartPublisherErrorsSayWhetherToRetry(t *testing.T) {
	for _, tc := range []struct {
		err   error
		fatal bool
	}{
		{configProblem{errors.New("SASL authentication failed")}, true},
		{errors.New("dial tcp: connection refused"), false},
	} {
		r, _ := newTestRelay(t, testConfig(""), func(context.Context) (Publisher, error) { return nil, tc.err })
		_, err := r.startPublisher(t.Context())
		if err == nil || !strings.HasPrefix(err.Error(), "connecting the publisher: ") || !errors.Is(err, tc.err) {
			t.Fatalf("startPublisher = %v, want %q wrapped", err, tc.err)
		}
		var fe fatalError
		if got := errors.As(err, &fe); got != tc.fatal {
			t.Errorf("%v: fatal %v, want %v", tc.err, got, tc.fatal)
		}
		if !tc.fatal && causeOf(err) != CauseSink {
			t.Errorf("%v: cause %s, want %s", tc.err, causeOf(err), CauseSink)
		}
	}
}

// The stop's clock runs from the moment ctx ends, and expires a reserve
// before the deadline, for the final status update.
func TestStopClockRunsFromTheStop(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	c := newStopClock(ctx, 200*time.Millisecond)
	defer c.close()
	if d := time.Until(c.deadline()); d < 150*time.Millisecond {
		t.Fatalf("deadline %s away before the stop, want the whole timeout", d)
	}
	select {
	case <-c.expired:
		t.Fatal("expired before the stop")
	default:
	}
	stopped := time.Now()
	cancel()
	waitClosed(t, c.expired, "expired")
	if took := time.Since(stopped); took < 200*time.Millisecond-c.reserve-10*time.Millisecond {
		t.Fatalf("expired %s after the stop, timeout 200ms less a reserve of %s", took, c.reserve)
	}
	d1 := c.deadline()
	if d2 := c.deadline(); !d1.Equal(d2) || d1.Sub(stopped) > 2*time.Second {
		t.Fatalf("deadline %s, then %s: want fixed at the stop plus the timeout", d1, d2)
	}
	if got := c.drainDeadline(); !got.Equal(d1.Add(-c.reserve)) {
		t.Fatalf("drain deadline %s, want %s", got, d1.Add(-c.reserve))
	}
}

// A reader whose read the network never interrupts does not hang a stop.
func TestReaderStopIsBounded(t *testing.T) {
	var cancelled atomic.Bool
	rd := &reader{finished: make(chan struct{}), cancel: func() { cancelled.Store(true) }}
	err := rd.stop(20 * time.Millisecond)
	if err == nil || err.Error() != "the replication reader did not stop within 20ms; the final status update may be missing" || !cancelled.Load() {
		t.Fatalf("stop = %v (cancelled %v)", err, cancelled.Load())
	}
	rd = &reader{finished: make(chan struct{}), cancel: func() {}, err: errors.New("receiving: EOF")}
	close(rd.finished)
	if err := rd.stop(time.Hour); err != rd.err {
		t.Fatalf("stop = %v, want the reader's %v", err, rd.err)
	}
}

// finishedReader is a reader whose Run returned err.
func finishedReader(err error) *reader {
	rd := &reader{msgs: make(chan []replication.Message, 1), finished: make(chan struct{}), cancel: func() {}, err: err}
	close(rd.finished)
	return rd
}

// The reader's error is the session's when nothing else ended it, and is
// only logged when something did or the pipeline reported it already.
func TestStopStreamingKeepsTheFirstCause(t *testing.T) {
	readerErr := errors.New("receiving from slot s: EOF")
	sinkErr := withCause(CauseSink, errors.New("broker down"))
	for _, tc := range []struct {
		name         string
		runErr       error
		readerFailed bool
		want         error
		logged       bool
	}{
		{name: "reader alone", want: readerErr},
		{name: "sink first", runErr: sinkErr, want: sinkErr, logged: true},
		{name: "reported by the pipeline", readerFailed: true, runErr: sinkErr, want: sinkErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, logs := newTestRelay(t, testConfig(""), nil)
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			clock := newStopClock(ctx, time.Second)
			defer clock.close()
			p := &pipeline{readerFailed: tc.readerFailed}
			pub := newSlowCloser()
			close(pub.release)
			err := r.stopStreaming(ctx, pub, finishedReader(readerErr), p, clock, tc.runErr)
			if !errors.Is(err, tc.want) {
				t.Fatalf("stopStreaming = %v, want %v", err, tc.want)
			}
			if tc.want == readerErr && causeOf(err) != CauseReplication {
				t.Fatalf("cause %s, want %s", causeOf(err), CauseReplication)
			}
			if got := len(logs.find("replication stream")) > 0; got != tc.logged {
				t.Fatalf("reader error logged %v, want %v", got, tc.logged)
			}
			waitClosed(t, pub.closed, "the drained publisher")
		})
	}
}

// A stop that leaves published events unconfirmed says how many and ends
// Run; a session that ends otherwise returns why it ended.
func TestSessionStoppedCountsWhatIsSentAgain(t *testing.T) {
	r, logs := newTestRelay(t, testConfig(""), nil)
	p := &pipeline{}
	p.unconfirmed.add()
	p.unconfirmed.add()
	p.unconfirmed.commit(0x300, 0)
	p.unconfirmed.add() // the open transaction's

	runErr := errors.New("broker down")
	if err := r.sessionStopped(t.Context(), p, 0x200, runErr); err != runErr {
		t.Fatalf("sessionStopped without a stop = %v, want %v", err, runErr)
	}
	if got := attr(logs.waitFor(t, "session stopped"), "confirmed").String(); got != "0/200" {
		t.Fatalf("session stopped at %s, want 0/200", got)
	}
	if r.primary.acked != 0x200 {
		t.Fatalf("acknowledged %s remembered, want 0/200", r.primary.acked)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := r.sessionStopped(ctx, p, 0x200, nil)
	var fe fatalError
	want := "stopped with events not confirmed: 3 events after 0/200 will be sent again at the next start (the broker did not acknowledge them within --shutdown-timeout 30s)"
	if !errors.Is(err, ErrIncompleteStop) || !errors.As(err, &fe) || err.Error() != want {
		t.Fatalf("sessionStopped after a stop = %v, want %q", err, want)
	}
	if err := r.sessionStopped(ctx, p, 0x300, nil); !errors.Is(err, ErrIncompleteStop) || !strings.Contains(err.Error(), ": 1 events after") {
		t.Fatalf("with the first transaction confirmed: %v", err)
	}
}

// stateRecorder records the states a relay reports.
type stateRecorder struct {
	nopObserver
	states chan State
}

func (s *stateRecorder) StateChanged(st State, _ string, _ error) {
	select {
	case s.states <- st:
	default:
	}
}

// The pipeline's end because the reader ended is the replication stream's
// fault, with the reader's error when it has one.
func TestStreamBlamesTheReaderWhenItEnded(t *testing.T) {
	for _, readerErr := range []error{errors.New("receiving from slot s: EOF"), nil} {
		obs := &stateRecorder{states: make(chan State, 8)}
		cfg := testConfig("")
		cfg.Observer = obs
		r, _ := newTestRelay(t, cfg, nil)
		p := newTestPipeline(t, newFakePublisher(true))
		clock := newStopClock(t.Context(), time.Second)
		err := r.stream(t.Context(), p, finishedReader(readerErr), clock)
		clock.close()
		if causeOf(err) != CauseReplication || !p.readerFailed {
			t.Fatalf("stream = %v (cause %s), want the replication stream's", err, causeOf(err))
		}
		want := "replication stream ended"
		if readerErr != nil {
			want = readerErr.Error()
		}
		if err.Error() != want {
			t.Fatalf("stream = %q, want %q", err, want)
		}
		if st := <-obs.states; st != StateStreaming {
			t.Fatalf("state %s, want %s", st, StateStreaming)
		}
	}
}

// ---- whole sessions against PostgreSQL -------------------------------------

// relayRun is a Run on a goroutine of its own.
type relayRun struct {
	stop     context.CancelFunc
	finished chan struct{}
	err      error // Run's result, once finished is closed
}

// runRelay runs r until stop is called or the test ends.
func runRelay(t *testing.T, r *Relay) *relayRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	run := &relayRun{stop: cancel, finished: make(chan struct{})}
	go func() {
		defer close(run.finished)
		run.err = r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-run.finished:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after the test")
		}
	})
	return run
}

// result waits for Run's result.
func (run *relayRun) result(t *testing.T) error {
	t.Helper()
	select {
	case <-run.finished:
		return run.err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func slotState(t *testing.T, db *pgtest.DB) (confirmed pglogrepl.LSN, active bool) {
	t.Helper()
	var s string
	if err := db.Conn(t).QueryRow(t.Context(), `SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = 's'`).Scan(&s, &active); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn, active
}

func insertEvent(t *testing.T, db *pgtest.DB, agg string) {
	t.Helper()
	db.Exec(t, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', $1, 'Placed', '{}')`, agg)
}

// A session's whole life: it takes the slot, starts the publisher,
// streams, and on a stop drains, confirms what the broker acknowledged
// and releases the slot.
func TestSessionStreamsAndStopsConfirmingWhatWasAcknowledged(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	cfg := testConfig(db.URL)
	cfg.CreateSlot = true
	pub := newFakePublisher(true)
	r, logs := newTestRelay(t, cfg, func(context.Context) (Publisher, error) { return pub, nil })
	run := runRelay(t, r)
	logs.waitFor(t, "streaming")
	before := walPosition(t, db)
	insertEvent(t, db, "a1")
	insertEvent(t, db, "a2")
	evs := pub.waitN(t, 2)
	if evs[0].ev.AggregateID != "a1" || evs[1].ev.AggregateID != "a2" {
		t.Fatalf("published %s, %s", evs[0].ev.AggregateID, evs[1].ev.AggregateID)
	}
	run.stop()
	if err := run.result(t); err != nil {
		t.Fatalf("Run after a stop = %v", err)
	}
	confirmed, err := pglogrepl.ParseLSN(attr(logs.waitFor(t, "session stopped"), "confirmed").String())
	if err != nil || confirmed <= before {
		t.Fatalf("session stopped at %s (%v), want past %s, where the events were written", confirmed, err, before)
	}
	logs.waitFor(t, "final status update sent")
	eventually(t, "the slot confirmed and released", func() bool {
		got, active := slotState(t, db)
		return got == confirmed && !active
	})
}

// A stop with events the broker never acknowledged says so and ends Run
// with ErrIncompleteStop; the slot is not confirmed past them.
func TestStopWithUnacknowledgedEventsIsIncomplete(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	cfg := testConfig(db.URL)
	cfg.CreateSlot = true
	pub := newFakePublisher(false)
	r, logs := newTestRelay(t, cfg, func(context.Context) (Publisher, error) { return pub, nil })
	run := runRelay(t, r)
	logs.waitFor(t, "streaming")
	before := walPosition(t, db)
	insertEvent(t, db, "a1")
	pub.waitN(t, 1)
	run.stop()
	err := run.result(t)
	if !errors.Is(err, ErrIncompleteStop) || !strings.Contains(err.Error(), ": 1 events after ") {
		t.Fatalf("Run = %v, want ErrIncompleteStop for 1 event", err)
	}
	logs.waitFor(t, "stopping with events published but not confirmed to PostgreSQL")
	if got, _ := slotState(t, db); got > before {
		t.Fatalf("slot confirmed %s, past the unacknowledged event written after %s", got, before)
	}
}

// A publisher rejected for good ends Run, with the slot released: the
// reader started before it is stopped.
func TestPublisherThatCannotConnectReleasesTheSlot(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	cfg := testConfig(db.URL)
	cfg.CreateSlot = true
	r, logs := newTestRelay(t, cfg, func(context.Context) (Publisher, error) {
		return nil, configProblem{errors.New("SASL authentication failed")}
	})
	run := runRelay(t, r)
	err := run.result(t)
	if err == nil || err.Error() != "connecting the publisher: SASL authentication failed" {
		t.Fatalf("Run = %v", err)
	}
	logs.waitFor(t, "final status update sent")
	eventually(t, "the slot released", func() bool {
		_, active := slotState(t, db)
		return !active
	})
}

// A relay that finds the slot held is a standby: it never connects a
// publisher, and says once that it waits.
func TestStandbyNeverConnectsAPublisher(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	cfg := testConfig(db.URL)
	cfg.CreateSlot = true
	active, activeLogs := newTestRelay(t, cfg, func(context.Context) (Publisher, error) { return newFakePublisher(true), nil })
	runRelay(t, active)
	activeLogs.waitFor(t, "streaming")

	var connects atomic.Int32
	cfg.StandbyRetry = 20 * time.Millisecond
	standby, logs := newTestRelay(t, cfg, func(context.Context) (Publisher, error) {
		connects.Add(1)
		return newFakePublisher(true), nil
	})
	run := runRelay(t, standby)
	logs.waitFor(t, "standby: slot is in use by another process; waiting for it to be released")
	logs.waitFor(t, "standby: slot still in use by another process")
	run.stop()
	if err := run.result(t); err != nil {
		t.Fatalf("standby's Run after a stop = %v", err)
	}
	if n := connects.Load(); n != 0 {
		t.Fatalf("a standby connected its publisher %d times", n)
	}
	if n := len(logs.find("standby: slot is in use")); n != 1 {
		t.Fatalf("the standby said it waits %d times, want once", n)
	}
}

// countingObserver counts what the background tasks report.
type countingObserver struct {
	nopObserver
	heartbeats   atomic.Int32
	pruned       atomic.Int32
	deadLettered atomic.Int32
}

func (o *countingObserver) HeartbeatSent()     { o.heartbeats.Add(1) }
func (o *countingObserver) RowsPruned(n int)   { o.pruned.Add(int32(n)) }
func (o *countingObserver) EventDeadLettered() { o.deadLettered.Add(1) }

// While a session streams, its dead-letter queue, heartbeat and pruner
// run beside the pipeline.
func TestStreamRunsTheBackgroundTasks(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	insertOld(t, db, 2)
	obs := &countingObserver{}
	cfg := testConfig(db.URL)
	cfg.Observer, cfg.HeartbeatInterval, cfg.PruneAfter = obs, 5*time.Millisecond, time.Hour
	r, _ := newTestRelay(t, cfg, nil)
	pub := newFakePublisher(false)
	p := newTestPipeline(t, pub)
	p.obs = obs
	p.tracker = checkpoint.New(walPosition(t, db) + 1<<30) // all rows written so far are confirmed
	p.deadLetters = &deadLetters{pub: pub, topic: "dlq", limit: 64 << 10, slot: "s", tracker: p.tracker, obs: obs,
		log: p.log, release: p.budget.release, sent: &deadLettered{}, signal: make(chan struct{}, 1)}

	rd := &reader{msgs: make(chan []replication.Message, 4), finished: make(chan struct{}), cancel: func() {}}
	clock := newStopClock(t.Context(), time.Second)
	defer clock.close()
	done := make(chan error, 1)
	go func() { done <- r.stream(t.Context(), p, rd, clock) }()
	var w wal
	m, _ := w.txn(pgInsert("e1", "a1", `{}`, `{}`))
	rd.msgs <- append([]replication.Message{{WALStart: 1, Data: pgRelation()}}, m...)
	pub.waitN(t, 1)[0].ack(rejected{"record too large"})
	pub.waitN(t, 2)[1].ack(nil) // the dead letter, published by the queue
	eventually(t, "a dead letter, heartbeats and pruned rows", func() bool {
		return obs.deadLettered.Load() == 1 && obs.heartbeats.Load() >= 2 && obs.pruned.Load() == 2
	})
	close(rd.finished)
	select {
	case err := <-done:
		if causeOf(err) != CauseReplication {
			t.Fatalf("stream = %v, want the reader's end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream did not return after the reader ended")
	}
}
