// Package kafkaserver runs a throwaway Apache Kafka cluster from the jars
// kafka/fetch.sh caches: 1 or more KRaft nodes, each a broker and a
// controller in one JVM, on loopback ports, in a temporary directory. A node
// can be killed, stopped, restarted on its data and paused.
//
// Config.Security adds a SASL_SSL listener (SCRAM-SHA-512 over TLS) beside
// the plaintext one, with KRaft's ACL authorizer if asked.
//
// It serves the tests (through internal/kafkatest) and the benchmark. It never
// touches a Kafka it did not start, except the nodes of a cluster whose
// owner process is gone, which Start sweeps.
package kafkaserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/orphan"
)

// KafkaVersion is the Apache Kafka release Start runs. kafka/pom.xml pins
// the same version and kafka/fetch.sh puts its jars in the cache.
const KafkaVersion = "4.4.0"

// EnvKafkaLibs names the environment variable that points at a directory of
// Kafka's jars instead of the cache kafka/fetch.sh fills (which honours it
// too).
const EnvKafkaLibs = "OUTBOX_RELAY_KAFKA_LIBS"

// How long a node may take to start serving metadata, and to stop after
// SIGTERM. Both are generous: two cores are shared with PostgreSQL, the
// relay and other test binaries.
const (
	readyTimeout = 90 * time.Second
	stopTimeout  = 60 * time.Second
)

// Cluster is a running Apache Kafka cluster. Nodes are numbered from 0; node
// i has node.id i+1. Its methods are not safe for concurrent use.
type Cluster struct {
	java      string
	dir       string // removed by Close: log4j2.properties, tmp/, node-N/
	clusterID string
	jvmFlags  []string // with the classpath
	scramArgs []string // the storage tool's --add-scram options
	nodes     []*node
	logf      func(string, ...any)
	orphan    bool // nodes outlive the owner process
}

type node struct {
	id             int    // node.id
	dir            string // server.properties, kafka.log, pid, data/
	port, ctlPort  int    // PLAINTEXT and CONTROLLER listeners on 127.0.0.1
	securePort     int    // SASL_SSL listener on 127.0.0.1, 0 without Config.Security
	cmd            *exec.Cmd
	done           chan struct{} // closed once cmd has been waited for
	log            *os.File
	paused         bool
	startedAt      time.Time
	lastStartupDur time.Duration
}

// Config configures Start.
type Config struct {
	// Nodes is the number of nodes (1 or 3, say).
	Nodes int
	// Settings are broker settings (server.properties keys) for every
	// node, over DefaultSettings(Nodes).
	Settings map[string]string
	// JVMFlags come after DefaultJVMFlags on every node's java command
	// line (a later -Xmx wins).
	JVMFlags []string
	// Logf, if set, receives progress messages.
	Logf func(format string, args ...any)
	// Orphan leaves the nodes running when the owner process dies (only
	// the sweep's own test wants that).
	Orphan bool
	// Security, if set, adds a SASL_SSL listener to every node. The
	// PLAINTEXT and CONTROLLER listeners stay as they are.
	Security *Security
}

// Security is a second broker listener, SASL_SSL on its own loopback port
// per node (Cluster.SecureBrokers): SCRAM-SHA-512 over TLS. The PLAINTEXT
// listener, which also carries the traffic between brokers, and the
// CONTROLLER listener authenticate nobody: their principal is
// User:ANONYMOUS.
type Security struct {
	// CertPEM is the server's certificate (then any intermediates) and
	// KeyPEM its private key, unencrypted PKCS#8 ("PRIVATE KEY"), both
	// PEM. The certificate must name 127.0.0.1, the address the listener
	// advertises, for clients that verify it.
	CertPEM, KeyPEM []byte
	// ScramUsers are the SCRAM-SHA-512 users (name -> password), created
	// when the storage is formatted. Names and passwords are letters,
	// digits, '-' and '_'.
	ScramUsers map[string]string
	// Authorizer turns on KRaft's StandardAuthorizer: a principal may do
	// only what ACLs allow it, except the super users.
	Authorizer bool
	// SuperUsers are user names the authorizer lets do anything. User
	// ANONYMOUS (the PLAINTEXT and CONTROLLER listeners' principal) is
	// always one, so that the nodes and the tests' plain clients work.
	SuperUsers []string
}

