package main

import (
	"log/slog"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/relay"
)

// sinkFlags choose the destination. Kafka is the default.
func sinkFlags() []cli.Flag {
	return nil
}

// newPublisher builds the chosen sink from the flags; describe names it
// (without secrets) for the start-up log line.
func newPublisher(c *cli.Context, log *slog.Logger) (_ relay.NewPublisher, describe string, _ error) {
	kcfg, err := kafkaConfig(c, log)
	if err != nil {
		return nil, "", err
	}
	return kafkaPublisher(kcfg), "kafka " + strings.Join(kcfg.Brokers, ","), nil
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
