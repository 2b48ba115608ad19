package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/replication"
)

// errShutdownTimeout ends a graceful stop that could not reach the end of
// the open transaction in time.
var errShutdownTimeout = errors.New("shutdown timeout reached before the open transaction was fully published")

// pipeline is the middle stage: one goroutine that decodes, tracks and
// publishes, in WAL order.
type pipeline struct {
	log     *slog.Logger
	slot    string
	dec     *decoder.Decoder
	pub     Publisher
	tracker *checkpoint.Tracker
	obs     Observer
	commits *commitLog
	budget  *byteBudget
	skips   *skipList

	// progress, if set, is logged every progressEvery with the event rate.
	progress      func() Progress
	progressEvery time.Duration
	published     uint64 // events handed to the publisher, for the rate

	inTxn        bool
	readerFailed bool
	// more is set while a message is handled if the reader has queued
	// more batches behind it: the pipeline is behind.
	more bool

	// deadLetters, if set, takes poison events (OnErrorDeadLetter);
	// without it a poison event stops the relay (OnErrorStop).
	deadLetters *deadLetters

	// eos, if set, publishes in broker transactions (exactlyonce.go);
	// poisoned holds the events a broker rejected inside one.
	eos      *txnDriver
	poisoned *knownPoison

	// unconfirmed counts the events of transactions not known to be
	// confirmed, to say how many a stop leaves to be sent again.
	unconfirmed unconfirmedLog

	// free recycles the per-event state (inflight) after successful acks.
	free sync.Pool

	pubCtx         context.Context
	failPublishing context.CancelCauseFunc
	// publishedTotal counts events handed to the publisher; the heartbeat
	// reads it to tell an idle relay from a busy one.
	publishedTotal atomic.Uint64
	lastSeen       atomic.Uint64
}

// newPubCtx creates the context publishing runs under. It outlives the
// session's ctx: publishing the rest of the open transaction is part of a
// graceful stop. It ends on a failed ack (fail) or when the stop's
// deadline passes.
func (p *pipeline) newPubCtx() {
	p.pubCtx, p.failPublishing = context.WithCancelCause(context.Background())
}

// fail ends the session with err; safe from any goroutine. The first
// cause wins.
func (p *pipeline) fail(err error) { p.failPublishing(err) }

// idleSince reports whether no event was published since the last call.
func (p *pipeline) idleSince() bool {
	n := p.publishedTotal.Load()
	return p.lastSeen.Swap(n) == n
}

// run consumes msgs until ctx ends (at a transaction boundary, so a
// graceful stop leaves nothing half-published), the reader ends, a
// publish fails for good, or the stop's deadline passes (expired). The
// caller drains the publisher afterwards.
func (p *pipeline) run(ctx context.Context, msgs <-chan []replication.Message, readerDone <-chan struct{}, expired <-chan struct{}) error {
	pubCtx := p.pubCtx
	stopWatch := p.endPublishingAt(expired)
	defer stopWatch()

	stopping := ctx.Done()
	var progressTick <-chan time.Time
	if p.progress != nil && p.progressEvery > 0 {
		ticker := time.NewTicker(p.progressEvery)
		defer ticker.Stop()
		progressTick = ticker.C
	}
	lastTick, lastPublished := time.Now(), p.published
	var lingered <-chan time.Time
	if p.eos != nil {
		lingered = p.eos.expired()
	}
	for {
		select {
		case <-lingered:
			// The stream went quiet with a broker transaction open.
			if err := p.eos.lingered(pubCtx, p.inTxn, len(msgs) > 0); err != nil {
				if cause := context.Cause(pubCtx); cause != nil {
					return cause // an ack's failure says more
				}
				return err
			}
		case now := <-progressTick:
			p.logProgress(now.Sub(lastTick), p.published-lastPublished)
			lastTick, lastPublished = now, p.published
		case <-stopping:
			if !p.inTxn {
				return nil
			}
			p.log.Info("stopping after the open transaction", "slot", p.slot)
			stopping = nil
		case <-pubCtx.Done():
			return context.Cause(pubCtx)
		case <-readerDone:
			p.readerFailed = true
			return errors.New("replication stream ended")
		case batch := <-msgs:
			if done, err := p.handleBatch(ctx, pubCtx, batch, msgs); done {
				return err
			}
		}
	}
}