// settings are the server.properties keys Security adds to every node,
// besides the listeners.
func (s *Security) settings() (map[string]string, error) {
	if len(s.CertPEM) == 0 || len(s.KeyPEM) == 0 {
		return nil, errors.New("kafkaserver: Security without a certificate and key")
	}
	for name, pw := range s.ScramUsers {
		if !plainWord(name) || !plainWord(pw) {
			return nil, fmt.Errorf("kafkaserver: SCRAM user %q: names and passwords are letters, digits, '-' and '_'", name)
		}
	}
	// The listener's own settings: the other listeners stay plaintext.
	const l = "listener.name.sasl_ssl."
	m := map[string]string{
		"sasl.enabled.mechanisms":            "SCRAM-SHA-512",
		l + "sasl.enabled.mechanisms":        "SCRAM-SHA-512",
		l + "scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
		// PEM in the properties themselves: a PEM key store file needs
		// an encrypted key, these take a plain PKCS#8 one.
		l + "ssl.keystore.type":              "PEM",
		l + "ssl.keystore.certificate.chain": strings.TrimSpace(string(s.CertPEM)),
		l + "ssl.keystore.key":               strings.TrimSpace(string(s.KeyPEM)),
	}
	if s.Authorizer {
		supers := []string{"User:ANONYMOUS"}
		for _, u := range s.SuperUsers {
			if u != "ANONYMOUS" {
				supers = append(supers, "User:"+u)
			}
		}
		m["authorizer.class.name"] = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
		m["super.users"] = strings.Join(supers, ";")
	}
	return m, nil
}

// scramArgs are the storage tool's options that create the SCRAM users.
func (s *Security) scramArgs() []string {
	var args []string
	for _, name := range slices.Sorted(maps.Keys(s.ScramUsers)) {
		args = append(args, "--add-scram", fmt.Sprintf("SCRAM-SHA-512=[name=%s,password=%s]", name, s.ScramUsers[name]))
	}
	return args
}

