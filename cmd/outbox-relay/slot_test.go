package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestSlotCreateListDrop(t *testing.T) {
	db := pgtest.New(t)
	flags := []string{"--pg-url", db.URL, "--slot", db.Name, "--publication", "outbox_pub"}
	if code := exitCode("migrate", "--pg-url", db.URL); code != exitOK {
		t.Fatalf("migrate: exit %d", code)
	}

	out, err := runOutput(t, append([]string{"slot", "create"}, flags...)...)
	if err != nil {
		t.Fatalf("slot create: %v", err)
	}
	for _, want := range []string{"created publication outbox_pub of inserts into public.outbox", "created replication slot " + db.Name + " (pgoutput)"} {
		if !strings.Contains(out, want) {
			t.Errorf("slot create printed %q, want %q", out, want)
		}
	}
	out, err = runOutput(t, append([]string{"slot", "create"}, flags...)...)
	if err != nil || !strings.Contains(out, "publication outbox_pub already exists") || !strings.Contains(out, "replication slot "+db.Name+" already exists") {
		t.Errorf("second slot create: %q, %v", out, err)
	}

	out, err = runOutput(t, "slot", "list", "--pg-url", db.URL)
	if err != nil {
		t.Fatalf("slot list: %v", err)
	}
	var row []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == db.Name {
			row = f
		}
	}
	if !strings.HasPrefix(out, "SLOT ") || len(row) < 8 || row[1] != "pgoutput" || row[2] != db.Name || row[3] != "no" || row[len(row)-3] != "reserved" || row[len(row)-2] != "unlimited" || row[len(row)-1] != "no" {
		t.Errorf("slot list has row %q in:\n%s", row, out)
	}

	out, err = runOutput(t, "slot", "list", "--pg-url", db.URL, "--json")
	if err != nil {
		t.Fatalf("slot list --json: %v", err)
	}
	var slots []map[string]any
	if err := json.Unmarshal([]byte(out), &slots); err != nil {
		t.Fatalf("slot list --json printed %q: %v", out, err)
	}
	var found map[string]any
	for _, s := range slots {
		if s["slot_name"] == db.Name {
			found = s
		}
	}
	if found == nil || found["plugin"] != "pgoutput" || found["database"] != db.Name || found["active"] != false ||
		found["active_pid"] != nil || found["safe_wal_size"] != nil || found["wal_status"] != "reserved" {
		t.Errorf("slot list --json: %v", found)
	}
	if _, ok := found["lag_bytes"].(float64); !ok {
		t.Errorf("lag_bytes is %T, want a number", found["lag_bytes"])
	}

	dropFlags := []string{"--pg-url", db.URL, "--slot", db.Name, "--publication", "outbox_pub"}
	out, err = runOutput(t, append([]string{"slot", "drop"}, dropFlags...)...)
	if err != nil || !strings.Contains(out, "dropped replication slot "+db.Name) || !strings.Contains(out, "dropped publication outbox_pub") {
		t.Errorf("slot drop: %q, %v", out, err)
	}
	out, err = runOutput(t, append([]string{"slot", "drop"}, dropFlags...)...)
	if err != nil || !strings.Contains(out, "replication slot "+db.Name+" does not exist") || !strings.Contains(out, "publication outbox_pub does not exist") {
		t.Errorf("second slot drop: %q, %v", out, err)
	}
}

