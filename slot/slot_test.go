package slot_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/slot"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup gives the test its own database with the default outbox table, and
// a config whose slot name is unique on the shared server.
func setup(t *testing.T) (*pgtest.DB, *pgx.Conn, slot.Config) {
	t.Helper()
	db := pgtest.New(t)
	conn := db.Conn(t)
	if err := migrations.Apply(t.Context(), conn, "public.outbox"); err != nil {
		t.Fatal(err)
	}
	return db, conn, slot.Config{Slot: db.Name, Publication: "outbox_pub", Table: "public.outbox"}
}

// problem asserts that err is a *slot.Problem whose text contains every want.
func problem(t *testing.T, err error, want ...string) *slot.Problem {
	t.Helper()
	var p *slot.Problem
	if !errors.As(err, &p) {
		t.Fatalf("error %v (%T) is not a *slot.Problem", err, err)
	}
	var cp interface{ ConfigProblem() bool }
	if !errors.As(err, &cp) || !cp.ConfigProblem() {
		t.Errorf("error %v does not report ConfigProblem", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	return p
}

func TestValidate(t *testing.T) {
	ok := slot.Config{Slot: "outbox_relay", Publication: "outbox_relay", Table: "public.outbox"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*slot.Config)
		want string
	}{
		{"upper-case slot", func(c *slot.Config) { c.Slot = "Outbox" }, `"Outbox"`},
		{"slot with a dash", func(c *slot.Config) { c.Slot = "out-box" }, `"out-box"`},
		{"empty slot", func(c *slot.Config) { c.Slot = "" }, "replication slot name"},
		{"64-byte slot", func(c *slot.Config) { c.Slot = strings.Repeat("a", 64) }, "63"},
		{"empty publication", func(c *slot.Config) { c.Publication = "" }, "publication name is empty"},
		{"empty table", func(c *slot.Config) { c.Table = "" }, "table name is empty"},
		{"empty schema", func(c *slot.Config) { c.Table = ".outbox" }, `".outbox"`},
		{"three parts", func(c *slot.Config) { c.Table = "a.b.c" }, `"a.b.c"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	for _, table := range []string{"outbox", "Events.Outbox", "s.t"} {
		c := ok
		c.Table = table
		if err := c.Validate(); err != nil {
			t.Errorf("table %q: %v", table, err)
		}
	}
}

func TestProblemSaysWhatAndHowToFix(t *testing.T) {
	p := &slot.Problem{What: "wal_level is 'replica'", Fix: "set wal_level = logical"}
	if got, want := p.Error(), "wal_level is 'replica'; set wal_level = logical"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	err := fmt.Errorf("preparing: %w", slot.LostError("s1", ""))
	if !errors.Is(err, slot.ErrSlotLost) {
		t.Errorf("LostError does not wrap ErrSlotLost")
	}
	problem(t, err, "replication slot s1 was invalidated (wal_status = lost)", "max_slot_wal_keep_size", "outbox-relay slot drop")
}

func TestCreateMakesAnInsertOnlyPublicationAndAPgoutputSlot(t *testing.T) {
	db, conn, cfg := setup(t)
	if err := slot.Preflight(t.Context(), conn, cfg); err != nil {
		t.Fatalf("Preflight: %v", err)
	}
	ch, err := slot.Create(t.Context(), conn, cfg)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if !ch.Publication || !ch.Slot {
		t.Errorf("Create reported %+v, want both created", ch)
	}

	var ins, upd, del, trunc, viaRoot bool
	var tables string
	err = conn.QueryRow(t.Context(), `select pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot,
		(select string_agg(schemaname || '.' || tablename, ',') from pg_publication_tables where pubname = $1)
		from pg_publication where pubname = $1`, cfg.Publication).Scan(&ins, &upd, &del, &trunc, &viaRoot, &tables)
	if err != nil {
		t.Fatal(err)
	}
	if !ins || upd || del || trunc || viaRoot || tables != "public.outbox" {
		t.Errorf("publication: insert=%v update=%v delete=%v truncate=%v via_root=%v tables=%s; want inserts of public.outbox only",
			ins, upd, del, trunc, viaRoot, tables)
	}

	info, ok, err := slot.Get(t.Context(), conn, cfg.Slot)
	if err != nil || !ok {
		t.Fatalf("Get(%s) = %v, %v", cfg.Slot, ok, err)
	}
	if info.Name != cfg.Slot || info.Type != "logical" || info.Plugin != "pgoutput" || info.Database != db.Name ||
		info.Active || info.ConfirmedFlush == 0 || info.RestartLSN == 0 || info.WALStatus != "reserved" {
		t.Errorf("slot: %+v", info)
	}
	if info.SafeWALSize != nil {
		t.Errorf("SafeWALSize = %d, want nil with max_slot_wal_keep_size = -1", *info.SafeWALSize)
	}

	// Again: nothing to do, and Preflight is happy with what exists.
	if err := slot.Preflight(t.Context(), conn, cfg); err != nil {
		t.Fatalf("Preflight after Create: %v", err)
	}
	ch, err = slot.Create(t.Context(), conn, cfg)
	if err != nil || ch.Publication || ch.Slot {
		t.Errorf("second Create = %+v, %v; want nothing created", ch, err)
	}
	created, err := slot.Ensure(t.Context(), conn, cfg)
	if err != nil || created {
		t.Errorf("Ensure after Create = %v, %v; want nothing created", created, err)
	}
}

func TestEnsureCreatesOnlyTheMissingSlot(t *testing.T) {
	_, conn, cfg := setup(t)
	if _, err := conn.Exec(t.Context(), `CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert, update')`); err != nil {
		t.Fatal(err)
	}
	ch, err := slot.Create(t.Context(), conn, cfg)
	if err != nil || ch.Publication || !ch.Slot {
		t.Errorf("Create = %+v, %v; want only the slot created (a publication of more than inserts is fine)", ch, err)
	}
}

func TestPreflightNamesAMissingTable(t *testing.T) {
	db := pgtest.New(t)
	conn := db.Conn(t)
	cfg := slot.Config{Slot: db.Name, Publication: "p", Table: "public.outbox"}
	err := slot.Preflight(t.Context(), conn, cfg)
	problem(t, err, "table public.outbox does not exist; run `outbox-relay migrate` or create it")

	cfg.Table = "events.outbox"
	_, err = slot.Create(t.Context(), conn, cfg)
	problem(t, err, "table events.outbox does not exist", "outbox-relay migrate --table events.outbox")

	if _, ok, err := slot.Get(t.Context(), conn, cfg.Slot); ok || err != nil {
		t.Errorf("a slot was created for a missing table (err %v)", err)
	}
}

// A server with wal_level = replica (PostgreSQL's default) cannot decode
// logically: Preflight says what to change.
func TestPreflightRejectsWALLevelReplica(t *testing.T) {
	srv := pgtest.NewServer(t, map[string]string{"wal_level": "replica"})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	err = slot.Preflight(ctx, conn, slot.Config{Slot: "never_created", Publication: "never_created", Table: "outbox"})
	problem(t, err, "wal_level is 'replica'; set wal_level = logical in postgresql.conf and restart PostgreSQL")
}

func TestPreflightNamesARoleWithoutReplication(t *testing.T) {
	db, _, cfg := setup(t)
	role := db.Name + "_app"
	db.Exec(t, fmt.Sprintf(`CREATE ROLE %s LOGIN`, role))
	t.Cleanup(func() {
		admin, err := pgx.Connect(context.Background(), db.URL)
		if err == nil {
			admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+role)
			admin.Close(context.Background())
		}
	})
	pc, err := pgx.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.User = role
	app, err := pgx.ConnectConfig(t.Context(), pc)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())

	err = slot.Preflight(t.Context(), app, cfg)
	problem(t, err, "role "+role+" may not use replication", "ALTER ROLE "+`"`+role+`"`+" REPLICATION")

	// With REPLICATION it passes; creating the publication still needs
	// the table's owner, and the error says so.
	db.Exec(t, fmt.Sprintf(`ALTER ROLE %s REPLICATION`, role))
	if err := slot.Preflight(t.Context(), app, cfg); err != nil {
		t.Fatalf("Preflight with REPLICATION: %v", err)
	}
	_, err = slot.Create(t.Context(), app, cfg)
	problem(t, err, "may not create publication outbox_pub", "CREATE PUBLICATION")
}

