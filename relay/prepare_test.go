package relay

import (
	"errors"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/slot"
)

// Without --create-slot a missing slot is a configuration problem; with
// it the publication and slot are created once, and prepare returns the
// slot's confirmed position.
func TestPrepareCreatesTheSlotOnlyWhenAsked(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	r, _ := newTestRelay(t, testConfig(db.URL), nil)
	_, _, err := r.prepare(t.Context())
	var problem *slot.Problem
	var fe fatalError
	if !errors.As(err, &problem) || !errors.As(err, &fe) || problem.What != "replication slot s does not exist" {
		t.Fatalf("prepare without the slot = %v, want a fatal problem", err)
	}

	cfg := testConfig(db.URL)
	cfg.CreateSlot = true
	r, logs := newTestRelay(t, cfg, nil)
	before := walPosition(t, db)
	start, skips, err := r.prepare(t.Context())
	if err != nil || start < before || skips != nil {
		t.Fatalf("prepare = %s, %v, %v; want a start at or after %s", start, skips, err, before)
	}
	logs.waitFor(t, "created publication and slot")
	again, _, err := r.prepare(t.Context())
	if err != nil || again != start {
		t.Fatalf("prepare again = %s, %v; want %s", again, err, start)
	}
	if n := len(logs.find("created publication and slot")); n != 1 {
		t.Fatalf("created %d times", n)
	}
}

// A column the flags map and the table lacks stops the relay before it
// creates a slot, naming the column.
func TestPrepareStopsAtAMissingColumn(t *testing.T) {
	db := pgtest.New(t)
	createOutbox(t, db)
	cfg := testConfig(db.URL)
	cfg.CreateSlot = true
	cfg.Decoder.Columns = decoder.DefaultColumns()
	cfg.Decoder.Columns.ID = "event_id"
	r, _ := newTestRelay(t, cfg, nil)
	_, _, err := r.prepare(t.Context())
	var problem *slot.Problem
	var fe fatalError
	if !errors.As(err, &problem) || !errors.As(err, &fe) {
		t.Fatalf("prepare = %v, want a fatal problem", err)
	}
	if !strings.Contains(err.Error(), "event_id") {
		t.Fatalf("prepare = %v, want the missing column named", err)
	}
	var slots int
	if err := db.Conn(t).QueryRow(t.Context(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's'`).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 0 {
		t.Fatal("the slot was created for a table the relay cannot read")
	}
}
