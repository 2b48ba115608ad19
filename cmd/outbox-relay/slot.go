package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/slot"
)

func slotCommand() *cli.Command {
	return &cli.Command{
		Name:  "slot",
		Usage: "manage the publication and the logical replication slot",
		Subcommands: []*cli.Command{
			sharedSettings(slotCreateCommand()),
			sharedSettings(slotDropCommand()),
			sharedSettings(slotListCommand()),
			sharedSettings(slotSkipCommand()),
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("unknown command slot %s: want slot create, slot drop, slot list or slot skip", c.Args().First())
			}
			return usagef("slot needs a command: create, drop, list or skip")
		},
	}
}

// slotConfig reads and validates the slot flags.
func slotConfig(c *cli.Context) (slot.Config, error) {
	cfg := slot.Config{
		Slot:        c.String("slot"),
		Publication: c.String("publication"),
		Table:       c.String("table"),
		Failover:    c.Bool("failover"),
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usageErr(err)
	}
	return cfg, nil
}

func slotCreateCommand() *cli.Command {
	return &cli.Command{
		Name:  "create",
		Usage: "check the server, then create the publication and the slot if missing (idempotent)",
		Flags: []cli.Flag{pgURLFlag(), slotFlag(), publicationFlag(), tableFlag(), failoverFlag()},
		Action: func(c *cli.Context) error {
			cfg, err := slotConfig(c)
			if err != nil {
				return err
			}
			conn, err := connectPG(c.Context, c)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			if err := slot.Preflight(c.Context, conn, cfg); err != nil {
				return err
			}
			ch, err := slot.Create(c.Context, conn, cfg)
			if err != nil {
				return err
			}
			w := c.App.Writer
			if ch.Publication {
				fmt.Fprintf(w, "created publication %s of inserts into %s\n", cfg.Publication, cfg.Table)
			} else {
				fmt.Fprintf(w, "publication %s already exists and includes %s\n", cfg.Publication, cfg.Table)
			}
			info, ok, err := slot.Get(c.Context, conn, cfg.Slot)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("replication slot %s missing right after creating it", cfg.Slot)
			}
			if ch.Slot {
				kind := "pgoutput"
				if info.Failover {
					kind += ", failover"
				}
				fmt.Fprintf(w, "created replication slot %s (%s); streaming starts at %s\n", cfg.Slot, kind, info.ConfirmedFlush)
			} else {
				fmt.Fprintf(w, "replication slot %s already exists (confirmed_flush_lsn %s, %s behind)\n", cfg.Slot, info.ConfirmedFlush, walBytes(info.LagBytes))
			}
			return nil
		},
	}
}

// failoverFlag is --failover of `slot create` and `run`.
func failoverFlag() cli.Flag {
	return &cli.BoolFlag{Name: "failover", EnvVars: env("FAILOVER"),
		Usage: "create the slot as a failover slot (PostgreSQL 17+), which standbys with sync_replication_slots keep, " +
			"so the relay goes on after a promotion (README: High availability of PostgreSQL)"}
}

func slotDropCommand() *cli.Command {
	return &cli.Command{
		Name:  "drop",
		Usage: "drop the slot, then the publication; missing ones are reported, not errors. Refuses while the slot holds undelivered outbox events, unless --force",
		Flags: []cli.Flag{pgURLFlag(), slotFlag(), publicationFlag(),
			&cli.StringFlag{Name: "message-prefix", Value: decoder.DefaultMessagePrefix, EnvVars: env("MESSAGE_PREFIX"),
				Usage: "as for run: the logical decoding message prefix of table-free events, counted as undelivered events too"},
			&cli.BoolFlag{Name: "force", Usage: "drop the slot even though it holds undelivered outbox events (they are lost to the relay)"},
		},
		Action: func(c *cli.Context) error {
			// Dropping needs no table; the placeholder only satisfies
			// Validate, which checks the names before connecting.
			cfg := slot.Config{Slot: c.String("slot"), Publication: c.String("publication"), Table: "unused"}
			if err := cfg.Validate(); err != nil {
				return usageErr(err)
			}
			conn, err := connectPG(c.Context, c)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			if !c.Bool("force") {
				if err := refuseWhilePending(c.Context, conn, cfg, c.String("message-prefix")); err != nil {
					return err
				}
			}
			ch, err := slot.Drop(c.Context, conn, cfg)
			w := c.App.Writer
			// Report what happened before a later step failed.
			if ch.Slot {
				fmt.Fprintf(w, "dropped replication slot %s\n", cfg.Slot)
			}
			if err != nil {
				return err
			}
			if !ch.Slot {
				fmt.Fprintf(w, "replication slot %s does not exist; nothing to drop\n", cfg.Slot)
			}
			if ch.Publication {
				fmt.Fprintf(w, "dropped publication %s\n", cfg.Publication)
			} else {
				fmt.Fprintf(w, "publication %s does not exist; nothing to drop\n", cfg.Publication)
			}
			return nil
		},
	}
}

