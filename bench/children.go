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
	return c, nil
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

// usage returns the CPU time and peak RSS (KiB) of the exited process.
func (c *child) usage() (cpu time.Duration, maxRSSKiB int64) {
	ru, ok := c.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, 0
	}
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpu, ru.Maxrss
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
	c, err := startChild("broker", pw, e.logPath("broker.log"), e.exe, "broker", "-partitions", "3")
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
