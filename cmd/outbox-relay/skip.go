package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/outbox/pgname"
	"github.com/outbox-relay/outbox-relay/slot"
)

// slotSkipCommand is `outbox-relay slot skip`: the way on after the relay
// stopped at an event it cannot publish (--on-error stop). It records the
// event in the skip table, which the relay reads when a session starts;
// it shows the event first.
func slotSkipCommand() *cli.Command {
	return &cli.Command{
		Name:  "skip",
		Usage: "record that the relay must not publish one event (a poison row it stopped at); the relay reads the record when it starts",
		Flags: []cli.Flag{
			pgURLFlag(), slotFlag(), tableFlag(),
			&cli.StringFlag{Name: "event", Usage: "the event id to skip, as the relay's stop message gives it"},
			&cli.StringFlag{Name: "lsn", Usage: "the WAL position of the event's row, as the stop message gives it (alone when the row's id could not be read)"},
			&cli.StringFlag{Name: "columns", EnvVars: env("COLUMNS"), Usage: "column mapping, as for run (to find the row by its id column)"},
			&cli.StringFlag{Name: "reason", Usage: "why, recorded with the skip"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("slot skip takes no arguments, got %q: use --event ID (and --lsn)", c.Args().First())
			}
			// Skipping needs no publication; the placeholder only
			// satisfies Validate.
			cfg := slot.Config{Slot: c.String("slot"), Publication: "unused", Table: c.String("table")}
			if err := cfg.Validate(); err != nil {
				return usageErr(err)
			}
			var err error
			s := slot.Skip{EventID: c.String("event")}
			if v := c.String("lsn"); v != "" {
				if s.LSN, err = pglogrepl.ParseLSN(v); err != nil {
					return usagef("--lsn %q is not a WAL position like 0/16B3748", v)
				}
			}
			if s.EventID == "" && s.LSN == 0 {
				return usagef("slot skip needs --event ID, or --lsn for a row whose id could not be read")
			}
			cols := decoder.DefaultColumns()
			if spec := c.String("columns"); spec != "" {
				if cols, err = decoder.ParseColumns(spec); err != nil {
					return usagef("--columns: %w", err)
				}
			}
			conn, err := connectPG(c.Context, c)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			w := c.App.Writer
			what := describeSkip(s)
			row, err := findRow(c.Context, conn, cfg, cols.ID, s.EventID)
			switch {
			case err != nil:
				fmt.Fprintf(w, "skipping %s (the row could not be read: %v)\n", what, err)
			case row == "":
				fmt.Fprintf(w, "skipping %s (no such row in %s now: pruned, or a table-free message)\n", what, cfg.Table)
			default:
				fmt.Fprintf(w, "skipping %s:\n  %s\n", what, clipText(row, 2000))
			}
			if err := slot.AddSkip(c.Context, conn, cfg, s, c.String("reason")); err != nil {
				return err
			}
			fmt.Fprintf(w, "recorded in %s; start the relay (slot %s) again and it will not publish this event\n", slot.SkipTable, cfg.Slot)
			return nil
		},
	}
}

func describeSkip(s slot.Skip) string {
	switch {
	case s.EventID != "" && s.LSN != 0:
		return fmt.Sprintf("event %s at LSN %s", s.EventID, s.LSN)
	case s.EventID != "":
		return "event " + s.EventID
	default:
		return "the row at LSN " + s.LSN.String()
	}
}

// findRow returns the outbox row with the given id as JSON, or "" when
// there is none (or no id was given).
func findRow(ctx context.Context, conn *pgx.Conn, cfg slot.Config, idColumn, id string) (string, error) {
	if id == "" {
		return "", nil
	}
	schema, name := cfg.SchemaAndName()
	var row string
	err := conn.QueryRow(ctx, `select row_to_json(t)::text from `+pgname.Table{Schema: schema, Name: name}.Quoted()+` t where `+
		pgname.Quote(idColumn)+`::text = $1 limit 1`, id).Scan(&row)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return row, err
}

func clipText(s string, n int) string {
	if len(s) > n {
		return s[:n] + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return s
}
