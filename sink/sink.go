// Package sink is what the relay's publishers share: the contract each of
// them keeps (Publisher), their in-flight cap (Slots, Gate), the retry
// policy of the non-Kafka ones (Retry), the ack side of the ones that
// await confirmations (ConfirmPipeline), the destination templates
// (Template) and the JSON shape of an event (EventJSON). The publishers
// themselves live in one subpackage per destination: sink/kafka,
// sink/nats, sink/rabbitmq, sink/redis, sink/webhook and sink/stdout.
//
// A publisher reports, once per event, when the destination has it. Its
// Publish blocks at an in-flight cap, which is how a slow or absent
// destination stops the reading of WAL (backpressure) and keeps memory
// bounded.
package sink

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// Publisher is the contract every sink keeps with the relay.
//
// Publish hands ev to the destination. It blocks while the sink's
// in-flight cap is reached and returns ctx.Err() or a closed error without
// calling ack. If it returns nil, ack is called exactly once, from the
// sink's own goroutine, with nil once the destination has the event or
// with the error that survived the sink's retries. Events of one aggregate
// are delivered in the order they were published. ack must not block and
// must not call Close. ev's slices stay unmodified until the ack.
//
// Close stops accepting events and returns once every published event's
// ack was called. relay.Publisher is this contract as the relay uses it.
type Publisher interface {
	Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error
	Close() error
}

// DefaultMaxInFlight is every sink's default in-flight cap (--max-in-flight).
const DefaultMaxInFlight = 10000

// ErrSinkClosed is wrapped by the non-Kafka sinks' closed errors (see
// PrefixClosed).
var ErrSinkClosed = errors.New("sink closed")

// PrefixClosed names the sink in a closed error and passes others through.
func PrefixClosed(sink string, err error) error {
	if errors.Is(err, ErrSinkClosed) {
		return fmt.Errorf("%s: %w", sink, err)
	}
	return err
}

// RedactURL returns u without its password, for logs and errors. A value
// that does not parse as a URL is shown only by scheme.
func RedactURL(u string) string {
	parts := strings.Split(u, ",")
	for i, p := range parts {
		pu, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			parts[i] = "(unparsable URL)"
			continue
		}
		if pu.User != nil {
			if _, hasPassword := pu.User.Password(); !hasPassword && pu.User.Username() != "" {
				// A lone user part is often a token (nats://token@host).
				pu.User = url.User("xxxxx")
			}
		}
		parts[i] = pu.Redacted()
	}
	return strings.Join(parts, ",")
}
