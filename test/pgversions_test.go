package test

import (
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// PostgreSQL 18 invalidates a slot no session streamed from for longer
// than idle_replication_slot_timeout, at a checkpoint. A connected relay
// keeps its slot active however long it runs; a stopped one is warned
// about by status with the time left, and once the slot is invalidated
// status fails and the relay stops naming the setting that did it.
func TestIdleSlotTimeoutSparesARunningRelayAndIsNamedWhenItStrikes(t *testing.T) {
	ctx := t.Context()
	const timeout = 2 * time.Second
	srv := pgtest.NewServerVersion(t, 18, map[string]string{"idle_replication_slot_timeout": "2s"})
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	args := faultArgs(db.URL, cluster, "idle")
	relay := startRelay(t, args...)
	waitSlotActive(t, db, "idle")

	// The relay has streamed for longer than the timeout: a checkpoint
	// leaves the slot alone.
	waitFor(t, 30*time.Second, "the relay streaming for longer than idle_replication_slot_timeout", func() (bool, error) {
		var longer bool
		err := queryOne(ctx, db, `select now() - backend_start > $1::interval from pg_stat_replication where application_name = 'idle'`,
			[]any{(timeout + time.Second).String()}, &longer)
		return longer, err
	})
	db.Exec(t, "checkpoint")
	if err := sc.writeConcurrently(ctx, 1, 50, 5, nil); err != nil {
		t.Fatal(err)
	}
	sc.check(t, settle(t, db, "idle", cluster, sc.total()))
	if code := relay.stop(t, syscall.SIGTERM, 60*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d", code)
	}
	waitSlotInactive(t, db, "idle")

	// Stopped: status passes, with a warning that says how long is left.
	out, errOut, code := runStatus(t, os.Environ(), "--pg-url", db.URL, "--slot", "idle", "--json")
	var rows []struct {
		IdleTimeout   float64  `json:"idle_replication_slot_timeout_seconds"`
		InvalidatedIn *float64 `json:"invalidated_in_seconds"`
		Warnings      []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || code != 0 || len(rows) != 1 {
		t.Fatalf("status --json of the stopped relay's slot: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	if rows[0].IdleTimeout != timeout.Seconds() || rows[0].InvalidatedIn == nil ||
		!strings.Contains(errOut, "warning: replication slot idle has no relay streaming from it") ||
		!strings.Contains(errOut, "idle_replication_slot_timeout") {
		t.Fatalf("status --json of an inactive slot under idle_replication_slot_timeout: %s\nstderr: %s", out, errOut)
	}

	// Idle for longer than the timeout, a checkpoint invalidates it.
	waitFor(t, 30*time.Second, "the slot idle for longer than idle_replication_slot_timeout", func() (bool, error) {
		var longer bool
		err := queryOne(ctx, db, `select now() - inactive_since > $1::interval from pg_replication_slots where slot_name = 'idle'`,
			[]any{(timeout + time.Second).String()}, &longer)
		return longer, err
	})
	db.Exec(t, "checkpoint")
	var reason string
	if err := queryOne(ctx, db, `select coalesce(invalidation_reason, '') from pg_replication_slots where slot_name = 'idle'`, nil, &reason); err != nil || reason != "idle_timeout" {
		t.Fatalf("invalidation_reason %q (%v) after a checkpoint, want idle_timeout", reason, err)
	}
	_, errOut, code = runStatus(t, os.Environ(), "--pg-url", db.URL, "--slot", "idle")
	if code != 1 || !strings.Contains(errOut, "invalidation_reason idle_timeout") {
		t.Fatalf("status of the invalidated slot: exit %d, %s; want 1 naming idle_timeout", code, errOut)
	}
	relay2 := startRelay(t, args...)
	code = relay2.waitExit(t, 60*time.Second)
	if code == 0 || !strings.Contains(relay2.out.String(), "longer than idle_replication_slot_timeout") {
		t.Fatalf("relay on the slot invalidated for idleness: exit %d:\n%s", code, tail(relay2.out.String(), 10))
	}
}
