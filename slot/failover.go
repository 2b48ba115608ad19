package slot

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// FailoverWarnings says why the logical slot info would not survive the
// promotion of a standby, from what this server can see: on a primary,
// whether it is a failover slot and the standbys it must wait for are
// named in synchronized_standby_slots and streaming; on a standby, whether
// its copy of the slot is synced and persistent, and the settings slot
// synchronization needs. No warnings means ready, as far as one server
// can tell. A primary without standbys gets no warnings: there is nothing
// to fail over to.
func FailoverWarnings(ctx context.Context, conn *pgx.Conn, info Info) ([]string, error) {
	if info.Type != "logical" || info.Lost() {
		return nil, nil
	}
	var versionNum int
	var standby bool
	if err := conn.QueryRow(ctx, "select current_setting('server_version_num')::int, pg_is_in_recovery()").Scan(&versionNum, &standby); err != nil {
		return nil, fmt.Errorf("reading the server version: %w", err)
	}
	if versionNum < failoverVersion {
		return nil, nil // no failover slots: nothing to check
	}
	if standby {
		return standbyWarnings(ctx, conn, info)
	}
	return primaryWarnings(ctx, conn, info)
}

func primaryWarnings(ctx context.Context, conn *pgx.Conn, info Info) ([]string, error) {
	// Physical slots with a walsender attached: the standbys that stream
	// through a slot, as slot synchronization needs.
	rows, err := conn.Query(ctx, `select slot_name::text, active from pg_replication_slots where slot_type = 'physical' order by 1`)
	if err != nil {
		return nil, fmt.Errorf("listing physical replication slots: %w", err)
	}
	type physical struct {
		Name   string
		Active bool
	}
	slots, err := pgx.CollectRows(rows, pgx.RowToStructByPos[physical])
	if err != nil {
		return nil, fmt.Errorf("listing physical replication slots: %w", err)
	}
	var standbys int
	if err := conn.QueryRow(ctx, `select count(*) from pg_stat_replication r
		where not exists (select 1 from pg_replication_slots s where s.active_pid = r.pid and s.slot_type = 'logical')`).Scan(&standbys); err != nil {
		return nil, fmt.Errorf("counting standbys: %w", err)
	}
	if len(slots) == 0 && standbys == 0 {
		return nil, nil
	}
	var warns []string
	if !info.Failover {
		return append(warns, fmt.Sprintf("replication slot %s is not a failover slot: standbys stream from this server, and after a promotion "+
			"the slot is missing there; re-create it with `outbox-relay slot create --failover` "+
			"(README: High availability of PostgreSQL)", info.Name)), nil
	}
	var setting string
	if err := conn.QueryRow(ctx, "select current_setting('synchronized_standby_slots')").Scan(&setting); err != nil {
		return nil, fmt.Errorf("reading synchronized_standby_slots: %w", err)
	}
	named := map[string]bool{}
	for _, n := range strings.Split(setting, ",") {
		if n = strings.TrimSpace(n); n != "" {
			named[n] = true
		}
	}
	if len(named) == 0 {
		warns = append(warns, fmt.Sprintf("synchronized_standby_slots is empty: the relay may receive events from slot %s that no standby has yet, "+
			"and after a promotion the synced slot can be behind them; name the standbys' physical slots in it", info.Name))
	}
	for _, s := range slots {
		if named[s.Name] && !s.Active {
			warns = append(warns, fmt.Sprintf("physical slot %s (in synchronized_standby_slots) has no standby streaming from it: "+
				"the relay waits for it, and slot %s is not being synced", s.Name, info.Name))
		}
		delete(named, s.Name)
	}
	for n := range named {
		if n != "*" {
			warns = append(warns, fmt.Sprintf("synchronized_standby_slots names %s, which is not a physical slot on this server", n))
		}
	}
	return warns, nil
}

func standbyWarnings(ctx context.Context, conn *pgx.Conn, info Info) ([]string, error) {
	var warns []string
	switch {
	case !info.Synced:
		warns = append(warns, fmt.Sprintf("replication slot %s on this standby is not synced from the primary: after a promotion the relay's position is not in it", info.Name))
	case info.Temporary:
		warns = append(warns, fmt.Sprintf("replication slot %s on this standby is synced but not yet persistent (it waits for the primary's slot to pass it; "+
			"the relay must confirm a position first): a promotion now would drop it", info.Name))
	}
	settings := map[string]string{}
	rows, err := conn.Query(ctx, `select name, setting from pg_settings
		where name in ('sync_replication_slots', 'hot_standby_feedback', 'primary_slot_name', 'primary_conninfo')`)
	if err != nil {
		return nil, fmt.Errorf("reading the standby's settings: %w", err)
	}
	for rows.Next() {
		var name string
		var value *string
		if err := rows.Scan(&name, &value); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading the standby's settings: %w", err)
		}
		if value != nil {
			settings[name] = *value
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the standby's settings: %w", err)
	}
	if settings["sync_replication_slots"] != "on" {
		warns = append(warns, "sync_replication_slots is off on this standby: failover slots are not synced to it; set it to on")
	}
	if settings["hot_standby_feedback"] != "on" {
		warns = append(warns, "hot_standby_feedback is off on this standby: slot synchronization needs it on")
	}
	if settings["primary_slot_name"] == "" {
		warns = append(warns, "primary_slot_name is empty on this standby: slot synchronization needs the standby to stream through a physical slot")
	}
	// primary_conninfo is visible to superusers and pg_read_all_settings
	// only; others see it as empty or hidden, and it is not judged then.
	if ci, ok := settings["primary_conninfo"]; ok && ci != "" && !strings.Contains(ci, "dbname=") {
		warns = append(warns, "primary_conninfo has no dbname: slot synchronization needs one; add dbname=postgres (any database) to it")
	}
	return warns, nil
}
