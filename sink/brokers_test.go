package sink

import (
	"fmt"
	"os"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/brokerserver"
)

// The brokers of this package's tests: private servers, each started on
// first use and shared by the tests, or existing ones named by
// OUTBOX_RELAY_TEST_{REDIS,NATS,RABBITMQ}_URL.
var (
	natsServer   = &brokerserver.Shared{Env: brokerserver.EnvNATSURL, Start: brokerserver.StartNATS}
	redisServer  = &brokerserver.Shared{Env: brokerserver.EnvRedisURL, Start: brokerserver.StartRedis}
	rabbitServer = &brokerserver.Shared{Env: brokerserver.EnvRabbitMQURL, Start: brokerserver.StartRabbitMQ}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := brokerserver.CloseAll(natsServer, redisServer, rabbitServer); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the test brokers:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func brokerURL(t testing.TB, sh *brokerserver.Shared) string {
	t.Helper()
	u, err := sh.URL()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func natsURL(t testing.TB) string   { return brokerURL(t, natsServer) }
func redisURL(t testing.TB) string  { return brokerURL(t, redisServer) }
func rabbitURL(t testing.TB) string { return brokerURL(t, rabbitServer) }
