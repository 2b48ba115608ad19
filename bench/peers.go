package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The peers: the tools users pick instead of the relay, measured on the
// same WAL and the same Apache Kafka node. Debezium runs as its
// documentation describes, on Kafka Connect in standalone mode with the
// jars bench/debezium/fetch.sh caches; wal-listener is installed with
// `go install` at walListenerVersion into the bench's cache.

// Versions, as bench/debezium/pom.xml and the install below pin them.
const (
	connectVersion     = "4.3.0"
	debeziumVersion    = "3.6.1.Final"
	walListenerModule  = "github.com/ihippik/wal-listener/v2"
	walListenerVersion = "v2.10.0"
)

// connectJVMFlags are what Kafka's bin/connect-standalone.sh and
// kafka-run-class.sh give a Connect worker: a 256 MiB to 2 GiB heap, G1
// with a 20ms pause goal.
var connectJVMFlags = []string{"-Xms256m", "-Xmx2g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
	"-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true"}

// debeziumWorker are the worker settings the bench sets (all but ports and
// paths), each a change from Kafka Connect's default, for RESULTS.md.
var debeziumWorker = [][2]string{
	// Outbox payloads are JSON text and keys plain ids: the records carry
	// them as they are, as the relay does, instead of in a JSON envelope
	// with a schema (JsonConverter's default).
	{"key.converter", "org.apache.kafka.connect.storage.StringConverter"},
	{"value.converter", "org.apache.kafka.connect.storage.StringConverter"},
	// Debezium's throughput advice: commit offsets (and so confirm the
	// slot) often instead of every 60s, and let the producer batch.
	{"offset.flush.interval.ms", "1000"},
	{"producer.linger.ms", "5"},
	{"producer.batch.size", "262144"},
	{"producer.buffer.memory", "67108864"},
}

// debeziumConnector are the connector settings the bench sets for
// throughput (beyond the connection, slot, publication and table), each a
// change from Debezium's default.
var debeziumConnector = [][2]string{
	{"max.batch.size", "8192"},  // default 2048
	{"max.queue.size", "32768"}, // default 8192; must exceed max.batch.size
	{"poll.interval.ms", "50"},  // default 500: how long the task waits for a batch to fill
}

// debeziumRouter maps the bench's outbox table (migrations/0001_outbox.sql)
// to the EventRouter, whose defaults name Debezium's own columns
// (aggregatetype, aggregateid, type).
var debeziumRouter = [][2]string{
	{"table.field.event.key", "aggregate_id"},
	{"route.by.field", "aggregate_type"},
}

// debeziumLibs is the directory of the Connect and Debezium jars.
func debeziumLibs() (string, error) {
	dir := os.Getenv("OUTBOX_RELAY_DEBEZIUM_LIBS")
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(cache, "outbox-relay", "debezium", debeziumVersion+"-connect-"+connectVersion)
	}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return "", fmt.Errorf("no Debezium jars in %s: run make debezium-jars (bash bench/debezium/fetch.sh)", dir)
	}
	return dir, nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// connectorSpec is one Debezium connector: its slot, table and topic.
type connectorSpec struct {
	name  string // file names in the tmp directory
	slot  string
	table string // schema-qualified
	topic string // the fixed topic every record goes to; "" for the router's default
	// publication; default the bench's.
	publication string
	router      [][2]string
	// tuned applies debeziumWorker's producer settings and
	// debeziumConnector; without it both run at their defaults.
	tuned bool
	// extra connector settings.
	extra [][2]string
}

