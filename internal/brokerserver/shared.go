package brokerserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// The environment variables that point the tests at an existing server
// instead of a private one. Tests never read the relay's own OUTBOX_RELAY_*
// variables: a shell set up for a real relay must not send test events to a
// real broker.
const (
	EnvRedisURL    = "OUTBOX_RELAY_TEST_REDIS_URL"
	EnvNATSURL     = "OUTBOX_RELAY_TEST_NATS_URL"
	EnvRabbitMQURL = "OUTBOX_RELAY_TEST_RABBITMQ_URL"
)

// Shared is one server for all the tests of a package that use it: started
// on first use, stopped by Close (from TestMain, after m.Run). If the
// environment variable Env is set, its URL is used instead and nothing is
// started.
type Shared struct {
	// Env names the variable with an existing server's URL.
	Env string
	// Start starts a private server (StartRedis, StartNATS, StartRabbitMQ).
	Start func(context.Context, Options) (*Server, error)

	once   sync.Once
	url    string
	server *Server
	err    error
}

// URL returns the server's URL, starting it on the first call.
func (sh *Shared) URL() (string, error) {
	sh.once.Do(func() {
		if u := os.Getenv(sh.Env); u != "" {
			sh.url = u
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		sh.server, sh.err = sh.Start(ctx, Options{})
		if sh.err != nil {
			sh.err = fmt.Errorf("%w (or set %s to an existing server's URL)", sh.err, sh.Env)
			return
		}
		sh.url = sh.server.URL()
	})
	return sh.url, sh.err
}

// Close stops the server if one was started.
func (sh *Shared) Close() error {
	if sh.server == nil {
		return nil
	}
	return sh.server.Close()
}

// CloseAll closes each shared server, for TestMain.
func CloseAll(shared ...*Shared) error {
	var errs []error
	for _, sh := range shared {
		errs = append(errs, sh.Close())
	}
	return errors.Join(errs...)
}