// refuseWhilePending fails when the slot exists and holds outbox events the
// relay has not confirmed: dropping it would lose them.
func refuseWhilePending(ctx context.Context, conn *pgx.Conn, cfg slot.Config, messagePrefix string) error {
	if _, ok, err := slot.Get(ctx, conn, cfg.Slot); err != nil || !ok {
		return err
	}
	p, err := slot.PendingEvents(ctx, conn, cfg.Slot, cfg.Publication, messagePrefix)
	if err != nil {
		return fmt.Errorf("not dropping replication slot %s: cannot tell whether it holds undelivered outbox events (%v); "+
			"stop the relay using it, or drop it anyway with --force", cfg.Slot, oneLine(err))
	}
	if p.Events == 0 {
		return nil
	}
	age := time.Since(p.Oldest).Round(time.Second)
	return fmt.Errorf("not dropping replication slot %s: it holds %d undelivered outbox event(s), the oldest committed %s ago (%s); "+
		"run the relay until they are delivered (outbox-relay status shows the lag), or drop it anyway with --force, which loses them",
		cfg.Slot, p.Events, age, p.Oldest.UTC().Format(time.RFC3339))
}

func slotListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "show every replication slot on the server with its lag, wal_status and safe_wal_size",
		Flags: []cli.Flag{
			pgURLFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print a JSON array, for scripts"},
		},
		Action: func(c *cli.Context) error {
			conn, err := connectPG(c.Context, c)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			slots, err := slot.List(c.Context, conn)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeSlotsJSON(c.App.Writer, slots)
			}
			return writeSlotsTable(c.App.Writer, slots)
		},
	}
}

// slotJSON is the --json form of a slot; its keys are the column names of
// pg_replication_slots where there is one.
type slotJSON struct {
	Slot               string `json:"slot_name"`
	Type               string `json:"slot_type"`
	Plugin             string `json:"plugin"`
	Database           string `json:"database"`
	Active             bool   `json:"active"`
	ActivePID          *int   `json:"active_pid"`
	ConfirmedFlushLSN  string `json:"confirmed_flush_lsn"`
	RestartLSN         string `json:"restart_lsn"`
	LagBytes           int64  `json:"lag_bytes"`
	RetainedBytes      int64  `json:"retained_bytes"`
	WALStatus          string `json:"wal_status"`
	SafeWALSize        *int64 `json:"safe_wal_size"`
	Temporary          bool   `json:"temporary"`
	Failover           bool   `json:"failover"`
	Synced             bool   `json:"synced"`
	InvalidationReason string `json:"invalidation_reason,omitempty"`
}

func writeSlotsJSON(w io.Writer, slots []slot.Info) error {
	out := make([]slotJSON, 0, len(slots))
	for _, s := range slots {
		j := slotJSON{
			Slot: s.Name, Type: s.Type, Plugin: s.Plugin, Database: s.Database, Active: s.Active,
			ConfirmedFlushLSN: s.ConfirmedFlush.String(), RestartLSN: s.RestartLSN.String(),
			LagBytes: s.LagBytes, RetainedBytes: s.RetainedBytes,
			WALStatus: s.WALStatus, SafeWALSize: s.SafeWALSize,
			Temporary: s.Temporary, Failover: s.Failover, Synced: s.Synced,
			InvalidationReason: s.InvalidationReason,
		}
		if s.Active {
			pid := s.ActivePID
			j.ActivePID = &pid
		}
		out = append(out, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeSlotsTable(w io.Writer, slots []slot.Info) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tPLUGIN\tDATABASE\tACTIVE\tCONFIRMED_FLUSH_LSN\tLAG\tWAL_STATUS\tSAFE_WAL_SIZE\tFAILOVER")
	for _, s := range slots {
		plugin, db, confirmed := s.Plugin, s.Database, s.ConfirmedFlush.String()
		if s.Type != "logical" {
			plugin, db, confirmed = "("+s.Type+")", "-", "-"
		}
		active := "no"
		if s.Active {
			active = fmt.Sprintf("yes (pid %d)", s.ActivePID)
		}
		lag := walBytes(s.LagBytes)
		if s.Type != "logical" {
			lag = "-"
		}
		safe := "unlimited"
		switch {
		case s.SafeWALSize != nil:
			safe = walBytes(*s.SafeWALSize)
		case s.Lost():
			safe = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, plugin, db, active, confirmed, lag, s.WALStatus, safe, failoverText(s))
	}
	return tw.Flush()
}

// failoverText is the FAILOVER column: whether the slot is a failover slot
// and, where it was synced from a primary (on a standby, or a promoted
// one), ",synced"; a synced slot still temporary (",temporary") would not
// survive a promotion yet. No spaces, for scripts that split columns.
func failoverText(s slot.Info) string {
	if s.Type != "logical" {
		return "-"
	}
	out := "no"
	if s.Failover {
		out = "yes"
	}
	if s.Synced {
		out += ",synced"
		if s.Temporary {
			out += ",temporary"
		}
	}
	return out
}

// walBytes formats a WAL distance in binary units: 0 B, 512 B, 1.5 KiB,
// 16 MiB (negative when a slot is ahead of the server, as on a standby).
func walBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := -1
	for (v >= unit || v <= -unit) && i < len(units)-1 {
		v /= unit
		i++
	}
	s := fmt.Sprintf("%.1f", v)
	if len(s) > 2 && s[len(s)-2:] == ".0" {
		s = s[:len(s)-2]
	}
	return s + " " + units[i]
}
