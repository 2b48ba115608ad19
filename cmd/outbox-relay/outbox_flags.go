package main

import (
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/relay"
)

// outboxFlags shape how outbox rows (and table-free messages) become
// events: compatibility presets, extra header columns, message mode.
func outboxFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "message-prefix", Value: decoder.DefaultMessagePrefix, EnvVars: env("MESSAGE_PREFIX"),
			Usage: `prefix of transactional logical decoding messages that carry table-free events (outbox.Emit); "" turns message mode off`},
		&cli.StringFlag{Name: "compat", EnvVars: env("COMPAT"),
			Usage: "compatibility preset: debezium (columns aggregatetype, aggregateid, type, payload; topics outbox.event.{aggregate_type} unless --topic is set; --columns applies on top)"},
		&cli.StringFlag{Name: "header-columns", EnvVars: env("HEADER_COLUMNS"),
			Usage: "extra columns passed as record headers (name = column, value = its text; NULL adds none), e.g. tenant,correlation_id"},
		&cli.StringFlag{Name: "trace-column", Value: decoder.DefaultTraceColumn, EnvVars: env("TRACE_COLUMN"),
			Usage: `column holding a W3C traceparent, passed as the traceparent header when the table has it ("" for none)`},
	}
}

// applyOutboxFlags adjusts cfg from the outbox flags. It runs after the
// core flags filled cfg.Decoder and before cfg.Validate.
func applyOutboxFlags(c *cli.Context, cfg *relay.Config) error {
	d := &cfg.Decoder
	switch compat := c.String("compat"); compat {
	case "":
	case "debezium":
		cols, err := decoder.ParseColumnsOver(decoder.DebeziumColumns(), c.String("columns"))
		if err != nil {
			return usagef("--columns: %w", err)
		}
		d.Columns = cols
		if !c.IsSet("topic") {
			d.Topic = decoder.DebeziumTopic
		}
	default:
		return usagef("--compat %q: want debezium (or nothing)", compat)
	}
	d.MessagePrefix = c.String("message-prefix")
	d.TraceColumn = c.String("trace-column")
	d.HeaderColumns = nil
	for _, col := range strings.Split(c.String("header-columns"), ",") {
		if col = strings.TrimSpace(col); col != "" {
			d.HeaderColumns = append(d.HeaderColumns, col)
		}
	}
	if err := d.Validate(); err != nil {
		return usagef("outbox flags: %w", err)
	}
	return nil
}
