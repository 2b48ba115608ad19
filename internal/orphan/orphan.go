// Package orphan tells the directories of throwaway servers whose owner
// process is gone.
//
// A test server normally dies with its owner. A process killed outright (go
// test -timeout, SIGKILL) cannot clean up, and its servers would run on,
// holding ports, memory and disk. So the owner claims each server's
// directory (Claim), and the next owner to start a server sweeps the
// directories whose owner is gone (Abandoned). internal/pgserver does this
// for PostgreSQL, internal/kafkatest for Apache Kafka.
package orphan

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ownerFile, in a claimed directory, holds "pid starttime" of the owner. The
// start time (from /proc) tells a live owner from a new process that reuses
// its pid.
const ownerFile = "owner"

// Claim records the current process as the owner of dir.
func Claim(dir string) error {
	start, err := ProcessStart(os.Getpid())
	if err != nil {
		start = 0 // without /proc: the pid alone still helps
	}
	return os.WriteFile(filepath.Join(dir, ownerFile), fmt.Appendf(nil, "%d %d\n", os.Getpid(), start), 0o644)
}

// Abandoned reports whether the owner recorded in dir is gone. A directory
// without an owner file, or one that cannot be read, is not abandoned: it is
// never touched.
func Abandoned(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return false
	}
	var pid int
	var start uint64
	if n, _ := fmt.Sscan(string(b), &pid, &start); n < 1 || pid <= 0 {
		return false
	}
	return !Is(pid, start)
}

// MarkAbandoned makes dir look abandoned (for tests).
func MarkAbandoned(dir string) error {
	// pid 1 with an impossible start time: alive, but not the owner.
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte("1 1\n"), 0o644)
}

// Is reports whether pid runs and is the process that started at start
// (ProcessStart's clock ticks; 0 accepts any process with that pid).
func Is(pid int, start uint64) bool {
	if !ProcessAlive(pid) {
		return false
	}
	if start == 0 {
		return true
	}
	now, err := ProcessStart(pid)
	return err != nil || now == start
}

// ProcessStart returns a process's start time in clock ticks since boot
// (field 22 of /proc/PID/stat).
func ProcessStart(pid int) (uint64, error) {
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

// ProcessAlive reports whether pid runs. A zombie (a daemonized server may
// wait for a reaper that never comes in a container) counts as gone.
func ProcessAlive(pid int) bool {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Format: pid (comm) state ...; comm may contain spaces and parentheses.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
			return b[i+2] != 'Z'
		}
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
