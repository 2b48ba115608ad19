// Package pgserver runs a throwaway PostgreSQL server in a temporary directory:
// initdb, then pg_ctl, on a loopback port and a private Unix socket, configured
// for logical replication and for speed rather than durability.
//
// It serves the tests (through internal/pgtest) and the `outbox-relay demo` command.
// It never touches a PostgreSQL cluster it did not create.
package pgserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/orphan"
)

// Options configure Start. The zero value is usable.
type Options struct {
	// BinDir is the directory holding initdb, pg_ctl and postgres. Empty means:
	// $OUTBOX_RELAY_PG_BIN, else `pg_config --bindir` if that directory has
	// initdb, else the newest /usr/lib/postgresql/*/bin.
	BinDir string
	// Version, if not 0, is the major version to run when BinDir is empty:
	// the system's binaries of that version, else those that
	// scripts/fetch-postgres.sh put in CacheDir (see BinDirFor).
	Version int
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Settings are extra postgresql.conf settings; they override the defaults.
	// Values are written quoted, so pass them unquoted ("60s", "logical").
	Settings map[string]string
	// Logf, if set, receives progress messages.
	Logf func(format string, args ...any)
}

// ErrBinariesNotFound is returned (wrapped) by Start when no PostgreSQL server
// binaries can be found.
var ErrBinariesNotFound = errors.New("PostgreSQL server binaries (initdb) not found; " +
	"install them (Debian/Ubuntu: apt-get install postgresql) or set OUTBOX_RELAY_PG_BIN to their directory")

// How long Start and Restart wait for the server to accept connections.
const readyTimeout = 60 * time.Second

// Server is a running throwaway PostgreSQL server. Close it when done.
type Server struct {
	binDir  string
	major   int    // major version of the binaries
	dir     string // temporary directory: socket, log file, data/
	dataDir string
	logFile string
	port    int
	asUser  string // OS user to run the binaries as ("" = the current user)
	logf    func(format string, args ...any)

	closeOnce sync.Once
	closeErr  error
}

// Start creates a fresh cluster in a new temporary directory and starts it.
// It returns once the server accepts connections. On failure nothing is left
// running and the directory is removed.
func Start(ctx context.Context, opts Options) (*Server, error) {
	var binDir string
	var err error
	if opts.BinDir == "" && opts.Version != 0 {
		binDir, err = BinDirFor(opts.Version)
	} else {
		binDir, err = findBinDir(opts.BinDir)
	}
	if err != nil {
		return nil, err
	}
	major, err := Major(binDir)
	if err != nil {
		return nil, err
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}

	asUser := ""
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		if _, err := user.Lookup("postgres"); err != nil {
			return nil, fmt.Errorf("running as root, and PostgreSQL refuses to run as root, "+
				"but there is no 'postgres' OS user to run it as (%v); create one "+
				"(useradd --system postgres) or run as an unprivileged user", err)
		}
		asUser = "postgres"
		// The binaries must be reachable by that user too (a cache under
		// /root is not, unless scripts/fetch-postgres.sh opened it).
		check := exec.CommandContext(ctx, "runuser", "-u", asUser, "--", "test", "-x", filepath.Join(binDir, "postgres"))
		if out, err := check.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("the %q OS user cannot run %s (%v %s); give it search permission on "+
				"the directories above (scripts/fetch-postgres.sh does so for its cache)",
				asUser, filepath.Join(binDir, "postgres"), err, bytes.TrimSpace(out))
		}
	}

	sweepOnce.Do(func() { sweepOrphans(binDir, asUser, logf) })

	port := opts.Port
	if port != 0 {
		if err := checkPortFree(port); err != nil {
			return nil, err
		}
	}

	// A port picked as free may be taken before postgres binds it; try again.
	for attempt := 1; ; attempt++ {
		p := port
		if p == 0 {
			if p, err = freePort(); err != nil {
				return nil, err
			}
		}
		s := &Server{binDir: binDir, major: major, port: p, asUser: asUser, logf: logf}
		err := s.start(ctx, opts.Settings)
		if err == nil {
			logf("pgserver: PostgreSQL %d running on 127.0.0.1:%d, data in %s", s.major, s.port, s.dataDir)
			return s, nil
		}
		_ = s.Close()
		if port == 0 && attempt < 3 && errors.Is(err, ErrPortInUse) && ctx.Err() == nil {
			logf("pgserver: port %d was taken, trying another", p)
			continue
		}
		return nil, err
	}
}

// ErrPortInUse is returned (wrapped) by Start when the port is taken.
var ErrPortInUse = errors.New("port already in use")

