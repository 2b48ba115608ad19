package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestMain(m *testing.M) { Main(m) }

func TestEachTestGetsItsOwnEmptyDatabase(t *testing.T) {
	a, b := New(t), New(t)
	if a.Name == b.Name || a.URL == b.URL {
		t.Fatalf("two databases share a name: %s, %s", a.Name, b.Name)
	}
	if !strings.HasPrefix(a.Name, "t_testeachtestgetsitsownemptydatabase_") {
		t.Errorf("name %q is not derived from the test name", a.Name)
	}
	a.Exec(t, "CREATE TABLE only_in_a (v int)")
	a.Exec(t, "INSERT INTO only_in_a VALUES ($1)", 7)

	var n int
	if err := b.Conn(t).QueryRow(t.Context(),
		"SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n); err != nil || n != 0 {
		t.Errorf("table visible in the other database: n = %d, err = %v", n, err)
	}
	var wal string
	if err := a.Conn(t).QueryRow(t.Context(), "SHOW wal_level").Scan(&wal); err != nil || wal != "logical" {
		t.Errorf("wal_level = %q, err = %v", wal, err)
	}
}

func TestCleanupDropsTheDatabaseAndItsSlots(t *testing.T) {
	var db *DB
	t.Run("user", func(t *testing.T) {
		db = New(t)
		db.Exec(t, "CREATE TABLE outbox (id int); CREATE PUBLICATION pub FOR TABLE outbox")
		db.Exec(t, "SELECT pg_create_logical_replication_slot('idle_slot', 'pgoutput')")

		// A slot in use by a walsender, as the relay would leave it.
		cfg, err := pgconn.ParseConfig(db.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["replication"] = "database"
		repl, err := pgconn.ConnectConfig(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { repl.Close(context.Background()) })
		if _, err := pglogrepl.CreateReplicationSlot(t.Context(), repl, "busy_slot", "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := pglogrepl.StartReplication(t.Context(), repl, "busy_slot", 0, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names 'pub'"},
		}); err != nil {
			t.Fatal(err)
		}
	})

	admin, err := pgx.Connect(t.Context(), shared.adminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var dbs, slots int
	err = admin.QueryRow(t.Context(), `SELECT
		(SELECT count(*) FROM pg_database WHERE datname = $1),
		(SELECT count(*) FROM pg_replication_slots WHERE database = $1)`, db.Name).Scan(&dbs, &slots)
	if err != nil {
		t.Fatal(err)
	}
	if dbs != 0 || slots != 0 {
		t.Errorf("after the test: %d databases named %s, %d slots in it", dbs, db.Name, slots)
	}
}

func TestNewServerIsPrivateAndRestartable(t *testing.T) {
	s := NewServer(t, map[string]string{"wal_sender_timeout": "2s"})
	if shared.server != nil && s.Port() == shared.server.Port() {
		t.Fatal("NewServer returned the shared server")
	}
	db := OnServer(t, s)
	if db.Server != s || !strings.Contains(db.URL, fmt.Sprintf(":%d/", s.Port())) {
		t.Fatalf("database %s is not on the private server", db.URL)
	}
	db.Exec(t, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (1)")
	if err := s.Restart(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	var timeout string
	var n int
	err := db.Conn(t).QueryRow(t.Context(), "SELECT current_setting('wal_sender_timeout'), (SELECT count(*) FROM kept)").
		Scan(&timeout, &n)
	if err != nil || timeout != "2s" || n != 1 {
		t.Errorf("after restart: wal_sender_timeout = %q, rows = %d, err = %v", timeout, n, err)
	}
	// Leaving the server stopped is fine: its database goes with it.
	if err := s.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestExternalServerWithoutLogicalWALIsRefused(t *testing.T) {
	s := NewServer(t, map[string]string{"wal_level": "replica"})
	err := checkLogical(s.URL("postgres"))
	if err == nil || !strings.Contains(err.Error(), `wal_level = "replica"`) ||
		!strings.Contains(err.Error(), "set wal_level = logical") {
		t.Fatalf("err = %v", err)
	}
	if err := checkLogical(NewServer(t, nil).URL("postgres")); err != nil {
		t.Fatalf("logical server refused: %v", err)
	}
}

func TestDatabaseNames(t *testing.T) {
	long := strings.Repeat("VeryLongSubtest/", 10)
	for in, want := range map[string]string{
		"TestX/case_1":    "t_testx_case_1_3",
		"TestÄ 'quoted'":  "t_test___quoted__3",
		long:              "t_" + strings.Repeat("verylongsubtest_", 4)[:59] + "_3",
		"Test/with-dash.": "t_test_with_dash__3",
	} {
		got := dbName(in, 3)
		if got != want || len(got) > 63 {
			t.Errorf("dbName(%q) = %q, want %q", in, got, want)
		}
	}
	u, err := withDatabase("postgres://u:p@h:5/admin?sslmode=disable", "t_x_1")
	if err != nil {
		t.Fatal(err)
	}
	if parsed, _ := url.Parse(u); parsed.Path != "/t_x_1" || parsed.RawQuery != "sslmode=disable" || parsed.Host != "h:5" {
		t.Errorf("withDatabase = %s", u)
	}
	if _, err := withDatabase("host=h dbname=x", "t"); err == nil {
		t.Error("a keyword/value DSN was accepted")
	}
}
