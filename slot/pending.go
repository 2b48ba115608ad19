package slot

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Pending is what a slot still holds for the relay: outbox events in
// transactions after its confirmed position.
type Pending struct {
	// Events counts the inserts the publication publishes (outbox rows)
	// plus the transactional logical decoding messages with the message
	// prefix (table-free events).
	Events int
	// Oldest is the commit time of the oldest transaction holding one;
	// zero when Events is 0.
	Oldest time.Time
}

// PendingEvents counts the outbox events the slot holds: it peeks at the
// slot's changes for publication (pg_logical_slot_peek_binary_changes,
// which consumes nothing) and counts inserts and messages with
// messagePrefix. It decodes the whole backlog on the server, so it takes
// as long as a relay catching up would to read it. The slot must not be
// in use.
func PendingEvents(ctx context.Context, conn *pgx.Conn, slotName, publication, messagePrefix string) (Pending, error) {
	rows, err := conn.Query(ctx, `select data from pg_logical_slot_peek_binary_changes($1, null, null,
		'proto_version', '1', 'publication_names', $2, 'messages', 'true')`, slotName, publication)
	if err != nil {
		return Pending{}, fmt.Errorf("reading what replication slot %s holds: %w", slotName, err)
	}
	defer rows.Close()
	var (
		p      Pending
		begun  time.Time // commit time of the current transaction
		counts bool      // the current transaction holds an event
	)
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return Pending{}, fmt.Errorf("reading what replication slot %s holds: %w", slotName, err)
		}
		if len(data) == 0 {
			continue
		}
		msg, err := pglogrepl.Parse(data)
		if err != nil {
			continue // a message type this count does not need
		}
		switch m := msg.(type) {
		case *pglogrepl.BeginMessage:
			begun, counts = m.CommitTime, false
		case *pglogrepl.InsertMessage:
			p.Events++
			counts = true
		case *pglogrepl.LogicalDecodingMessage:
			if m.Transactional && m.Prefix == messagePrefix {
				p.Events++
				counts = true
			}
		case *pglogrepl.CommitMessage:
			if counts && (p.Oldest.IsZero() || begun.Before(p.Oldest)) {
				p.Oldest = begun
			}
		}
	}
	if err := rows.Err(); err != nil {
		return Pending{}, fmt.Errorf("reading what replication slot %s holds: %w", slotName, err)
	}
	return p, nil
}
