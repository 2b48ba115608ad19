package main

import (
	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/relay"
)

// outboxFlags shape how outbox rows (and table-free messages) become
// events: compatibility presets, extra header columns, message mode.
func outboxFlags() []cli.Flag {
	return nil
}

// applyOutboxFlags adjusts cfg from the outbox flags.
func applyOutboxFlags(c *cli.Context, cfg *relay.Config) error {
	return nil
}
