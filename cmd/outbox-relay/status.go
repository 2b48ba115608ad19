package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/replication"
	"github.com/outbox-relay/outbox-relay/slot"
)

// statusCommand is `outbox-relay status`: a probe for cron jobs and
// Kubernetes as much as a table for people.
func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the replication slot(s) with lag, wal_status and last activity; exit 1 when a slot is lost or lags more than --max-lag",
		Flags: []cli.Flag{
			pgURLFlag(),
			&cli.StringFlag{Name: "slot", EnvVars: env("SLOT"), Usage: "only this slot (default: every slot on the server)"},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON array, for scripts"},
			&cli.StringFlag{Name: "max-lag", EnvVars: env("MAX_LAG"),
				Usage: "fail (exit 1) when a slot's lag exceeds this many bytes; units allowed (512MiB, 2GB); empty: no limit"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("status takes no arguments, got %q", c.Args().First())
			}
			maxLag, err := parseBytes(c.String("max-lag"))
			if err != nil {
				return usagef("--max-lag: %w", err)
			}
			if _, err := pgConnString(c); err != nil {
				return err
			}
			conn, err := connectPG(c.Context, c)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			rows, err := slotStatus(c.Context, conn, c.String("slot"))
			if err != nil {
				return err
			}
			idle, err := idleSlotTimeout(c.Context, conn)
			if err != nil {
				return err
			}
			var problems []string
			now := time.Now()
			for i := range rows {
				rows[i].check(maxLag)
				if rows[i].Problem != "" {
					problems = append(problems, rows[i].Problem)
				}
				rows[i].warnIdle(idle, now)
				warns, err := slot.FailoverWarnings(c.Context, conn, rows[i].Info)
				if err != nil {
					return err
				}
				rows[i].Warnings = append(rows[i].Warnings, warns...)
			}
			switch name := c.String("slot"); {
			case name != "" && len(rows) == 0:
				problems = append(problems, fmt.Sprintf("replication slot %s does not exist; outbox-relay slot create (or run, which creates it) makes it", name))
			case len(rows) == 0:
				problems = append(problems, "no replication slot on this server; outbox-relay slot create (or run, which creates one) makes it")
			}
			if c.Bool("json") {
				err = writeStatusJSON(c.App.Writer, rows)
			} else {
				err = writeStatusTable(c.App.Writer, rows, now)
			}
			if err != nil {
				return err
			}
			// Warnings do not fail the probe: the slot works today.
			for _, r := range rows {
				for _, w := range r.Warnings {
					fmt.Fprintf(c.App.ErrWriter, "warning: %s\n", w)
				}
			}
			if len(problems) > 0 {
				return fmt.Errorf("%s", strings.Join(problems, "; "))
			}
			return nil
		},
	}
}

// slotStatusRow is one slot as `status` shows it.
type slotStatusRow struct {
	slot.Info
	// LastActivity is the walsender's last reply time for an active slot
	// (pg_stat_replication.reply_time), or inactive_since on PostgreSQL 17
	// and later for an inactive one; nil when unknown.
	LastActivity *time.Time
	// Problem says why the slot fails the check; empty when it passes.
	Problem string
	// Warnings say what threatens the slot without failing the check: it
	// would not survive a failover, or it is close to invalidation.
	Warnings []string
	// IdleTimeout is the server's idle_replication_slot_timeout
	// (PostgreSQL 18 and later; 0: none), and InvalidatedIn, for an
	// inactive slot, the time left before a checkpoint invalidates it.
	IdleTimeout   time.Duration
	InvalidatedIn *time.Duration
}