// endPublishingAt ends publishing (pubCtx) with errShutdownTimeout when
// expired closes: a Publish blocked at the in-flight cap (a broker that
// answers nothing) must not outlast the stop's deadline. stop ends
// publishing and waits for the watch.
func (p *pipeline) endPublishingAt(expired <-chan struct{}) (stop func()) {
	pubCtx, failPublishing := p.pubCtx, p.failPublishing
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-expired:
			failPublishing(errShutdownTimeout)
		case <-pubCtx.Done():
		}
	})
	return func() {
		failPublishing(nil)
		watch.Wait()
	}
}

// handleBatch handles a batch from the reader, message by message. It is
// done when a message failed (with the cause publishing ended with, if
// any, which says more) or when a graceful stop reached a transaction
// boundary: the rest of the batch is not confirmed and streams again
// later.
func (p *pipeline) handleBatch(ctx, pubCtx context.Context, batch []replication.Message, queued <-chan []replication.Message) (done bool, err error) {
	for _, m := range batch {
		// The reader has queued more batches: the pipeline is behind.
		p.more = len(queued) > 0
		if err := p.handle(pubCtx, m); err != nil {
			if cause := context.Cause(pubCtx); cause != nil {
				return true, cause
			}
			return true, err
		}
		if ctx.Err() != nil && !p.inTxn {
			return true, nil // a graceful stop at a transaction boundary
		}
	}
	// The decoder copies what it keeps: the batch can be reused.
	replication.Release(batch)
	return false, nil
}

func (p *pipeline) handle(ctx context.Context, m replication.Message) error {
	if m.Data == nil {
		p.tracker.Idle(m.ServerWALEnd)
		return nil
	}
	op, err := p.dec.Decode(m.Data, m.WALStart)
	if err != nil {
		var row *decoder.RowError
		if errors.As(err, &row) && p.inTxn {
			return p.poisonRow(ctx, row)
		}
		// Anything else (the table's shape, bytes that are not pgoutput)
		// meets every later row too: stop, confirming nothing past it.
		return fatal(fmt.Errorf("decoding WAL at %s: %w", m.WALStart, err))
	}
	switch op.Kind {
	case decoder.KindBegin:
		p.tracker.Begin()
		p.commits.add(op.CommitLSN, op.CommitTime)
		p.inTxn = true
		if p.eos != nil {
			p.eos.begin(op.CommitLSN)
		}
	case decoder.KindEvent:
		if p.eos != nil && p.eos.nextRow() {
			return nil // in Kafka already, committed
		}
		if p.skips.skip(op.Event.ID, m.WALStart) {
			p.log.Warn("skipping event as `outbox-relay slot skip` recorded", "slot", p.slot, "event_id", op.Event.ID, "lsn", m.WALStart)
			return nil
		}
		if p.deadLetters != nil && p.deadLetters.sent.has(op.Event.ID) {
			p.log.Info("skipping event already sent to the dead-letter topic", "slot", p.slot, "event_id", op.Event.ID, "lsn", m.WALStart)
			return nil
		}
		size := int64(estimateSize(&op.Event))
		if p.eos != nil {
			if err := p.eos.makeRoom(ctx, size); err != nil {
				return err
			}
			if cause := p.poisoned.get(op.Event.ID); cause != nil {
				return p.setAside(ctx, op.Event, size, cause)
			}
		}
		return p.publish(ctx, op.Event, size, m.ReceivedAt)
	case decoder.KindCommit:
		p.tracker.Commit(op.EndLSN)
		p.unconfirmed.commit(op.EndLSN, p.tracker.Safe())
		p.obs.TransactionDecoded()
		p.inTxn = false
		if p.eos != nil {
			return p.eos.committed(ctx, op.EndLSN, p.more)
		}
	}
	return nil
}

