// Package redis is the Redis Streams sink: events are appended (XADD) to
// streams rendered from a template, in pipelines sent in order.
package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/sink"
)

// Defaults for the zero values of Config.
const (
	DefaultStream   = "outbox.{aggregate_type}"
	DefaultMaxBatch = 512
)

// Config configures a Redis Streams sink. Zero values take the
// defaults.
type Config struct {
	// URL is the server URL, e.g. redis://127.0.0.1:6379/0 (rediss:// for
	// TLS). A password in it is never logged.
	URL string
	// Stream is the stream key template. Default "outbox.{aggregate_type}".
	Stream string
	// MaxLen, if positive, trims each stream to about that many entries
	// (XADD MAXLEN ~).
	MaxLen int64
	// MaxInFlight caps the events published and not yet acknowledged;
	// Publish blocks at the cap. Default 10000.
	MaxInFlight int
	// MaxBatch caps the XADDs sent in one pipeline. Default 512.
	MaxBatch int
	// Retry is how long and how often a failed pipeline is retried.
	Retry sink.Retry
	// Logger receives the sink's few log lines. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = sink.DefaultMaxInFlight
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
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

func (c Config) parse() (*goredis.Options, sink.Template, error) {
	if strings.TrimSpace(c.URL) == "" {
		return nil, sink.Template{}, errors.New("no Redis URL configured")
	}
	opts, err := goredis.ParseURL(c.URL)
	if err != nil {
		// The parse error may quote the URL, password included.
		return nil, sink.Template{}, fmt.Errorf("redis URL %s is not like redis://host:6379/0", sink.RedactURL(c.URL))
	}
	tmpl, err := sink.ParseTemplate(c.Stream)
	if err != nil {
		return nil, sink.Template{}, fmt.Errorf("redis stream: %w", err)
	}
	switch {
	case c.MaxLen < 0:
		return nil, sink.Template{}, fmt.Errorf("redis max length %d is negative", c.MaxLen)
	case c.MaxInFlight < 1:
		return nil, sink.Template{}, fmt.Errorf("redis max in-flight %d is below 1", c.MaxInFlight)
	case c.MaxBatch < 1:
		return nil, sink.Template{}, fmt.Errorf("redis max batch %d is below 1", c.MaxBatch)
	case c.Retry.Timeout < 0:
		return nil, sink.Template{}, errors.New("redis retry timeout must not be negative")
	}
	return opts, tmpl, nil
}

// Sink appends each event to a Redis stream (XADD) rendered from a
// template, with the fields id, aggregate_type, aggregate_id, event_type,
// created_at, headers (a JSON object) and payload (the stored bytes).
//
// Order: one goroutine sends the events in publish order as pipelines over
// one connection, and a failed pipeline is retried whole before anything
// later is sent, so every stream (and so every aggregate) receives its
// entries in commit order. A retry after a lost reply may append an entry
// twice (at-least-once; consumers dedupe on the id field); the first copy
// is always in order. An error that survives Retry fails the batch and
// every later event; the relay resumes from the slot.
//
// Goroutines: the caller's (Publish) and one sender, which also calls the
// acks after each pipeline.
type Sink struct {
	cfg    Config
	stream sink.Template
	client *goredis.Client
	log    *slog.Logger

	queue chan redisItem
	slots *sink.Slots

	mu     sync.RWMutex // guards closed against the send to queue
	closed bool
	done   chan struct{}
	once   sync.Once
}

var _ sink.Publisher = (*Sink)(nil)

type redisItem struct {
	args *goredis.XAddArgs
	ack  func(error)
}

// New connects (checking the server with PING) and starts the sender.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	opts, tmpl, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	opts.PoolSize = 2
	// The sink retries whole pipelines itself, in order.
	opts.MaxRetries = -1
	client := goredis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("connecting to Redis at %s: %w", sink.RedactURL(cfg.URL), err)
	}
	r := &Sink{
		cfg:    cfg,
		stream: tmpl,
		client: client,
		log:    cfg.Logger,
		queue:  make(chan redisItem, cfg.MaxInFlight),
		slots:  sink.NewSlots(cfg.MaxInFlight),
		done:   make(chan struct{}),
	}
	go r.run()
	r.log.Info("connected to Redis", "url", sink.RedactURL(cfg.URL), "stream", cfg.Stream, "max_in_flight", cfg.MaxInFlight)
	return r, nil
}

