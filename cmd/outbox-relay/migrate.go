package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/outbox/pgname"
	"github.com/outbox-relay/outbox-relay/relay"
)

func migrateCommand() *cli.Command {
	return &cli.Command{
		Name:  "migrate",
		Usage: "create the outbox table and its created_at index (idempotent)",
		Flags: []cli.Flag{pgURLFlag(), tableFlag()},
		Action: func(c *cli.Context) error {
			table := c.String("table")
			if _, err := pgname.ParseTable(table); err != nil {
				return usagef("--table: %w", err)
			}
			conn, err := connectPG(c.Context, c)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			existed, err := migrations.Exists(c.Context, conn, table)
			if err != nil {
				return err
			}
			if err := migrations.Apply(c.Context, conn, table); err != nil {
				return err
			}
			if existed {
				fmt.Fprintf(c.App.Writer, "table %s already exists; left it unchanged\n", table)
			} else {
				fmt.Fprintf(c.App.Writer, "created table %s with its created_at index\n", table)
			}
			return nil
		},
	}
}

// pgEnv are the libpq variables that say where to connect when --pg-url is
// empty.
var pgEnv = []string{"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"}

// pgConnString returns --pg-url. It is a usage error to leave it empty with
// none of the libpq PG* variables set: connecting to a default local server
// by accident is more surprising than helpful.
func pgConnString(c *cli.Context) (string, error) {
	s := c.String("pg-url")
	if s != "" {
		return s, nil
	}
	for _, v := range pgEnv {
		if os.Getenv(v) != "" {
			return "", nil
		}
	}
	return "", usagef("--pg-url (or OUTBOX_RELAY_PG_URL, or PGHOST and friends) is required")
}

// defaultConnectTimeout bounds a connection attempt whose connection string
// sets no connect_timeout.
const defaultConnectTimeout = 15 * time.Second

// connectPG opens a normal (not replication) connection from --pg-url and the
// PG* environment. Its errors never contain the password.
func connectPG(ctx context.Context, c *cli.Context) (*pgx.Conn, error) {
	connString, err := pgConnString(c)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		// The parser's own message quotes the connection string and redacts
		// the password only on a best-effort basis.
		return nil, usagef("--pg-url is not a valid PostgreSQL URL or key=value connection string")
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, redact(relay.ConnectError(err), cfg.Password)
	}
	return conn, nil
}

// redactedError hides a password in the text of the error it wraps.
type redactedError struct {
	err      error
	password string
}

func (e redactedError) Error() string {
	return strings.ReplaceAll(e.err.Error(), e.password, "xxxxx")
}

func (e redactedError) Unwrap() error { return e.err }

// redact makes sure password does not appear in err's text. pgconn keeps
// passwords out of its errors; this guards against a future change.
func redact(err error, password string) error {
	if err == nil || password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return redactedError{err: err, password: password}
}
