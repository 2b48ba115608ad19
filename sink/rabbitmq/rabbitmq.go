// Package rabbitmq is the RabbitMQ sink: events are published to an
// exchange with publisher confirms, one in flight per aggregate.
package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/sink"
)

// Defaults for the zero values of Config.
const (
	DefaultExchange   = "outbox"
	DefaultRoutingKey = "{topic}"
)

// ErrUnroutable is wrapped by the ack error of an event the broker returned
// because no queue was bound for it (mandatory publishing).
var ErrUnroutable = errors.New("RabbitMQ returned the event as unroutable")

// Config configures a RabbitMQ sink. Zero values take the defaults.
type Config struct {
	// URL is the AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/. The
	// password is never logged.
	URL string
	// Exchange is the exchange template. Default "outbox".
	Exchange string
	// RoutingKey is the routing key template. Default "{topic}".
	RoutingKey string
	// DeclareExchange, if set, declares the exchange (durable) with this
	// kind (topic, direct, fanout, headers) at start-up; the exchange
	// template must then have no placeholders.
	DeclareExchange string
	// Mandatory publishes with the mandatory flag: a message no queue is
	// bound for is returned, and its ack gets an error wrapping
	// ErrUnroutable instead of the event being dropped silently.
	Mandatory bool
	// MaxInFlight caps the events published and not yet confirmed; Publish
	// blocks at the cap. Default 10000.
	MaxInFlight int
	// Retry is how long and how often a nacked publish is retried.
	Retry sink.Retry
	// Logger receives the sink's few log lines. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Exchange == "" {
		c.Exchange = DefaultExchange
	}
	if c.RoutingKey == "" {
		c.RoutingKey = DefaultRoutingKey
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = sink.DefaultMaxInFlight
	}
	c.Retry = c.Retry.WithDefaults()
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first problem with c, after defaults.
func (c Config) Validate() error {
	_, _, err := c.withDefaults().parse()
	return err
}

func (c Config) parse() (exchange, key sink.Template, err error) {
	if strings.TrimSpace(c.URL) == "" {
		return sink.Template{}, sink.Template{}, errors.New("no RabbitMQ URL configured")
	}
	if _, err := amqp.ParseURI(c.URL); err != nil {
		return sink.Template{}, sink.Template{}, fmt.Errorf("RabbitMQ URL %s is not like amqp://user:password@host:5672/vhost", sink.RedactURL(c.URL))
	}
	if exchange, err = sink.ParseTemplate(c.Exchange); err != nil {
		return sink.Template{}, sink.Template{}, fmt.Errorf("rabbitmq exchange: %w", err)
	}
	if key, err = sink.ParseTemplate(c.RoutingKey); err != nil {
		return sink.Template{}, sink.Template{}, fmt.Errorf("rabbitmq routing key: %w", err)
	}
	switch c.DeclareExchange {
	case "", amqp.ExchangeTopic, amqp.ExchangeDirect, amqp.ExchangeFanout, amqp.ExchangeHeaders:
	default:
		return sink.Template{}, sink.Template{}, fmt.Errorf("rabbitmq exchange kind %q is not topic, direct, fanout or headers", c.DeclareExchange)
	}
	if c.DeclareExchange != "" && !exchange.Constant() {
		return sink.Template{}, sink.Template{}, fmt.Errorf("rabbitmq exchange %q has placeholders; it cannot be declared at start-up", c.Exchange)
	}
	if c.MaxInFlight < 1 {
		return sink.Template{}, sink.Template{}, fmt.Errorf("rabbitmq max in-flight %d is below 1", c.MaxInFlight)
	}
	return exchange, key, nil
}

// Sink publishes events to a RabbitMQ exchange with publisher confirms:
// an event is acknowledged once the broker confirmed it (for durable queues,
// after it was persisted). Messages are persistent, with message_id = event
// id, type = event type, timestamp = created_at, and the headers id,
// event_type, aggregate_type, aggregate_id (AMQP has no record key) and
// the event's own.
//
// Order: at most one publish per aggregate id is in flight; the next event
// of an aggregate is sent only after the previous one was confirmed, so a
// retried (nacked) event cannot be overtaken. A returned (unroutable)
// event, a nack that survives Retry, or a closed channel fail that event
// and every later one; the relay resumes from the slot with a new
// connection. Events unconfirmed when the connection dropped are sent
// again then (at-least-once: consumers dedupe on message_id), each
// aggregate's first copies still in order.
//
// Goroutines: the caller's (Publish) and one ack goroutine, which waits for
// the confirms in publish order, sees returned messages, and sends each
// aggregate's next event.
type Sink struct {
	cfg      Config
	exchange sink.Template
	key      sink.Template
	conn     *amqp.Connection
	ch       *amqp.Channel
	log      *slog.Logger

	confirms *sink.ConfirmPipeline[*rabbitItem]
	returns  chan amqp.Return
	returned map[string]amqp.Return // message id -> return, ack goroutine only
}

var _ sink.Publisher = (*Sink)(nil)

type rabbitItem struct {
	id       string
	exchange string
	routing  string
	msg      amqp.Publishing

	conf *amqp.DeferredConfirmation // of the latest attempt
}

