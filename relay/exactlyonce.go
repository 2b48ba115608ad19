package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/replication"
	"github.com/outbox-relay/outbox-relay/slot"
)

// Exactly-once publishing (Config.ExactlyOnce).
//
// The pipeline publishes whole PostgreSQL transactions inside broker
// transactions, several together, and ends each broker transaction with a
// checkpoint.Position that says how far the stream is published. The acks
// of a broker transaction's events come with its commit, so the position
// confirmed to PostgreSQL never passes what is committed. A new session
// reads the newest committed checkpoint and skips every row it covers,
// whatever the slot's confirmed position: a crash between the broker's
// commit and the confirmation repeats nothing.
//
// A broker transaction ends at a PostgreSQL commit once it is TxnLinger
// old, or when the stream goes quiet for TxnLinger; and inside a
// PostgreSQL transaction when it reaches TxnMaxEvents events or
// TxnMaxBytes bytes, so that one huge transaction never needs more than
// the in-flight caps (the checkpoint then counts the rows of the open
// transaction that are published). While more WAL is already waiting to
// be handled (a backlog), a transaction older than TxnLinger goes on
// filling, up to backlogHold: a commit costs a broker round trip or
// several whatever its size, and the pipeline publishes nothing while it
// waits for one, so small transactions behind a backlog would make the
// relay fall further behind.

// TransactionalPublisher is a Publisher that publishes in broker
// transactions, for Config.ExactlyOnce.
type TransactionalPublisher interface {
	Publisher
	// ReadCheckpoint returns the newest committed checkpoint, nil if none.
	ReadCheckpoint(ctx context.Context) ([]byte, error)
	// Commit ends the open broker transaction with checkpoint and commits
	// it; the acks of its events are called before it returns (nil when
	// committed). With nothing published since the last Commit it does
	// nothing. After an error the publisher is not used again.
	Commit(ctx context.Context, checkpoint []byte) error
}

// TxnObserver is an Observer that also wants to know about broker
// transactions; the relay checks for it.
type TxnObserver interface {
	// TransactionCommitted is called after each committed broker
	// transaction: how long the commit took and how many events (dead
	// letters included) it holds.
	TransactionCommitted(latency time.Duration, events int)
}

// Defaults for the broker transactions' bounds.
const (
	DefaultTxnMaxEvents = 5000
	DefaultTxnMaxBytes  = 16 << 20
	DefaultTxnLinger    = 10 * time.Millisecond
)

// backlogHold is how long a broker transaction may stay open while more
// WAL waits behind it (at least TxnLinger).
const backlogHold = 100 * time.Millisecond

// txnDriver decides when the pipeline's broker transaction ends, and what
// its checkpoint says. Only the pipeline goroutine uses it.
type txnDriver struct {
	pub  TransactionalPublisher
	log  *slog.Logger
	obs  TxnObserver // nil: not told
	slot string

	maxEvents int
	maxBytes  int64
	linger    time.Duration

	// resume is the newest committed checkpoint at the session's start:
	// what is published already.
	resume checkpoint.Position
	// pos carries the database's identity; its EndLSN is the newest
	// committed end.
	pos checkpoint.Position

	// The open broker transaction.
	events  int
	bytes   int64
	began   time.Time
	openEnd pglogrepl.LSN // end of the newest whole transaction in it
	timer   *time.Timer

	// The PostgreSQL transaction being streamed.
	commitLSN pglogrepl.LSN
	row       int64 // rows seen in it so far

	skipped int // rows skipped as published, not yet logged
}

func newTxnDriver(pub TransactionalPublisher, cfg Config, log *slog.Logger, obs Observer, resume checkpoint.Position, system replication.System) *txnDriver {
	d := &txnDriver{
		pub: pub, log: log, slot: cfg.Slot.Slot,
		maxEvents: cfg.TxnMaxEvents, maxBytes: cfg.TxnMaxBytes, linger: cfg.TxnLinger,
		resume: resume,
		pos:    checkpoint.Position{Slot: cfg.Slot.Slot, SystemID: system.SystemID, Timeline: system.Timeline, EndLSN: resume.EndLSN},
		timer:  time.NewTimer(time.Hour),
	}
	d.timer.Stop()
	if o, ok := obs.(TxnObserver); ok {
		d.obs = o
	}
	return d
}

