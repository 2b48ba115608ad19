package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/outbox-relay/outbox-relay/checkpoint"
)

// deadLetters republishes, to the dead-letter topic, events the broker
// rejected for good after Publish had accepted them. The sink's ack
// goroutine hands them over without blocking; one goroutine publishes
// them, and only once the dead letter is acknowledged does the event count
// as done, so the checkpoint never passes an event that is neither
// published nor dead-lettered. A dead letter the broker refuses too is
// sent again cut down to a minimal one; if that is refused as well, the
// relay stops (fail) with a PoisonError: never a loop.
type deadLetters struct {
	pub     Publisher
	topic   string
	limit   int
	slot    string
	tracker *checkpoint.Tracker
	obs     Observer
	log     *slog.Logger
	// release returns the event's bytes to the in-flight budget once it is
	// done with.
	release func(n int64)
	// sent remembers the events whose dead letter was acknowledged.
	sent *deadLettered

	mu     sync.Mutex
	queue  []deadLetter
	signal chan struct{}
}

type deadLetter struct {
	pz    poison
	tok   checkpoint.Token
	size  int64
	level int
}

// add queues a rejected event; it never blocks (it runs on the ack
// goroutine).
func (d *deadLetters) add(dl deadLetter) {
	d.mu.Lock()
	d.queue = append(d.queue, dl)
	d.mu.Unlock()
	select {
	case d.signal <- struct{}{}:
	default:
	}
}

// run publishes queued dead letters until ctx ends. A dead letter that
// cannot be published fails the session through fail: the event is then
// neither confirmed nor lost, and the next session meets it again.
func (d *deadLetters) run(ctx context.Context, fail func(error)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.signal:
		}
		d.mu.Lock()
		batch := d.queue
		d.queue = nil
		d.mu.Unlock()
		for _, dl := range batch {
			if err := d.publish(ctx, dl, fail); err != nil {
				fail(err)
				return
			}
		}
	}
}

// publish sends dl's dead letter; its ack completes the event, or queues
// a cut-down one, or fails the session.
func (d *deadLetters) publish(ctx context.Context, dl deadLetter, fail func(error)) error {
	rec := deadLetterRecord(dl.pz, d.topic, d.limit, dl.level)
	id := dl.pz.eventID()
	err := d.pub.Publish(ctx, rec, func(err error) {
		switch {
		case err == nil:
			d.sent.add(id)
			d.tracker.Ack(dl.tok)
			d.release(dl.size)
			d.obs.EventDeadLettered()
			d.log.Warn("event sent to the dead-letter topic", "slot", d.slot, "event_id", id, "lsn", dl.pz.lsn,
				"topic", dl.pz.originalTopic(), "dead_letter_topic", d.topic, "err", dl.pz.err)
		case isRejected(err) && dl.level < dlMinimal:
			dl.level = dlMinimal
			d.add(dl)
		case isRejected(err):
			fail(dl.pz.stop(d.slot, fmt.Errorf("%w; not even a minimal dead letter was accepted by %s: %v", dl.pz.err, d.topic, err)))
		default:
			fail(fmt.Errorf("dead-lettering event %s to %s: %w", id, d.topic, err))
		}
	})
	if err == nil {
		return nil
	}
	if isRejected(err) && dl.level < dlMinimal {
		dl.level = dlMinimal
		return d.publish(ctx, dl, fail)
	}
	if isRejected(err) {
		return dl.pz.stop(d.slot, fmt.Errorf("%w; not even a minimal dead letter fits %s: %v", dl.pz.err, d.topic, err))
	}
	return fmt.Errorf("dead-lettering event %s to %s: %w", id, d.topic, err)
}
