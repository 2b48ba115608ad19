package slot

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Info describes one replication slot, as pg_replication_slots shows it,
// with the WAL distances computed on the server.
type Info struct {
	// Name is the slot name.
	Name string
	// Type is "logical" or "physical".
	Type string
	// Plugin is the output plugin; empty for a physical slot.
	Plugin string
	// Database is the database of a logical slot; empty for a physical slot.
	Database string
	// Active reports whether a session streams from the slot, and
	// ActivePID which backend it is.
	Active    bool
	ActivePID int
	// ConfirmedFlush is what the consumer confirmed: where streaming
	// resumes. Zero for a physical slot.
	ConfirmedFlush pglogrepl.LSN
	// RestartLSN is the oldest WAL the slot keeps. Zero when it keeps none.
	RestartLSN pglogrepl.LSN
	// LagBytes is the WAL written since ConfirmedFlush.
	LagBytes int64
	// RetainedBytes is the WAL the slot keeps on disk: since RestartLSN.
	RetainedBytes int64
	// WALStatus is reserved, extended, unreserved or lost.
	WALStatus string
	// SafeWALSize is how much more WAL may be written before the slot is
	// in danger of being invalidated; nil when max_slot_wal_keep_size = -1
	// (no limit) or the slot is lost.
	SafeWALSize *int64
	// Temporary reports a slot that ends with its session; on a standby, a
	// synced slot stays temporary until it caught up with the primary's.
	Temporary bool
	// Failover reports a failover slot (PostgreSQL 17 and later): standbys
	// with sync_replication_slots = on keep a copy of it.
	Failover bool
	// Synced reports a slot synchronized from the primary (on a standby,
	// or on a promoted one).
	Synced bool
	// InvalidationReason says why the server invalidated the slot
	// (wal_removed, idle_timeout...; PostgreSQL 17 and later).
	InvalidationReason string
}

// Lost reports whether the server invalidated the slot.
func (i Info) Lost() bool { return i.WALStatus == "lost" }

// infoQuery selects Info columns. The current WAL position is the received
// one on a standby, where pg_current_wal_lsn() fails. Columns newer than
// PostgreSQL 15 are read through to_jsonb, which keeps the query valid on
// servers without them (they read as false or empty there).
const infoQuery = `
with cur as (
	select case when pg_is_in_recovery() then pg_last_wal_receive_lsn() else pg_current_wal_lsn() end as lsn
)
select s.slot_name::text, s.slot_type, coalesce(s.plugin::text, ''), coalesce(s.database::text, ''),
	s.active, coalesce(s.active_pid, 0),
	coalesce(s.confirmed_flush_lsn, '0/0')::text, coalesce(s.restart_lsn, '0/0')::text,
	coalesce((cur.lsn - s.confirmed_flush_lsn)::int8, 0),
	coalesce((cur.lsn - s.restart_lsn)::int8, 0),
	coalesce(s.wal_status, ''), s.safe_wal_size, s.temporary,
	coalesce((to_jsonb(s)->>'failover')::bool, false), coalesce((to_jsonb(s)->>'synced')::bool, false),
	coalesce(to_jsonb(s)->>'invalidation_reason', '')
from pg_replication_slots s, cur`

func scanInfo(row pgx.Row) (Info, error) {
	var i Info
	err := row.Scan(&i.Name, &i.Type, &i.Plugin, &i.Database, &i.Active, &i.ActivePID,
		&i.ConfirmedFlush, &i.RestartLSN, &i.LagBytes, &i.RetainedBytes, &i.WALStatus, &i.SafeWALSize,
		&i.Temporary, &i.Failover, &i.Synced, &i.InvalidationReason)
	return i, err
}

// List returns every replication slot on the server, by name.
func List(ctx context.Context, conn *pgx.Conn) ([]Info, error) {
	rows, err := conn.Query(ctx, infoQuery+" order by s.slot_name")
	if err != nil {
		return nil, fmt.Errorf("listing replication slots: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Info, error) { return scanInfo(row) })
	if err != nil {
		return nil, fmt.Errorf("listing replication slots: %w", err)
	}
	return out, nil
}

// Get returns the slot named name, and false when there is none.
func Get(ctx context.Context, conn *pgx.Conn, name string) (Info, bool, error) {
	i, err := scanInfo(conn.QueryRow(ctx, infoQuery+" where s.slot_name = $1", name))
	if errors.Is(err, pgx.ErrNoRows) {
		return Info{}, false, nil
	}
	if err != nil {
		return Info{}, false, fmt.Errorf("looking up replication slot %s: %w", name, err)
	}
	return i, true, nil
}
