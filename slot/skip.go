package slot

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

// SkipTable is the table, in the outbox table's schema, where `outbox-relay
// slot skip` records the events the relay must not publish: poison rows an
// operator chose to leave behind. The relay reads it at the start of every
// session.
const SkipTable = "outbox_relay_skips"

// Skip is one recorded skip: an event id, or for a row whose id could not
// be read, the WAL position of its insert (EventID empty).
type Skip struct {
	EventID string
	LSN     pglogrepl.LSN
}

func (c Config) skipTable() string {
	schema, _ := c.SchemaAndName()
	return pgname.Table{Schema: schema, Name: SkipTable}.Quoted()
}

// AddSkip records that the relay on cfg's slot must not publish the event
// s, creating the skip table if needed.
func AddSkip(ctx context.Context, conn *pgx.Conn, cfg Config, s Skip, reason string) error {
	if _, err := conn.Exec(ctx, `create table if not exists `+cfg.skipTable()+` (
    slot_name  text        not null,
    event_id   text        not null default '',
    lsn        pg_lsn,
    reason     text        not null default '',
    skipped_at timestamptz not null default now(),
    primary key (slot_name, event_id, lsn)
)`); err != nil {
		return fmt.Errorf("creating the skip table %s: %w", cfg.skipTable(), err)
	}
	// 0/0 stands for "any position": the primary key needs a value.
	lsn := s.LSN.String()
	if _, err := conn.Exec(ctx, `insert into `+cfg.skipTable()+` (slot_name, event_id, lsn, reason) values ($1, $2, $3::pg_lsn, $4)
on conflict do nothing`, cfg.Slot, s.EventID, lsn, reason); err != nil {
		return fmt.Errorf("recording the skip in %s: %w", cfg.skipTable(), err)
	}
	return nil
}

// Skips returns the skips recorded for cfg's slot; a missing skip table
// means none. Entries are kept: an event id or a WAL position never comes
// back on the same slot, so an old entry matches nothing.
func Skips(ctx context.Context, conn *pgx.Conn, cfg Config) ([]Skip, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `select to_regclass($1) is not null`, cfg.skipTable()).Scan(&exists); err != nil {
		return nil, fmt.Errorf("looking for the skip table %s: %w", cfg.skipTable(), err)
	}
	if !exists {
		return nil, nil
	}
	rows, _ := conn.Query(ctx, `select event_id, lsn::text from `+cfg.skipTable()+` where slot_name = $1`, cfg.Slot)
	var out []Skip
	var id, lsn string
	_, err := pgx.ForEachRow(rows, []any{&id, &lsn}, func() error {
		l, err := pglogrepl.ParseLSN(lsn)
		if err != nil {
			return err
		}
		out = append(out, Skip{EventID: id, LSN: l})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the skip table %s: %w", cfg.skipTable(), err)
	}
	return out, nil
}
