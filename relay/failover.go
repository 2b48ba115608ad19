package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/slot"
)

// ErrSlotMissingAfterFailover is wrapped by Run's error when the server the
// relay reconnected to, after streaming from another, does not have the
// slot: a standby was promoted without a copy of it, and the events after
// the relay's last confirmed position may never be delivered.
var ErrSlotMissingAfterFailover = errors.New("replication slot missing after a failover")

// primaryWatch is what the relay remembers across sessions about the
// primary it streams from, to recognise a promoted standby (a new
// timeline) when it reconnects, and to check the slot it finds there
// against what it acknowledged on the old one.
type primaryWatch struct {
	// timeline is the WAL timeline of the server of the last session that
	// streamed; 0 before one did.
	timeline uint32
	// acked is the highest position the relay confirmed to PostgreSQL.
	acked pglogrepl.LSN
	// lostAt is when the last streaming session ended.
	lostAt time.Time
}

// sessionEnded records what a session confirmed before it ended.
func (w *primaryWatch) sessionEnded(confirmed pglogrepl.LSN) {
	w.acked = max(w.acked, confirmed)
	w.lostAt = time.Now()
}

// currentTimeline reads the server's WAL timeline: the first eight hex
// digits of the current WAL file's name. A promotion starts a new one. On
// a standby (the relay may decode there from PostgreSQL 16) it returns 0:
// unknown, and no failover check applies.
func currentTimeline(ctx context.Context, conn *pgx.Conn) (uint32, error) {
	var walFile *string
	err := conn.QueryRow(ctx, `select case when pg_is_in_recovery() then null
		else pg_walfile_name(pg_current_wal_lsn()) end`).Scan(&walFile)
	if err != nil {
		return 0, fmt.Errorf("reading the server's timeline: %w", err)
	}
	if walFile == nil {
		return 0, nil
	}
	return parseTimeline(*walFile)
}

// parseTimeline reads the timeline from a WAL file name.
func parseTimeline(walFile string) (uint32, error) {
	if len(walFile) < 8 {
		return 0, fmt.Errorf("reading the server's timeline: unexpected WAL file name %q", walFile)
	}
	tl, err := strconv.ParseUint(walFile[:8], 16, 32)
	if err != nil {
		return 0, fmt.Errorf("reading the server's timeline from WAL file name %q: %w", walFile, err)
	}
	return uint32(tl), nil
}

// checkFollowed checks, before a session streams, the slot on the server
// the relay (re)connected to: info as found, ok false when missing. On the
// server the relay streamed from before, it only notes the timeline. On a
// new timeline (a promoted standby) the slot must be there, synced from
// the old primary, and not confirmed past what this relay acknowledged
// (unless another relay streams from it): otherwise events may be lost,
// and the relay stops saying which and what to do, never creating a
// fresh slot.
func (r *Relay) checkFollowed(ctx context.Context, conn *pgx.Conn, info slot.Info, ok bool) error {
	w := &r.primary
	tl, err := currentTimeline(ctx, conn)
	if err != nil {
		return err
	}
	if w.timeline == 0 || tl == 0 || tl == w.timeline || !r.progressed {
		if !ok && r.progressed {
			return fatal(fmt.Errorf("replication slot %s disappeared while the relay was using it; it is not recreated automatically "+
				"because events committed after %s (the last position the relay confirmed) may not have been delivered: "+
				"check who dropped it, publish the outbox rows committed after that position again (or reconcile the consumers), "+
				"then run `outbox-relay slot create`", r.cfg.Slot.Slot, w.acked))
		}
		if tl != 0 {
			w.timeline = tl
		}
		return nil
	}
	name := r.cfg.Slot.Slot
	switch {
	case !ok:
		return fatal(fmt.Errorf("%w: the relay streamed slot %s on timeline %d and reconnected to a server on timeline %d (a promoted standby) "+
			"that has no slot %s: it was not a failover slot, or was not synced to this standby. "+
			"Events committed after %s (the last position the relay confirmed) may never be delivered. "+
			"Publish the outbox rows committed after that position again (or reconcile the consumers), "+
			"then create the slot with `outbox-relay slot create --failover`, set up slot synchronization "+
			"(README: High availability of PostgreSQL) and start the relay again",
			ErrSlotMissingAfterFailover, name, w.timeline, tl, name, w.acked))
	case !info.Synced:
		return fatal(fmt.Errorf("replication slot %s on the promoted server (timeline %d, was %d) was not synced from the old primary: "+
			"it was created on this server (on the standby, or after the promotion) and does not hold the relay's position; "+
			"streaming from it may skip events committed after %s (the last position the relay confirmed). Publish the outbox rows "+
			"committed after that position again (or reconcile the consumers), then drop the slot, create it with "+
			"`outbox-relay slot create --failover` and start the relay again", name, tl, w.timeline, w.acked))
	case info.ConfirmedFlush > w.acked && !info.Active:
		return fatal(fmt.Errorf("replication slot %s on the promoted server (timeline %d, was %d) is confirmed at %s, past %s, "+
			"the last position this relay confirmed: streaming from it would skip the events in between unless another relay "+
			"delivered them; check which relays use slot %s, then start this one again", name, tl, w.timeline,
			info.ConfirmedFlush, w.acked, name))
	}
	r.log.Warn("following the promoted primary: the slot was synced to it; events after its synced position are sent again",
		"slot", name, "timeline", tl, "previous_timeline", w.timeline, "synced_confirmed", info.ConfirmedFlush,
		"relay_confirmed", w.acked, "without_primary", time.Since(w.lostAt).Round(time.Millisecond))
	w.timeline = tl
	return nil
}

// checkNewSlot runs before the relay creates a missing slot. A promoted
// server (timeline 2 or later) that has the relay's publication but not
// its slot is most likely a standby promoted without a copy of the slot
// (the publication came with the physical replication, the slot did not):
// a relay restarted there must not create a fresh slot, which would skip
// the events the old one had not delivered. `outbox-relay slot create`
// creates it when that is what the operator wants.
func (r *Relay) checkNewSlot(ctx context.Context, conn *pgx.Conn) error {
	tl, err := currentTimeline(ctx, conn)
	if err != nil {
		return err
	}
	if tl < 2 { // timeline 1, or a standby
		return nil
	}
	var pubExists bool
	if err := conn.QueryRow(ctx, "select exists (select 1 from pg_publication where pubname = $1)", r.cfg.Slot.Publication).Scan(&pubExists); err != nil {
		return fmt.Errorf("looking up publication %s: %w", r.cfg.Slot.Publication, err)
	}
	if !pubExists {
		return nil
	}
	return fatal(fmt.Errorf("%w: this server was promoted (timeline %d) and has publication %s but no replication slot %s: "+
		"if a relay streamed from %s on the former primary, the events it had not delivered may never be; the relay does not "+
		"create a fresh slot here on its own. Publish the outbox rows the consumers may have missed again (or reconcile them), "+
		"then create the slot with `outbox-relay slot create --failover` and start the relay again",
		ErrSlotMissingAfterFailover, tl, r.cfg.Slot.Publication, r.cfg.Slot.Slot, r.cfg.Slot.Slot))
}
