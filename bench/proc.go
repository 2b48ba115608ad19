package main

import (
	"bufio"
	"bytes"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of the CPU times in /proc/<pid>/stat;
// 100 on every Linux this runs on.
const clockTick = 100

// procStat holds the fields of /proc/<pid>/stat the benchmark uses.
type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime int64 // clock ticks
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	n := func(field int) int64 { v, _ := strconv.ParseInt(f[field-3], 10, 64); return v }
	return procStat{ppid: int(n(4)), utime: n(14), stime: n(15), cutime: n(16), cstime: n(17)}, nil
}

// vmHWM returns the peak resident set size of pid in KiB, 0 if unknown.
func vmHWM(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// postgresCPU returns the CPU time used so far by a PostgreSQL server: the
// postmaster, the children it has reaped (cutime/cstime: backends that
// exited) and its living children (backends, walsenders, background
// workers).
func postgresCPU(dataDir string) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %w", err)
	}
	st, err := readProcStat(pm)
	if err != nil {
		return 0, err
	}
	ticks := st.utime + st.stime + st.cutime + st.cstime
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		c, err := readProcStat(pid)
		if err != nil || c.ppid != pm {
			continue
		}
		ticks += c.utime + c.stime
	}
	return time.Duration(ticks) * time.Second / clockTick, nil
}

// walsenders counts the walsender processes of the server in dataDir.
func walsenders(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pm, _ := strconv.Atoi(strings.TrimSpace(line))
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if st, err := readProcStat(pid); err != nil || st.ppid != pm {
			continue
		}
		if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmd, []byte("walsender")) {
			n++
		}
	}
	return n
}

// loadAverage returns the first line of /proc/loadavg, trimmed.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return strings.TrimSpace(string(b))
	}
	return strings.Join(f[:3], " ")
}

// cpuSnapshot is the CPU time (utime+stime, plus cutime+cstime: the
// children they reaped, such as compilers under `go test`) of every process
// that is not part of the benchmark: neither this process and its
// descendants nor the PostgreSQL server. Two snapshots tell how much CPU
// other work on the machine took during a measurement.
type cpuSnapshot map[int]int64

func (e *env) otherSnapshot() cpuSnapshot {
	postmaster := 0
	if b, err := os.ReadFile(filepath.Join(e.pg.DataDir(), "postmaster.pid")); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		postmaster, _ = strconv.Atoi(strings.TrimSpace(line))
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	stats := map[int]procStat{}
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if st, err := readProcStat(pid); err == nil {
			stats[pid] = st
		}
	}
	self := os.Getpid()
	ours := func(pid int) bool {
		for i := 0; i < 64 && pid > 1; i++ {
			if pid == self || pid == postmaster {
				return true
			}
			st, ok := stats[pid]
			if !ok {
				return false
			}
			pid = st.ppid
		}
		return false
	}
	s := cpuSnapshot{}
	for pid, st := range stats {
		if !ours(pid) {
			s[pid] = st.utime + st.stime + st.cutime + st.cstime
		}
	}
	return s
}

// otherCPU returns the CPU time other processes used from a to b.
func otherCPU(a, b cpuSnapshot) time.Duration {
	var ticks int64
	for pid, t := range b {
		ticks += max(0, t-a[pid])
	}
	return time.Duration(ticks) * time.Second / clockTick
}

// processCPU returns pid's CPU time so far (utime+stime of
// /proc/<pid>/stat, which sum all its threads), 0 if unknown.
func processCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	st, err := readProcStat(pid)
	if err != nil {
		return 0
	}
	return time.Duration(st.utime+st.stime) * time.Second / clockTick
}

// meter measures process pid over an interval, from now to when the
// function it returns is called: its CPU time, and its peak RSS in KiB. The
// peak (VmHWM) is set back to the current RSS first (clear_refs 5), so a
// process that serves several measurements, the Apache Kafka broker, has a
// peak of each.
func meter(pid int) func() (cpu time.Duration, peakKiB int64) {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		log.Printf("resetting the peak RSS of process %d: %v (its peak is then since it started)", pid, err)
	}
	before := processCPU(pid)
	return func() (time.Duration, int64) {
		return processCPU(pid) - before, vmHWM(pid)
	}
}