// idleSlotTimeout reads idle_replication_slot_timeout, 0 where the server
// has none (before PostgreSQL 18) or it is off.
func idleSlotTimeout(ctx context.Context, conn *pgx.Conn) (time.Duration, error) {
	var v *string
	if err := conn.QueryRow(ctx, "select current_setting('idle_replication_slot_timeout', true)").Scan(&v); err != nil {
		return 0, fmt.Errorf("reading idle_replication_slot_timeout: %w", err)
	}
	if v == nil || *v == "" {
		return 0, nil
	}
	// A bare number is seconds, the setting's unit.
	raw := *v
	if _, err := strconv.Atoi(raw); err == nil {
		raw += "s"
	}
	d, err := replication.ParsePGDuration(raw)
	if err != nil {
		return 0, fmt.Errorf("reading idle_replication_slot_timeout %q: %w", *v, err)
	}
	return d, nil
}

// warnIdle notes, for a slot no relay streams from, how long until
// idle_replication_slot_timeout invalidates it. What counts is the time
// since the slot was released (inactive_since); a connected relay keeps
// its slot active however idle the database is.
func (r *slotStatusRow) warnIdle(timeout time.Duration, now time.Time) {
	r.IdleTimeout = timeout
	if timeout <= 0 || r.Active || r.Lost() || r.Type != "logical" || r.LastActivity == nil {
		return
	}
	left := max(timeout-now.Sub(*r.LastActivity), 0)
	r.InvalidatedIn = &left
	r.Warnings = append(r.Warnings, fmt.Sprintf("replication slot %s has no relay streaming from it for %s; "+
		"idle_replication_slot_timeout (%s) invalidates it at the first checkpoint after %s more: start the relay",
		r.Name, now.Sub(*r.LastActivity).Round(time.Second), timeout, left.Round(time.Second)))
}

// activityQuery finds each slot's last activity. inactive_since exists
// only from PostgreSQL 17: reading it through to_jsonb keeps the query
// valid on older servers, where it is null.
const activityQuery = `
select s.slot_name::text,
	coalesce(r.reply_time, (to_jsonb(s)->>'inactive_since')::timestamptz)
from pg_replication_slots s
left join pg_stat_replication r on s.active and r.pid = s.active_pid`

// slotStatus returns the slot named name, or every slot when name is
// empty, with its last activity.
func slotStatus(ctx context.Context, conn *pgx.Conn, name string) ([]slotStatusRow, error) {
	var infos []slot.Info
	if name != "" {
		info, ok, err := slot.Get(ctx, conn, name)
		if err != nil {
			return nil, err
		}
		if ok {
			infos = append(infos, info)
		}
	} else {
		var err error
		if infos, err = slot.List(ctx, conn); err != nil {
			return nil, err
		}
	}
	activity := map[string]time.Time{}
	rows, err := conn.Query(ctx, activityQuery)
	if err != nil {
		return nil, fmt.Errorf("reading slot activity: %w", err)
	}
	for rows.Next() {
		var slotName string
		var at *time.Time
		if err := rows.Scan(&slotName, &at); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading slot activity: %w", err)
		}
		if at != nil {
			activity[slotName] = *at
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading slot activity: %w", err)
	}
	out := make([]slotStatusRow, 0, len(infos))
	for _, info := range infos {
		row := slotStatusRow{Info: info}
		if at, ok := activity[info.Name]; ok {
			row.LastActivity = &at
		}
		out = append(out, row)
	}
	return out, nil
}

// check sets Problem when the slot is lost or lags more than maxLag bytes
// (maxLag 0: no limit).
func (r *slotStatusRow) check(maxLag int64) {
	switch {
	case r.Lost() && r.InvalidationReason != "" && r.InvalidationReason != "wal_removed":
		r.Problem = fmt.Sprintf("replication slot %s is lost (wal_status lost, invalidation_reason %s): PostgreSQL invalidated it; events may be missing", r.Name, r.InvalidationReason)
	case r.Lost():
		r.Problem = fmt.Sprintf("replication slot %s is lost (wal_status lost): PostgreSQL removed WAL it needed; events may be missing", r.Name)
	case maxLag > 0 && r.LagBytes > maxLag:
		r.Problem = fmt.Sprintf("replication slot %s lags %s, more than --max-lag %s", r.Name, walBytes(r.LagBytes), walBytes(maxLag))
	}
}

