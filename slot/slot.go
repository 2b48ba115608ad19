// Package slot manages the publication and the logical replication slot the
// relay streams from, and reports on the replication slots of a server.
//
// It speaks plain SQL on a normal connection; only replication/ uses the
// replication protocol. Set-up errors are *Problem values that say what is
// wrong and how to fix it.
package slot

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

// Config names the replication slot, the publication and the outbox table.
type Config struct {
	// Slot is the logical replication slot: [a-z0-9_]{1,63}.
	Slot string
	// Publication is the publication the slot streams.
	Publication string
	// Table is the outbox table, "name" or "schema.name" (schema public by
	// default, see package pgname). Names are taken literally, case included.
	Table string
	// Failover creates the slot as a failover slot (PostgreSQL 17 and
	// later): standbys with sync_replication_slots keep a copy of it, so it
	// survives the promotion of one of them.
	Failover bool
}

// slotName is what PostgreSQL accepts as a replication slot name.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Validate reports a config that cannot name a slot, publication and table.
func (c Config) Validate() error {
	if err := c.validateNames(); err != nil {
		return err
	}
	if _, _, err := c.table(); err != nil {
		return err
	}
	return nil
}

// validateNames checks the slot and publication names.
func (c Config) validateNames() error {
	if !slotName.MatchString(c.Slot) {
		return fmt.Errorf("replication slot name %q: want 1 to 63 lower-case letters, digits or underscores", c.Slot)
	}
	if c.Publication == "" {
		return errors.New("publication name is empty")
	}
	if len(c.Publication) > pgname.MaxLen {
		return fmt.Errorf("publication name %q: longer than %d bytes", c.Publication, pgname.MaxLen)
	}
	return nil
}

// SchemaAndName returns the table's schema and name, raw (unquoted). Call
// it on a config that passed Validate.
func (c Config) SchemaAndName() (schema, name string) {
	schema, name, _ = c.table()
	return schema, name
}

// table splits Table into schema and name.
func (c Config) table() (schema, name string, err error) {
	t, err := pgname.ParseTable(c.Table)
	return t.Schema, t.Name, err
}

// Problem is a set-up error: it names what is wrong and how to fix it.
// The CLI exits with code 2 on a Problem (see ConfigProblem).
type Problem struct {
	// What is wrong, with the identifying values.
	What string
	// Fix says what to do about it.
	Fix string
	// Err, when set, is a sentinel or cause the Problem wraps, for
	// errors.Is and errors.As.
	Err error
}

// Error returns What and Fix.
func (p *Problem) Error() string {
	if p.Fix == "" {
		return p.What
	}
	return p.What + "; " + p.Fix
}

// Unwrap returns Err.
func (p *Problem) Unwrap() error { return p.Err }

// ConfigProblem reports true: a Problem needs an operator, not a retry.
func (p *Problem) ConfigProblem() bool { return true }

// ErrSlotLost is wrapped by the error of LostError: the server invalidated the
// slot and the WAL after its confirmed position may be gone.
var ErrSlotLost = errors.New("replication slot lost")

// LostError is the Problem of a slot whose wal_status is 'lost'. It wraps
// ErrSlotLost. The relay must stop on it: re-creating the slot silently would
// skip the events in the lost WAL. reason is pg_replication_slots'
// invalidation_reason (PostgreSQL 17 and later; empty before).
func LostError(slot, reason string) error {
	return &Problem{
		What: fmt.Sprintf("replication slot %s was invalidated (wal_status = lost) %s; events after its confirmed LSN may be gone", slot, invalidationCause(reason)),
		Fix:  "drop it with `outbox-relay slot drop`, re-create it, and reconcile the outbox table",
		Err:  ErrSlotLost,
	}
}

// invalidationCause explains an invalidation_reason.
func invalidationCause(reason string) string {
	switch reason {
	case "", "wal_removed":
		return "because it fell behind max_slot_wal_keep_size"
	case "idle_timeout":
		return "because no relay streamed from it for longer than idle_replication_slot_timeout"
	case "rows_removed":
		return "because catalog rows it needed were removed (on a standby: set hot_standby_feedback = on)"
	case "wal_level_insufficient":
		return "because wal_level was lowered below logical"
	default:
		return "(invalidation_reason " + reason + ")"
	}
}