// New connects, opens a channel in confirm mode, declares the
// exchange if asked, and starts the ack goroutine.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	exchange, key, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	conn, err := amqp.DialConfig(cfg.URL, amqp.Config{Properties: amqp.Table{"connection_name": "outbox-relay"}})
	if err != nil {
		// amqp errors do not repeat the URL; show it redacted.
		return nil, fmt.Errorf("connecting to RabbitMQ at %s: %w", sink.RedactURL(cfg.URL), err)
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err == nil && cfg.DeclareExchange != "" {
		err = ch.ExchangeDeclare(exchange.String(), cfg.DeclareExchange, true, false, false, false, nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("setting up the RabbitMQ channel (exchange %s): %w", cfg.Exchange, err)
	}
	r := &Sink{
		cfg:      cfg,
		exchange: exchange,
		key:      key,
		conn:     conn,
		ch:       ch,
		log:      cfg.Logger,
		returns:  ch.NotifyReturn(make(chan amqp.Return, cfg.MaxInFlight)),
		returned: make(map[string]amqp.Return),
	}
	r.confirms = sink.NewConfirmPipeline(cfg.MaxInFlight, cfg.Retry, sink.ConfirmFuncs[*rabbitItem]{
		Send:      r.send,
		Wait:      r.confirmed,
		Retryable: r.retryable,
		Retrying:  r.retrying,
		Failed:    publishError,
		Closed:    r.closed,
	})
	r.log.Info("connected to RabbitMQ", "url", sink.RedactURL(cfg.URL), "exchange", cfg.Exchange, "routing_key", cfg.RoutingKey, "mandatory", cfg.Mandatory)
	return r, nil
}

// Publish sends ev, or queues it behind its aggregate's in-flight event. It
// blocks at MaxInFlight and returns ctx.Err() or a closed error without
// calling ack; otherwise ack is called exactly once from the ack goroutine.
func (r *Sink) Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error {
	if err := r.confirms.Acquire(ctx); err != nil {
		return sink.PrefixClosed("rabbitmq", err)
	}
	h := make(amqp.Table, 4+len(ev.Headers))
	for _, eh := range ev.Headers {
		h[eh.Key] = string(eh.Value)
	}
	h["id"] = ev.ID
	h["event_type"] = ev.EventType
	h["aggregate_type"] = ev.AggregateType
	h["aggregate_id"] = ev.AggregateID
	it := &rabbitItem{
		id:       ev.ID,
		exchange: r.exchange.Render(ev),
		routing:  r.key.Render(ev),
		msg: amqp.Publishing{
			Headers:      h,
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    ev.ID,
			Type:         ev.EventType,
			Timestamp:    ev.CreatedAt,
			Body:         append([]byte(nil), ev.Payload...),
		},
	}
	return sink.PrefixClosed("rabbitmq", r.confirms.Submit(ev.AggregateID, it, ack))
}

// send starts one publish of it with a deferred confirm
// (sink.ConfirmFuncs.Send).
func (r *Sink) send(it *rabbitItem) (err error) {
	it.conf, err = r.ch.PublishWithDeferredConfirm(it.exchange, it.routing, r.cfg.Mandatory, false, it.msg)
	return err
}

// retryable: a returned event stays unroutable, and a closed channel
// confirms nothing more; the relay resumes with a new connection.
func (r *Sink) retryable(err error) bool {
	return !errors.Is(err, ErrUnroutable) && !r.ch.IsClosed()
}

// retrying logs a retry (sink.ConfirmFuncs.Retrying).
func (r *Sink) retrying(it *rabbitItem, attempt int, err error) {
	r.log.Warn("RabbitMQ publish failed; retrying", "event_id", it.id, "attempt", attempt, "error", err)
}

// publishError names the exchange and routing key of a publish that
// failed for good.
func publishError(it *rabbitItem, _ int, err error) error {
	return fmt.Errorf("publishing to RabbitMQ exchange %q routing key %q: %w", it.exchange, it.routing, err)
}

// InFlight returns how many published events have not had their ack
// called yet.
func (r *Sink) InFlight() int { return r.confirms.InFlight() }

// Close stops accepting events, waits until every published event's ack was
// called, then closes the channel and connection.
func (r *Sink) Close() error {
	r.confirms.Close()
	return nil
}

// closed closes the connection, and with it the channel, once the acks
// are done (sink.ConfirmFuncs.Closed).
func (r *Sink) closed() {
	r.conn.Close()
	r.log.Info("RabbitMQ connection closed")
}

// confirmed waits for the item's confirm, collecting returns meanwhile. The
// broker sends a message's return before its confirm, and the client
// queues it before it signals the confirm, so after the confirm a drain of
// the returns channel sees it.
func (r *Sink) confirmed(it *rabbitItem) error {
	for done := false; !done; {
		select {
		case ret, ok := <-r.returns:
			if !ok {
				r.returns = nil // the channel shut down
				continue
			}
			r.returned[ret.MessageId] = ret
		case <-it.conf.Done():
			done = true
		}
	}
	for drained := false; !drained; {
		select {
		case ret, ok := <-r.returns:
			if !ok {
				r.returns = nil
				drained = true
				break
			}
			r.returned[ret.MessageId] = ret
		default:
			drained = true
		}
	}
	if ret, ok := r.returned[it.id]; ok {
		delete(r.returned, it.id)
		return fmt.Errorf("%w: %d %s", ErrUnroutable, ret.ReplyCode, ret.ReplyText)
	}
	if !it.conf.Acked() {
		if r.ch.IsClosed() {
			return errors.New("channel closed before the broker confirmed")
		}
		return errors.New("broker nacked the message")
	}
	return nil
}