// statusJSON is the --json form of a slot; its keys are the column names
// of pg_replication_slots where there is one.
type statusJSON struct {
	Slot               string     `json:"slot_name"`
	Type               string     `json:"slot_type"`
	Active             bool       `json:"active"`
	ActivePID          *int       `json:"active_pid"`
	ConfirmedFlushLSN  string     `json:"confirmed_flush_lsn"`
	LagBytes           int64      `json:"lag_bytes"`
	RetainedBytes      int64      `json:"retained_bytes"`
	WALStatus          string     `json:"wal_status"`
	SafeWALSize        *int64     `json:"safe_wal_size"`
	Failover           bool       `json:"failover"`
	Synced             bool       `json:"synced"`
	Temporary          bool       `json:"temporary"`
	InvalidationReason string     `json:"invalidation_reason,omitempty"`
	LastActivity       *time.Time `json:"last_activity"`
	// IdleTimeoutSeconds is idle_replication_slot_timeout (0: none), and
	// InvalidatedInSeconds the time an inactive slot has left under it.
	IdleTimeoutSeconds   float64  `json:"idle_replication_slot_timeout_seconds"`
	InvalidatedInSeconds *float64 `json:"invalidated_in_seconds,omitempty"`
	OK                   bool     `json:"ok"`
	Problem              string   `json:"problem,omitempty"`
	Warnings             []string `json:"warnings,omitempty"`
}

func writeStatusJSON(w io.Writer, rows []slotStatusRow) error {
	out := make([]statusJSON, 0, len(rows))
	for _, r := range rows {
		j := statusJSON{
			Slot: r.Name, Type: r.Type, Active: r.Active,
			ConfirmedFlushLSN: r.ConfirmedFlush.String(),
			LagBytes:          r.LagBytes, RetainedBytes: r.RetainedBytes,
			WALStatus: r.WALStatus, SafeWALSize: r.SafeWALSize,
			LastActivity: r.LastActivity, OK: r.Problem == "", Problem: r.Problem,
			Failover: r.Failover, Synced: r.Synced, Temporary: r.Temporary,
			InvalidationReason: r.InvalidationReason,
			IdleTimeoutSeconds: r.IdleTimeout.Seconds(), Warnings: r.Warnings,
		}
		if r.InvalidatedIn != nil {
			sec := r.InvalidatedIn.Seconds()
			j.InvalidatedInSeconds = &sec
		}
		if r.Active {
			pid := r.ActivePID
			j.ActivePID = &pid
		}
		out = append(out, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeStatusTable(w io.Writer, rows []slotStatusRow, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tACTIVE\tCONFIRMED_LSN\tLAG\tRETAINED\tWAL_STATUS\tSAFE_WAL_SIZE\tFAILOVER\tLAST_ACTIVITY")
	for _, r := range rows {
		active := "no"
		if r.Active {
			active = fmt.Sprintf("yes (pid %d)", r.ActivePID)
		}
		confirmed, lag := r.ConfirmedFlush.String(), walBytes(r.LagBytes)
		if r.Type != "logical" {
			confirmed, lag = "-", "-"
		}
		safe := "unlimited"
		switch {
		case r.SafeWALSize != nil:
			safe = walBytes(*r.SafeWALSize)
		case r.Lost():
			safe = "-"
		}
		last := "-"
		if r.LastActivity != nil {
			last = fmt.Sprintf("%s ago", now.Sub(*r.LastActivity).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, active, confirmed, lag, walBytes(r.RetainedBytes), r.WALStatus, safe, failoverText(r.Info), last)
	}
	return tw.Flush()
}

// byteUnits are the suffixes parseBytes accepts, binary and decimal.
var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// parseBytes reads a byte count: 1048576, 512MiB, 2GB. Empty is 0.
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	orig, mult := s, int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a byte count like 1048576, 512MiB or 2GB", orig)
	}
	return int64(n * float64(mult)), nil
}