// begin starts a PostgreSQL transaction whose commit record is at
// commitLSN.
func (d *txnDriver) begin(commitLSN pglogrepl.LSN) {
	d.commitLSN, d.row = commitLSN, 0
}

// nextRow counts a row of the open PostgreSQL transaction and reports
// whether the broker has it already (so it is skipped).
func (d *txnDriver) nextRow() (published bool) {
	r := d.row
	d.row++
	if d.resume.Published(d.commitLSN, r) {
		d.skipped++
		return true
	}
	if d.skipped > 0 {
		d.log.Info("skipped events the Kafka checkpoint shows committed already", "slot", d.slot,
			"events", d.skipped, "checkpoint_end_lsn", d.resume.EndLSN)
		d.skipped = 0
	}
	return false
}

// makeRoom commits the open broker transaction, mid PostgreSQL
// transaction, if an event of size bytes would take it over its bounds.
// Call it before publishing the row nextRow just counted.
func (d *txnDriver) makeRoom(ctx context.Context, size int64) error {
	if d.events == 0 || d.events < d.maxEvents && d.bytes+size <= d.maxBytes {
		return nil
	}
	return d.commit(ctx, d.row-1)
}

// published counts an event (or dead letter) of size bytes handed to the
// publisher in the open broker transaction.
func (d *txnDriver) published(size int64) {
	if d.events == 0 {
		d.began = time.Now()
		d.timer.Reset(d.linger)
	}
	d.events++
	d.bytes += size
}

// committed is told of each PostgreSQL commit; it commits the broker
// transaction once it is old enough: TxnLinger, or backlogHold while more
// WAL is waiting (more).
func (d *txnDriver) committed(ctx context.Context, end pglogrepl.LSN, more bool) error {
	if d.events == 0 {
		return nil
	}
	d.openEnd = end
	if d.young(more) {
		return nil
	}
	return d.commit(ctx, 0)
}

// young reports whether the open broker transaction may stay open: it is
// younger than TxnLinger, or more WAL is waiting and it is younger than
// backlogHold.
func (d *txnDriver) young(more bool) bool {
	age := time.Since(d.began)
	return age < d.linger || more && age < max(d.linger, backlogHold)
}

// expired returns the linger timer's channel.
func (d *txnDriver) expired() <-chan time.Time { return d.timer.C }

// lingered commits the open broker transaction when the linger timer
// fired, with the rows of the open PostgreSQL transaction (inTxn) that are
// in it; while more WAL is waiting, it waits again, up to backlogHold.
func (d *txnDriver) lingered(ctx context.Context, inTxn, more bool) error {
	if d.events == 0 {
		return nil
	}
	if more && d.young(true) {
		d.timer.Reset(max(d.linger, backlogHold) - time.Since(d.began))
		return nil
	}
	var rows int64
	if inTxn {
		rows = d.row
	}
	return d.commit(ctx, rows)
}

// finish commits what a graceful stop leaves open (the pipeline stopped
// between PostgreSQL transactions).
func (d *txnDriver) finish(ctx context.Context) error {
	if d.events == 0 {
		return nil
	}
	return d.commit(ctx, 0)
}

// commit ends the open broker transaction with a checkpoint: every whole
// PostgreSQL transaction in it, and partialRows rows of the open one.
func (d *txnDriver) commit(ctx context.Context, partialRows int64) error {
	d.timer.Stop()
	pos := d.pos
	pos.EndLSN = max(pos.EndLSN, d.openEnd)
	if partialRows > 0 {
		pos.PartialCommitLSN, pos.PartialRows = d.commitLSN, partialRows
	}
	start := time.Now()
	err := d.pub.Commit(ctx, pos.Marshal())
	events := d.events
	d.events, d.bytes, d.openEnd = 0, 0, 0
	if err != nil {
		return fmt.Errorf("committing a Kafka transaction of %d events: %w", events, err)
	}
	d.pos.EndLSN = pos.EndLSN
	if d.obs != nil {
		d.obs.TransactionCommitted(time.Since(start), events)
	}
	return nil
}

// isFenced reports whether err says another relay took over the
// publisher's transactional id.
func isFenced(err error) bool {
	var f interface{ Fenced() bool }
	return errors.As(err, &f) && f.Fenced()
}