func (s *Server) start(ctx context.Context, settings map[string]string) error {
	dir, err := os.MkdirTemp("", "outbox-relay-pg-")
	if err != nil {
		return fmt.Errorf("creating a temporary directory for PostgreSQL in %s: %w; set TMPDIR to a writable directory",
			os.TempDir(), err)
	}
	s.dir = dir
	s.dataDir = filepath.Join(dir, "data")
	s.logFile = filepath.Join(dir, "postgres.log")
	if err := orphan.Claim(dir); err != nil {
		return fmt.Errorf("claiming %s: %w", dir, err)
	}

	if s.asUser != "" {
		if err := chownTo(dir, s.asUser); err != nil {
			return err
		}
		// The OS user needs to reach the directory through its parents too.
		if out, err := s.command(ctx, "test", "-w", dir).CombinedOutput(); err != nil {
			return fmt.Errorf("temporary directory %s is not writable by the %q OS user (%v %s); "+
				"set TMPDIR to a directory it can reach, such as /tmp", dir, s.asUser, err, bytes.TrimSpace(out))
		}
	}

	if out, err := s.pgCommand(ctx, "initdb", "-D", s.dataDir, "-A", "trust", "-U", "postgres",
		"--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput(); err != nil {
		return fmt.Errorf("initdb in %s: %w\n%s", s.dataDir, err, bytes.TrimSpace(out))
	}

	conf := map[string]string{
		"wal_level":             "logical",
		"max_replication_slots": "32",
		"max_wal_senders":       "32",
		"fsync":                 "off",
		// synchronous_commit stays on: with it off, an immediate restart (a
		// crash) forgets transactions that were reported committed, which
		// fault tests would mistake for relay bugs. fsync=off keeps it cheap.
		"synchronous_commit":      "on",
		"full_page_writes":        "off",
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(s.port),
		"unix_socket_directories": dir,
		"wal_sender_timeout":      "60s",
		"max_connections":         "200",
		"logging_collector":       "off",
	}
	maps.Copy(conf, settings)
	if err := appendConf(filepath.Join(s.dataDir, "postgresql.conf"), conf); err != nil {
		return err
	}
	return s.pgCtlStart(ctx, "start")
}

// pgCtlStart runs `pg_ctl start` or `pg_ctl restart ...` and waits until the
// server accepts connections.
func (s *Server) pgCtlStart(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	args = append(args, "-D", s.dataDir, "-l", s.logFile, "-w", "-t", strconv.Itoa(int(readyTimeout/time.Second)))
	out, err := s.pgCommand(ctx, "pg_ctl", args...).CombinedOutput()
	if err != nil {
		return s.startError(fmt.Errorf("pg_ctl %s: %w\n%s", args[0], err, bytes.TrimSpace(out)))
	}
	return s.waitReady(ctx)
}

func (s *Server) waitReady(ctx context.Context) error {
	var lastErr error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, s.URL("postgres"))
		if err == nil {
			err = conn.Ping(cctx)
			conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return s.startError(fmt.Errorf("waiting for PostgreSQL on port %d to accept connections: %w (last error: %v)",
				s.port, ctx.Err(), lastErr))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startError adds the tail of the server log to err and recognises a port
// that is already taken.
func (s *Server) startError(err error) error {
	tail := s.logTail(20)
	if strings.Contains(tail, "Address already in use") || strings.Contains(tail, "could not bind") {
		return fmt.Errorf("%w: port %d on 127.0.0.1 is already in use; choose another port (or 0 for a free one)\n%v\nserver log %s:\n%s",
			ErrPortInUse, s.port, err, s.logFile, tail)
	}
	if tail == "" {
		return err
	}
	return fmt.Errorf("%w\nserver log %s:\n%s", err, s.logFile, tail)
}

func (s *Server) logTail(n int) string {
	b, err := os.ReadFile(s.logFile)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// URL returns a connection URL for database on this server, as the
// superuser postgres (trust authentication, no TLS).
func (s *Server) URL(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Major returns the server's major version (15, 16, 17...).
func (s *Server) Major() int { return s.major }

// BinDir returns the directory of the server binaries it runs.
func (s *Server) BinDir() string { return s.binDir }

// Port returns the TCP port the server listens on (127.0.0.1).
func (s *Server) Port() int { return s.port }

// DataDir returns the cluster's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// CreateDatabase creates an empty database.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("creating database %q: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("creating database %q: %w", name, err)
	}
	return nil
}

// Restart stops the server (immediately, like a crash, if immediate is true;
// otherwise a fast, clean shutdown) and starts it again on the same port. It
// returns once the server accepts connections. It also starts a server that
// was stopped with Stop.
func (s *Server) Restart(ctx context.Context, immediate bool) error {
	mode := "fast"
	if immediate {
		mode = "immediate"
	}
	s.logf("pgserver: restarting PostgreSQL on port %d (-m %s)", s.port, mode)
	if err := s.pgCtlStart(ctx, "restart", "-m", mode); err != nil {
		return fmt.Errorf("restarting PostgreSQL: %w", err)
	}
	return nil
}

// Stop shuts the server down cleanly (fast mode) and keeps its data; Restart
// starts it again.
func (s *Server) Stop(ctx context.Context) error {
	if out, err := s.pgCommand(ctx, "pg_ctl", "stop", "-D", s.dataDir, "-m", "fast", "-w").CombinedOutput(); err != nil {
		return fmt.Errorf("stopping PostgreSQL: %w\n%s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Close stops the server at once and removes its directory. It is safe to
// call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.teardown() })
	return s.closeErr
}

func (s *Server) teardown() error {
	if s.dir == "" {
		return nil
	}
	var errs []error
	if pid, ok := s.postmasterPID(); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := s.pgCommand(ctx, "pg_ctl", "stop", "-D", s.dataDir, "-m", "immediate", "-w").CombinedOutput()
		cancel()
		if err != nil && orphan.ProcessAlive(pid) {
			// pg_ctl failed; do not leave a server behind.
			if kerr := syscall.Kill(pid, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("stopping PostgreSQL (pid %d): %w\n%s", pid, err, bytes.TrimSpace(out)))
			}
		}
	}
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", s.dir, err))
	}
	return errors.Join(errs...)
}

