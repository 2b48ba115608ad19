package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sink"
	"github.com/outbox-relay/outbox-relay/slot"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:   "run",
		Usage:  "stream outbox inserts to Kafka until stopped (SIGINT/SIGTERM drain and exit 0)",
		Before: applyConfigFile,
		Flags: append([]cli.Flag{
			configFlag(), pgURLFlag(), slotFlag(), publicationFlag(), tableFlag(),
			&cli.BoolFlag{Name: "create-slot", Value: true, EnvVars: env("CREATE_SLOT"),
				Usage: "create the publication and slot when missing (never after progress was made)"},
			&cli.StringFlag{Name: "columns", EnvVars: env("COLUMNS"),
				Usage: "column mapping over the defaults, e.g. aggregate_type=aggregatetype,aggregate_id=aggregateid,event_type=type"},
			&cli.StringFlag{Name: "topic", Value: "outbox.{aggregate_type}", EnvVars: env("TOPIC"),
				Usage: "topic template; {column} placeholders"},
			&cli.StringSliceFlag{Name: "kafka-brokers", Value: cli.NewStringSlice("localhost:9092"), EnvVars: env("KAFKA_BROKERS"),
				Usage: "Kafka bootstrap brokers, comma separated"},
			&cli.IntFlag{Name: "max-in-flight", Value: 10000, EnvVars: env("MAX_IN_FLIGHT"),
				Usage: "records published and not yet acknowledged before reading WAL pauses"},
			&cli.DurationFlag{Name: "status-interval", Value: 10 * time.Second, EnvVars: env("STATUS_INTERVAL"),
				Usage: "how often the confirmed position is reported to PostgreSQL"},
			&cli.DurationFlag{Name: "receive-timeout", Value: 30 * time.Second, EnvVars: env("RECEIVE_TIMEOUT"),
				Usage: "silence from PostgreSQL after which the connection is presumed dead"},
			&cli.DurationFlag{Name: "shutdown-timeout", Value: 30 * time.Second, EnvVars: env("SHUTDOWN_TIMEOUT"),
				Usage: "how long a stop may take to finish the open transaction and drain broker acks"},
		}, append(kafkaFlags(), logFlags()...)...),
		Action: func(c *cli.Context) error {
			log, err := newLogger(c, os.Stderr)
			if err != nil {
				return err
			}
			cfg, kcfg, err := relayConfig(c, log)
			if err != nil {
				return err
			}
			r, err := relay.New(cfg, kafkaPublisher(kcfg))
			if err != nil {
				return usageErr(err)
			}
			log.Info("starting", "version", version, "slot", cfg.Slot.Slot, "table", cfg.Slot.Table, "brokers", strings.Join(kcfg.Brokers, ","))
			if err := r.Run(c.Context); err != nil {
				return err
			}
			log.Info("stopped")
			return nil
		},
	}
}

func kafkaFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "kafka-client-id", Value: "outbox-relay", EnvVars: env("KAFKA_CLIENT_ID"), Usage: "Kafka client id"},
		&cli.StringFlag{Name: "kafka-version", Value: "2.1.0", EnvVars: env("KAFKA_VERSION"), Usage: "Kafka protocol version to speak (>= 0.11 for the idempotent producer)"},
		&cli.StringFlag{Name: "kafka-compression", Value: "none", EnvVars: env("KAFKA_COMPRESSION"), Usage: "none, gzip, snappy, lz4 or zstd"},
	}
}

func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: env("LOG_FORMAT"), Usage: "text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("LOG_LEVEL"), Usage: "debug, info, warn or error"},
	}
}

func newLogger(c *cli.Context, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.String("log-format") {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usagef("--log-format %q: want text or json", c.String("log-format"))
	}
}

// relayConfig turns the run flags into config structs, each validated.
func relayConfig(c *cli.Context, log *slog.Logger) (relay.Config, sink.KafkaConfig, error) {
	connString, err := pgConnString(c)
	if err != nil {
		return relay.Config{}, sink.KafkaConfig{}, err
	}
	cols := decoder.DefaultColumns()
	if spec := c.String("columns"); spec != "" {
		if cols, err = decoder.ParseColumns(spec); err != nil {
			return relay.Config{}, sink.KafkaConfig{}, usagef("--columns: %w", err)
		}
	}
	cfg := relay.Config{
		ConnString: connString,
		Slot: slot.Config{
			Slot:        c.String("slot"),
			Publication: c.String("publication"),
			Table:       c.String("table"),
		},
		CreateSlot: c.Bool("create-slot"),
		Decoder: decoder.Config{
			Table:   c.String("table"),
			Columns: cols,
			Topic:   c.String("topic"),
		},
		StatusInterval:  c.Duration("status-interval"),
		ReceiveTimeout:  c.Duration("receive-timeout"),
		ShutdownTimeout: c.Duration("shutdown-timeout"),
		Logger:          log,
	}
	if err := cfg.Validate(); err != nil {
		return relay.Config{}, sink.KafkaConfig{}, usageErr(err)
	}
	kcfg := sink.KafkaConfig{
		Brokers:     splitList(c.StringSlice("kafka-brokers")),
		ClientID:    c.String("kafka-client-id"),
		Version:     c.String("kafka-version"),
		MaxInFlight: c.Int("max-in-flight"),
		Compression: c.String("kafka-compression"),
		Logger:      log,
	}
	if err := kcfg.Validate(); err != nil {
		return relay.Config{}, sink.KafkaConfig{}, usageErr(err)
	}
	return cfg, kcfg, nil
}

// kafkaPublisher connects a fresh producer for each session.
func kafkaPublisher(cfg sink.KafkaConfig) relay.NewPublisher {
	return func(context.Context) (relay.Publisher, error) {
		// NewKafka's errors name the brokers already.
		return sink.NewKafka(cfg)
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
