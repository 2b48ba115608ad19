// Package pgtest gives each test its own PostgreSQL database, on one private
// server per test binary (see internal/pgserver) or on an existing server
// named by OUTBOX_RELAY_TEST_PG_URL.
//
// A package that uses New needs
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// so that the shared server is stopped when its tests end.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgserver"
)

// EnvURL names the environment variable that points the tests at an existing
// server (a postgres:// URL of a superuser or a role with CREATEDB and
// REPLICATION; its database is used for administration). The server must
// have wal_level = logical.
const EnvURL = "OUTBOX_RELAY_TEST_PG_URL"

// EnvVersion names the environment variable that picks the major version of
// the private servers (15, 16, 17, 18; `make test-pg-matrix` runs the core
// tests on each). Unset, the system's newest installed version runs; others
// come from scripts/fetch-postgres.sh (see pgserver.BinDirFor).
const EnvVersion = "OUTBOX_RELAY_TEST_PG_VERSION"

// Version returns the major version EnvVersion asks for, 0 when unset.
func Version() (int, error) {
	v := os.Getenv(EnvVersion)
	if v == "" {
		return 0, nil
	}
	major, err := strconv.Atoi(v)
	if err != nil || major < 10 {
		return 0, fmt.Errorf("%s=%q: want a PostgreSQL major version such as 17", EnvVersion, v)
	}
	return major, nil
}

// DB is a fresh database for one test on a shared private server.
type DB struct {
	// URL connects to the database.
	URL string
	// Name is the database name.
	Name string
	// Server is the shared private server; nil when using an external server.
	Server *pgserver.Server

	mu   sync.Mutex
	conn *pgx.Conn // for Exec
}

// shared is the server every New in this test binary uses.
var shared struct {
	once     sync.Once
	mainRan  atomic.Bool
	server   *pgserver.Server
	adminURL string // a URL to the server's maintenance database
	err      error
	seq      atomic.Int64
}

// Main runs the tests, stops the shared server, and exits. Call it from
// TestMain.
func Main(m *testing.M) {
	os.Exit(Run(m))
}

