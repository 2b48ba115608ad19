package main

import (
	"context"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sink"
)

// kafkaFlags are the Kafka client settings of `run`.
func kafkaFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "kafka-brokers", Value: cli.NewStringSlice("localhost:9092"), EnvVars: env("KAFKA_BROKERS"),
			Usage: "Kafka bootstrap brokers, comma separated"},
		&cli.IntFlag{Name: "max-in-flight", Value: 10000, EnvVars: env("MAX_IN_FLIGHT"),
			Usage: "records published and not yet acknowledged before reading WAL pauses"},
		&cli.StringFlag{Name: "kafka-client-id", Value: "outbox-relay", EnvVars: env("KAFKA_CLIENT_ID"), Usage: "Kafka client id"},
		&cli.StringFlag{Name: "kafka-version", Value: "2.1.0", EnvVars: env("KAFKA_VERSION"), Usage: "Kafka protocol version to speak (>= 0.11 for the idempotent producer)"},
		&cli.StringFlag{Name: "kafka-compression", Value: "none", EnvVars: env("KAFKA_COMPRESSION"), Usage: "none, gzip, snappy, lz4 or zstd"},
	}
}

// kafkaConfig turns the Kafka flags into a validated sink.KafkaConfig.
func kafkaConfig(c *cli.Context, log *slog.Logger) (sink.KafkaConfig, error) {
	cfg := sink.KafkaConfig{
		Brokers:     splitList(c.StringSlice("kafka-brokers")),
		ClientID:    c.String("kafka-client-id"),
		Version:     c.String("kafka-version"),
		MaxInFlight: c.Int("max-in-flight"),
		Compression: c.String("kafka-compression"),
		Logger:      log,
	}
	if err := cfg.Validate(); err != nil {
		return sink.KafkaConfig{}, usageErr(err)
	}
	return cfg, nil
}

// kafkaPublisher connects a fresh producer for each session.
func kafkaPublisher(cfg sink.KafkaConfig) relay.NewPublisher {
	return func(context.Context) (relay.Publisher, error) {
		// NewKafka's errors name the brokers already.
		return sink.NewKafka(cfg)
	}
}
