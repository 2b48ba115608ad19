package main

import (
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/relay"
)

// observeFlags configure metrics and health endpoints.
func observeFlags() []cli.Flag {
	return nil
}

// observability is the running metrics/health server.
type observability struct{}

// startObservability starts what observeFlags ask for.
func startObservability(c *cli.Context, log *slog.Logger) (*observability, error) {
	return &observability{}, nil
}

// Observer is what the relay reports to; nil means nothing observes it.
func (o *observability) Observer() relay.Observer { return nil }

// Close stops the server.
func (o *observability) Close() error { return nil }
