package main

import (
	"context"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sink"
	"github.com/outbox-relay/outbox-relay/sink/kafka"
)

// kafkaFlags are the Kafka client settings of `run`.
func kafkaFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "kafka-brokers", Value: cli.NewStringSlice("localhost:9092"), EnvVars: env("KAFKA_BROKERS"),
			Usage: "Kafka bootstrap brokers, comma separated"},
		&cli.IntFlag{Name: "max-in-flight", Value: sink.DefaultMaxInFlight, EnvVars: env("MAX_IN_FLIGHT"),
			Usage: "records published and not yet acknowledged before reading WAL pauses"},
		&cli.StringFlag{Name: "kafka-client-id", Value: kafka.DefaultClientID, EnvVars: env("KAFKA_CLIENT_ID"), Usage: "Kafka client id"},
		&cli.StringFlag{Name: "kafka-version", Value: kafka.DefaultVersion, EnvVars: env("KAFKA_VERSION"), Usage: "Kafka protocol version to speak (>= 0.11 for the idempotent producer, >= 1.0 for SASL)"},
		&cli.StringFlag{Name: "kafka-compression", Value: "none", EnvVars: env("KAFKA_COMPRESSION"), Usage: "none, gzip, snappy, lz4 or zstd"},
		&cli.IntFlag{Name: "kafka-batch-messages", EnvVars: env("KAFKA_BATCH_MESSAGES"),
			Usage: "send a batch once it holds this many records (0: no count limit)"},
		&cli.IntFlag{Name: "kafka-batch-bytes", Value: kafka.DefaultFlushBytes, EnvVars: env("KAFKA_BATCH_BYTES"),
			Usage: "send a batch once it holds this many bytes"},
		&cli.DurationFlag{Name: "kafka-linger", Value: kafka.DefaultFlushFrequency, EnvVars: env("KAFKA_LINGER"),
			Usage: "send a batch this long after its first record at the latest"},
		&cli.IntFlag{Name: "kafka-max-message-bytes", Value: kafka.DefaultMaxMessageBytes, EnvVars: env("KAFKA_MAX_MESSAGE_BYTES"),
			Usage: "largest record sent (key, value, headers and framing); a larger one is a record error, dead-lettered or stopped at, never sent. " +
				"Set it to the topic's max.message.bytes (the brokers' message.max.bytes) or below"},

		&cli.BoolFlag{Name: "kafka-tls", EnvVars: env("KAFKA_TLS"),
			Usage: "connect to the brokers with TLS (implied by any other --kafka-tls-* flag)"},
		&cli.StringFlag{Name: "kafka-tls-ca", EnvVars: env("KAFKA_TLS_CA"), TakesFile: true,
			Usage: "PEM file of the CA certificates that sign the brokers' certificates (default: the system pool)"},
		&cli.StringFlag{Name: "kafka-tls-cert", EnvVars: env("KAFKA_TLS_CERT"), TakesFile: true,
			Usage: "PEM client certificate, for brokers that require mutual TLS (with --kafka-tls-key)"},
		&cli.StringFlag{Name: "kafka-tls-key", EnvVars: env("KAFKA_TLS_KEY"), TakesFile: true,
			Usage: "PEM key of --kafka-tls-cert"},
		&cli.StringFlag{Name: "kafka-tls-server-name", EnvVars: env("KAFKA_TLS_SERVER_NAME"),
			Usage: "name to verify the brokers' certificates against (default: each broker's host)"},
		&cli.BoolFlag{Name: "kafka-tls-insecure-skip-verify", EnvVars: env("KAFKA_TLS_INSECURE_SKIP_VERIFY"),
			Usage: "accept any broker certificate (INSECURE: for tests only; warned about at every start)"},

		&cli.StringFlag{Name: "kafka-sasl-mechanism", EnvVars: env("KAFKA_SASL_MECHANISM"),
			Usage: "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (PLAIN only with TLS, unless --kafka-sasl-allow-plaintext)"},
		&cli.BoolFlag{Name: "kafka-sasl-allow-plaintext", EnvVars: env("KAFKA_SASL_ALLOW_PLAINTEXT"),
			Usage: "allow SASL PLAIN without TLS, which sends the password in clear text: only on a network trusted not to be read"},
		&cli.StringFlag{Name: "kafka-sasl-user", EnvVars: env("KAFKA_SASL_USER"), Usage: "SASL user name"},
		// No Value: --help shows none (kafka_flags_test.go checks that it
		// shows no value from the environment or the command line either).
		&cli.StringFlag{Name: "kafka-sasl-password", EnvVars: env("KAFKA_SASL_PASSWORD"),
			Usage: "SASL password; prefer the environment variable to the command line, where ps shows it"},

		&cli.BoolFlag{Name: "exactly-once", EnvVars: env("EXACTLY_ONCE"),
			Usage: "publish in Kafka transactions with a checkpoint in each: consumers reading committed data (isolation.level=read_committed) see every event once, also after a crash"},
		&cli.StringFlag{Name: "kafka-transactional-id", EnvVars: env("KAFKA_TRANSACTIONAL_ID"),
			Usage: "transactional.id with --exactly-once (default: outbox-relay-<slot>); a relay started with the same id fences the old one"},
		&cli.StringFlag{Name: "kafka-checkpoint-topic", Value: kafka.DefaultCheckpointTopic, EnvVars: env("KAFKA_CHECKPOINT_TOPIC"),
			Usage: "compacted topic of the --exactly-once checkpoints, keyed by slot (created when missing)"},
		&cli.IntFlag{Name: "kafka-txn-max-events", Value: relay.DefaultTxnMaxEvents, EnvVars: env("KAFKA_TXN_MAX_EVENTS"),
			Usage: "with --exactly-once, commit a Kafka transaction once it holds this many events (at most half of --max-in-flight)"},
		&cli.Int64Flag{Name: "kafka-txn-max-bytes", Value: relay.DefaultTxnMaxBytes, EnvVars: env("KAFKA_TXN_MAX_BYTES"),
			Usage: "with --exactly-once, commit a Kafka transaction once it holds this many bytes (at most half of --max-in-flight-bytes)"},
		&cli.DurationFlag{Name: "kafka-txn-linger", Value: relay.DefaultTxnLinger, EnvVars: env("KAFKA_TXN_LINGER"),
			Usage: "with --exactly-once, commit a Kafka transaction this long after its first event, at the next PostgreSQL commit, or when the stream goes quiet (up to 100ms while received WAL waits behind it)"},
		&cli.DurationFlag{Name: "kafka-txn-timeout", Value: kafka.DefaultTransactionTimeout, EnvVars: env("KAFKA_TXN_TIMEOUT"),
			Usage: "with --exactly-once, transaction.timeout.ms: the broker aborts a transaction left open this long"},
	}
}