// startConnect starts a Kafka Connect standalone worker running spec's
// Debezium connector against brokers.
func (e *env) startConnect(spec connectorSpec, brokers string) (*child, error) {
	libs, err := debeziumLibs()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(e.logPath(spec.name + ".connect"))
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(e.url)
	if err != nil {
		return nil, err
	}
	host, pgPort, _ := net.SplitHostPort(u.Host)
	worker := [][2]string{
		{"bootstrap.servers", brokers},
		{"offset.storage.file.filename", filepath.Join(dir, "offsets")},
		{"listeners", fmt.Sprintf("http://127.0.0.1:%d", port)},
	}
	for _, kv := range debeziumWorker {
		if spec.tuned || !strings.HasPrefix(kv[0], "producer.") {
			worker = append(worker, kv)
		}
	}
	conn := [][2]string{
		{"name", spec.name},
		{"connector.class", "io.debezium.connector.postgresql.PostgresConnector"},
		{"tasks.max", "1"},
		{"database.hostname", host},
		{"database.port", pgPort},
		{"database.user", u.User.Username()},
		{"database.password", ""},
		{"database.dbname", strings.TrimPrefix(u.Path, "/")},
		{"topic.prefix", "bench"},
		{"plugin.name", "pgoutput"},
		{"slot.name", spec.slot},
		{"publication.name", cmp.Or(spec.publication, publication)},
		{"publication.autocreate.mode", "disabled"},
		{"table.include.list", spec.table},
		// The slot exists before the writes; the rows before it are not
		// the connector's to read.
		{"snapshot.mode", "no_data"},
		{"tombstones.on.delete", "false"},
		{"transforms", "outbox"},
		{"transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter"},
	}
	for _, kv := range spec.router {
		conn = append(conn, [2]string{"transforms.outbox." + kv[0], kv[1]})
	}
	if spec.topic != "" {
		conn = append(conn, [2]string{"transforms.outbox.route.topic.replacement", spec.topic})
	}
	if spec.tuned {
		conn = append(conn, debeziumConnector...)
	}
	conn = append(conn, spec.extra...)
	write := func(name string, kvs [][2]string) (string, error) {
		var b strings.Builder
		for _, kv := range kvs {
			fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
		}
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, []byte(b.String()), 0o644)
	}
	wp, err := write("worker.properties", worker)
	if err != nil {
		return nil, err
	}
	cp, err := write("connector.properties", conn)
	if err != nil {
		return nil, err
	}
	log4j := "appender.out.type = Console\nappender.out.name = out\nappender.out.target = SYSTEM_ERR\n" +
		"appender.out.layout.type = PatternLayout\nappender.out.layout.pattern = %d{HH:mm:ss.SSS} %-5p %c{1} %m%n\n" +
		"rootLogger.level = info\nrootLogger.appenderRef.out.ref = out\n"
	lp := filepath.Join(dir, "log4j2.properties")
	if err := os.WriteFile(lp, []byte(log4j), 0o644); err != nil {
		return nil, err
	}
	args := append([]string(nil), connectJVMFlags...)
	args = append(args, "-Dlog4j2.configurationFile="+lp, "-Djava.io.tmpdir="+dir, "-cp", filepath.Join(libs, "*"),
		"org.apache.kafka.connect.cli.ConnectStandalone", wp, cp)
	return startChild(spec.name, nil, e.logPath(spec.name+".log"), "java", args...)
}

// waitSlotActive waits until a walsender streams from slotName: the
// consumer has started and connected.
func (e *env) waitSlotActive(ctx context.Context, slotName string, c *child, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		var active bool
		if err := e.admin.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slotName).Scan(&active); err != nil {
			return time.Time{}, err
		}
		if active {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("nothing streamed from slot %s within %s", slotName, limit)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-c.done:
			return time.Time{}, fmt.Errorf("%s exited before streaming: %v (see %s)", c.name, c.err, e.logPath(c.name+".log"))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// topicEnd returns the sum of topic's partitions' end offsets: its record
// count, for a topic written without transactions.
func topicEnd(ctx context.Context, cl *kgo.Client, topic string) (int64, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	t := kmsg.NewListOffsetsRequestTopic()
	t.Topic = topic
	for p := range int32(benchPartitions) {
		pp := kmsg.NewListOffsetsRequestTopicPartition()
		pp.Partition = p
		pp.Timestamp = -1 // the end
		t.Partitions = append(t.Partitions, pp)
	}
	req.Topics = append(req.Topics, t)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode != 0 {
				return 0, fmt.Errorf("listing offsets of %s/%d: error code %d", topic, p.Partition, p.ErrorCode)
			}
			n += p.Offset
		}
	}
	return n, nil
}