// resumePosition reads the publisher's newest committed checkpoint and
// checks that it belongs to this database; the zero Position if there is
// none.
func (r *Relay) resumePosition(ctx context.Context, pub TransactionalPublisher, system replication.System, start pglogrepl.LSN) (checkpoint.Position, error) {
	raw, err := pub.ReadCheckpoint(ctx)
	if err != nil {
		return checkpoint.Position{}, withCause(CauseSink, fmt.Errorf("reading the Kafka checkpoint: %w", err))
	}
	if raw == nil {
		r.log.Info("exactly-once: no checkpoint in Kafka yet; starting from the slot", "slot", r.cfg.Slot.Slot, "lsn", start)
		return checkpoint.Position{}, nil
	}
	pos, err := checkpoint.ParsePosition(raw)
	if err != nil {
		return checkpoint.Position{}, fatal(&slot.Problem{
			What: fmt.Sprintf("the Kafka checkpoint of slot %s cannot be read: %v", r.cfg.Slot.Slot, err),
			Fix:  "the checkpoint topic must hold only the relay's checkpoints; point --kafka-checkpoint-topic at another topic to start afresh",
		})
	}
	if pos.SystemID != system.SystemID {
		return checkpoint.Position{}, fatal(&slot.Problem{
			What: fmt.Sprintf("the Kafka checkpoint of slot %s belongs to another database (system identifier %s, this server's is %s): its positions mean nothing here",
				r.cfg.Slot.Slot, pos.SystemID, system.SystemID),
			Fix: "if this database replaced the old one on purpose (a restore, a new cluster), use a new --kafka-checkpoint-topic or another slot name; otherwise check --pg-url",
		})
	}
	if pos.Timeline != system.Timeline {
		r.log.Info("exactly-once: the checkpoint was written on another timeline of this database (a promotion since)", "slot", r.cfg.Slot.Slot,
			"checkpoint_timeline", pos.Timeline, "timeline", system.Timeline)
	}
	if pos.EndLSN > start || pos.PartialRows > 0 && pos.PartialCommitLSN >= start {
		r.log.Info("exactly-once: Kafka holds events past the slot's confirmed position; they are skipped, not sent again", "slot", r.cfg.Slot.Slot,
			"slot_confirmed", start, "checkpoint_end_lsn", pos.EndLSN)
	}
	return pos, nil
}

// knownPoison remembers events a broker rejected inside a transaction,
// which was then aborted: the next session sets them aside in stream
// order, in its own transaction, instead of publishing them. It outlives
// sessions.
type knownPoison struct {
	mu sync.Mutex
	m  map[string]error
}

func (k *knownPoison) add(id string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = make(map[string]error)
	}
	k.m[id] = err
}

func (k *knownPoison) get(id string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.m[id]
}

// startTransactions sets the pipeline up for exactly-once publishing: the
// checkpoint to resume after, and the driver of its broker transactions.
func (r *Relay) startTransactions(ctx context.Context, p *pipeline, stream *replication.Stream, start pglogrepl.LSN) error {
	tp, ok := p.pub.(TransactionalPublisher)
	if !ok {
		return fatal(errors.New("exactly-once publishing needs a transactional publisher (the Kafka sink)"))
	}
	readCtx, cancel := context.WithTimeout(ctx, 3*setupTimeout)
	defer cancel()
	resume, err := r.resumePosition(readCtx, tp, stream.System(), start)
	if err != nil {
		return err
	}
	p.eos = newTxnDriver(tp, r.cfg, r.log, r.obs, resume, stream.System())
	p.poisoned = &r.poisoned
	return nil
}

// endTransactions commits what a graceful stop leaves in the open broker
// transaction; after an error nothing is committed (closing the publisher
// aborts the transaction). A fenced publisher sends the relay back to
// standby.
func (r *Relay) endTransactions(p *pipeline, clock *stopClock, runErr error) error {
	if runErr == nil {
		ctx, cancel := context.WithDeadline(context.Background(), clock.drainDeadline())
		err := p.eos.finish(ctx)
		cancel()
		if err != nil {
			runErr = withCause(CauseSink, err)
		}
	}
	if runErr != nil && isFenced(runErr) {
		r.log.Warn("fenced: another relay took over this slot's Kafka transactional id; nothing this one published since its last commit is visible, and it goes back to standby",
			"slot", r.cfg.Slot.Slot, "err", runErr)
		return withCause(causeStandby, runErr)
	}
	return runErr
}
