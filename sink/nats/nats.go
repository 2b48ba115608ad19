// Package nats is the NATS JetStream sink: events are published to subjects
// rendered from a template, with the event id as Nats-Msg-Id so JetStream
// drops redeliveries within the stream's duplicate window.
package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/sink"
)

// Defaults for the zero values of Config.
const (
	DefaultSubject         = "outbox.{aggregate_type}.{aggregate_id}"
	DefaultStream          = "OUTBOX"
	DefaultAckTimeout      = 5 * time.Second
	DefaultDuplicateWindow = 2 * time.Minute
)

// Config configures a NATS JetStream sink. Zero values take the
// defaults above.
type Config struct {
	// URL is the NATS server URL (or comma-separated URLs). It may carry
	// credentials; they are never logged.
	URL string
	// Subject is the subject template. Default
	// "outbox.{aggregate_type}.{aggregate_id}". Whitespace, '*' and '>'
	// in field values become '_' (they are not allowed in a subject).
	Subject string
	// CreateStream creates Stream at start-up if it does not exist, as a
	// file-backed stream over the subject template's prefix plus ">"
	// (e.g. "outbox.>") with DuplicateWindow.
	CreateStream bool
	// Stream names the stream to create. Default "OUTBOX".
	Stream string
	// DuplicateWindow is the created stream's duplicate window: a
	// redelivered event (same Nats-Msg-Id) within it is dropped.
	DuplicateWindow time.Duration
	// MaxInFlight caps the events published and not yet acknowledged;
	// Publish blocks at the cap. Default 10000.
	MaxInFlight int
	// AckTimeout bounds the wait for one publish ack. Default 5s.
	AckTimeout time.Duration
	// Retry is how long and how often a failed publish is retried.
	Retry sink.Retry
	// Logger receives the sink's few log lines. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Subject == "" {
		c.Subject = DefaultSubject
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = sink.DefaultMaxInFlight
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = DefaultAckTimeout
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

func (c Config) parse() (sink.Template, string, error) {
	if strings.TrimSpace(c.URL) == "" {
		return sink.Template{}, "", errors.New("no NATS server URL configured")
	}
	subj, err := sink.ParseTemplate(c.Subject)
	if err != nil {
		return sink.Template{}, "", fmt.Errorf("nats subject: %w", err)
	}
	switch {
	case c.MaxInFlight < 1:
		return sink.Template{}, "", fmt.Errorf("nats max in-flight %d is below 1", c.MaxInFlight)
	case c.AckTimeout < 0 || c.Retry.Timeout < 0 || c.DuplicateWindow < 0:
		return sink.Template{}, "", errors.New("nats timeouts and duplicate window must not be negative")
	}
	var filter string
	if c.CreateStream {
		if subj.Constant() {
			filter = subj.String()
		} else {
			p := subj.Prefix()
			if p == "" || !strings.HasSuffix(p, ".") {
				return sink.Template{}, "", fmt.Errorf("nats subject %q: to create the stream the template must start with literal tokens like \"outbox.\"", c.Subject)
			}
			filter = p + ">"
		}
	}
	return subj, filter, nil
}

// Sink publishes events to a NATS JetStream stream with asynchronous
// publishes and waits for each publish ack (the stream stored the message).
//
// Each message has the header Nats-Msg-Id = event id, so the stream's
// duplicate window drops a redelivery (after a relay crash or a retry):
// exactly once into the stream within that window. Headers id,
// event_type and aggregate_type come first, then the event's headers.
//
// Order: at most one publish per aggregate id is in flight; the next event
// of an aggregate is sent only after the previous one was acknowledged.
// Failed publishes are retried (same Nats-Msg-Id) within Retry, so a
// retried event cannot overtake or be overtaken by its aggregate's other
// events. Events of different aggregates are pipelined. Once an event's
// error survives the retries, it and every later event fail (nothing is
// published past it); the relay resumes from the slot.
//
// Goroutines: the caller's (Publish) and one ack goroutine, which waits for
// the acks in publish order, retries (sleeping its backoff, which delays
// other acks) and sends each aggregate's next event.
type Sink struct {
	cfg  Config
	subj sink.Template
	nc   *natsgo.Conn
	js   jetstream.JetStream
	log  *slog.Logger

	confirms *sink.ConfirmPipeline[*natsItem]
}

var _ sink.Publisher = (*Sink)(nil)

type natsItem struct {
	subject string
	header  natsgo.Header
	data    []byte

	fut jetstream.PubAckFuture // of the latest attempt
}

// New connects, checks (or creates) the stream and starts the ack
// goroutine.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	subj, filter, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	nc, err := natsgo.Connect(cfg.URL,
		natsgo.Name("outbox-relay"),
		natsgo.MaxReconnects(-1),
		natsgo.ReconnectWait(250*time.Millisecond),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", sink.RedactURL(cfg.URL), err)
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight+1),
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout),
	)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("starting JetStream client: %w", err)
	}
	if cfg.CreateStream {
		if err := ensureStream(ctx, js, cfg.Stream, filter, cfg.DuplicateWindow); err != nil {
			nc.Close()
			return nil, err
		}
	}
	n := &Sink{cfg: cfg, subj: subj, nc: nc, js: js, log: cfg.Logger}
	n.confirms = sink.NewConfirmPipeline(cfg.MaxInFlight, cfg.Retry, sink.ConfirmFuncs[*natsItem]{
		Send:     n.send,
		Wait:     wait,
		Retrying: n.retrying,
		Failed:   n.publishError,
		Closed:   n.closed,
	})
	n.log.Info("connected to NATS", "url", sink.RedactURL(cfg.URL), "subject", cfg.Subject, "max_in_flight", cfg.MaxInFlight)
	return n, nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, name, subject string, dupWindow time.Duration) error {
	_, err := js.Stream(ctx, name)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("looking up NATS stream %s: %w", name, err)
	}
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{subject},
		Storage:    jetstream.FileStorage,
		Duplicates: dupWindow,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("creating NATS stream %s for subjects %s: %w", name, subject, err)
	}
	return nil
}