// kafkaTransaction is the --exactly-once part of the Kafka settings.
func kafkaTransaction(c *cli.Context) kafka.Transaction {
	if !c.Bool("exactly-once") {
		return kafka.Transaction{}
	}
	id := c.String("kafka-transactional-id")
	if id == "" {
		id = "outbox-relay-" + c.String("slot")
	}
	return kafka.Transaction{
		ID:              id,
		CheckpointTopic: c.String("kafka-checkpoint-topic"),
		CheckpointKey:   c.String("slot"),
		Timeout:         c.Duration("kafka-txn-timeout"),
	}
}

// kafkaConfig turns the Kafka flags into a validated kafka.Config.
func kafkaConfig(c *cli.Context, log *slog.Logger) (kafka.Config, error) {
	cfg := kafka.Config{
		Brokers:         splitList(c.StringSlice("kafka-brokers")),
		ClientID:        c.String("kafka-client-id"),
		Version:         c.String("kafka-version"),
		MaxInFlight:     c.Int("max-in-flight"),
		Compression:     c.String("kafka-compression"),
		FlushMessages:   c.Int("kafka-batch-messages"),
		FlushBytes:      c.Int("kafka-batch-bytes"),
		FlushFrequency:  c.Duration("kafka-linger"),
		MaxMessageBytes: c.Int("kafka-max-message-bytes"),
		TLS: kafka.TLS{
			Enable:             c.Bool("kafka-tls"),
			CAFile:             c.String("kafka-tls-ca"),
			CertFile:           c.String("kafka-tls-cert"),
			KeyFile:            c.String("kafka-tls-key"),
			ServerName:         c.String("kafka-tls-server-name"),
			InsecureSkipVerify: c.Bool("kafka-tls-insecure-skip-verify"),
		},
		SASL: kafka.SASL{
			Mechanism:      c.String("kafka-sasl-mechanism"),
			User:           c.String("kafka-sasl-user"),
			Password:       c.String("kafka-sasl-password"),
			AllowPlaintext: c.Bool("kafka-sasl-allow-plaintext"),
		},
		Transaction: kafkaTransaction(c),
		Logger:      log,
	}
	if err := cfg.Validate(); err != nil {
		return kafka.Config{}, usageErr(err)
	}
	return cfg, nil
}

// kafkaPublisher connects a fresh producer for each session.
func kafkaPublisher(cfg kafka.Config) relay.NewPublisher {
	return func(context.Context) (relay.Publisher, error) {
		// NewKafka's errors name the brokers already; a rejected password
		// or certificate is a *kafka.RejectedError (ConfigProblem).
		return kafka.New(cfg)
	}
}
