package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/orphan"
)

// StandbyOptions configure StartStandby.
type StandbyOptions struct {
	// Slot names the physical replication slot the standby streams
	// through on the primary; it is also the standby's application_name
	// (what synchronous_standby_names matches). Default "standby1".
	Slot string
	// Settings are extra postgresql.conf settings of the standby
	// (sync_replication_slots, for one).
	Settings map[string]string
}

// StartStandby makes a streaming hot standby of s: a physical slot on s,
// a copy of s's data directory taken while s is briefly stopped (a clean
// shutdown makes the copy consistent without pg_basebackup, which the
// cached server binaries lack), then both started. It returns once the
// standby streams from s. Close it like any Server.
func (s *Server) StartStandby(ctx context.Context, opts StandbyOptions) (*Server, error) {
	name := opts.Slot
	if name == "" {
		name = "standby1"
	}
	if err := s.exec(ctx, "select pg_create_physical_replication_slot($1, true)", name); err != nil {
		return nil, fmt.Errorf("creating physical slot %s for the standby: %w", name, err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	sb := &Server{binDir: s.binDir, major: s.major, port: port, asUser: s.asUser, logf: s.logf}
	if err := sb.copyFrom(ctx, s, name, opts.Settings); err != nil {
		_ = sb.Close()
		if s.postmasterAlive() {
			return nil, err
		}
		return nil, errors.Join(err, s.pgCtlStart(ctx, "start"))
	}
	if err := sb.pgCtlStart(ctx, "start"); err != nil {
		_ = sb.Close()
		return nil, fmt.Errorf("starting the standby: %w", err)
	}
	if err := s.waitStreaming(ctx, name); err != nil {
		_ = sb.Close()
		return nil, err
	}
	s.logf("pgserver: standby on 127.0.0.1:%d streams from 127.0.0.1:%d through slot %s", sb.port, s.port, name)
	return sb, nil
}

// copyFrom fills a new directory for sb with a copy of primary's data,
// configured as its standby.
func (sb *Server) copyFrom(ctx context.Context, primary *Server, slot string, settings map[string]string) error {
	dir, err := os.MkdirTemp("", "outbox-relay-pg-")
	if err != nil {
		return fmt.Errorf("creating a temporary directory for the standby: %w", err)
	}
	sb.dir = dir
	sb.dataDir = filepath.Join(dir, "data")
	sb.logFile = filepath.Join(dir, "postgres.log")
	if err := orphan.Claim(dir); err != nil {
		return fmt.Errorf("claiming %s: %w", dir, err)
	}
	if sb.asUser != "" {
		if err := chownTo(dir, sb.asUser); err != nil {
			return err
		}
	}
	if err := primary.Stop(ctx); err != nil {
		return err
	}
	out, err := sb.command(ctx, "cp", "-a", primary.dataDir, sb.dataDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copying %s for the standby: %w\n%s", primary.dataDir, err, bytes.TrimSpace(out))
	}
	if err := primary.pgCtlStart(ctx, "start"); err != nil {
		return fmt.Errorf("starting the primary again: %w", err)
	}
	// The primary's slots are its own: a copy of a logical slot on a
	// standby would block slot synchronization of the same name.
	slots, _ := filepath.Glob(filepath.Join(sb.dataDir, "pg_replslot", "*"))
	for _, d := range slots {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("removing the copied slot %s: %w", d, err)
		}
	}
	conf := map[string]string{
		"port":                    strconv.Itoa(sb.port),
		"unix_socket_directories": dir,
		"primary_conninfo": fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres application_name=%s",
			primary.port, slot),
		"primary_slot_name":    slot,
		"hot_standby":          "on",
		"hot_standby_feedback": "on",
	}
	maps.Copy(conf, settings)
	if err := appendConf(filepath.Join(sb.dataDir, "postgresql.conf"), conf); err != nil {
		return err
	}
	signal := filepath.Join(sb.dataDir, "standby.signal")
	if out, err := sb.command(ctx, "touch", signal).CombinedOutput(); err != nil {
		return fmt.Errorf("creating %s: %w\n%s", signal, err, bytes.TrimSpace(out))
	}
	return nil
}

// waitStreaming waits until a standby streams from s as application name.
func (s *Server) waitStreaming(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		var streaming bool
		err := s.queryRow(ctx, "select exists (select 1 from pg_stat_replication where application_name = $1 and state = 'streaming')",
			[]any{name}, &streaming)
		if err == nil && streaming {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for standby %s to stream from port %d: %w (last error: %v)",
				name, s.port, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Promote makes a standby a primary and waits until it accepts writes.
func (s *Server) Promote(ctx context.Context) error {
	s.logf("pgserver: promoting the standby on port %d", s.port)
	out, err := s.pgCommand(ctx, "pg_ctl", "promote", "-D", s.dataDir, "-w", "-t", strconv.Itoa(int(readyTimeout/time.Second))).CombinedOutput()
	if err != nil {
		return fmt.Errorf("promoting the standby on port %d: %w\n%s", s.port, err, bytes.TrimSpace(out))
	}
	return nil
}

// Kill ends the server the way a machine's sudden death would: SIGKILL to
// the postmaster and every process it started, with no shutdown and no
// restart. Close still removes its directory.
func (s *Server) Kill() error {
	pid, ok := s.postmasterPID()
	if !ok || !orphan.ProcessAlive(pid) {
		return fmt.Errorf("PostgreSQL on port %d is not running", s.port)
	}
	s.logf("pgserver: killing PostgreSQL on port %d (postmaster pid %d) with SIGKILL", s.port, pid)
	// Stopped, the postmaster starts no process between the listing of
	// its children and their end.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("stopping postmaster %d: %w", pid, err)
	}
	children := childrenOf(pid)
	for _, c := range children {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing postmaster %d: %w", pid, err)
	}
	// Gone means its port refuses connections: wait for the processes.
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range append(children, pid) {
		for orphan.ProcessAlive(p) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// postmasterAlive reports whether the server's postmaster runs.
func (s *Server) postmasterAlive() bool {
	pid, ok := s.postmasterPID()
	return ok && orphan.ProcessAlive(pid)
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parens.
		rest := string(stat)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) >= 2 {
			if ppid, err := strconv.Atoi(f[1]); err == nil && ppid == pid {
				out = append(out, child)
			}
		}
	}
	return out
}

// exec runs one statement in the postgres database.
func (s *Server) exec(ctx context.Context, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// queryRow runs one query in the postgres database.
func (s *Server) queryRow(ctx context.Context, sql string, args []any, dest ...any) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.QueryRow(cctx, sql, args...).Scan(dest...)
}