func TestPartitionedTableIsPublishedViaItsRoot(t *testing.T) {
	db := pgtest.New(t)
	conn := db.Conn(t)
	db.Exec(t, `CREATE TABLE outbox (id uuid not null default gen_random_uuid(), aggregate_type text not null,
		aggregate_id text not null, event_type text not null, payload jsonb not null,
		headers jsonb not null default '{}', created_at timestamptz not null default now()) PARTITION BY RANGE (created_at);
		CREATE TABLE outbox_all PARTITION OF outbox DEFAULT`)
	cfg := slot.Config{Slot: db.Name, Publication: "outbox_pub", Table: "outbox"}
	if _, err := slot.Ensure(t.Context(), conn, cfg); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	var viaRoot bool
	if err := conn.QueryRow(t.Context(), "select pubviaroot from pg_publication where pubname = 'outbox_pub'").Scan(&viaRoot); err != nil || !viaRoot {
		t.Errorf("publish_via_partition_root = %v (%v), want true", viaRoot, err)
	}

	// A publication someone made without it is named, with the fix.
	db.Exec(t, `DROP PUBLICATION outbox_pub; CREATE PUBLICATION outbox_pub FOR TABLE outbox`)
	err := slot.Preflight(t.Context(), conn, cfg)
	problem(t, err, `ALTER PUBLICATION "outbox_pub" SET (publish_via_partition_root = true)`)
}

