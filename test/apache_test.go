package test

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
)

// The tests here run against Apache Kafka itself (internal/kafkatest/apache.go);
// `make test-kafka` runs just them. On both brokers run the tests whose
// promise is about what reaches the broker and that need nothing of kfake's
// fault injection (request hooks, frozen handlers): the end-to-end run, a
// relay crash and a graceful stop. The broker faults that kfake injects by
// hooking requests have their real-cluster counterparts in
// apache_cluster_test.go and apache_kill_test.go. They run in parallel with
// the rest: a node waits on the network far more than it computes.

// TestEndToEndEveryEventOnceInCommitOrder against a one-node Apache Kafka.
func TestApacheEndToEndEveryEventOnceInCommitOrder(t *testing.T) {
	t.Parallel()
	k := kafkatest.StartApache(t, 1, kafkatest.NumPartitions(8))
	everyEventOnceInCommitOrder(t, k.Brokers())
}

// TestCrashLosesNothingAndRepeatsOnlyUnconfirmed against Apache Kafka.
func TestApacheCrashLosesNothingAndRepeatsOnlyUnconfirmed(t *testing.T) {
	t.Parallel()
	crashLosesNothing(t, kafkatest.StartApache(t, 1).Brokers())
}

// TestGracefulStopThenRestartSendsNoDuplicates against Apache Kafka.
func TestApacheGracefulStopThenRestartSendsNoDuplicates(t *testing.T) {
	t.Parallel()
	gracefulStopNoDuplicates(t, kafkatest.StartApache(t, 1).Brokers())
}

// TestExactlyOnceThroughTenKills against Apache Kafka's transactions.
func TestApacheExactlyOnceThroughTenKills(t *testing.T) {
	t.Parallel()
	exactlyOnceThroughKills(t, kafkatest.StartApache(t, 1).Brokers(), "eos_kills_apache")
}

// TestExactlyOnceStandbyTakeoverFencesTheFrozenRelay against Apache Kafka,
// whose transaction coordinator does the fencing.
func TestApacheExactlyOnceStandbyTakeoverFencesTheFrozenRelay(t *testing.T) {
	t.Parallel()
	standbyTakeoverFencesTheFrozenRelay(t, kafkatest.StartApache(t, 1).Brokers())
}