// setAside dead-letters (or stops at) an event a broker rejected inside an
// earlier, aborted, broker transaction: in stream order, in this one.
func (p *pipeline) setAside(ctx context.Context, ev decoder.Event, size int64, cause error) error {
	if err := p.budget.acquire(ctx, size); err != nil {
		return err
	}
	tok := p.tracker.Add()
	p.unconfirmed.add()
	evCopy := ev
	return p.poison(ctx, poison{ev: &evCopy, lsn: ev.LSN, err: cause}, tok, size)
}

// publish hands one event of size bytes (estimateSize) to the publisher,
// within the byte budget.
func (p *pipeline) publish(ctx context.Context, ev decoder.Event, size int64, receivedAt time.Time) error {
	if err := p.budget.acquire(ctx, size); err != nil {
		return err
	}
	in := p.newInflight()
	in.ev = ev
	in.ev.ReceivedAt = receivedAt
	in.size = size
	in.done.Store(false)
	// Add before Publish, so the ack cannot come first.
	in.tok = p.tracker.Add()
	p.unconfirmed.add()
	if err := p.pub.Publish(ctx, &in.ev, in.ack); err != nil {
		if isRejected(err) {
			// Refused before anything was sent: set it aside or stop here,
			// in order, before any later event of the stream.
			p.obs.PublishFailed(ReasonRejected)
			pz := poison{ev: &in.ev, lsn: in.ev.LSN, err: err}
			return p.poison(ctx, pz, in.tok, size)
		}
		p.budget.release(size)
		if ctx.Err() == nil {
			p.obs.PublishFailed(ReasonPublish)
		}
		return fmt.Errorf("publishing event %s: %w", in.ev.ID, err)
	}
	p.published++
	p.publishedTotal.Add(1)
	if p.eos != nil {
		p.eos.published(size)
	}
	return nil
}

// poisonRow handles a row the decoder could not turn into an event.
func (p *pipeline) poisonRow(ctx context.Context, row *decoder.RowError) error {
	if p.eos != nil && p.eos.nextRow() {
		return nil // its dead letter is in Kafka already, committed
	}
	if p.skips.skip(row.EventID, row.LSN) {
		p.log.Warn("skipping row as `outbox-relay slot skip` recorded", "slot", p.slot, "event_id", row.EventID, "lsn", row.LSN, "err", row)
		return nil
	}
	if p.deadLetters != nil && p.deadLetters.sent.has(row.EventID) {
		return nil // dead-lettered in an earlier session of this relay
	}
	p.obs.PublishFailed(ReasonRejected)
	pz := poison{row: row, lsn: row.LSN, err: row}
	size := int64(len(row.Raw))
	if err := p.budget.acquire(ctx, size); err != nil {
		return err
	}
	tok := p.tracker.Add()
	p.unconfirmed.add()
	return p.poison(ctx, pz, tok, size)
}

// poison sets pz aside on the dead-letter topic, or stops the relay with
// a message that says how to skip it. tok is its checkpoint token: it is
// acknowledged once the dead letter is, and never otherwise.
func (p *pipeline) poison(ctx context.Context, pz poison, tok checkpoint.Token, size int64) error {
	if p.deadLetters == nil {
		return pz.stop(p.slot, pz.err)
	}
	if p.eos != nil {
		if err := p.eos.makeRoom(ctx, size); err != nil {
			return err
		}
	}
	if err := p.deadLetters.publish(ctx, deadLetter{pz: pz, tok: tok, size: size}, p.fail); err != nil {
		return err
	}
	p.published++
	p.publishedTotal.Add(1)
	if p.eos != nil {
		p.eos.published(size)
	}
	return nil
}

// inflight is one published event until its ack: the event the publisher
// and the observer read, its checkpoint token, and the ack bound to them,
// in one allocation that is reused once the broker acknowledged the event
// (the Publisher and Observer contracts: neither keeps ev past the ack).
type inflight struct {
	ev   decoder.Event
	tok  checkpoint.Token
	size int64
	p    *pipeline
	ack  func(error) // in.acked, bound once
	// done catches a second ack of the same event, which would otherwise
	// acknowledge another event that reused this record.
	done atomic.Bool
}

