package kafkatest

import (
	"strconv"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/kafkaserver"
)

// KafkaVersion is the Apache Kafka release StartApache runs (kafka/pom.xml
// pins the same).
const KafkaVersion = kafkaserver.KafkaVersion

// Apache is a running Apache Kafka cluster of KRaft nodes, each a broker and
// a controller in one JVM, on loopback ports (internal/kafkaserver). Nodes
// are numbered from 0. Its methods fail the test on error and must be
// called from the test's goroutine.
type Apache struct {
	t testing.TB
	*kafkaserver.Cluster
	ca *CA
}

// ApacheOpt configures StartApache.
type ApacheOpt func(*kafkaserver.Config)

// Setting sets a broker setting (a server.properties key) on every node,
// over the defaults.
func Setting(key, value string) ApacheOpt {
	return func(c *kafkaserver.Config) { c.Settings[key] = value }
}

// NumPartitions sets the partition count of auto-created topics (default 4,
// like NewCluster).
func NumPartitions(n int) ApacheOpt { return Setting("num.partitions", strconv.Itoa(n)) }

// AutoCreateTopics turns the creation of topics on first use on or off
// (default on).
func AutoCreateTopics(on bool) ApacheOpt {
	return Setting("auto.create.topics.enable", strconv.FormatBool(on))
}

// ReplicationFactor sets the replication factor of auto-created topics and
// of the internal offsets, transaction and share-state topics (default: the
// number of nodes, at most 3).
func ReplicationFactor(n int) ApacheOpt {
	return func(c *kafkaserver.Config) {
		for _, k := range []string{"default.replication.factor", "offsets.topic.replication.factor",
			"transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"} {
			c.Settings[k] = strconv.Itoa(n)
		}
	}
}

// MinInsyncReplicas sets min.insync.replicas, and the same for the
// transaction and share-state topics (default 1 on one node, else 2).
func MinInsyncReplicas(n int) ApacheOpt {
	return func(c *kafkaserver.Config) {
		for _, k := range []string{"min.insync.replicas", "transaction.state.log.min.isr",
			"share.coordinator.state.topic.min.isr"} {
			c.Settings[k] = strconv.Itoa(n)
		}
	}
}

// JVMFlags adds flags to every node's java command line, after the
// defaults (a later -Xmx wins).
func JVMFlags(flags ...string) ApacheOpt {
	return func(c *kafkaserver.Config) { c.JVMFlags = append(c.JVMFlags, flags...) }
}

// SASLSSL adds a SASL_SSL listener to every node (Apache.SecureBrokers):
// SCRAM-SHA-512 with users (name -> password) over TLS, with a certificate
// for 127.0.0.1 and localhost from a CA made for the cluster
// (Apache.CAFile). With authorize, KRaft's StandardAuthorizer enforces
// ACLs for everyone but superUsers and User:ANONYMOUS, the principal of
// the PLAINTEXT listener (Brokers), which the nodes and the tests' plain
// clients keep using.
func SASLSSL(users map[string]string, authorize bool, superUsers ...string) ApacheOpt {
	return func(c *kafkaserver.Config) {
		c.Security = &kafkaserver.Security{ScramUsers: users, Authorizer: authorize, SuperUsers: superUsers}
	}
}

// orphaned leaves the nodes running when the test process dies: only the
// sweep's own test wants that.
func orphaned() ApacheOpt { return func(c *kafkaserver.Config) { c.Orphan = true } }

// StartApache starts an Apache Kafka cluster of nodes KRaft nodes (1 or 3,
// say), from the jars kafka/fetch.sh fetched, and returns once every node
// serves metadata listing all of them. Without the jars or java it fails the
// test, naming what to install. The nodes are killed and their files removed
// when the test ends; when the test failed, the tail of each node's log is
// logged first.
func StartApache(t testing.TB, nodes int, opts ...ApacheOpt) *Apache {
	t.Helper()
	cfg := kafkaserver.Config{Nodes: nodes, Settings: map[string]string{}, Logf: t.Logf}
	for _, o := range opts {
		o(&cfg)
	}
	var ca *CA
	if sec := cfg.Security; sec != nil && sec.CertPEM == nil {
		ca = NewCA(t, "kafkatest CA")
		sec.CertPEM, sec.KeyPEM = ca.ServerCert(t, "127.0.0.1", "localhost")
	}
	c, err := kafkaserver.Start(cfg)
	if err != nil {
		t.Fatalf("kafkatest: %v", err)
	}
	t.Cleanup(func() { c.Close(t.Failed()) })
	return &Apache{t: t, Cluster: c, ca: ca}
}

// CAFile returns the PEM file of the CA that signed the SASL_SSL
// listeners' certificate (SASLSSL).
func (a *Apache) CAFile() string {
	a.t.Helper()
	if a.ca == nil {
		a.t.Fatal("kafkatest: CAFile of a cluster started without SASLSSL")
	}
	return a.ca.File
}

func (a *Apache) check(err error) {
	a.t.Helper()
	if err != nil {
		a.t.Fatalf("kafkatest: %v", err)
	}
}

// Kill kills node i with SIGKILL, as a crash or the OOM killer would, and
// waits for it to be gone. Its data stays for Restart.
func (a *Apache) Kill(i int) { a.t.Helper(); a.check(a.Cluster.Kill(i)) }

// Stop stops node i with SIGTERM (a controlled shutdown) and waits for it to
// exit. Its data stays for Restart.
func (a *Apache) Stop(i int) { a.t.Helper(); a.check(a.Cluster.Stop(i)) }

// Restart starts node i again on the same data and ports, stopping it first
// (SIGTERM) if it runs, and returns once it serves metadata listing every
// running node.
func (a *Apache) Restart(i int) { a.t.Helper(); a.check(a.Cluster.Restart(i)) }

// Pause freezes node i (SIGSTOP): its connections stay open and nothing
// answers, like a long GC pause or a hung machine.
func (a *Apache) Pause(i int) { a.t.Helper(); a.check(a.Cluster.Pause(i)) }

// Resume lets a paused node i go on (SIGCONT).
func (a *Apache) Resume(i int) { a.t.Helper(); a.check(a.Cluster.Resume(i)) }

// StartupTime returns how long node i's last start took until it served
// metadata.
func (a *Apache) StartupTime(i int) time.Duration { return a.Cluster.StartupTime(i) }
