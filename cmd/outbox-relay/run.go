package main

import (
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/slot"
)

// runCommand is `outbox-relay run`. Its flags come in groups, each in its
// own file: the core ones here, kafkaFlags (kafka_flags.go), sinkFlags
// (sinks.go), observeFlags (observe.go), outboxFlags (outbox_flags.go).
func runCommand() *cli.Command {
	return &cli.Command{
		Name:   "run",
		Usage:  "stream outbox inserts to the broker until stopped (SIGINT/SIGTERM drain and exit 0)",
		Before: applyConfigFile,
		Flags:  categorized(concatFlags(coreFlags(), kafkaFlags(), sinkFlags(), outboxFlags(), observeFlags(), logFlags())),
		Action: func(c *cli.Context) error {
			log, err := newLogger(c, os.Stderr)
			if err != nil {
				return err
			}
			cfg, err := relayConfig(c, log)
			if err != nil {
				return err
			}
			publisher, describe, err := newPublisher(c, log)
			if err != nil {
				return err
			}
			obs, err := startObservability(c, log)
			if err != nil {
				return err
			}
			defer obs.Close()
			cfg.Observer = obs.Observer()
			r, err := relay.New(cfg, publisher)
			if err != nil {
				return usageErr(err)
			}
			softMemoryLimit(cfg.MaxInFlightBytes, log)
			log.Info("starting", "version", version, "slot", cfg.Slot.Slot, "table", cfg.Slot.Table, "sink", describe)
			if err := r.Run(c.Context); err != nil {
				return err
			}
			log.Info("stopped")
			return nil
		},
	}
}

func concatFlags(groups ...[]cli.Flag) []cli.Flag {
	var out []cli.Flag
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

func coreFlags() []cli.Flag {
	return []cli.Flag{
		configFlag(), pgURLFlag(), slotFlag(), publicationFlag(), tableFlag(),
		&cli.BoolFlag{Name: "create-slot", Value: true, EnvVars: env("CREATE_SLOT"),
			Usage: "create the publication (of --table) and the replication slot when missing, as slot create does (a slot is never recreated after progress was made)"},
		failoverFlag(),
		&cli.StringFlag{Name: "columns", EnvVars: env("COLUMNS"),
			Usage: "column mapping over the defaults, e.g. aggregate_type=aggregatetype,aggregate_id=aggregateid,event_type=type"},
		&cli.StringFlag{Name: "topic", Value: "outbox.{aggregate_type}", EnvVars: env("TOPIC"),
			Usage: "topic (or subject, stream...) template; {column} placeholders"},
		&cli.DurationFlag{Name: "status-interval", Value: 10 * time.Second, EnvVars: env("STATUS_INTERVAL"),
			Usage: "how often a standby status update tells PostgreSQL the confirmed position, so that it can free WAL (also the keepalive that stops it ending the connection)"},
		&cli.DurationFlag{Name: "receive-timeout", Value: 30 * time.Second, EnvVars: env("RECEIVE_TIMEOUT"),
			Usage: "silence from PostgreSQL after which the connection is presumed dead"},
		&cli.DurationFlag{Name: "heartbeat-interval", Value: 30 * time.Second, EnvVars: env("HEARTBEAT_INTERVAL"),
			Usage: "when nothing was published for this long, write a heartbeat message so the slot advances even if only other tables or databases change (0: off)"},
		&cli.StringFlag{Name: "on-error", EnvVars: env("ON_ERROR"),
			Usage: "a poison event (a row that cannot become a record, or a record the broker refuses for its content): dead-letter (default for kafka) sends it to --dead-letter-topic and goes on; stop (default for other sinks) exits 1 without confirming past it and names the slot skip command that skips it. Broker outages and authorization errors are never poison: the relay pauses and retries"},
		&cli.StringFlag{Name: "dead-letter-topic", Value: "outbox.dead-letter", EnvVars: env("DEAD_LETTER_TOPIC"),
			Usage: "topic for rejected events, with headers outbox-relay-error and outbox-relay-original-topic"},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: 30 * time.Second, EnvVars: env("SHUTDOWN_TIMEOUT"),
			Usage: "how long a stop may take to finish the open transaction and drain broker acks; a stop that runs out of time exits 1 and says how many events will be sent again"},
		&cli.Int64Flag{Name: "max-in-flight-bytes", Value: relay.DefaultMaxInFlightBytes, EnvVars: env("MAX_IN_FLIGHT_BYTES"),
			Usage: "bytes of events published and not yet acknowledged, at most (with --max-in-flight); a larger event goes alone"},
		&cli.DurationFlag{Name: "prune-after", EnvVars: env("PRUNE_AFTER"),
			Usage: "delete outbox rows older than this (by created_at) once the relay has confirmed them, 1,000 per statement; needs DELETE on the table (0: off, the table is left alone)"},
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
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: tidyAttr}
	switch c.String("log-format") {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usagef("--log-format %q: want text or json", c.String("log-format"))
	}
}

