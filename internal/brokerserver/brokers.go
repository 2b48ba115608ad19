package brokerserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// StartRedis starts redis-server on a free loopback port, with an
// append-only file in its directory (so a Stop and Start keeps the data)
// and no RDB snapshots.
func StartRedis(ctx context.Context, opts Options) (*Server, error) {
	return withFreshPorts(ctx, opts, startRedis)
}

func startRedis(ctx context.Context, opts Options) (*Server, error) {
	bin, err := findBinary("redis-server", "redis-server")
	if err != nil {
		return nil, err
	}
	s, ports, err := newServer("redis", opts, 1)
	if err != nil {
		return nil, err
	}
	s.url = fmt.Sprintf("redis://127.0.0.1:%d/0", ports[0])
	s.main = procSpec{path: bin, env: baseEnv(), args: []string{
		"--bind", "127.0.0.1", "--port", itoa(ports[0]), "--dir", s.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
		"--daemonize", "no", "--logfile", "",
	}}
	s.ready = func(ctx context.Context) error {
		c := redis.NewClient(&redis.Options{Addr: addr(ports[0]), MaxRetries: -1, DialTimeout: 2 * time.Second})
		defer c.Close()
		return c.Ping(ctx).Err()
	}
	return launch(ctx, s)
}

// StartNATS starts nats-server with JetStream on a free loopback port, its
// store in its directory.
func StartNATS(ctx context.Context, opts Options) (*Server, error) {
	return withFreshPorts(ctx, opts, startNATS)
}

func startNATS(ctx context.Context, opts Options) (*Server, error) {
	bin, err := findBinary("nats-server", "nats-server")
	if err != nil {
		return nil, err
	}
	s, ports, err := newServer("nats", opts, 1)
	if err != nil {
		return nil, err
	}
	s.url = fmt.Sprintf("nats://127.0.0.1:%d", ports[0])
	s.main = procSpec{path: bin, env: baseEnv("NATS_"), args: []string{
		"-a", "127.0.0.1", "-p", itoa(ports[0]), "-js", "-sd", filepath.Join(s.dir, "jetstream"),
	}}
	s.ready = func(ctx context.Context) error {
		nc, err := nats.Connect(s.url, nats.Timeout(2*time.Second), nats.NoReconnect())
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		_, err = js.AccountInfo(ctx)
		return err
	}
	return launch(ctx, s)
}

// StartRabbitMQ starts a RabbitMQ node on a free loopback port: its own node
// name, Erlang cookie (in a private HOME), epmd and distribution ports,
// configuration, plugins (none), database and logs, all in its directory.
// The user guest/guest may connect (from loopback). A node takes some
// seconds to start: share one among a package's tests.
func StartRabbitMQ(ctx context.Context, opts Options) (*Server, error) {
	return withFreshPorts(ctx, opts, startRabbitMQ)
}

func startRabbitMQ(ctx context.Context, opts Options) (*Server, error) {
	// The Debian package's /usr/sbin/rabbitmq-server is a wrapper that
	// switches to the rabbitmq user and its /var/lib/rabbitmq; run the
	// script behind it.
	bin := "/usr/lib/rabbitmq/bin/rabbitmq-server"
	if _, err := os.Stat(bin); err != nil {
		if bin, err = findBinary("rabbitmq-server", "rabbitmq-server"); err != nil {
			return nil, err
		}
	}
	epmd, err := findBinary("epmd", "erlang-base")
	if err != nil {
		return nil, err
	}
	s, ports, err := newServer("rabbitmq", opts, 3)
	if err != nil {
		return nil, err
	}
	amqpPort, distPort, epmdPort := ports[0], ports[1], ports[2]
	s.timeout = 2 * time.Minute
	s.url = fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", amqpPort)

	home := filepath.Join(s.dir, "home")
	cookie := make([]byte, 16)
	_, _ = rand.Read(cookie)
	files := map[string]string{
		filepath.Join(home, ".erlang.cookie"):     hex.EncodeToString(cookie),
		filepath.Join(s.dir, "rabbitmq.conf"):     fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\n", amqpPort),
		filepath.Join(s.dir, "enabled_plugins"):   "[].\n",
		filepath.Join(s.dir, "rabbitmq-env.conf"): "",
	}
	for _, d := range []string{home, filepath.Join(s.dir, "mnesia"), filepath.Join(s.dir, "log")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("preparing RabbitMQ's directory: %w", err)
		}
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("preparing RabbitMQ's directory: %w", err)
		}
	}
	_ = os.Chmod(filepath.Join(home, ".erlang.cookie"), 0o400)

	env := append(baseEnv("RABBITMQ_", "ERL_", "HOME="),
		"HOME="+home,
		"ERL_EPMD_PORT="+itoa(epmdPort),
		"ERL_EPMD_ADDRESS=127.0.0.1",
	)
	// epmd, the Erlang name service, on a port of its own; the node must
	// not start a shared one on the default port.
	s.helpers = []procSpec{{path: epmd, env: env, args: []string{"-port", itoa(epmdPort), "-address", "127.0.0.1"}, port: epmdPort}}
	s.main = procSpec{path: bin, env: append(env,
		// Run the VM in place of the script, so signals reach it.
		"RUNNING_UNDER_SYSTEMD=true",
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(s.dir, "rabbitmq-env.conf"),
		fmt.Sprintf("RABBITMQ_NODENAME=rabbit%d@localhost", amqpPort),
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+itoa(amqpPort),
		"RABBITMQ_DIST_PORT="+itoa(distPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(s.dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(s.dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(s.dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(s.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(s.dir, "log"),
		"RABBITMQ_LOGS=-",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}",
	)}
	s.ready = func(ctx context.Context) error {
		c, err := amqp.DialConfig(s.url, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err != nil {
			return err
		}
		return c.Close()
	}
	return launch(ctx, s)
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", itoa(port)) }
