// Package brokerserver runs throwaway Redis, NATS (with JetStream) and
// RabbitMQ servers for the tests: each in a temporary directory of its own,
// on free loopback ports, with no configuration shared with a server started
// by hand or by the operating system. It is internal/pgserver for the other
// brokers.
//
// A binary that is not installed is an error that says how to install it
// (`make setup`), never a reason to skip.
package brokerserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/orphan"
)

// Options configure a Start function. The zero value is usable.
type Options struct {
	// Logf, if set, receives progress messages.
	Logf func(format string, args ...any)
}

// ErrNotInstalled is returned (wrapped) when a server's binary is missing.
var ErrNotInstalled = errors.New("not installed")

// Server is a running throwaway broker. Close it when done.
type Server struct {
	kind string // "redis", "nats", "rabbitmq"
	dir  string
	port int
	url  string
	logf func(format string, args ...any)

	// How to (re)start it: the main process and any helpers that must run
	// first (RabbitMQ's epmd), each a command line and environment.
	helpers []procSpec
	main    procSpec
	ready   func(ctx context.Context) error
	timeout time.Duration

	mu      sync.Mutex
	running []*proc // helpers, then main, while started

	closeOnce sync.Once
	closeErr  error
}

type procSpec struct {
	path string
	args []string
	env  []string
	port int // for a helper: the server starts once this port accepts
}

type proc struct {
	name string
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
}

// URL is the client URL of the server (redis://, nats://, amqp://).
func (s *Server) URL() string { return s.url }

// Port is the client port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// Dir is the server's private directory (data, logs, configuration).
func (s *Server) Dir() string { return s.dir }

// start runs the helpers and the server, then waits until it is ready.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.running) > 0 {
		return fmt.Errorf("%s on port %d is already running", s.kind, s.port)
	}
	for _, spec := range append(slices.Clone(s.helpers), s.main) {
		p, err := s.spawn(spec)
		if err != nil {
			s.stopLocked(syscall.SIGKILL)
			return err
		}
		s.running = append(s.running, p)
		if spec.port != 0 {
			if err := waitPort(ctx, p, spec.port); err != nil {
				s.stopLocked(syscall.SIGKILL)
				return err
			}
		}
	}
	main := s.running[len(s.running)-1]
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var lastErr error
	for {
		if lastErr = s.ready(ctx); lastErr == nil {
			s.logf("brokerserver: %s running at %s (directory %s)", s.kind, s.url, s.dir)
			return nil
		}
		select {
		case <-main.done:
			s.stopLocked(syscall.SIGKILL)
			return fmt.Errorf("%s on port %d exited during start: %s; its output: %s",
				s.kind, s.port, main.cmd.ProcessState, main.out.oneLine())
		case <-ctx.Done():
			s.stopLocked(syscall.SIGKILL)
			return fmt.Errorf("%s on port %d not ready within %s (last error: %v); its output: %s",
				s.kind, s.port, s.timeout, lastErr, main.out.oneLine())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitPort waits until p accepts connections on port.
func waitPort(ctx context.Context, p *proc, port int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", addr(port), time.Second)
		if err == nil {
			return c.Close()
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited during start: %s; its output: %s", p.name, p.cmd.ProcessState, p.out.oneLine())
		case <-ctx.Done():
			return fmt.Errorf("%s not listening on port %d: %w", p.name, port, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Server) spawn(spec procSpec) (*proc, error) {
	cmd := exec.Command(spec.path, spec.args...)
	cmd.Dir = s.dir
	cmd.Env = spec.env
	out := &tailBuffer{max: 16 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", spec.path, err)
	}
	p := &proc{name: filepath.Base(spec.path), cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Stop shuts the server down (SIGTERM, as an operator would; SIGKILL if it
// has not exited within a minute) and keeps its data; Start starts it
// again on the same port.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.running) == 0 {
		return nil
	}
	s.stopLocked(syscall.SIGTERM)
	return nil
}

// Start starts a server stopped with Stop again, on the same port and data,
// and waits until it is ready.
func (s *Server) Start(ctx context.Context) error { return s.start(ctx) }

// stopLocked stops the running processes, the server first, then its
// helpers.
func (s *Server) stopLocked(sig syscall.Signal) {
	for i := len(s.running) - 1; i >= 0; i-- {
		p := s.running[i]
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(time.Minute):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	s.running = nil
}

// Close stops the server at once and removes its directory. It is safe to
// call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.stopLocked(syscall.SIGKILL)
		s.mu.Unlock()
		if err := os.RemoveAll(s.dir); err != nil {
			s.closeErr = fmt.Errorf("removing %s: %w", s.dir, err)
		}
	})
	return s.closeErr
}

// newServer makes the private directory and picks the ports.
func newServer(kind string, opts Options, ports int) (*Server, []int, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	sweepOnce.Do(func() { sweep(logf) })
	dir, err := os.MkdirTemp("", dirPrefix+kind+"-")
	if err != nil {
		return nil, nil, fmt.Errorf("creating a temporary directory for %s in %s: %w; set TMPDIR to a writable directory",
			kind, os.TempDir(), err)
	}
	if err := orphan.Claim(dir); err != nil {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("claiming %s: %w", dir, err)
	}
	free, err := freePorts(ports)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return &Server{kind: kind, dir: dir, port: free[0], logf: logf, timeout: 30 * time.Second}, free, nil
}

// withFreshPorts runs start again, on other ports, when a port picked as
// free was taken before the server bound it.
func withFreshPorts(ctx context.Context, opts Options, start func(context.Context, Options) (*Server, error)) (*Server, error) {
	for attempt := 1; ; attempt++ {
		s, err := start(ctx, opts)
		if err == nil || attempt == 3 || ctx.Err() != nil || !portTaken(err) {
			return s, err
		}
		if opts.Logf != nil {
			opts.Logf("brokerserver: a port was taken (%v); trying others", err)
		}
	}
}

// portTaken recognises the servers' words for a port in use.
func portTaken(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "address already in use") || strings.Contains(msg, "eaddrinuse")
}

// launch starts a server built by one of the Start functions; on failure it
// leaves nothing behind.
func launch(ctx context.Context, s *Server) (*Server, error) {
	if err := s.start(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// dirPrefix names the servers' temporary directories, for the sweep.
const dirPrefix = "outbox-relay-broker-"

var sweepOnce sync.Once

// sweep removes the directories of servers whose test process is gone (its
// processes died with it: see sysProcAttr).
func sweep(logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		if orphan.Abandoned(dir) {
			logf("brokerserver: removing %s, left by a test process that is gone", dir)
			_ = os.RemoveAll(dir)
		}
	}
}

// findBinary looks a server binary up on PATH, then where Debian puts it.
func findBinary(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s %w: run `make setup` (Debian/Ubuntu: apt-get install %s)", name, ErrNotInstalled, pkg)
}

// baseEnv is the environment for a server: the caller's, without anything
// that would point the server at another configuration.
func baseEnv(dropPrefixes ...string) []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		for _, p := range dropPrefixes {
			if strings.HasPrefix(kv, p) {
				return true
			}
		}
		return false
	})
}

// freePorts returns n distinct loopback ports nothing listens on right now.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = t.b[over:]
	}
	return len(p), nil
}

// oneLine is the last few lines of output, joined, for an error message.
func (t *tailBuffer) oneLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(t.b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	s := strings.Join(lines, " | ")
	if s == "" {
		return "(none)"
	}
	return s
}

func itoa(n int) string { return strconv.Itoa(n) }
