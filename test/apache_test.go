package test

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/test/kafkatest"
)

// The tests here run against Apache Kafka itself (test/kafkatest/apache.go);
// `make test-kafka` runs just them.

// TestEndToEndEveryEventOnceInCommitOrder against a one-node Apache Kafka.
func TestApacheEndToEndEveryEventOnceInCommitOrder(t *testing.T) {
	k := kafkatest.StartApache(t, 1, kafkatest.NumPartitions(8))
	everyEventOnceInCommitOrder(t, k.Brokers())
}
