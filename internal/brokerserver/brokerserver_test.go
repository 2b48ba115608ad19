package brokerserver

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// defaultPorts are where a server started by hand or by the OS listens; a
// private server never takes them.
var defaultPorts = map[string][]int{"redis": {6379}, "nats": {4222}, "rabbitmq": {5672, 25672, 4369}}

func start(t *testing.T, fn func(context.Context, Options) (*Server, error)) *Server {
	t.Helper()
	s, err := fn(t.Context(), Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	for _, p := range defaultPorts[s.kind] {
		if s.Port() == p {
			t.Fatalf("%s took the default port %d", s.kind, p)
		}
	}
	return s
}

// Data written before a Stop is there after Start, on the same URL; Close
// removes the directory and leaves no process listening.
func TestRedisKeepsDataAcrossRestart(t *testing.T) {
	s := start(t, StartRedis)
	ctx := t.Context()
	opts, _ := redis.ParseURL(s.URL())
	c := redis.NewClient(opts)
	defer c.Close()
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []string{"k", "v"}}).Err(); err != nil {
		t.Fatal(err)
	}
	restart(t, s)
	if n, err := c.XLen(ctx, "s").Result(); err != nil || n != 1 {
		t.Fatalf("after restart the stream holds %d entries (%v), want 1", n, err)
	}
	closedAndGone(t, s)
}

func TestNATSRunsJetStreamAndKeepsStreams(t *testing.T) {
	s := start(t, StartNATS)
	ctx := t.Context()
	nc, err := nats.Connect(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s.x", []byte("v")); err != nil {
		t.Fatal(err)
	}
	restart(t, s)
	waitFor(t, "the stream back with its message", func() error {
		st, err := js.Stream(ctx, "S")
		if err != nil {
			return err
		}
		info, err := st.Info(ctx)
		if err == nil && info.State.Msgs != 1 {
			return errors.New("wrong count")
		}
		return err
	})
	closedAndGone(t, s)
}

// A RabbitMQ node of its own: guest may publish on loopback, nothing
// listens on the default AMQP, distribution or epmd ports on its behalf,
// and Close leaves no Erlang process behind.
func TestRabbitMQNodeOfItsOwn(t *testing.T) {
	s := start(t, StartRabbitMQ)
	conn, err := amqp.Dial(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.PublishWithContext(t.Context(), "", q.Name, false, false, amqp.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	closedAndGone(t, s)
	if pids := processesMentioning(s.Dir()); len(pids) > 0 {
		t.Fatalf("processes %v still running from %s after Close", pids, s.Dir())
	}
}

// processesMentioning lists the processes whose command line contains s.
func processesMentioning(s string) []string {
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []string
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), s) {
			pids = append(pids, filepath.Base(filepath.Dir(p)))
		}
	}
	return pids
}

// A missing binary is an error that says what to install, not a skip.
func TestMissingBinarySaysHowToInstall(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := findBinary("no-such-server", "no-such-package")
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "make setup") ||
		!strings.Contains(err.Error(), "apt-get install no-such-package") {
		t.Fatalf("error %v, want ErrNotInstalled naming make setup and the package", err)
	}
}

// Shared takes an existing server from its variable and starts nothing.
func TestSharedUsesTheTestVariable(t *testing.T) {
	t.Setenv("OUTBOX_RELAY_TEST_EXAMPLE_URL", "redis://example:1/0")
	sh := &Shared{Env: "OUTBOX_RELAY_TEST_EXAMPLE_URL", Start: func(context.Context, Options) (*Server, error) {
		t.Fatal("started a server although the variable is set")
		return nil, nil
	}}
	if u, err := sh.URL(); err != nil || u != "redis://example:1/0" {
		t.Fatalf("URL %q, %v", u, err)
	}
	if err := sh.Close(); err != nil {
		t.Fatal(err)
	}
}

func restart(t *testing.T, s *Server) {
	t.Helper()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr(s.Port())); err == nil {
		c.Close()
		t.Fatalf("port %d still open after Stop", s.Port())
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func closedAndGone(t *testing.T, s *Server) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir()); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Close (%v)", s.Dir(), err)
	}
	if c, err := net.Dial("tcp", addr(s.Port())); err == nil {
		c.Close()
		t.Fatalf("port %d still open after Close", s.Port())
	}
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A port taken between picking it and the server binding it is recognised
// from what the servers themselves say, so Start tries other ports.
func TestPortTakenIsRecognised(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := itoa(l.Addr().(*net.TCPAddr).Port)
	for name, args := range map[string][]string{
		"redis-server": {"--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no", "--dir", t.TempDir()},
		"nats-server":  {"-a", "127.0.0.1", "-p", port},
	} {
		bin, err := findBinary(name, name)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		out, _ := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		cancel()
		if !portTaken(errors.New(string(out))) {
			t.Errorf("%s on a taken port said %q, which portTaken does not recognise", name, out)
		}
	}
	if portTaken(errors.New("connection refused")) {
		t.Error("portTaken recognises a refused connection")
	}
}
