package nats

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/sinktest"
)

// TestMain stops the NATS server the tests started (sinktest.NATS).
func TestMain(m *testing.M) { sinktest.Main(m) }
