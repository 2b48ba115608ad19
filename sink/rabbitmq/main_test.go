package rabbitmq

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/sinktest"
)

// TestMain stops the RabbitMQ server the tests started (sinktest.RabbitMQ).
func TestMain(m *testing.M) { sinktest.Main(m) }
