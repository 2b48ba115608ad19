package main

import (
	"cmp"
	"context"
	"fmt"
	"log"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/kafkaserver"
	"github.com/outbox-relay/outbox-relay/sink/kafka"
)

// benchPartitions is the benchmark topic's partition count, on kfake and on
// Apache Kafka alike.
const benchPartitions = 3

// apacheJVMFlags is the default of --apache-jvm-flags: what Apache Kafka's
// own bin/kafka-server-start.sh and kafka-run-class.sh give a broker (a 1 GiB
// heap, G1 with a 20ms pause goal), with the full tiered JIT. They come after
// kafkaserver.DefaultJVMFlags, which are for tests (a small heap, SerialGC,
// the first JIT tier only), and override them: the later flag wins, and
// SerialGC is turned off before G1 is turned on (two collectors are an
// error).
const apacheJVMFlags = "-Xms1g -Xmx1g -XX:-UseSerialGC -XX:+UseG1GC -XX:MaxGCPauseMillis=20 " +
	"-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:TieredStopAtLevel=4"

// apacheSettings are the broker settings the bench adds to
// kafkaserver.DefaultSettings(1): topics exist only when the bench creates
// them, so a relay that published elsewhere would fail, not create one.
var apacheSettings = map[string]string{
	"auto.create.topics.enable": "false",
}

// warmupTopic takes the records that warm the broker's JIT up before the
// first measurement; the relay never writes to it.
const warmupTopic = "bench.warmup"

// apache is the one-node Apache Kafka cluster the bench starts once and
// every Apache Kafka row shares: its JVM is warm, as a production broker's
// is, and each row is measured as a difference of its CPU time.
type apache struct {
	c    *kafkaserver.Cluster
	addr string
	// Start is Start's wall time (storage format, JVM start, serving
	// metadata); NodeStartup the node's part of it, from its JVM start.
	Start, NodeStartup time.Duration
	// Warmup is how long the warm-up took, WarmupRecords its bulk records,
	// WarmupPaced how long it then sent at the live runs' rate, and
	// WarmupCPU the broker's CPU time meanwhile (mostly the JIT's).
	Warmup        time.Duration
	WarmupRecords int
	WarmupPaced   time.Duration
	WarmupCPU     time.Duration
	Java          string            // the first line of java -version
	JVMFlags      []string          // the node's whole list, the bench's last
	Settings      map[string]string // server.properties, but for ports and paths
	// cpuAtStart is the broker's CPU time when the warm-up ended.
	cpuAtStart time.Duration
}

// startApache starts the cluster, creates the benchmark topic with the
// partitions kfake's has, and warms the broker up.
func (e *env) startApache(ctx context.Context) (*apache, error) {
	flags := strings.Fields(e.o.apacheJVM)
	settings := kafkaserver.DefaultSettings(1)
	maps.Copy(settings, apacheSettings)
	began := time.Now()
	c, err := kafkaserver.Start(kafkaserver.Config{
		Nodes:    1,
		Settings: apacheSettings,
		JVMFlags: flags,
		Logf:     log.Printf,
	})
	if err != nil {
		return nil, fmt.Errorf("%w\n(or leave the Apache Kafka rows out with --no-apache)", err)
	}
	a := &apache{
		c: c, addr: c.Brokers()[0], Start: time.Since(began), NodeStartup: c.StartupTime(0),
		JVMFlags: append(slices.Clone(kafkaserver.DefaultJVMFlags), flags...),
		Settings: settings,
	}
	ok := false
	defer func() {
		if !ok {
			c.Close(true)
		}
	}()
	a.Java = javaVersion()
	a.cpuAtStart = a.cpu()
	if err := a.createTopics(ctx, benchTopic, warmupTopic); err != nil {
		return nil, err
	}
	if err := a.startCoordinators(ctx); err != nil {
		return nil, err
	}
	// The paced part lasts until the JVM's C2 compiler has gone quiet; the
	// shorter one of --quick leaves it compiling, and taking CPU, into the
	// first measurement.
	a.WarmupRecords, a.WarmupPaced = min(e.o.events, 200_000), 30*time.Second
	if e.o.quick {
		a.WarmupPaced = 10 * time.Second
	}
	if e.o.compatOnly {
		// The check measures nothing: no warm-up.
		a.WarmupRecords, a.WarmupPaced = 0, 0
		ok = true
		return a, nil
	}
	t := time.Now()
	if err := a.warmUp(ctx, a.WarmupRecords, e.o.rate, a.WarmupPaced); err != nil {
		return nil, fmt.Errorf("warming Apache Kafka up: %w", err)
	}
	a.Warmup = time.Since(t)
	a.WarmupCPU = a.cpu() - a.cpuAtStart
	a.cpuAtStart = a.cpu()
	log.Printf("Apache Kafka %s at %s: started in %s (the node serving %s after its JVM started); warm-up (%d records, then %s at %d/s) in %s, broker cpu %s",
		kafkaserver.KafkaVersion, a.addr, a.Start.Round(time.Millisecond), a.NodeStartup.Round(time.Millisecond),
		a.WarmupRecords, a.WarmupPaced, e.o.rate, a.Warmup.Round(time.Millisecond), a.WarmupCPU.Round(10*time.Millisecond))
	ok = true
	return a, nil
}

