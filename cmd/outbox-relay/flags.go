package main

import (
	"github.com/urfave/cli/v2"
)

// envPrefix is the prefix of the environment variable behind every flag:
// --pg-url is also OUTBOX_RELAY_PG_URL.
const envPrefix = "OUTBOX_RELAY_"

func env(name string) []string { return []string{envPrefix + name} }

// Flags shared by several commands.

func pgURLFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "pg-url",
		Usage:   "PostgreSQL connection URL or DSN (libpq PG* variables fill what it leaves out); use sslmode=verify-full in production",
		EnvVars: env("PG_URL"),
	}
}

func slotFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "slot",
		Usage:   "logical replication slot name",
		Value:   "outbox_relay",
		EnvVars: env("SLOT"),
	}
}

func publicationFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "publication",
		Usage:   "publication name",
		Value:   "outbox_relay",
		EnvVars: env("PUBLICATION"),
	}
}

func tableFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "table",
		Usage:   "outbox table, as name or schema.name",
		Value:   "public.outbox",
		EnvVars: env("TABLE"),
	}
}