// Publish queues ev's XADD. It blocks at MaxInFlight and returns ctx.Err()
// or a closed error without calling ack; otherwise ack is called exactly
// once from the sender goroutine.
func (r *Sink) Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	hdr, err := sink.HeadersJSON(ev.Headers)
	if err != nil {
		return fmt.Errorf("encoding headers of event %s: %w", ev.ID, err)
	}
	args := &goredis.XAddArgs{
		Stream: r.stream.Render(ev),
		Values: []any{
			"id", ev.ID,
			"aggregate_type", ev.AggregateType,
			"aggregate_id", ev.AggregateID,
			"event_type", ev.EventType,
			"created_at", ev.CreatedAt.UTC().Format(time.RFC3339Nano),
			"headers", hdr,
			"payload", append([]byte(nil), ev.Payload...),
		},
	}
	if r.cfg.MaxLen > 0 {
		args.MaxLen, args.Approx = r.cfg.MaxLen, true
	}
	if err := r.slots.Acquire(ctx); err != nil {
		return sink.PrefixClosed("redis", err)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		r.slots.Release()
		return fmt.Errorf("redis: %w", sink.ErrSinkClosed)
	}
	r.queue <- redisItem{args: args, ack: ack} // never blocks: room for every slot
	return nil
}

// InFlight returns how many published events have not had their ack
// called yet.
func (r *Sink) InFlight() int { return r.slots.InFlight() }

// Close stops accepting events, sends what is queued, and returns once
// every ack was called; then it closes the connection.
func (r *Sink) Close() error {
	r.once.Do(func() {
		r.slots.Close()
		r.mu.Lock()
		r.closed = true
		close(r.queue)
		r.mu.Unlock()
		<-r.done
		r.client.Close()
	})
	return nil
}

// run is the sender: it gathers what is queued into one pipeline, retries
// it until it succeeds or the budget is spent, then calls the acks.
func (r *Sink) run() {
	defer close(r.done)
	var failed error
	batch := make([]redisItem, 0, r.cfg.MaxBatch)
	for it := range r.queue {
		batch = append(batch[:0], it)
	gather:
		for len(batch) < r.cfg.MaxBatch {
			select {
			case it, ok := <-r.queue:
				if !ok {
					break gather
				}
				batch = append(batch, it)
			default:
				break gather
			}
		}
		if failed == nil {
			failed = r.send(batch)
		}
		for _, it := range batch {
			it.ack(failed)
			r.slots.Release()
		}
		clear(batch)
	}
}

func (r *Sink) send(batch []redisItem) error {
	first := time.Now()
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := r.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for _, it := range batch {
				p.XAdd(ctx, it.args)
			}
			return nil
		})
		cancel()
		if err == nil {
			return nil
		}
		if time.Since(first) >= r.cfg.Retry.Timeout || !retryableRedis(err) {
			return fmt.Errorf("XADD of %d events to Redis (first stream %s) after %d attempts: %w", len(batch), batch[0].args.Stream, attempt, err)
		}
		r.log.Warn("Redis pipeline failed; retrying", "events", len(batch), "attempt", attempt, "error", err)
		sink.Sleep(nil, r.cfg.Retry.Backoff(attempt))
	}
}

// retryableRedis reports whether err may pass: network errors and the
// server's transient states. Reply errors such as WRONGTYPE are final.
func retryableRedis(err error) bool {
	var re goredis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		for _, p := range []string{"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	return true
}
