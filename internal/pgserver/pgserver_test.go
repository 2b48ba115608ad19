package pgserver

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/orphan"
)

func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	opts.Logf = t.Logf
	s, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func show(t *testing.T, conn *pgx.Conn, setting string) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(t.Context(), "SHOW "+setting).Scan(&v); err != nil {
		t.Fatalf("SHOW %s: %v", setting, err)
	}
	return v
}

func TestStartIsReadyForLogicalReplication(t *testing.T) {
	s := startServer(t, Options{Settings: map[string]string{"wal_sender_timeout": "5s"}})
	conn := connect(t, s.URL("postgres"))

	for setting, want := range map[string]string{
		"wal_level":          "logical",
		"fsync":              "off",
		"wal_sender_timeout": "5s", // Settings override the defaults
	} {
		if got := show(t, conn, setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	if got, want := show(t, conn, "port"), s.URL(""); !strings.Contains(want, ":"+got+"/") {
		t.Errorf("server port %s does not match URL %s", got, want)
	}
	if s.Port() == 5432 {
		t.Errorf("server took the system port 5432")
	}
}

func TestCreateDatabase(t *testing.T) {
	s := startServer(t, Options{})
	if err := s.CreateDatabase(t.Context(), "Mixed Case-db"); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, s.URL("Mixed Case-db"))
	var db string
	if err := conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	if db != "Mixed Case-db" {
		t.Errorf("connected to %q", db)
	}
	if err := s.CreateDatabase(t.Context(), "Mixed Case-db"); err == nil {
		t.Errorf("creating an existing database succeeded")
	}
}

func TestImmediateRestartKeepsDataAndPort(t *testing.T) {
	s := startServer(t, Options{})
	port := s.Port()
	ctx := t.Context()

	conn := connect(t, s.URL("postgres"))
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx, true); err != nil {
		t.Fatal(err)
	}
	if s.Port() != port {
		t.Errorf("port changed from %d to %d", port, s.Port())
	}
	if err := conn.Ping(ctx); err == nil {
		t.Errorf("a connection survived an immediate restart")
	}

	conn = connect(t, s.URL("postgres"))
	var v int
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != 42 {
		t.Fatalf("after restart: v = %d, err = %v", v, err)
	}
}

func TestStopThenRestart(t *testing.T) {
	s := startServer(t, Options{})
	ctx := t.Context()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, s.URL("postgres")); err == nil {
		t.Fatal("connected to a stopped server")
	}
	if err := s.Restart(ctx, false); err != nil {
		t.Fatal(err)
	}
	connect(t, s.URL("postgres"))
}

func TestCloseStopsTheServerAndRemovesItsDirectory(t *testing.T) {
	s := startServer(t, Options{})
	pid, ok := s.postmasterPID()
	if !ok || !orphan.ProcessAlive(pid) {
		t.Fatalf("no running postmaster (pid %d, found %v)", pid, ok)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if orphan.ProcessAlive(pid) {
		t.Errorf("postmaster %d still running after Close", pid)
	}
	if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s still there after Close: %v", s.dir, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestStartOnATakenPortFailsClearly(t *testing.T) {
	s := startServer(t, Options{})
	_, err := Start(t.Context(), Options{Port: s.Port()})
	if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("err = %v, want ErrPortInUse", err)
	}
}

func TestMissingBinariesSayWhatToDo(t *testing.T) {
	_, err := Start(t.Context(), Options{BinDir: t.TempDir()})
	if !errors.Is(err, ErrBinariesNotFound) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Fatalf("err = %v", err)
	}
	t.Setenv("OUTBOX_RELAY_PG_BIN", t.TempDir())
	if _, err := Start(t.Context(), Options{}); !errors.Is(err, ErrBinariesNotFound) ||
		!strings.Contains(err.Error(), "OUTBOX_RELAY_PG_BIN") {
		t.Fatalf("err = %v", err)
	}
}

// tmpDir returns a directory that the postgres OS user can also write, and
// makes it the temporary directory for the rest of the test.
func tmpDir(t *testing.T, mode os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgserver-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", dir)
	return dir
}

func TestFailedStartLeavesNothingBehind(t *testing.T) {
	dir := tmpDir(t, 0o777)
	_, err := Start(t.Context(), Options{Settings: map[string]string{"wal_level": "nonsense"}})
	if err == nil {
		t.Fatal("started with wal_level = nonsense")
	}
	if !strings.Contains(err.Error(), `invalid value for parameter "wal_level"`) {
		t.Errorf("error does not include the server log: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) > 0 {
		t.Errorf("left behind in %s: %v", dir, left)
	}
}

func TestUnreachableTempDirSaysWhatToDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root hands the directory to another OS user")
	}
	tmpDir(t, 0o700) // root's own: the postgres user cannot enter it
	_, err := Start(t.Context(), Options{})
	if err == nil || !strings.Contains(err.Error(), "TMPDIR") {
		t.Fatalf("err = %v, want advice about TMPDIR", err)
	}
}

// Each major version the project tests on starts from its own binaries:
// the system's, or those scripts/fetch-postgres.sh cached.
func TestVersionRunsThatMajorVersion(t *testing.T) {
	for _, major := range []int{15, 16, 17, 18} {
		t.Run(strconv.Itoa(major), func(t *testing.T) {
			if _, err := BinDirFor(major); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatal(err)
				}
				t.Skipf("%v (CI fetches them)", err)
			}
			s := startServer(t, Options{Version: major})
			if s.Major() != major {
				t.Fatalf("Major() = %d, want %d", s.Major(), major)
			}
			conn := connect(t, s.URL("postgres"))
			if got := show(t, conn, "server_version_num"); !strings.HasPrefix(got, strconv.Itoa(major)) {
				t.Fatalf("server_version_num = %s, want PostgreSQL %d", got, major)
			}
			if got := show(t, conn, "wal_level"); got != "logical" {
				t.Fatalf("wal_level = %q, want logical", got)
			}
		})
	}
}

func TestMissingVersionSaysHowToFetchIt(t *testing.T) {
	t.Setenv(EnvCache, t.TempDir())
	_, err := Start(t.Context(), Options{Version: 9})
	if !errors.Is(err, ErrBinariesNotFound) || !strings.Contains(err.Error(), "scripts/fetch-postgres.sh 9") {
		t.Fatalf("Start of a version not installed: %v; want ErrBinariesNotFound naming scripts/fetch-postgres.sh 9", err)
	}
}

// A standby streams what the primary commits, and after the primary's
// sudden death a promotion makes it take writes.
func TestStandbyFollowsThenTakesOverAfterKill(t *testing.T) {
	primary := startServer(t, Options{})
	standby, err := primary.StartStandby(t.Context(), StandbyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := standby.Close(); err != nil {
			t.Error(err)
		}
	})
	pc := connect(t, primary.URL("postgres"))
	if _, err := pc.Exec(t.Context(), "create table t (n int); insert into t values (1)"); err != nil {
		t.Fatal(err)
	}
	sc := connect(t, standby.URL("postgres"))
	if got := show(t, sc, "transaction_read_only"); got != "on" {
		t.Fatalf("standby transaction_read_only = %q, want on", got)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		err := sc.QueryRow(t.Context(), "select count(*) from t").Scan(&n)
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby never saw the primary's row: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if err := primary.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(t.Context(), primary.URL("postgres")); err == nil {
		t.Fatal("the killed primary still accepts connections")
	}
	if err := standby.Promote(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Exec(t.Context(), "insert into t values (2)"); err != nil {
		t.Fatalf("writing to the promoted standby: %v", err)
	}
}
