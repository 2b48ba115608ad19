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

	// progress, if set, is logged every progressEvery with the event rate.
	progress      func() Progress
	progressEvery time.Duration
	published     uint64 // events handed to the publisher, for the rate

	inTxn        bool
	readerFailed bool

	// deadLetter, if set, takes events the broker rejected for good.
	deadLetter func(ev *decoder.Event, err error, tok checkpoint.Token)

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
// graceful stop. It ends on a failed ack (fail) or the hard timeout.
func (p *pipeline) newPubCtx() {
	p.pubCtx, p.failPublishing = context.WithCancelCause(context.Background())
}

// fail ends the session with err; safe from any goroutine.
func (p *pipeline) fail(err error) { p.failPublishing(err) }

// idleSince reports whether no event was published since the last call.
func (p *pipeline) idleSince() bool {
	n := p.publishedTotal.Load()
	return p.lastSeen.Swap(n) == n
}

// run consumes msgs until ctx ends (at a transaction boundary, so a
// graceful stop leaves nothing half-published), the reader fails, or a
// publish fails for good. The caller drains the publisher afterwards.
func (p *pipeline) run(ctx context.Context, msgs <-chan []replication.Message, readerDone <-chan error, shutdownTimeout time.Duration) error {
	pubCtx, failPublishing := p.pubCtx, p.failPublishing
	defer failPublishing(nil)

	stopping := ctx.Done()
	var hardStop <-chan time.Time
	var progressTick <-chan time.Time
	if p.progress != nil && p.progressEvery > 0 {
		ticker := time.NewTicker(p.progressEvery)
		defer ticker.Stop()
		progressTick = ticker.C
	}
	lastTick, lastPublished := time.Now(), p.published
	for {
		select {
		case now := <-progressTick:
			p.logProgress(now.Sub(lastTick), p.published-lastPublished)
			lastTick, lastPublished = now, p.published
		case <-stopping:
			if !p.inTxn {
				return nil
			}
			p.log.Info("stopping after the open transaction", "slot", p.slot)
			stopping = nil
			timer := time.NewTimer(shutdownTimeout)
			defer timer.Stop()
			hardStop = timer.C
		case <-hardStop:
			failPublishing(errShutdownTimeout)
			return errShutdownTimeout
		case <-pubCtx.Done():
			return context.Cause(pubCtx)
		case err := <-readerDone:
			p.readerFailed = true
			if err == nil {
				err = errors.New("replication stream ended")
			}
			return err
		case batch := <-msgs:
			for _, m := range batch {
				if err := p.handle(pubCtx, m); err != nil {
					if cause := context.Cause(pubCtx); cause != nil {
						return cause
					}
					return err
				}
				if ctx.Err() != nil && !p.inTxn {
					// A graceful stop reached a transaction boundary; the rest
					// of the batch is not confirmed and streams again later.
					return nil
				}
			}
			// The decoder copies what it keeps: the batch can be reused.
			replication.Release(batch)
		}
	}
}

func (p *pipeline) handle(ctx context.Context, m replication.Message) error {
	if m.Data == nil {
		p.tracker.Idle(m.ServerWALEnd)
		return nil
	}
	op, err := p.dec.Decode(m.Data, m.WALStart)
	if err != nil {
		// A row that cannot be turned into a record stops the relay: skipping
		// it would lose it, and retrying would meet it again.
		return fatal(fmt.Errorf("decoding WAL at %s: %w", m.WALStart, err))
	}
	switch op.Kind {
	case decoder.KindBegin:
		p.tracker.Begin()
		p.commits.add(op.CommitLSN, op.CommitTime)
		p.inTxn = true
	case decoder.KindEvent:
		in := p.newInflight()
		in.ev = op.Event
		in.ev.ReceivedAt = m.ReceivedAt
		// Add before Publish, so the ack cannot come first.
		in.tok = p.tracker.Add()
		if err := p.pub.Publish(ctx, &in.ev, in.ack); err != nil {
			if ctx.Err() == nil {
				p.obs.PublishFailed(ReasonPublish)
			}
			return fmt.Errorf("publishing event %s: %w", in.ev.ID, err)
		}
		p.published++
		p.publishedTotal.Add(1)
	case decoder.KindCommit:
		p.tracker.Commit(op.EndLSN)
		p.obs.TransactionDecoded()
		p.inTxn = false
	}
	return nil
}

// inflight is one published event until its ack: the event the publisher
// and the observer read, its checkpoint token, and the ack bound to them,
// in one allocation that is reused once the broker acknowledged the event
// (the Publisher and Observer contracts: neither keeps ev past the ack).
type inflight struct {
	ev  decoder.Event
	tok checkpoint.Token
	p   *pipeline
	ack func(error) // in.done, bound once
}

func (p *pipeline) newInflight() *inflight {
	if in, ok := p.free.Get().(*inflight); ok {
		return in
	}
	in := &inflight{p: p}
	in.ack = in.done
	return in
}

// done is the event's ack, called once from the publisher's ack goroutine.
func (in *inflight) done(err error) {
	p := in.p
	if err != nil {
		p.obs.PublishFailed(ReasonRejected)
		var rr interface{ RecordRejected() bool }
		if p.deadLetter != nil && errors.As(err, &rr) && rr.RecordRejected() {
			// The dead-letter queue keeps the event: in is not reused.
			p.deadLetter(&in.ev, err, in.tok)
			return
		}
		// Never skip past a failed record: end the session, and the next
		// one resumes from the slot.
		p.fail(fmt.Errorf("publishing event %s to %s: %w", in.ev.ID, in.ev.Topic, err))
		return
	}
	p.tracker.Ack(in.tok)
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