func (p *pipeline) newInflight() *inflight {
	if in, ok := p.free.Get().(*inflight); ok {
		return in
	}
	in := &inflight{p: p}
	in.ack = in.acked
	return in
}

// acked is the event's ack, called once from the publisher's ack goroutine.
func (in *inflight) acked(err error) {
	if in.done.Swap(true) {
		panic(fmt.Sprintf("relay: event %s acknowledged twice by the publisher", in.ev.ID))
	}
	p := in.p
	if err != nil {
		p.obs.PublishFailed(ReasonRejected)
		if isRejected(err) && p.eos != nil {
			// Its broker transaction is aborted: the next session sets the
			// event aside in order, in a transaction of its own.
			p.poisoned.add(in.ev.ID, err)
			p.fail(fmt.Errorf("event %s was rejected inside a Kafka transaction, which is aborted; the next session sets it aside in stream order: %w", in.ev.ID, err))
			return
		}
		if isRejected(err) {
			pz := poison{ev: &in.ev, lsn: in.ev.LSN, err: err}
			if p.deadLetters == nil {
				p.fail(pz.stop(p.slot, err))
				return
			}
			// The dead-letter queue keeps the event: in is not reused.
			p.deadLetters.add(deadLetter{pz: pz, tok: in.tok, size: in.size})
			return
		}
		// Never skip past a failed record: end the session, and the next
		// one resumes from the slot. The sink's error names where it
		// published (topic, subject, exchange, stream); the event's
		// Kafka-style topic may not be that.
		p.fail(fmt.Errorf("publishing event %s: %w", in.ev.ID, err))
		return
	}
	p.tracker.Ack(in.tok)
	p.budget.release(in.size)
	p.obs.EventAcked(&in.ev)
	in.ev, in.tok = decoder.Event{}, checkpoint.Token{}
	p.free.Put(in)
}

// logProgress logs the periodic progress line: n events published over d.
func (p *pipeline) logProgress(d time.Duration, n uint64) {
	pr := p.progress()
	var rate float64
	if d > 0 {
		rate = float64(n) / d.Seconds()
	}
	p.log.Info("progress", "slot", p.slot,
		"events_per_second", math.Round(rate*10)/10,
		"in_flight", pr.InFlight,
		"confirmed", pr.Confirmed,
		"lag_bytes", pr.LagBytes(),
		"lag", pr.Lag.Round(time.Millisecond))
}

// unconfirmedLog counts the events of the transactions that may not be
// confirmed yet: what a stop leaves to be sent again. Only the pipeline
// goroutine writes it, and reads it once the pipeline has returned.
type unconfirmedLog struct {
	open int // events of the open transaction
	txns []txnEvents
	head int
}

type txnEvents struct {
	end pglogrepl.LSN
	n   int
}

func (u *unconfirmedLog) add() { u.open++ }

// commit closes the open transaction at end and forgets the transactions
// at or below safe.
func (u *unconfirmedLog) commit(end, safe pglogrepl.LSN) {
	if u.open > 0 {
		u.txns = append(u.txns, txnEvents{end: end, n: u.open})
		u.open = 0
	}
	for u.head < len(u.txns) && u.txns[u.head].end <= safe {
		u.head++
	}
	if u.head == len(u.txns) {
		u.txns, u.head = u.txns[:0], 0
	} else if u.head > 1024 && u.head > len(u.txns)/2 {
		n := copy(u.txns, u.txns[u.head:])
		u.txns, u.head = u.txns[:n], 0
	}
}

// after returns how many events belong to transactions ending past
// confirmed, plus those of the open transaction.
func (u *unconfirmedLog) after(confirmed pglogrepl.LSN) int {
	n := u.open
	for _, t := range u.txns[u.head:] {
		if t.end > confirmed {
			n += t.n
		}
	}
	return n
}
