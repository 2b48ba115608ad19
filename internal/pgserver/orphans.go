package pgserver

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// A server normally dies with its owner (Close, or the demo's cleanup). A
// process killed outright (go test -timeout, SIGKILL) cannot clean up, and
// its servers would run forever, holding ports and memory. So every
// server's directory records its owner process, and Start first stops the
// servers whose owner is gone.

// ownerFile, in a server's directory, holds "pid starttime" of the process
// that started it. The start time (from /proc) tells a live owner from a
// new process that reuses its pid.
const ownerFile = "owner"

var sweepOnce sync.Once

// writeOwner records the current process as the owner of dir.
func writeOwner(dir string) error {
	start, err := processStart(os.Getpid())
	if err != nil {
		start = 0 // without /proc: the pid alone still helps
	}
	return os.WriteFile(filepath.Join(dir, ownerFile), fmt.Appendf(nil, "%d %d\n", os.Getpid(), start), 0o644)
}

// processStart returns a process's start time in clock ticks since boot
// (field 22 of /proc/PID/stat).
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// comm (field 2) may contain spaces and parentheses: count from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// ownerAlive reports whether the owner recorded in dir still runs. A
// directory without an owner file, or one that cannot be read, counts as
// owned: it is never touched.
func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return true
	}
	var pid int
	var start uint64
	if n, _ := fmt.Sscan(string(b), &pid, &start); n < 1 || pid <= 0 {
		return true
	}
	if !processAlive(pid) {
		return false
	}
	if start == 0 {
		return true
	}
	now, err := processStart(pid)
	return err != nil || now == start
}

// sweepOrphans stops and removes the servers, in this machine's temporary
// directory, whose owner process is gone. Errors are reported through logf
// and otherwise ignored: a sweep must never keep a new server from starting.
func sweepOrphans(binDir, asUser string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "outbox-relay-pg-*"))
	for _, dir := range dirs {
		if ownerAlive(dir) {
			continue
		}
		s := &Server{binDir: binDir, dir: dir, dataDir: filepath.Join(dir, "data"), asUser: asUser}
		pid, running := s.postmasterPID()
		logf("pgserver: removing %s, left by a process that is gone (postmaster pid %d running: %v)", dir, pid, running && processAlive(pid))
		if err := s.teardown(); err != nil {
			logf("pgserver: removing %s: %v", dir, err)
		}
	}
}

// markOrphan makes dir look like an orphan's (for tests).
func markOrphan(dir string) error {
	// pid 1 with an impossible start time: alive, but not the owner.
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte("1 1\n"), 0o644)
}