func TestSlotCreateExitCodes(t *testing.T) {
	db := pgtest.New(t)
	flags := []string{"--pg-url", db.URL, "--slot", db.Name}

	_, err := runOutput(t, append([]string{"slot", "create"}, flags...)...)
	if err == nil || !strings.Contains(err.Error(), "table public.outbox does not exist; run `outbox-relay migrate`") {
		t.Errorf("slot create without the table: %v", err)
	}
	if code := exitCode(append([]string{"slot", "create"}, flags...)...); code != exitUsage {
		t.Errorf("slot create without the table: exit %d, want %d", code, exitUsage)
	}
	if code := exitCode("slot", "create", "--pg-url", db.URL, "--slot", "Not-Valid"); code != exitUsage {
		t.Errorf("slot create --slot Not-Valid: exit %d, want %d", code, exitUsage)
	}
	for _, args := range [][]string{{"slot"}, {"slot", "frobnicate"}} {
		if code := exitCode(args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
	if code := exitCode("migrate", "--pg-url", db.URL); code != exitOK {
		t.Fatalf("migrate: exit %d", code)
	}
	if code := exitCode(append([]string{"slot", "create"}, flags...)...); code != exitOK {
		t.Errorf("slot create after migrate: exit %d", code)
	}
}

// slot create on a server with wal_level = replica stops at the check, says
// what to change and exits 2.
func TestSlotCreateOnWALLevelReplicaExitsTwo(t *testing.T) {
	srv := pgtest.NewServer(t, map[string]string{"wal_level": "replica"})
	args := []string{"slot", "create", "--pg-url", srv.URL("postgres"), "--slot", "never_created"}
	_, err := runOutput(t, args...)
	if err == nil || !strings.Contains(err.Error(), "wal_level is 'replica'; set wal_level = logical") {
		t.Errorf("slot create: %v", err)
	}
	if code := exitCode(args...); code != exitUsage {
		t.Errorf("exit %d, want %d", code, exitUsage)
	}
}

func TestWALBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB", 16 << 20: "16 MiB",
		5 << 30: "5 GiB", -2048: "-2 KiB",
	} {
		if got := walBytes(n); got != want {
			t.Errorf("walBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// status fails (exit 1) when there is no slot to report on: none on the
// server at all, or not the one --slot names.
func TestStatusWithoutASlotExitsOne(t *testing.T) {
	srv := pgtest.NewServer(t, nil) // a server of its own: no other test's slots
	url := srv.URL("postgres")
	for _, args := range [][]string{{"status", "--pg-url", url}, {"status", "--pg-url", url, "--slot", "no_such_slot"}, {"status", "--pg-url", url, "--json"}} {
		code, _, stderr := runCaptured(args...)
		if code != exitFailure || !strings.Contains(stderr, "slot create") {
			t.Errorf("%v: exit %d (%q), want %d saying how to create one", args, code, stderr, exitFailure)
		}
	}
}

// slot drop refuses while the slot holds outbox events the relay has not
// delivered, says how many and how old, and drops with --force.
func TestSlotDropRefusesWhileEventsWait(t *testing.T) {
	db := pgtest.New(t)
	flags := []string{"--pg-url", db.URL, "--slot", db.Name, "--publication", "pending_pub"}
	if code := exitCode("migrate", "--pg-url", db.URL); code != exitOK {
		t.Fatalf("migrate: exit %d", code)
	}
	if code := exitCode(append([]string{"slot", "create"}, flags...)...); code != exitOK {
		t.Fatalf("slot create: exit %d", code)
	}
	// Four events: three rows in two transactions and a table-free event
	// (a message with the outbox prefix); a row of another table and a
	// heartbeat are not events.
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values
		('order', '1', 'created', '{}'), ('order', '2', 'created', '{}')`)
	db.Exec(t, `create table other (x int)`)
	db.Exec(t, `insert into other values (1)`)
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('order', '3', 'created', '{}')`)
	db.Exec(t, `select pg_logical_emit_message(true, 'outbox', '{}')`)
	db.Exec(t, `select pg_logical_emit_message(true, 'outbox-relay.heartbeat', 'x')`)

	code, stdout, stderr := runCaptured(append([]string{"slot", "drop"}, flags...)...)
	if code != exitFailure {
		t.Fatalf("slot drop with 4 events waiting: exit %d, want %d (%s%s)", code, exitFailure, stdout, stderr)
	}
	for _, want := range []string{"not dropping replication slot " + db.Name, "holds 4 undelivered outbox event(s)", "the oldest committed", "--force"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("refusal %q does not say %q", stderr, want)
		}
	}
	if out, err := runOutput(t, "status", "--pg-url", db.URL, "--slot", db.Name); err != nil || !strings.Contains(out, db.Name) {
		t.Fatalf("the slot is gone after a refused drop: %q, %v", out, err)
	}
	code, stdout, stderr = runCaptured(append([]string{"slot", "drop", "--force"}, flags...)...)
	if code != exitOK || !strings.Contains(stdout, "dropped replication slot "+db.Name) {
		t.Fatalf("slot drop --force: exit %d\n%s%s", code, stdout, stderr)
	}
}
