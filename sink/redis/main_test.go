package redis

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/sinktest"
)

// TestMain stops the Redis server the tests started (sinktest.Redis).
func TestMain(m *testing.M) { sinktest.Main(m) }