// waitTopicCount waits until topic holds n records.
func waitTopicCount(ctx context.Context, brokers, topic string, n int64, c *child, limit time.Duration) (time.Time, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		return time.Time{}, err
	}
	defer cl.Close()
	deadline := time.Now().Add(limit)
	for {
		got, err := topicEnd(ctx, cl, topic)
		if err == nil && got >= n {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			if err == nil && got > 0 {
				return time.Time{}, &peerTooSlow{got: got}
			}
			return time.Time{}, fmt.Errorf("topic %s holds %d of %d records after %s (%v)", topic, got, n, limit, err)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-c.done:
			return time.Time{}, fmt.Errorf("%s exited with %d of %d records in %s: %v", c.name, got, n, topic, c.err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// peerTooSlow is waitTopicCount's error when records kept coming but not
// all of them within its limit.
type peerTooSlow struct{ got int64 }

func (p *peerTooSlow) Error() string { return fmt.Sprintf("%d records within the limit", p.got) }

// peers are the peers the run includes (--peers), when Apache Kafka runs.
func (e *env) peers() []string {
	var out []string
	for _, p := range strings.Split(e.o.peers, ",") {
		switch strings.TrimSpace(p) {
		case "debezium":
			out = append(out, cDebezium)
		case "wal-listener":
			out = append(out, cWalListener)
		}
	}
	return out
}

// onlyConsumers keeps the consumers --consumers names (by file tag, e.g.
// pg_recvlogical, apache, debezium); all without it.
func (e *env) onlyConsumers(cs []string) []string {
	if e.o.consumers == "" {
		return cs
	}
	want := map[string]bool{}
	for _, c := range strings.Split(e.o.consumers, ",") {
		want[strings.TrimSpace(c)] = true
	}
	var out []string
	for _, c := range cs {
		if want[fileTag(c)] {
			out = append(out, c)
		}
	}
	return out
}

// peerTopic is the topic a peer's run publishes to, its own so that its
// record count is its progress.
func peerTopic(consumer, shape string) string {
	return "bench." + fileTag(consumer) + "." + shape
}

// drainDebezium measures Debezium draining one shape's backlog from its
// slot. Start-up (the JVM, the worker, the connector until its walsender
// streams) is measured apart from the drain (from then until the last
// record is in Kafka); CPU time is the drain's, peak RSS the whole run's.
func (e *env) drainDebezium(ctx context.Context, shape, slotName string) drainResult {
	r := drainResult{Shape: shape, Consumer: cDebezium, Events: e.o.events}
	topic := peerTopic(cDebezium, shape)
	if err := e.ak.createTopics(ctx, topic); err != nil {
		r.Err = err.Error()
		return r
	}
	name := "debezium-" + shape
	brokerUsage := meter(e.ak.pid())
	start := time.Now()
	c, err := e.startConnect(connectorSpec{name: name, slot: slotName, table: "public.outbox", topic: topic, router: debeziumRouter, tuned: true}, e.ak.addr)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer c.stop(30 * time.Second)
	active, err := e.waitSlotActive(ctx, slotName, c, 3*time.Minute)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Startup = active.Sub(start)
	cpu0 := processCPU(c.cmd.Process.Pid)
	pgBefore, _ := postgresCPU(e.pg.DataDir())
	otherBefore := e.otherSnapshot()
	done, err := waitTopicCount(ctx, e.ak.addr, topic, int64(e.o.events), c, e.o.peerLimit)
	var slow *peerTooSlow
	if errors.As(err, &slow) {
		// A peer slower than the limit: its row is what it drained.
		r.Events, r.Partial, done, err = int(slow.got), fmt.Sprintf("stopped after %s: %d of %d events", e.o.peerLimit, slow.got, e.o.events), time.Now(), nil
	}
	r.Load = loadAverage()
	r.Other = otherCPU(otherBefore, e.otherSnapshot())
	pgAfter, _ := postgresCPU(e.pg.DataDir())
	r.CPU = processCPU(c.cmd.Process.Pid) - cpu0
	r.StartupCPU = cpu0
	r.BrokerCPU, r.BrokerRSSKiB = brokerUsage()
	r.RSSKiB = max(c.hwm.Load(), vmHWM(c.cmd.Process.Pid))
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Wall = done.Sub(active)
	r.PGCPU = pgAfter - pgBefore
	log.Printf("[%s] Debezium started in %s (cpu %s) before its drain", shape, r.Startup.Round(time.Millisecond), r.StartupCPU.Round(time.Millisecond))
	return r
}

// walListener returns the wal-listener binary, installing it with go
// install into the bench's cache the first time; the error says why it
// cannot be had.
func walListener(ctx context.Context) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(cache, "outbox-relay", "wal-listener", walListenerVersion)
	exe := filepath.Join(bin, "wal-listener")
	if _, err := os.Stat(exe); err == nil {
		return exe, nil
	}
	cmd := exec.CommandContext(ctx, "go", "install", walListenerModule+"/cmd/wal-listener@"+walListenerVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.Join(strings.Fields(string(out)), " ")
		// The reason, without the proxy's address.
		if i := strings.Index(msg, "server response:"); i >= 0 && strings.Contains(msg, "403") {
			msg = "the Go module proxy answers 403 Forbidden, " + msg[i:]
		}
		return "", fmt.Errorf("go install %s/cmd/wal-listener@%s failed: %s", walListenerModule, walListenerVersion, msg)
	}
	return exe, nil
}

// drainWalListener would measure wal-listener like Debezium; it reports
// why it cannot run when its install fails.
func (e *env) drainWalListener(ctx context.Context, shape, slotName string) drainResult {
	r := drainResult{Shape: shape, Consumer: cWalListener, Events: e.o.events}
	if _, err := walListener(ctx); err != nil {
		r.Err = err.Error()
		return r
	}
	// A wal-listener that installs needs its configuration (Kafka
	// publisher, the outbox filter, the aggregate id as key) written here
	// before its rows can be measured.
	r.Err = "wal-listener installed, but the bench does not configure it yet (bench/peers.go)"
	return r
}

// latencyConsumer reads a topic from its start and records, for each
// record written after from, the time from the row's insert to the record
// reaching the consumer: the row's created_at is the record's timestamp
// (milliseconds) or, with header set, the header's RFC 3339 value.
type latencyConsumer struct {
	cl     *kgo.Client
	mu     sync.Mutex
	us     []int64
	n      int
	stop   context.CancelFunc
	done   chan struct{}
	header string
	from   time.Time
	once   sync.Once
	sorted []int64
}

func startLatencyConsumer(brokers, topic, header string, readCommitted bool, from time.Time) (*latencyConsumer, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(brokers), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(10 * time.Millisecond)}
	if readCommitted {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	lc := &latencyConsumer{cl: cl, stop: cancel, done: make(chan struct{}), header: header, from: from}
	go func() {
		defer close(lc.done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			now := time.Now()
			fs.EachRecord(func(r *kgo.Record) {
				created := r.Timestamp
				if header != "" {
					for _, h := range r.Headers {
						if h.Key == header {
							if t, err := time.Parse(time.RFC3339Nano, string(h.Value)); err == nil {
								created = t
							}
						}
					}
				}
				if created.Before(lc.from) {
					return
				}
				lc.mu.Lock()
				lc.us = append(lc.us, now.Sub(created).Microseconds())
				lc.n++
				lc.mu.Unlock()
			})
		}
	}()
	return lc, nil
}

// count is how many records after from it has seen.
func (lc *latencyConsumer) count() int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.n
}

// wait waits until it has seen n records, or limit passes.
func (lc *latencyConsumer) wait(ctx context.Context, n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for lc.count() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("a consumer saw %d of %d records within %s", lc.count(), n, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// close stops it (once) and returns the latencies in microseconds.
func (lc *latencyConsumer) close() []int64 {
	lc.once.Do(func() {
		lc.stop()
		<-lc.done
		lc.cl.Close()
		lc.mu.Lock()
		defer lc.mu.Unlock()
		lc.sorted = append([]int64(nil), lc.us...)
		sort.Slice(lc.sorted, func(i, j int) bool { return lc.sorted[i] < lc.sorted[j] })
	})
	return lc.sorted
}

// liveDebezium measures Debezium at the live rate: insert to the record
// reaching a consumer of its topic (the row's created_at travels in a
// header, which the EventRouter adds for this run only).
func (e *env) liveDebezium(ctx context.Context) liveResult {
	r := liveResult{Consumer: cDebezium, TargetRate: e.o.rate}
	fail := func(err error) liveResult {
		r.Err = err.Error()
		return r
	}
	if _, err := e.admin.Exec(ctx, `TRUNCATE outbox`); err != nil {
		return fail(err)
	}
	e.settle(ctx)
	const liveSlot = "bench_live_debezium"
	if err := e.ensureSlot(ctx, liveSlot); err != nil {
		return fail(err)
	}
	defer e.admin.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, liveSlot)
	topic := peerTopic(cDebezium, "live")
	if err := e.ak.createTopics(ctx, topic); err != nil {
		return fail(err)
	}
	router := append(append([][2]string(nil), debeziumRouter...), [2]string{"table.fields.additional.placement", "created_at:header:created_at"})
	c, err := e.startConnect(connectorSpec{name: "debezium-live", slot: liveSlot, table: "public.outbox", topic: topic, router: router, tuned: true}, e.ak.addr)
	if err != nil {
		return fail(err)
	}
	defer c.stop(30 * time.Second)
	if _, err := e.waitSlotActive(ctx, liveSlot, c, 3*time.Minute); err != nil {
		return fail(err)
	}
	if _, err := e.admin.Exec(ctx, singleInsert, "order-0", `{"warm_up": true}`); err != nil {
		return fail(err)
	}
	if _, err := waitTopicCount(ctx, e.ak.addr, topic, 1, c, time.Minute); err != nil {
		return fail(fmt.Errorf("warm-up: %w", err))
	}
	return e.measureLive(ctx, r, c, e.ak.addr, topic, "created_at", false)
}

// measureLive writes at the live rate while a consumer of topic measures
// insert-to-consumer latency, then waits for the rest; c is the consumer
// process under test.
func (e *env) measureLive(ctx context.Context, r liveResult, c *child, brokers, topic, header string, readCommitted bool) liveResult {
	from := time.Now()
	lc, err := startLatencyConsumer(brokers, topic, header, readCommitted, from)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	cpu0 := processCPU(c.cmd.Process.Pid)
	pgBefore, _ := postgresCPU(e.pg.DataDir())
	otherBefore := e.otherSnapshot()
	n, took, err := e.writeAtRate(ctx, e.o.rate, e.o.writers, e.o.liveDuration)
	r.Load = loadAverage()
	r.Other = otherCPU(otherBefore, e.otherSnapshot())
	if err != nil {
		lc.close()
		r.Err = err.Error()
		return r
	}
	r.Events, r.Achieved = n, float64(n)/took.Seconds()
	writersDone := time.Now()
	werr := lc.wait(ctx, n, time.Minute)
	r.Tail = time.Since(writersDone)
	us := lc.close()
	pgAfter, _ := postgresCPU(e.pg.DataDir())
	r.PGCPU = pgAfter - pgBefore
	r.CPU = processCPU(c.cmd.Process.Pid) - cpu0
	r.RSSKiB = max(c.hwm.Load(), vmHWM(c.cmd.Process.Pid))
	if werr != nil {
		r.Err = werr.Error()
		return r
	}
	r.CreateToAck = percentilesOf(us)
	return r
}

// ensureSlot creates a pgoutput slot, as slot.Ensure does for the relay.
func (e *env) ensureSlot(ctx context.Context, name string) error {
	_, err := e.admin.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, name)
	return err
}

// settingsTable renders key=value settings for RESULTS.md.
func settingsTable(kvs [][2]string) string {
	parts := make([]string, len(kvs))
	for i, kv := range kvs {
		parts[i] = "`" + kv[0] + "=" + kv[1] + "`"
	}
	return strings.Join(parts, ", ")
}