func plainWord(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// DefaultSettings are every node's server.properties before
// Config.Settings: small and quick to start, durable like a production
// broker where that is what the tests are about (acks, ISR, no unclean
// elections): replication factor min(nodes, 3), min.insync.replicas 1 on
// one node and 2 on more, 4 partitions per auto-created topic.
func DefaultSettings(nodes int) map[string]string {

	rf, isr := min(nodes, 3), 1
	if nodes > 1 {
		isr = 2
	}
	return map[string]string{
		"process.roles":                                    "broker,controller",
		"controller.listener.names":                        "CONTROLLER",
		"inter.broker.listener.name":                       "PLAINTEXT",
		"listener.security.protocol.map":                   "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
		"num.partitions":                                   "4",
		"auto.create.topics.enable":                        "true",
		"default.replication.factor":                       strconv.Itoa(rf),
		"min.insync.replicas":                              strconv.Itoa(isr),
		"unclean.leader.election.enable":                   "false",
		"offsets.topic.replication.factor":                 strconv.Itoa(rf),
		"transaction.state.log.replication.factor":         strconv.Itoa(rf),
		"transaction.state.log.min.isr":                    strconv.Itoa(isr),
		"share.coordinator.state.topic.replication.factor": strconv.Itoa(rf),
		"share.coordinator.state.topic.min.isr":            strconv.Itoa(isr),
		// The defaults (50 partitions each) make the first group or
		// transaction wait for 50 partitions to be created.
		"offsets.topic.num.partitions":         "4",
		"transaction.state.log.num.partitions": "4",
		"group.initial.rebalance.delay.ms":     "0",
		// The log cleaner (compacted topics) takes 128 MiB of heap by default.
		"log.cleaner.dedupe.buffer.size": strconv.Itoa(16 << 20),
		// A node killed and restarted registers again only once the session
		// of its previous incarnation expired (9 s by default). The
		// heartbeat interval is also the timeout of the registration
		// request: at 500 ms a controller slowed by a loaded machine
		// answers too late, every time, and the node never registers.
		"broker.heartbeat.interval.ms": "2000",
		"broker.session.timeout.ms":    "6000",
		"num.network.threads":          "2",
		"num.io.threads":               "4",
		"background.threads":           "2",
	}
}

// DefaultJVMFlags keep a node small: the machine's two cores and its memory
// are shared with PostgreSQL, the relay and other test binaries.
var DefaultJVMFlags = []string{
	"-Xms128m", "-Xmx384m", "-XX:+UseSerialGC",
	// The JIT's first tier only: a node starts with half the CPU time, and
	// tests never load it enough for the second tier to matter.
	"-XX:TieredStopAtLevel=1",
	"-XX:+ExitOnOutOfMemoryError",
	"-XX:-UsePerfData", // no /tmp/hsperfdata_* left behind by a SIGKILL
	"-Djava.awt.headless=true",
}

// log4j2Properties sends Kafka's log to standard output, which goes to the
// node's kafka.log, at INFO, without the settings dump of every client and
// server start.
const log4j2Properties = `status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
`

// Start starts a cluster of cfg.Nodes nodes from the jars kafka/fetch.sh
// fetched, and returns once every node serves metadata listing all of them.
// Without the jars or java it says what to install. On failure nothing is
// left running and the directory is removed. Close the cluster when done.
func Start(cfg Config) (*Cluster, error) {
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("kafkaserver: a cluster of %d nodes", cfg.Nodes)
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	java, libs, err := Tools()
	if err != nil {
		return nil, err
	}
	sweepOnce.Do(func() { Sweep(logf) })

	settings := DefaultSettings(cfg.Nodes)
	maps.Copy(settings, cfg.Settings)
	// A port found free may be taken before the JVM binds it; start over on
	// new ports then.
	for attempt := 1; ; attempt++ {
		c, err := start(java, libs, cfg, settings, logf)
		if err == nil {
			return c, nil
		}
		if attempt < 3 && errors.Is(err, errPortTaken) {
			logf("kafkaserver: %v; trying other ports", err)
			continue
		}
		return nil, fmt.Errorf("starting Apache Kafka %s: %w", KafkaVersion, err)
	}
}

var errPortTaken = errors.New("a listener port was taken")

func start(java, libs string, cfg Config, base map[string]string, logf func(string, ...any)) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "outbox-relay-kafka-")
	if err != nil {
		return nil, fmt.Errorf("creating a directory for Kafka in %s: %w", os.TempDir(), err)
	}
	a := &Cluster{
		java: java, dir: dir, logf: logf, orphan: cfg.Orphan,
		clusterID: newClusterID(),
		jvmFlags:  append(append(slices.Clone(DefaultJVMFlags), "-Djava.io.tmpdir="+filepath.Join(dir, "tmp")), cfg.JVMFlags...),
	}
	cp, err := classpath(libs)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			a.teardown(true)
		}
	}()
	if err := orphan.Claim(dir); err != nil {
		return nil, fmt.Errorf("claiming %s: %w", dir, err)
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "log4j2.properties"), []byte(log4j2Properties), 0o644); err != nil {
		return nil, err
	}
	a.jvmFlags = append(a.jvmFlags, "-Dlog4j2.configurationFile="+filepath.Join(dir, "log4j2.properties"), "-cp", cp)
	if _, err := os.Stat(filepath.Join(libs, "kafka.jsa")); err == nil {
		// The classes a starting node loads, archived by kafka/fetch.sh: a
		// node maps them instead of loading and verifying each again. An
		// archive the JVM cannot use (another Java) is ignored.
		a.jvmFlags = append(a.jvmFlags, "-XX:SharedArchiveFile="+filepath.Join(libs, "kafka.jsa"))
	}

	perNode := 2
	var secure map[string]string
	if cfg.Security != nil {
		if secure, err = cfg.Security.settings(); err != nil {
			return nil, err
		}
		a.scramArgs = cfg.Security.scramArgs()
		perNode = 3
	}
	ports, err := freePorts(perNode * cfg.Nodes)
	if err != nil {
		return nil, err
	}
	var voters []string
	for i := range cfg.Nodes {
		n := &node{id: i + 1, dir: filepath.Join(dir, fmt.Sprintf("node-%d", i+1)), port: ports[perNode*i], ctlPort: ports[perNode*i+1]}
		if secure != nil {
			n.securePort = ports[perNode*i+2]
		}
		a.nodes = append(a.nodes, n)
		voters = append(voters, fmt.Sprintf("%d@127.0.0.1:%d", n.id, n.ctlPort))
	}
	for _, n := range a.nodes {
		if err := os.Mkdir(n.dir, 0o755); err != nil {
			return nil, err
		}
		if n.log, err = os.OpenFile(filepath.Join(n.dir, "kafka.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			return nil, err
		}
		settings := maps.Clone(base)
		settings["node.id"] = strconv.Itoa(n.id)
		settings["listeners"] = fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d", n.port, n.ctlPort)
		settings["advertised.listeners"] = fmt.Sprintf("PLAINTEXT://127.0.0.1:%d", n.port)
		if secure != nil {
			maps.Copy(settings, secure)
			settings["listeners"] += fmt.Sprintf(",SASL_SSL://127.0.0.1:%d", n.securePort)
			settings["advertised.listeners"] += fmt.Sprintf(",SASL_SSL://127.0.0.1:%d", n.securePort)
			settings["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
		}
		// A static quorum: every node knows the voters, so formatting needs
		// no initial-controller handshake.
		settings["controller.quorum.voters"] = strings.Join(voters, ",")
		settings["log.dirs"] = filepath.Join(n.dir, "data")
		if err := writeProperties(filepath.Join(n.dir, "server.properties"), settings); err != nil {
			return nil, err
		}
	}

	began := time.Now()
	if err := a.format(); err != nil {
		return nil, err
	}
	formatted := time.Since(began)
	for _, n := range a.nodes {
		if err := a.launch(n); err != nil {
			return nil, err
		}
	}
	if err := a.waitServing(a.nodes); err != nil {
		return nil, err
	}
	ok = true
	logf("kafkaserver: Apache Kafka %s, %d node(s) at %s, up in %s (storage formatted in %s)",
		KafkaVersion, cfg.Nodes, strings.Join(a.Brokers(), ","), time.Since(began).Round(time.Millisecond), formatted.Round(time.Millisecond))
	return a, nil
}

// Tools finds java and the Kafka jars, or says how to get them.
func Tools() (java, libs string, err error) {
	java = "java"
	if home := os.Getenv("JAVA_HOME"); home != "" {
		java = filepath.Join(home, "bin", "java")
	}
	java, err = exec.LookPath(java)
	if err != nil {
		return "", "", fmt.Errorf("running Apache Kafka needs Java 17 or later, and %v; install it "+
			"(Debian: apt-get install openjdk-17-jre-headless; .ci/run does) or set JAVA_HOME", err)
	}
	libs, err = LibDir()
	if err != nil {
		return "", "", err
	}
	if _, err := os.Stat(filepath.Join(libs, ".complete")); err != nil {
		return "", "", fmt.Errorf("the jars of Apache Kafka %s are not in %s: run `bash kafka/fetch.sh` "+
			"(needs Java 17+ and Maven; .ci/run runs it)", KafkaVersion, libs)
	}
	return java, libs, nil
}

// LibDir is the directory Start takes Kafka's jars from:
// $OUTBOX_RELAY_KAFKA_LIBS, else the cache kafka/fetch.sh fills,
// ${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/kafka/<KafkaVersion>.
func LibDir() (string, error) {
	if dir := os.Getenv(EnvKafkaLibs); dir != "" {
		return dir, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("finding the Kafka jars: %w; set %s or HOME", err, EnvKafkaLibs)
	}
	return filepath.Join(cache, "outbox-relay", "kafka", KafkaVersion), nil
}

// classpath lists the jars in libs, sorted as kafka/fetch.sh lists them
// when it makes the class-data-sharing archive, which is valid only for
// that classpath. (A "libs/*" wildcard leaves the order to the directory.)
func classpath(libs string) (string, error) {
	jars, err := filepath.Glob(filepath.Join(libs, "*.jar"))
	if err != nil || len(jars) == 0 {
		return "", fmt.Errorf("no jars in %s (%v): run `bash kafka/fetch.sh`", libs, err)
	}
	return strings.Join(jars, string(os.PathListSeparator)), nil
}

// format writes each node's storage (meta.properties and the bootstrap
// metadata), as kafka-storage.sh format does, the nodes side by side.
func (a *Cluster) format() error {
	errs := make([]error, len(a.nodes))
	var wg sync.WaitGroup
	for i, n := range a.nodes {
		wg.Go(func() {
			args := append(slices.Clone(a.jvmFlags),
				"kafka.tools.StorageTool", "format", "--cluster-id", a.clusterID, "--config", filepath.Join(n.dir, "server.properties"))
			args = append(args, a.scramArgs...)
			cmd := exec.Command(a.java, args...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("formatting node %d's storage: %w\n%s", n.id, err, tailLines(out.String(), 30))
			}
			_, _ = n.log.Write(out.Bytes())
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// launch starts node n's JVM.
func (a *Cluster) launch(n *node) error {
	fmt.Fprintf(n.log, "\n--- kafkaserver: starting node %d at %s\n", n.id, time.Now().Format(time.RFC3339Nano))
	args := append(slices.Clone(a.jvmFlags), "kafka.Kafka", filepath.Join(n.dir, "server.properties"))
	cmd := exec.Command(a.java, args...)
	cmd.Dir = n.dir
	cmd.Stdout, cmd.Stderr = n.log, n.log
	// Signals for the terminal's process group (Ctrl-C) go to the test,
	// which cleans up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !a.orphan {
		// A test process that dies takes its nodes with it; the sweep covers
		// what this misses.
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting node %d: %w", n.id, err)
	}
	start, _ := orphan.ProcessStart(cmd.Process.Pid)
	if err := os.WriteFile(filepath.Join(n.dir, "pid"), fmt.Appendf(nil, "%d %d\n", cmd.Process.Pid, start), 0o644); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return err
	}
	n.cmd, n.done, n.paused, n.startedAt = cmd, make(chan struct{}), false, time.Now()
	go func(done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(n.done)
	return nil
}

// running reports whether node n's JVM runs (paused counts as running).
func (n *node) running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// waitServing waits until each of nodes answers a metadata request listing
// every running node that is not paused as a broker.
func (a *Cluster) waitServing(nodes []*node) error {
	deadline := time.Now().Add(readyTimeout)
	for _, n := range nodes {
		cl, err := kgo.NewClient(kgo.SeedBrokers(n.addr()), kgo.DialTimeout(time.Second))
		if err != nil {
			return err
		}
		err = a.waitNodeServing(cl, n, deadline)
		cl.Close()
		if err != nil {
			return err
		}
		n.lastStartupDur = time.Since(n.startedAt)
	}
	return nil
}

func (a *Cluster) waitNodeServing(cl *kgo.Client, n *node, deadline time.Time) error {
	var last error
	for {
		if !n.running() {
			return a.exitError(n)
		}
		// A paused node is listed until its session expires, and a killed
		// one too: only the nodes that run must be there.
		var want []int32
		for _, m := range a.nodes {
			if m.running() && !m.paused {
				want = append(want, int32(m.id))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := cl.SeedBrokers()[0].Request(ctx, kmsg.NewPtrMetadataRequest())
		cancel()
		if err == nil {
			var got []int32
			for _, b := range resp.(*kmsg.MetadataResponse).Brokers {
				got = append(got, b.NodeID)
			}
			slices.Sort(got)
			missing := slices.DeleteFunc(slices.Clone(want), func(id int32) bool { return slices.Contains(got, id) })
			if len(missing) == 0 {
				return nil
			}
			err = fmt.Errorf("brokers %v listed, want %v", got, want)
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("node %d (%s) does not serve metadata after %s (last: %v); its log:\n%s",
				n.id, n.addr(), readyTimeout, last, n.tail(40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exitError describes why node n's JVM exited while starting.
func (a *Cluster) exitError(n *node) error {
	log := n.tail(40)
	err := fmt.Errorf("node %d exited while starting (%v); its log:\n%s", n.id, n.cmd.ProcessState, log)
	if strings.Contains(log, "Address already in use") {
		return fmt.Errorf("%w: %w", errPortTaken, err)
	}
	return err
}

func (n *node) addr() string { return fmt.Sprintf("127.0.0.1:%d", n.port) }

// tail returns the last lines of node n's log.
func (n *node) tail(lines int) string {
	b, err := os.ReadFile(filepath.Join(n.dir, "kafka.log"))
	if err != nil {
		return fmt.Sprintf("(reading the log: %v)", err)
	}
	return tailLines(string(b), lines)
}

func tailLines(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// Brokers returns every node's bootstrap address, stopped nodes included,
// as a client would be configured.
func (a *Cluster) Brokers() []string {
	out := make([]string, len(a.nodes))
	for i, n := range a.nodes {
		out[i] = n.addr()
	}
	return out
}

// Addr returns node i's bootstrap address.
func (a *Cluster) Addr(i int) string { return a.nodes[i].addr() }

// SecureBrokers returns every node's SASL_SSL address (127.0.0.1:port), nil
// without Config.Security.
func (a *Cluster) SecureBrokers() []string {
	var out []string
	for _, n := range a.nodes {
		if n.securePort != 0 {
			out = append(out, fmt.Sprintf("127.0.0.1:%d", n.securePort))
		}
	}
	return out
}

// LogFile returns the path of node i's log (removed when the test ends).
func (a *Cluster) LogFile(i int) string { return filepath.Join(a.nodes[i].dir, "kafka.log") }

// StartupTime returns how long node i's last start took until it served
// metadata.
func (a *Cluster) StartupTime(i int) time.Duration { return a.nodes[i].lastStartupDur }

// Dir returns the cluster's directory (removed by Close).
func (a *Cluster) Dir() string { return a.dir }

func (a *Cluster) node(i int) (*node, error) {
	if i < 0 || i >= len(a.nodes) {
		return nil, fmt.Errorf("kafkaserver: no node %d in a cluster of %d", i, len(a.nodes))
	}
	return a.nodes[i], nil
}

// Pid returns node i's process id, 0 when it does not run.
func (a *Cluster) Pid(i int) int {
	n, err := a.node(i)
	if err != nil || !n.running() {
		return 0
	}
	return n.cmd.Process.Pid
}

// Kill kills node i with SIGKILL, as a crash or the OOM killer would, and
// waits for it to be gone. Its data stays for Restart.
func (a *Cluster) Kill(i int) error {
	n, err := a.node(i)
	if err != nil {
		return err
	}
	if !n.running() {
		return fmt.Errorf("kafkaserver: Kill(%d): node %d is not running", i, n.id)
	}
	_ = n.cmd.Process.Kill()
	<-n.done
	return nil
}

// Stop stops node i with SIGTERM (a controlled shutdown) and waits for it to
// exit. Its data stays for Restart.
func (a *Cluster) Stop(i int) error {
	n, err := a.node(i)
	if err != nil {
		return err
	}
	if !n.running() {
		return fmt.Errorf("kafkaserver: Stop(%d): node %d is not running", i, n.id)
	}
	return a.stop(n)
}

func (a *Cluster) stop(n *node) error {
	if n.paused {
		_ = n.cmd.Process.Signal(syscall.SIGCONT)
		n.paused = false
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
		return nil
	case <-time.After(stopTimeout):
		_ = n.cmd.Process.Kill()
		<-n.done
		return fmt.Errorf("node %d did not stop within %s of SIGTERM, killed it; its log:\n%s", n.id, stopTimeout, n.tail(40))
	}
}

// Restart starts node i again on the same data and ports, stopping it first
// (SIGTERM) if it runs, and returns once it serves metadata listing every
// running node.
func (a *Cluster) Restart(i int) error {
	n, err := a.node(i)
	if err != nil {
		return err
	}
	if n.running() {
		if err := a.stop(n); err != nil {
			return err
		}
	}
	if err := a.launch(n); err != nil {
		return err
	}
	if err := a.waitServing([]*node{n}); err != nil {
		return fmt.Errorf("restarting: %w", err)
	}
	a.logf("kafkaserver: node %d restarted, serving in %s", n.id, n.lastStartupDur.Round(time.Millisecond))
	return nil
}

// Pause freezes node i (SIGSTOP): its connections stay open and nothing
// answers, like a long GC pause or a hung machine.
func (a *Cluster) Pause(i int) error {
	n, err := a.node(i)
	if err != nil {
		return err
	}
	if !n.running() || n.paused {
		return fmt.Errorf("kafkaserver: Pause(%d): node %d is not running, or paused already", i, n.id)
	}
	_ = n.cmd.Process.Signal(syscall.SIGSTOP)
	n.paused = true
	return nil
}

// Resume lets a paused node i go on (SIGCONT).
func (a *Cluster) Resume(i int) error {
	n, err := a.node(i)
	if err != nil {
		return err
	}
	if !n.paused {
		return fmt.Errorf("kafkaserver: Resume(%d): node %d is not paused", i, n.id)
	}
	_ = n.cmd.Process.Signal(syscall.SIGCONT)
	n.paused = false
	return nil
}

// Close kills every node, logs the tail of their logs if showLogs, and
// removes the cluster's directory.
func (a *Cluster) Close(showLogs bool) { a.teardown(showLogs) }

func (a *Cluster) teardown(showLogs bool) {
	for _, n := range a.nodes {
		if n.running() {
			if n.paused {
				_ = n.cmd.Process.Signal(syscall.SIGCONT)
			}
			_ = n.cmd.Process.Kill()
			<-n.done
		}
		if showLogs {
			a.logf("kafkaserver: the end of node %d's log (%s):\n%s", n.id, filepath.Join(n.dir, "kafka.log"), n.tail(60))
		}
		if n.log != nil {
			_ = n.log.Close()
		}
	}
	if err := os.RemoveAll(a.dir); err != nil {
		a.logf("kafkaserver: removing %s: %v", a.dir, err)
	}
}

// newClusterID returns a random cluster id as Kafka writes them: 16 bytes
// in unpadded URL-safe base64.
func newClusterID() string {
	for {
		var b [16]byte
		_, _ = rand.Read(b[:])
		// One that starts with '-' reads as an option to the storage
		// tool (Kafka's own Uuid.randomUuid draws again too).
		if id := base64.RawURLEncoding.EncodeToString(b[:]); id[0] != '-' {
			return id
		}
	}
}

// writeProperties writes a Java properties file, keys sorted. A value may
// span lines (a PEM certificate).
func writeProperties(path string, settings map[string]string) error {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s=%s\n", k, propertyEscaper.Replace(settings[k]))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// propertyEscaper escapes what a properties file would read otherwise:
// a backslash, and line ends.
var propertyEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, "\r", `\r`)

// freePorts returns n distinct loopback ports that are free now, below the
// kernel's range for ephemeral ports: no outgoing connection or listener on
// port 0 takes them meanwhile, so a node can also be restarted on them.
func freePorts(n int) ([]int, error) {
	lo, hi := 20000, 32000
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var first, last int
		if _, err := fmt.Sscan(string(b), &first, &last); err == nil && first > 11000 {
			lo, hi = 10000, first
		}
	}
	var (
		out       []int
		listeners []net.Listener
	)
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("no %d free ports found in %d-%d on 127.0.0.1", n, lo, hi)
		}
		p := lo + mrand.IntN(hi-lo)
		if slices.Contains(out, p) {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		listeners = append(listeners, l)
		out = append(out, p)
	}
	return out, nil
}

var sweepOnce sync.Once

// Sweep kills the nodes, and removes the directories, of clusters in
// this machine's temporary directory whose owner process is gone (a test
// binary killed by go test -timeout, say).
func Sweep(logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "outbox-relay-kafka-*"))
	for _, dir := range dirs {
		if !orphan.Abandoned(dir) {
			continue
		}
		pidFiles, _ := filepath.Glob(filepath.Join(dir, "node-*", "pid"))
		var killed []int
		for _, f := range pidFiles {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			var pid int
			var start uint64
			if n, _ := fmt.Sscan(string(b), &pid, &start); n == 2 && pid > 0 && start > 0 && orphan.Is(pid, start) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				killed = append(killed, pid)
			}
		}
		for _, pid := range killed {
			// Not our child: nothing to wait on but the pid.
			for deadline := time.Now().Add(10 * time.Second); orphan.ProcessAlive(pid) && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
		}
		logf("kafkaserver: removing %s, left by a process that is gone (killed Kafka JVMs %v)", dir, killed)
		if err := os.RemoveAll(dir); err != nil {
			logf("kafkaserver: removing %s: %v", dir, err)
		}
	}
}