// tidyAttr writes a WAL position as PostgreSQL does, 0/3C7CDAB0, in JSON
// logs too (where it would otherwise be a bare number), so that it reads
// the same as in text logs, `status` and pg_replication_slots; and an
// error on one line, each repeated line once (errors.Join and pgx's
// per-address connection errors span lines, which log lines escape as
// \n\t).
func tidyAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindAny {
		return a
	}
	switch v := a.Value.Any().(type) {
	case pglogrepl.LSN:
		a.Value = slog.StringValue(v.String())
	case error:
		if msg := v.Error(); strings.Contains(msg, "\n") {
			a.Value = slog.StringValue(oneLine(v))
		}
	}
	return a
}

// relayConfig turns the core and outbox flags into a validated relay.Config.
func relayConfig(c *cli.Context, log *slog.Logger) (relay.Config, error) {
	connString, err := pgConnString(c)
	if err != nil {
		return relay.Config{}, err
	}
	cols := decoder.DefaultColumns()
	if spec := c.String("columns"); spec != "" {
		if cols, err = decoder.ParseColumns(spec); err != nil {
			return relay.Config{}, usagef("--columns: %w", err)
		}
	}
	cfg := relay.Config{
		ConnString: connString,
		Slot: slot.Config{
			Slot:        c.String("slot"),
			Publication: c.String("publication"),
			Table:       c.String("table"),
			Failover:    c.Bool("failover"),
		},
		CreateSlot: c.Bool("create-slot"),
		Decoder: decoder.Config{
			Table:   c.String("table"),
			Columns: cols,
			Topic:   c.String("topic"),
		},
		StatusInterval:    c.Duration("status-interval"),
		ReceiveTimeout:    c.Duration("receive-timeout"),
		ShutdownTimeout:   c.Duration("shutdown-timeout"),
		HeartbeatInterval: c.Duration("heartbeat-interval"),
		PruneAfter:        c.Duration("prune-after"),
		DeadLetterTopic:   c.String("dead-letter-topic"),
		MaxInFlightBytes:  c.Int64("max-in-flight-bytes"),
		// A dead letter must fit the broker's record limit.
		DeadLetterMaxBytes: c.Int("kafka-max-message-bytes"),
		Logger:             log,
	}
	// Dead-lettering needs a sink that tells record rejections apart and
	// routes by topic: Kafka.
	kafka := c.String("sink") == "" || c.String("sink") == "kafka"
	switch onErr := c.String("on-error"); {
	case onErr == "" && kafka:
		cfg.OnError = relay.OnErrorDeadLetter
	case onErr == "":
		cfg.OnError = relay.OnErrorStop
	case onErr == relay.OnErrorDeadLetter && !kafka:
		return relay.Config{}, usagef("--on-error dead-letter works with --sink kafka only; use --on-error stop with --sink %s", c.String("sink"))
	default:
		cfg.OnError = onErr
	}
	if c.Bool("exactly-once") {
		if !kafka {
			return relay.Config{}, usagef("--exactly-once works with --sink kafka only (for %s, see README.md: Exactly once)", c.String("sink"))
		}
		cfg.ExactlyOnce = true
		cfg.TxnMaxEvents = c.Int("kafka-txn-max-events")
		cfg.TxnMaxBytes = c.Int64("kafka-txn-max-bytes")
		cfg.TxnLinger = c.Duration("kafka-txn-linger")
		if n := c.Int("max-in-flight"); cfg.TxnMaxEvents < 1 || cfg.TxnMaxEvents > n/2 {
			return relay.Config{}, usagef("--kafka-txn-max-events %d must be between 1 and half of --max-in-flight (%d): a transaction's events stay in flight until it commits", cfg.TxnMaxEvents, n/2)
		}
		if cfg.TxnMaxBytes < 1 || cfg.TxnLinger <= 0 {
			return relay.Config{}, usagef("--kafka-txn-max-bytes and --kafka-txn-linger must be positive")
		}
	}
	if cfg.MaxInFlightBytes < 1 {
		return relay.Config{}, usagef("--max-in-flight-bytes %d is below 1", cfg.MaxInFlightBytes)
	}
	if err := applyOutboxFlags(c, &cfg); err != nil {
		return relay.Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return relay.Config{}, usageErr(err)
	}
	return cfg, nil
}

// softMemoryLimit tells the Go runtime to collect garbage harder as the
// heap nears twice the in-flight byte budget plus room for everything else,
// unless GOMEMLIMIT says otherwise: with large events the default (a heap
// twice the live data) would let the process grow well past what the
// budget holds.
func softMemoryLimit(budget int64, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := 2*budget + 64<<20
	debug.SetMemoryLimit(limit)
	log.Debug("soft memory limit set (GOMEMLIMIT overrides it)", "bytes", limit)
}
