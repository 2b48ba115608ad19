package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// child is a helper process: the broker, the relay, the poller, or
// pg_recvlogical.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	// stats is the JSON file the relay and poller helpers write on exit.
	stats string
	// hwm is the peak RSS (KiB) sampled from /proc while it ran.
	hwm atomic.Int64
}

func startChild(name string, stdout io.Writer, logFile string, path string, args ...string) (*child, error) {
	return startChildEnv(name, nil, stdout, logFile, path, args...)
}

// startChildEnv is startChild with extra environment variables (KEY=value).
func startChildEnv(name string, env []string, stdout io.Writer, logFile string, path string, args ...string) (*child, error) {
	cmd := exec.Command(path, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout = stdout
	if logFile != "" {
		f, err := os.Create(logFile)
		if err != nil {
			return nil, err
		}
		cmd.Stderr = f
		defer f.Close() // the child keeps its own descriptor
	} else {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	go c.sampleHWM()
	return c, nil
}

// sampleHWM records the process's VmHWM every 20ms until it exits. The
// peak RSS of wait4 cannot be used: Go starts children with vfork, and
// Linux carries the parent's peak over into the child's at exec, so every
// small child reported the benchmark process's own peak.
func (c *child) sampleHWM() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if v := vmHWM(c.cmd.Process.Pid); v > c.hwm.Load() {
			c.hwm.Store(v)
		}
		select {
		case <-c.done:
			return
		case <-t.C:
		}
	}
}

// stop sends SIGTERM and waits for the process to exit; after timeout it
// kills it.
func (c *child) stop(timeout time.Duration) error {
	select {
	case <-c.done:
		return c.err
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return c.err
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("%s did not stop within %s; killed", c.name, timeout)
	}
}

// usage returns the CPU time and peak RSS (KiB) of the exited process:
// the peak is the highest VmHWM sampled while it ran or, for the helpers
// that write stats, the one they read at exit.
func (c *child) usage() (cpu time.Duration, maxRSSKiB int64) {
	maxRSSKiB = c.hwm.Load()
	if c.stats != "" {
		if st, err := c.readStats(); err == nil {
			maxRSSKiB = max(maxRSSKiB, st.VmHWMKiB)
		}
	}
	ru, ok := c.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, maxRSSKiB
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), maxRSSKiB
}

func (c *child) readStats() (relayStats, error) {
	var st relayStats
	b, err := os.ReadFile(c.stats)
	if err != nil {
		return st, fmt.Errorf("%s wrote no stats: %w", c.name, err)
	}
	return st, json.Unmarshal(b, &st)
}

// broker is a kfake process.
type broker struct {
	*child
	addr string
}

func (e *env) startBroker(ctx context.Context) (*broker, error) {
	pr, pw := io.Pipe()
	c, err := startChild("broker", pw, e.logPath("broker.log"), e.exe, "broker", "-partitions", fmt.Sprint(benchPartitions))
	if err != nil {
		return nil, err
	}
	addrc := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(pr)
		for s.Scan() {
			if a, ok := strings.CutPrefix(s.Text(), "addr "); ok {
				addrc <- a
			}
		}
	}()
	select {
	case a := <-addrc:
		return &broker{child: c, addr: a}, nil
	case <-c.done:
		return nil, fmt.Errorf("broker exited at start: %v (see %s)", c.err, e.logPath("broker.log"))
	case <-time.After(30 * time.Second):
		c.stop(5 * time.Second)
		return nil, errors.New("broker did not report its address within 30s")
	case <-ctx.Done():
		c.stop(5 * time.Second)
		return nil, ctx.Err()
	}
}