// natsSubjectValue replaces what a subject token may not contain.
var natsSubjectValue = strings.NewReplacer(" ", "_", "\t", "_", "\r", "_", "\n", "_", "*", "_", ">", "_").Replace

// Publish sends ev to the subject rendered from the template, or queues it
// behind its aggregate's in-flight event. It blocks at MaxInFlight and
// returns ctx.Err() or a closed error without calling ack. Otherwise ack is
// called exactly once from the ack goroutine. Publish copies what it needs.
func (n *Sink) Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error {
	if err := n.confirms.Acquire(ctx); err != nil {
		return sink.PrefixClosed("nats", err)
	}
	h := make(natsgo.Header, 4+len(ev.Headers))
	for _, eh := range ev.Headers {
		h[eh.Key] = []string{string(eh.Value)}
	}
	h["id"] = []string{ev.ID}
	h["event_type"] = []string{ev.EventType}
	h["aggregate_type"] = []string{ev.AggregateType}
	h[jetstream.MsgIDHeader] = []string{ev.ID}
	it := &natsItem{
		subject: n.subj.RenderEscaped(ev, natsSubjectValue),
		header:  h,
		data:    append([]byte(nil), ev.Payload...),
	}
	return sink.PrefixClosed("nats", n.confirms.Submit(ev.AggregateID, it, ack))
}

// send starts one asynchronous publish of it (sink.ConfirmFuncs.Send).
func (n *Sink) send(it *natsItem) (err error) {
	msg := &natsgo.Msg{Subject: it.subject, Header: it.header, Data: it.data}
	it.fut, err = n.js.PublishMsgAsync(msg)
	return err
}

// wait waits for the publish ack of the latest attempt of it.
func wait(it *natsItem) error {
	select {
	case <-it.fut.Ok():
		return nil
	case err := <-it.fut.Err():
		return err
	}
}

// retrying logs a retry (sink.ConfirmFuncs.Retrying).
func (n *Sink) retrying(it *natsItem, attempt int, err error) {
	n.log.Warn("NATS publish failed; retrying", "event_id", it.header.Get("id"), "subject", it.subject, "attempt", attempt, "error", err)
}

// InFlight returns how many published events have not had their ack
// called yet.
func (n *Sink) InFlight() int { return n.confirms.InFlight() }

// Close stops accepting events, waits until every published event's ack was
// called (in-flight publishes finish or exhaust their retries), then closes
// the connection. Calling it again returns the same result.
func (n *Sink) Close() error {
	n.confirms.Close()
	return nil
}

// closed closes the connection once the acks are done
// (sink.ConfirmFuncs.Closed).
func (n *Sink) closed() {
	n.nc.Close()
	n.log.Info("NATS connection closed")
}

// publishError names the subject of a publish that failed for good and,
// when no stream answered, says what to create.
func (n *Sink) publishError(it *natsItem, attempts int, err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, natsgo.ErrNoResponders) {
		filter := it.subject
		if p := n.subj.Prefix(); !n.subj.Constant() && strings.HasSuffix(p, ".") {
			filter = p + ">"
		}
		stream := n.cfg.Stream
		if stream == "" {
			stream = "OUTBOX"
		}
		return fmt.Errorf("no JetStream stream captures subject %s (%w); start the relay with --nats-create-stream, "+
			"which creates stream %s (--nats-stream) over %s, or create one yourself: nats stream add %s --subjects '%s'",
			it.subject, err, stream, filter, stream, filter)
	}
	return fmt.Errorf("publishing to NATS subject %s after %d attempts: %w", it.subject, attempts, err)
}