// Run is Main without the exit, for a TestMain with cleanup of its own
// (deferred calls do not run after os.Exit): it runs the tests, stops the
// shared server and returns the exit code.
func Run(m *testing.M) int {
	shared.mainRan.Store(true)
	code := m.Run()
	if shared.server != nil {
		if err := shared.server.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stopping the shared PostgreSQL server: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

func setup() {
	if u := os.Getenv(EnvURL); u != "" {
		shared.adminURL = u
		shared.err = checkLogical(u)
		return
	}
	if !shared.mainRan.Load() {
		shared.err = errors.New("pgtest needs `func TestMain(m *testing.M) { pgtest.Main(m) }` (or pgtest.Run) " +
			"in this package, so that its PostgreSQL server is stopped after the tests")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	major, err := Version()
	if err != nil {
		shared.err = err
		return
	}
	shared.server, shared.err = pgserver.Start(ctx, pgserver.Options{Version: major})
	if shared.err == nil {
		shared.adminURL = shared.server.URL("postgres")
	}
}

func checkLogical(u string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", EnvURL, err)
	}
	defer conn.Close(ctx)
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("reading wal_level of the %s server: %w", EnvURL, err)
	}
	if level != "logical" {
		return fmt.Errorf("the %s server has wal_level = %q; set wal_level = logical and restart it, "+
			"or unset %s to let the tests start their own server", EnvURL, level, EnvURL)
	}
	return nil
}

// New creates an empty database for the calling test, named after it, and
// drops it (with the replication slots in it) when the test ends. The first
// call in a test binary starts the shared server.
func New(t testing.TB) *DB {
	t.Helper()
	shared.once.Do(setup)
	if shared.err != nil {
		t.Fatalf("pgtest: %v", shared.err)
	}
	db := create(t, shared.adminURL, false)
	db.Server = shared.server
	return db
}

// OnServer is New on a given server, such as one from NewServer. The database
// is dropped when the test ends, if the server is still running then.
func OnServer(t testing.TB, s *pgserver.Server) *DB {
	t.Helper()
	db := create(t, s.URL("postgres"), true)
	db.Server = s
	return db
}

// create makes the database; mayBeDown says the server may be stopped by the
// time the test ends, which is then no failure.
func create(t testing.TB, adminURL string, mayBeDown bool) *DB {
	t.Helper()
	name := dbName(t.Name(), shared.seq.Add(1))
	dbURL, err := withDatabase(adminURL, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	admin, err := pgx.Connect(t.Context(), adminURL)
	if err != nil {
		t.Fatalf("pgtest: connecting to the test server: %v", err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(t.Context(), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		err := drop(adminURL, name)
		switch {
		case err == nil:
		case mayBeDown && errors.Is(err, errUnreachable):
			t.Logf("pgtest: %v", err)
		default:
			t.Errorf("pgtest: %v", err)
		}
	})
	return &DB{URL: dbURL, Name: name}
}

// drop removes the database and its replication slots; walsenders and other
// sessions still attached to it are terminated first.
var errUnreachable = errors.New("server unreachable")

func drop(adminURL, name string) error {
	// t.Context() is already canceled when cleanups run.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("dropping database %s: %w: %w", name, errUnreachable, err)
	}
	defer conn.Close(ctx)

	for {
		rows, _ := conn.Query(ctx, `SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = $1`, name)
		type slot struct {
			Name string
			PID  *int32
		}
		slots, err := pgx.CollectRows(rows, pgx.RowToStructByPos[slot])
		if err != nil {
			return fmt.Errorf("listing replication slots of database %s: %w", name, err)
		}
		if len(slots) == 0 {
			break
		}
		for _, sl := range slots {
			if sl.PID != nil {
				_, err = conn.Exec(ctx, "SELECT pg_terminate_backend($1)", *sl.PID)
			} else {
				_, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", sl.Name)
			}
			// A slot can become active, inactive or dropped in between: look again.
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dropping replication slots %v of database %s: %w (last error: %v)", slots, name, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping database %s: %w", name, err)
	}
	return nil
}

// Conn opens a connection to the database, closed when the test ends.
func (db *DB) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), db.URL)
	if err != nil {
		t.Fatalf("pgtest: connecting to %s: %v", db.Name, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Exec runs sql (one or more statements when there are no args) and fails the
// test on error. It is safe for concurrent use, but call it from the test's
// goroutine, as it may call t.Fatal.
func (db *DB) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.conn == nil || db.conn.IsClosed() {
		conn, err := pgx.Connect(t.Context(), db.URL)
		if err != nil {
			t.Fatalf("pgtest: connecting to %s: %v", db.Name, err)
		}
		db.conn = conn
		t.Cleanup(func() {
			db.mu.Lock()
			defer db.mu.Unlock()
			conn.Close(context.Background())
		})
	}
	if _, err := db.conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// NewServer starts a private server for one test, for tests that restart or
// stop it; settings override the defaults (see pgserver.Options.Settings). It
// is closed when the test ends.
func NewServer(t testing.TB, settings map[string]string) *pgserver.Server {
	t.Helper()
	major, err := Version()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return NewServerVersion(t, major, settings)
}

// NewServerVersion is NewServer of one major version (0: as NewServer),
// whatever EnvVersion says: for tests of what only some versions do. When
// that version is not installed the test is skipped, except in CI (the CI
// environment variable set), where it fails.
func NewServerVersion(t testing.TB, major int, settings map[string]string) *pgserver.Server {
	t.Helper()
	s, err := pgserver.Start(t.Context(), pgserver.Options{Version: major, Settings: settings, Logf: t.Logf})
	if errors.Is(err, pgserver.ErrBinariesNotFound) && major != 0 && os.Getenv("CI") == "" {
		t.Skipf("pgtest: %v (CI fetches it)", err)
	}
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return s
}

// dbName makes "t_<test name>_<seq>" a valid, unquoted-looking identifier of
// at most 63 bytes (PostgreSQL truncates longer names).
func dbName(testName string, seq int64) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	suffix := fmt.Sprintf("_%d", seq)
	base := b.String()
	if max := 63 - len("t_") - len(suffix); len(base) > max {
		base = base[:max]
	}
	return "t_" + base + suffix
}

func withDatabase(rawURL, name string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("%s must be a postgres:// URL", EnvURL)
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}
