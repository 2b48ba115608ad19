package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
)

// Headers a dead-lettered record carries besides the original ones.
const (
	HeaderDeadLetterError = "outbox-relay-error"
	HeaderOriginalTopic   = "outbox-relay-original-topic"
)

// deadLetters republishes events the broker rejected for good to the
// dead-letter topic. The sink's ack goroutine hands them over without
// blocking; one goroutine publishes them, and only once the dead-letter
// record is acknowledged does the event count as done, so the checkpoint
// never passes an event that is neither published nor dead-lettered.
type deadLetters struct {
	pub     Publisher
	topic   string
	tracker *checkpoint.Tracker
	obs     Observer
	log     *slog.Logger

	mu     sync.Mutex
	queue  []deadLetter
	signal chan struct{}
}

type deadLetter struct {
	ev  *decoder.Event
	err error
	tok checkpoint.Token
}

func newDeadLetters(pub Publisher, topic string, tracker *checkpoint.Tracker, obs Observer, log *slog.Logger) *deadLetters {
	return &deadLetters{pub: pub, topic: topic, tracker: tracker, obs: obs, log: log, signal: make(chan struct{}, 1)}
}

// add queues a rejected event; it never blocks (it runs on the ack goroutine).
func (d *deadLetters) add(ev *decoder.Event, err error, tok checkpoint.Token) {
	d.mu.Lock()
	d.queue = append(d.queue, deadLetter{ev: ev, err: err, tok: tok})
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
			rec := *dl.ev
			rec.Topic = d.topic
			rec.Headers = append(append([]decoder.Header(nil), dl.ev.Headers...),
				decoder.Header{Key: HeaderDeadLetterError, Value: []byte(dl.err.Error())},
				decoder.Header{Key: HeaderOriginalTopic, Value: []byte(dl.ev.Topic)})
			if isTooLarge(dl.err) {
				rec.Payload = nil // the payload is why it was rejected
			}
			tok, id := dl.tok, dl.ev.ID
			err := d.pub.Publish(ctx, &rec, func(err error) {
				if err != nil {
					fail(fmt.Errorf("dead-lettering event %s to %s: %w", id, d.topic, err))
					return
				}
				d.tracker.Ack(tok)
				d.obs.EventDeadLettered()
			})
			if err != nil {
				fail(fmt.Errorf("dead-lettering event %s to %s: %w", id, d.topic, err))
				return
			}
			d.log.Warn("event rejected by the broker; sent to the dead-letter topic", "event_id", id, "topic", dl.ev.Topic, "dead_letter_topic", d.topic, "err", dl.err)
		}
	}
}

// isTooLarge reports whether the rejection was about the record's size.
func isTooLarge(err error) bool {
	var s interface{ RecordTooLarge() bool }
	return errors.As(err, &s) && s.RecordTooLarge()
}
