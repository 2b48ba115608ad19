package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgserver"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// runBoth runs the app and returns what it printed on stdout and stderr.
func runBoth(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.RunContext(t.Context(), append([]string{"outbox-relay"}, args...))
	return out.String(), errOut.String(), err
}

// migratedDB is a database with the outbox table on srv.
func migratedDB(t *testing.T, srv *pgserver.Server) *pgtest.DB {
	t.Helper()
	db := pgtest.OnServer(t, srv)
	if _, err := runOutput(t, "migrate", "--pg-url", db.URL); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return db
}

func slotJSONOf(t *testing.T, db *pgtest.DB, name string) slotJSON {
	t.Helper()
	out, err := runOutput(t, "slot", "list", "--pg-url", db.URL, "--json")
	if err != nil {
		t.Fatalf("slot list --json: %v", err)
	}
	var slots []slotJSON
	if err := json.Unmarshal([]byte(out), &slots); err != nil {
		t.Fatalf("slot list --json printed %q: %v", out, err)
	}
	for _, s := range slots {
		if s.Slot == name {
			return s
		}
	}
	t.Fatalf("slot list --json has no slot %s: %s", name, out)
	return slotJSON{}
}

func TestSlotCreateFailoverMakesAFailoverSlot(t *testing.T) {
	db := migratedDB(t, pgtest.NewServerVersion(t, 17, nil))
	out, err := runOutput(t, "slot", "create", "--pg-url", db.URL, "--slot", "fo", "--publication", "fo", "--failover")
	if err != nil {
		t.Fatalf("slot create --failover: %v", err)
	}
	if !strings.Contains(out, "created replication slot fo (pgoutput, failover)") {
		t.Fatalf("slot create --failover printed %q", out)
	}
	if s := slotJSONOf(t, db, "fo"); !s.Failover || s.Synced {
		t.Fatalf("slot list --json: failover %v synced %v, want a failover slot, not synced", s.Failover, s.Synced)
	}
	// Without the flag a slot is not a failover slot, and asking for one
	// later says how to make it one.
	if _, err := runOutput(t, "slot", "create", "--pg-url", db.URL, "--slot", "plain", "--publication", "fo"); err != nil {
		t.Fatal(err)
	}
	if s := slotJSONOf(t, db, "plain"); s.Failover {
		t.Fatal("slot created without --failover is a failover slot")
	}
	_, err = runOutput(t, "slot", "create", "--pg-url", db.URL, "--slot", "plain", "--publication", "fo", "--failover")
	if err == nil || !strings.Contains(err.Error(), "not a failover slot") || !strings.Contains(err.Error(), "ALTER_REPLICATION_SLOT plain (FAILOVER true)") {
		t.Fatalf("slot create --failover on a plain slot: %v; want the ALTER_REPLICATION_SLOT that fixes it", err)
	}
}

func TestFailoverBefore17IsRefusedClearly(t *testing.T) {
	db := migratedDB(t, pgtest.NewServerVersion(t, 16, nil))
	code := exitCode("slot", "create", "--pg-url", db.URL, "--slot", "fo", "--publication", "fo", "--failover")
	if code != exitUsage {
		t.Fatalf("slot create --failover on PostgreSQL 16: exit %d, want %d", code, exitUsage)
	}
	_, err := runOutput(t, "slot", "create", "--pg-url", db.URL, "--slot", "fo", "--publication", "fo", "--failover")
	if err == nil || !strings.Contains(err.Error(), "--failover needs PostgreSQL 17 or later") || !strings.Contains(err.Error(), "this server is 16.") {
		t.Fatalf("slot create --failover on PostgreSQL 16: %v", err)
	}
	// Nothing was created.
	out, _ := runOutput(t, "slot", "list", "--pg-url", db.URL)
	if strings.Contains(out, "fo ") {
		t.Fatalf("a refused --failover left a slot behind:\n%s", out)
	}
}

// status warns about a slot that would not survive a promotion: a plain
// slot on a primary with a standby, or a failover slot no standby waits
// for; once synchronized_standby_slots names the streaming standby's slot,
// the failover slot passes.
func TestStatusWarnsWhenTheSlotIsNotFailoverReady(t *testing.T) {
	primary := pgtest.NewServerVersion(t, 17, nil)
	standby, err := primary.StartStandby(t.Context(), pgserver.StandbyOptions{Slot: "standby1",
		Settings: map[string]string{"sync_replication_slots": "on"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Close() })
	db := migratedDB(t, primary)

	// A standby alone is no warning: no logical slot yet.
	if _, err := runOutput(t, "slot", "create", "--pg-url", db.URL, "--slot", "plain", "--publication", "p"); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runBoth(t, "status", "--pg-url", db.URL, "--slot", "plain")
	if err != nil || !strings.Contains(errOut, "warning: replication slot plain is not a failover slot") {
		t.Fatalf("status of a plain slot with a standby: %v\n%s%s", err, out, errOut)
	}

	if _, err := runOutput(t, "slot", "create", "--pg-url", db.URL, "--slot", "fo", "--publication", "p", "--failover"); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = runBoth(t, "status", "--pg-url", db.URL, "--slot", "fo")
	if err != nil || !strings.Contains(errOut, "synchronized_standby_slots is empty") {
		t.Fatalf("status of a failover slot without synchronized_standby_slots: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(out, "FAILOVER") || !strings.Contains(out, " yes ") {
		t.Fatalf("status table does not show the failover slot as such:\n%s", out)
	}

	db.Exec(t, "alter system set synchronized_standby_slots = 'standby1'")
	db.Exec(t, "select pg_reload_conf()")
	out, errOut, err = runBoth(t, "status", "--pg-url", db.URL, "--slot", "fo", "--json")
	if err != nil || errOut != "" {
		t.Fatalf("status of a failover-ready slot: %v, warnings:\n%s", err, errOut)
	}
	var rows []statusJSON
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || !rows[0].Failover || len(rows[0].Warnings) != 0 {
		t.Fatalf("status --json %s (%v): want one failover slot without warnings", out, err)
	}
}
