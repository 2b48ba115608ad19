package main

import (
	"context"
	"log/slog"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sink"
	"github.com/outbox-relay/outbox-relay/sink/nats"
	"github.com/outbox-relay/outbox-relay/sink/rabbitmq"
	"github.com/outbox-relay/outbox-relay/sink/redis"
	"github.com/outbox-relay/outbox-relay/sink/stdout"
	"github.com/outbox-relay/outbox-relay/sink/webhook"
)

// sinkFlags choose the destination. Kafka is the default; its settings are
// in kafka_flags.go. --max-in-flight (kafka_flags.go) caps every sink.
func sinkFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "sink", Value: "kafka", EnvVars: env("SINK"),
			Usage: "destination: kafka, nats, rabbitmq, redis, webhook or stdout"},
		&cli.DurationFlag{Name: "sink-retry-timeout", Value: sink.DefaultRetryTimeout, EnvVars: env("SINK_RETRY_TIMEOUT"),
			Usage: "how long the nats, rabbitmq, redis and webhook sinks retry one event before the stream fails"},

		&cli.StringFlag{Name: "nats-url", Value: "nats://127.0.0.1:4222", EnvVars: env("NATS_URL"), Usage: "NATS server URL(s), comma separated"},
		&cli.StringFlag{Name: "nats-subject", Value: nats.DefaultSubject, EnvVars: env("NATS_SUBJECT"),
			Usage: "subject template; placeholders {aggregate_type} {aggregate_id} {event_type} {id} {topic}"},
		&cli.BoolFlag{Name: "nats-create-stream", EnvVars: env("NATS_CREATE_STREAM"),
			Usage: "create the JetStream stream if missing, over the subject template's prefix (e.g. outbox.>)"},
		&cli.StringFlag{Name: "nats-stream", Value: nats.DefaultStream, EnvVars: env("NATS_STREAM"), Usage: "stream name for --nats-create-stream"},
		&cli.DurationFlag{Name: "nats-duplicate-window", Value: nats.DefaultDuplicateWindow, EnvVars: env("NATS_DUPLICATE_WINDOW"),
			Usage: "duplicate window of a stream created by --nats-create-stream"},
		&cli.DurationFlag{Name: "nats-ack-timeout", Value: nats.DefaultAckTimeout, EnvVars: env("NATS_ACK_TIMEOUT"), Usage: "wait for one publish ack"},

		&cli.StringFlag{Name: "rabbitmq-url", Value: "amqp://guest:guest@127.0.0.1:5672/", EnvVars: env("RABBITMQ_URL"), Usage: "AMQP URL"},
		&cli.StringFlag{Name: "rabbitmq-exchange", Value: rabbitmq.DefaultExchange, EnvVars: env("RABBITMQ_EXCHANGE"), Usage: "exchange template"},
		&cli.StringFlag{Name: "rabbitmq-routing-key", Value: rabbitmq.DefaultRoutingKey, EnvVars: env("RABBITMQ_ROUTING_KEY"), Usage: "routing key template"},
		&cli.StringFlag{Name: "rabbitmq-declare-exchange", EnvVars: env("RABBITMQ_DECLARE_EXCHANGE"),
			Usage: "declare the (constant) exchange as durable with this kind: topic, direct, fanout or headers"},
		&cli.BoolFlag{Name: "rabbitmq-mandatory", Value: true, EnvVars: env("RABBITMQ_MANDATORY"),
			Usage: "publish mandatory: an unroutable event fails the stream instead of being dropped"},

		&cli.StringFlag{Name: "redis-url", Value: "redis://127.0.0.1:6379/0", EnvVars: env("REDIS_URL"), Usage: "Redis URL"},
		&cli.StringFlag{Name: "redis-stream", Value: redis.DefaultStream, EnvVars: env("REDIS_STREAM"), Usage: "stream key template"},
		&cli.Int64Flag{Name: "redis-maxlen", EnvVars: env("REDIS_MAXLEN"), Usage: "trim each stream to about this many entries (0: no trimming)"},

		&cli.StringFlag{Name: "webhook-url", EnvVars: env("WEBHOOK_URL"), Usage: "URL template events are POSTed to"},
		&cli.StringFlag{Name: "webhook-secret", EnvVars: env("WEBHOOK_SECRET"),
			Usage: "shared secret for the X-Outbox-Signature HMAC-SHA256 header (prefer the environment variable)"},
		&cli.DurationFlag{Name: "webhook-timeout", Value: webhook.DefaultTimeout, EnvVars: env("WEBHOOK_TIMEOUT"), Usage: "timeout of one POST"},
		&cli.IntFlag{Name: "webhook-concurrency", Value: webhook.DefaultConcurrency, EnvVars: env("WEBHOOK_CONCURRENCY"),
			Usage: "POSTs at once (one per aggregate at most)"},
	}
}