func (a *apache) close() {
	if a != nil {
		a.c.Close(false)
	}
}

// javaVersion returns the first line of `java -version` of the java the
// cluster runs.
func javaVersion() string {
	java, _, err := kafkaserver.Tools()
	if err != nil {
		return "java ?"
	}
	out, err := exec.Command(java, "-version").CombinedOutput()
	if err != nil {
		return "java ?"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}

// createTopics creates each topic with benchPartitions partitions and one
// replica, and waits until every partition has a leader.
func (a *apache) createTopics(ctx context.Context, topics ...string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(a.addr))
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 30_000
	for _, name := range topics {
		t := kmsg.NewCreateTopicsRequestTopic()
		t.Topic = name
		t.NumPartitions = benchPartitions
		t.ReplicationFactor = 1
		req.Topics = append(req.Topics, t)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("creating topics %v: %w", topics, err)
	}
	for _, t := range resp.Topics {
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return fmt.Errorf("creating topic %s: %w", t.Topic, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mreq := kmsg.NewPtrMetadataRequest()
		for _, name := range topics {
			mt := kmsg.NewMetadataRequestTopic()
			mt.Topic = kmsg.StringPtr(name)
			mreq.Topics = append(mreq.Topics, mt)
		}
		mresp, err := mreq.RequestWith(ctx, cl)
		led := 0
		if err == nil {
			for _, t := range mresp.Topics {
				for _, p := range t.Partitions {
					if p.ErrorCode == 0 && p.Leader >= 0 {
						led++
					}
				}
			}
			if led == benchPartitions*len(topics) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("topics %v: %d of %d partitions have a leader after 30s (%v)", topics, led, benchPartitions*len(topics), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startCoordinators has the broker create its consumer offsets and
// transaction state topics, as a first consumer group and a first
// transactional producer would. Without the offsets topic, on a fresh
// broker that creates no topic on request (apacheSettings), sarama's
// transactional producer asks for that topic's leader in a loop and never
// starts.
func (a *apache) startCoordinators(ctx context.Context) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(a.addr))
	if err != nil {
		return err
	}
	defer cl.Close()
	deadline := time.Now().Add(time.Minute)
	for _, kind := range []int8{0, 1} { // a group's, a transaction's
		for {
			req := kmsg.NewPtrFindCoordinatorRequest()
			req.CoordinatorType = kind
			req.CoordinatorKeys = []string{"outbox-relay-bench"}
			resp, err := req.RequestWith(ctx, cl)
			if err == nil && len(resp.Coordinators) == 1 && resp.Coordinators[0].ErrorCode == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("no coordinator of type %d on Apache Kafka after a minute (%v)", kind, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// warmUp sends records shaped like the bench's events through the relay's
// own producer (kafka.New: idempotent, acks=all, one request in flight)
// to the warm-up topic: bulk records first, n of them as fast as the
// producer takes them (the drains' pattern), then paced at rate for paced
// (the live runs'). The broker's JIT then compiles the paths these
// requests take before the first measurement instead of during it. A
// client of another kind (another request version, other batch sizes)
// leaves the C2 compiler much of that work to do in the measurements.
func (a *apache) warmUp(ctx context.Context, n, rate int, paced time.Duration) error {
	k, err := kafka.New(kafka.Config{Brokers: []string{a.addr}, ClientID: "outbox-relay-bench-warmup"})
	if err != nil {
		return err
	}
	defer k.Close()
	payload := []byte(`{"order_id": "order-123", "customer": "customer-4567", "amount_cents": 12345, "currency": "EUR", "items": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-2", "qty": 1}], "note": "warm-up"}`)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	publish := func(i int) error {
		ev := &decoder.Event{ID: fmt.Sprint(i), AggregateType: "order", AggregateID: fmt.Sprintf("order-%d", i%aggregates),
			EventType: "order_placed", Topic: warmupTopic, Payload: payload, CreatedAt: time.Now()}
		wg.Add(1)
		err := k.Publish(ctx, ev, func(err error) {
			if err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
			wg.Done()
		})
		if err != nil {
			wg.Done()
		}
		return err
	}
	for i := range n {
		if err := publish(i); err != nil {
			return err
		}
	}
	wg.Wait()
	if rate > 0 && paced > 0 {
		interval := time.Second / time.Duration(rate)
		begin := time.Now()
		for i := 0; time.Since(begin) < paced; i++ {
			if d := time.Until(begin.Add(time.Duration(i) * interval)); d > 0 {
				time.Sleep(d)
			}
			if err := publish(n + i); err != nil {
				return err
			}
		}
		wg.Wait()
	}
	return first
}

// pid is the broker JVM's process id.
func (a *apache) pid() int { return a.c.Pid(0) }

// cpu returns the broker JVM's CPU time so far: every thread's, the JIT's
// and the garbage collector's included.
func (a *apache) cpu() time.Duration { return processCPU(a.pid()) }

// settingsList renders the broker settings, sorted, for RESULTS.md.
func (a *apache) settingsList() string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(a.Settings)) {
		out = append(out, fmt.Sprintf("`%s=%s`", k, a.Settings[k]))
	}
	return strings.Join(out, ", ")
}