func TestExistingPublicationMustIncludeTheTable(t *testing.T) {
	db, conn, cfg := setup(t)
	db.Exec(t, `CREATE TABLE other (id int); CREATE PUBLICATION outbox_pub FOR TABLE other`)
	_, err := slot.Ensure(t.Context(), conn, cfg)
	problem(t, err, "publication outbox_pub exists but does not include table public.outbox",
		`ALTER PUBLICATION "outbox_pub" ADD TABLE "public"."outbox"`)
	if _, ok, _ := slot.Get(t.Context(), conn, cfg.Slot); ok {
		t.Errorf("the slot was created although the publication is unusable")
	}

	db.Exec(t, `ALTER PUBLICATION outbox_pub ADD TABLE outbox`)
	if _, err := slot.Ensure(t.Context(), conn, cfg); err != nil {
		t.Errorf("Ensure after the fix: %v", err)
	}

	db.Exec(t, `CREATE PUBLICATION updates_only FOR TABLE outbox WITH (publish = 'update')`)
	cfg.Publication = "updates_only"
	problem(t, slot.Preflight(t.Context(), conn, cfg), "publication updates_only does not publish inserts")
}

func TestPublicationForAllTablesIsAccepted(t *testing.T) {
	db, conn, cfg := setup(t)
	db.Exec(t, `CREATE PUBLICATION outbox_pub FOR ALL TABLES`)
	if err := slot.Preflight(t.Context(), conn, cfg); err != nil {
		t.Errorf("Preflight: %v", err)
	}
}

func TestExistingSlotWithAnotherPluginIsNamed(t *testing.T) {
	db, conn, cfg := setup(t)
	db.Exec(t, `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, cfg.Slot)
	problem(t, slot.Preflight(t.Context(), conn, cfg), "replication slot "+cfg.Slot+" uses output plugin test_decoding, not pgoutput")
	_, err := slot.Ensure(t.Context(), conn, cfg)
	problem(t, err, "uses output plugin test_decoding")
}

func TestExistingSlotInAnotherDatabaseIsNamed(t *testing.T) {
	a, connA, cfg := setup(t)
	if _, err := slot.Ensure(t.Context(), connA, cfg); err != nil {
		t.Fatal(err)
	}
	b := pgtest.New(t)
	connB := b.Conn(t)
	if err := migrations.Apply(t.Context(), connB, "outbox"); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("replication slot %s belongs to database %s, not %s", cfg.Slot, a.Name, b.Name)
	_, err := slot.Ensure(t.Context(), connB, cfg)
	problem(t, err, want)
	_, err = slot.Drop(t.Context(), connB, cfg)
	problem(t, err, want)
	if _, ok, _ := slot.Get(t.Context(), connA, cfg.Slot); !ok {
		t.Errorf("Drop from another database dropped the slot")
	}
}

func TestDropIsIdempotentAndReportsWhatItDropped(t *testing.T) {
	_, conn, cfg := setup(t)
	if _, err := slot.Ensure(t.Context(), conn, cfg); err != nil {
		t.Fatal(err)
	}
	ch, err := slot.Drop(t.Context(), conn, cfg)
	if err != nil || !ch.Slot || !ch.Publication {
		t.Fatalf("Drop = %+v, %v; want both dropped", ch, err)
	}
	if _, ok, _ := slot.Get(t.Context(), conn, cfg.Slot); ok {
		t.Errorf("the slot is still there")
	}
	ch, err = slot.Drop(t.Context(), conn, cfg)
	if err != nil || ch.Slot || ch.Publication {
		t.Errorf("second Drop = %+v, %v; want nothing dropped and no error", ch, err)
	}
}

// stream starts streaming from the slot on a replication connection, as the
// relay does, and returns the walsender's pid.
func stream(t *testing.T, db *pgtest.DB, cfg slot.Config) int {
	t.Helper()
	pc, err := pgconn.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.RuntimeParams["replication"] = "database"
	repl, err := pgconn.ConnectConfig(t.Context(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repl.Close(context.Background()) })
	err = pglogrepl.StartReplication(t.Context(), repl, cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + cfg.Publication + "'"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return int(repl.PID())
}

func TestDropRefusesAnActiveSlotAndNamesThePID(t *testing.T) {
	db, conn, cfg := setup(t)
	if _, err := slot.Ensure(t.Context(), conn, cfg); err != nil {
		t.Fatal(err)
	}
	pid := stream(t, db, cfg)

	var info slot.Info
	deadline := time.Now().Add(10 * time.Second)
	for !info.Active && time.Now().Before(deadline) {
		info, _, _ = slot.Get(t.Context(), conn, cfg.Slot)
		time.Sleep(10 * time.Millisecond)
	}
	if !info.Active || info.ActivePID != pid {
		t.Fatalf("slot while streaming: active=%v pid=%d, want pid %d", info.Active, info.ActivePID, pid)
	}

	ch, err := slot.Drop(t.Context(), conn, cfg)
	want := fmt.Sprintf("replication slot %s is active (pid %d)", cfg.Slot, pid)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), fmt.Sprintf("pg_terminate_backend(%d)", pid)) {
		t.Errorf("Drop error = %v, want %q and the way to end it", err, want)
	}
	if ch.Slot || ch.Publication {
		t.Errorf("Drop dropped %+v of an active slot", ch)
	}
	var pubs int
	if err := conn.QueryRow(t.Context(), "select count(*) from pg_publication where pubname = $1", cfg.Publication).Scan(&pubs); err != nil || pubs != 1 {
		t.Errorf("publication count = %d (%v), want it kept while its slot is in use", pubs, err)
	}
}

func TestListShowsEverySlotWithItsLag(t *testing.T) {
	db, conn, cfg := setup(t)
	if _, err := slot.Ensure(t.Context(), conn, cfg); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
		SELECT 'order', i::text, 'created', '{}' FROM generate_series(1, 100) i`)

	physical := db.Name + "_phys"
	db.Exec(t, `SELECT pg_create_physical_replication_slot($1, true)`, physical)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), db.URL)
		if err == nil {
			c.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", physical)
			c.Close(context.Background())
		}
	})

	slots, err := slot.List(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]slot.Info{}
	for _, s := range slots {
		byName[s.Name] = s
	}
	s, ok := byName[cfg.Slot]
	if !ok {
		t.Fatalf("List has no slot %s: %+v", cfg.Slot, slots)
	}
	if s.LagBytes <= 0 || s.RetainedBytes < s.LagBytes || s.WALStatus != "reserved" {
		t.Errorf("after 100 inserts: lag %d, retained %d, wal_status %q", s.LagBytes, s.RetainedBytes, s.WALStatus)
	}
	p, ok := byName[physical]
	if !ok || p.Type != "physical" || p.Plugin != "" || p.Database != "" || p.ConfirmedFlush != 0 {
		t.Errorf("physical slot: %+v (listed %v)", p, ok)
	}
	if _, ok, err := slot.Get(t.Context(), conn, "no_such_slot"); ok || err != nil {
		t.Errorf("Get(no_such_slot) = %v, %v", ok, err)
	}
}

func TestALostSlotStopsEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own server")
	}
	srv := pgtest.NewServer(t, map[string]string{"max_slot_wal_keep_size": "1MB"})
	url := srv.URL("postgres")
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := migrations.Apply(t.Context(), conn, "outbox"); err != nil {
		t.Fatal(err)
	}
	cfg := slot.Config{Slot: "lost_slot", Publication: "outbox_pub", Table: "outbox"}
	if _, err := slot.Ensure(t.Context(), conn, cfg); err != nil {
		t.Fatal(err)
	}
	info, _, _ := slot.Get(t.Context(), conn, cfg.Slot)
	if info.SafeWALSize == nil {
		t.Errorf("SafeWALSize is nil with max_slot_wal_keep_size = 1MB")
	}
	// Move past a few WAL segments, then let a checkpoint remove them.
	for i := 0; i < 4 && !info.Lost(); i++ {
		for j := 0; j < 3; j++ {
			if _, err := conn.Exec(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
				VALUES ('a', 'b', 'c', '{}'); SELECT pg_switch_wal()`); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := conn.Exec(t.Context(), "CHECKPOINT"); err != nil {
			t.Fatal(err)
		}
		info, _, _ = slot.Get(t.Context(), conn, cfg.Slot)
	}
	if !info.Lost() {
		t.Fatalf("could not invalidate the slot: %+v", info)
	}

	for name, err := range map[string]error{
		"Preflight": slot.Preflight(t.Context(), conn, cfg),
		"Ensure":    func() error { _, err := slot.Ensure(t.Context(), conn, cfg); return err }(),
	} {
		if !errors.Is(err, slot.ErrSlotLost) {
			t.Errorf("%s = %v, want ErrSlotLost", name, err)
		}
	}
	if ch, err := slot.Drop(t.Context(), conn, cfg); err != nil || !ch.Slot {
		t.Errorf("Drop of a lost slot = %+v, %v", ch, err)
	}
	if ch, err := slot.Create(t.Context(), conn, cfg); err != nil || !ch.Slot {
		t.Errorf("Create after the drop = %+v, %v", ch, err)
	}
}