// postmasterPID reads the postmaster's pid from postmaster.pid, if present.
func (s *Server) postmasterPID() (int, bool) {
	f, err := os.Open(filepath.Join(s.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
	return pid, err == nil && pid > 0
}

// pgCommand runs one of the PostgreSQL binaries.
func (s *Server) pgCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return s.command(ctx, filepath.Join(s.binDir, name), args...)
}

// command runs a program as the server's OS user, from the server directory,
// with untranslated messages (startError looks for some of them).
func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if s.asUser != "" {
		args = append([]string{"-u", s.asUser, "--", name}, args...)
		name = "runuser"
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = s.dir
	cmd.Env = append(cleanEnv(), "LC_ALL=C", "LANG=C")
	// pg_ctl hands its output to the server log, but never hang on a daemon
	// that kept a pipe open.
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// cleanEnv is the environment without the PG* variables, which would point
// initdb and pg_ctl elsewhere (PGDATA, PGPORT, PGOPTIONS...).
func cleanEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=")
	})
}

func findBinDir(explicit string) (string, error) {
	check := func(dir, from string) (string, error) {
		if hasInitdb(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%w (no initdb in %s, from %s)", ErrBinariesNotFound, dir, from)
	}
	if explicit != "" {
		return check(explicit, "Options.BinDir")
	}
	if env := os.Getenv("OUTBOX_RELAY_PG_BIN"); env != "" {
		return check(env, "OUTBOX_RELAY_PG_BIN")
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasInitdb(dir) {
			return dir, nil
		}
	}
	// Debian installs server binaries per major version, outside PATH.
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return versionOf(b) - versionOf(a) })
	for _, dir := range dirs {
		if hasInitdb(dir) {
			return dir, nil
		}
	}
	return "", ErrBinariesNotFound
}

func hasInitdb(dir string) bool {
	fi, err := os.Stat(filepath.Join(dir, "initdb"))
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// versionOf returns the major version in /usr/lib/postgresql/<major>/bin.
func versionOf(binDir string) int {
	v, err := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	if err != nil {
		return -1
	}
	return v
}

func chownTo(dir, username string) error {
	u, err := user.Lookup(username)
	if err != nil {
		return fmt.Errorf("looking up OS user %q: %w", username, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("handing %s to OS user %q: %w", dir, username, err)
	}
	return nil
}

func appendConf(path string, conf map[string]string) error {
	var b strings.Builder
	b.WriteString("\n# added by outbox-relay pgserver\n")
	for _, k := range slices.Sorted(maps.Keys(conf)) {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(conf[k], "'", "''"))
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("configuring PostgreSQL: %w", err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("configuring PostgreSQL: %w", err)
	}
	return f.Close()
}

func checkPortFree(port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w: port %d on 127.0.0.1 is already in use; choose another port (or 0 for a free one)",
				ErrPortInUse, port)
		}
		return fmt.Errorf("checking port %d on 127.0.0.1: %w", port, err)
	}
	return l.Close()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