// newPublisher builds the chosen sink from the flags; describe names it
// (without secrets) for the start-up log line.
func newPublisher(c *cli.Context, log *slog.Logger) (_ relay.NewPublisher, describe string, _ error) {
	retry := sink.Retry{Timeout: c.Duration("sink-retry-timeout")}
	maxInFlight := c.Int("max-in-flight")
	switch name := c.String("sink"); name {
	case "kafka":
		kcfg, err := kafkaConfig(c, log)
		if err != nil {
			return nil, "", err
		}
		return kafkaPublisher(kcfg), "kafka " + strings.Join(kcfg.Brokers, ","), nil
	case "nats":
		cfg := nats.Config{
			URL:             c.String("nats-url"),
			Subject:         c.String("nats-subject"),
			CreateStream:    c.Bool("nats-create-stream"),
			Stream:          c.String("nats-stream"),
			DuplicateWindow: c.Duration("nats-duplicate-window"),
			AckTimeout:      c.Duration("nats-ack-timeout"),
			MaxInFlight:     maxInFlight,
			Retry:           retry,
			Logger:          log,
		}
		if err := cfg.Validate(); err != nil {
			return nil, "", usageErr(err)
		}
		return func(ctx context.Context) (relay.Publisher, error) { return nats.New(ctx, cfg) },
			"nats " + sink.RedactURL(cfg.URL) + " subject " + cfg.Subject, nil
	case "rabbitmq":
		cfg := rabbitmq.Config{
			URL:             c.String("rabbitmq-url"),
			Exchange:        c.String("rabbitmq-exchange"),
			RoutingKey:      c.String("rabbitmq-routing-key"),
			DeclareExchange: c.String("rabbitmq-declare-exchange"),
			Mandatory:       c.Bool("rabbitmq-mandatory"),
			MaxInFlight:     maxInFlight,
			Retry:           retry,
			Logger:          log,
		}
		if err := cfg.Validate(); err != nil {
			return nil, "", usageErr(err)
		}
		return func(ctx context.Context) (relay.Publisher, error) { return rabbitmq.New(ctx, cfg) },
			"rabbitmq " + sink.RedactURL(cfg.URL) + " exchange " + cfg.Exchange, nil
	case "redis":
		cfg := redis.Config{
			URL:         c.String("redis-url"),
			Stream:      c.String("redis-stream"),
			MaxLen:      c.Int64("redis-maxlen"),
			MaxInFlight: maxInFlight,
			Retry:       retry,
			Logger:      log,
		}
		if err := cfg.Validate(); err != nil {
			return nil, "", usageErr(err)
		}
		return func(ctx context.Context) (relay.Publisher, error) { return redis.New(ctx, cfg) },
			"redis " + sink.RedactURL(cfg.URL) + " stream " + cfg.Stream, nil
	case "webhook":
		cfg := webhook.Config{
			URL:         c.String("webhook-url"),
			Secret:      c.String("webhook-secret"),
			Timeout:     c.Duration("webhook-timeout"),
			Concurrency: c.Int("webhook-concurrency"),
			MaxInFlight: maxInFlight,
			Retry:       retry,
			Logger:      log,
		}
		if err := cfg.Validate(); err != nil {
			return nil, "", usageErr(err)
		}
		return func(context.Context) (relay.Publisher, error) { return webhook.New(cfg) },
			"webhook " + webhook.SafeURL(cfg.URL), nil
	case "stdout":
		cfg := stdout.Config{Writer: os.Stdout, MaxInFlight: maxInFlight}
		return func(context.Context) (relay.Publisher, error) { return stdout.New(cfg) }, "stdout", nil
	default:
		return nil, "", usagef("--sink %q: want kafka, nats, rabbitmq, redis, webhook or stdout", name)
	}
}

// splitList accepts both repeated flags and comma-separated values.
func splitList(in []string) []string {
	var out []string
	for _, s := range in {
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}
