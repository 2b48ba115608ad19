package test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// The faults only a real cluster shows, one after the other on one
// three-node Apache Kafka cluster (replication factor 3,
// min.insync.replicas 2, no unclean leader election) while events are
// written all along: the leader of the busiest partition killed and later
// restarted; two of the three nodes down for 60s, below the minimum in-sync
// replicas; a node frozen with SIGSTOP for 45s. Throughout, the relay
// confirms nothing the brokers have not acknowledged; at the end every
// event is there, in commit order per aggregate, nothing is dead-lettered,
// and an event repeats only if it was not yet confirmed when the fault
// during which it repeated began.
func TestApacheClusterFaults(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	k := kafkatest.StartApache(t, 3)
	brokers := k.Brokers()
	createTopics(t, brokers, 4, topics...)
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 60)
	metricsAt := freeAddr(t)
	relay := startRelay(t, "--pg-url", db.URL, "--kafka-brokers", strings.Join(brokers, ","),
		"--slot", "cluster", "--publication", "cluster", "--metrics-addr", metricsAt)
	waitSlotActive(t, db, "cluster")
	watch := watchConfirmed(t, db, "cluster", brokers)
	acks := meterAcks(t, metricsAt)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	w := startSteadyWriter(ctx, sc)
	var phases []*clusterPhase
	begin := func(name string) *clusterPhase {
		t.Helper()
		p := &clusterPhase{name: name, written: sc.total(), at: time.Now()}
		var err error
		if p.confirmed, err = slotConfirmed(ctx, db, "cluster"); err != nil {
			t.Fatal(err)
		}
		if p.wal, err = currentWAL(ctx, db); err != nil {
			t.Fatal(err)
		}
		// The offsets each partition's next record gets: a repeat at or
		// past them was written during this phase.
		waitFor(t, time.Minute, "the end offsets before "+name, func() (bool, error) {
			p.ends, err = endOffsets(ctx, cl, topics)
			return err == nil, nil
		})
		phases = append(phases, p)
		return p
	}
	// Delivery moves on: the brokers hold more records than at the start of
	// the wait.
	flowing := func(what string) {
		t.Helper()
		base := acks.total()
		waitFor(t, 2*time.Minute, what, func() (bool, error) { return acks.total() > base+200, nil })
	}
	flowing("the first events to arrive")

	// 1. The leader of the busiest partition is killed mid-stream.
	victim := busiestLeader(t, ctx, cl)
	p := begin(fmt.Sprintf("leader (node %d) killed", victim+1))
	logAt := len(relay.out.String())
	k.Kill(victim)
	flowing("delivery to go on without the killed leader")
	k.Restart(victim)
	p.end = time.Now()
	p.said = relayWarnings(relay.out.String()[logAt:], 3)

	// 2. Two of three nodes down: no partition has min.insync.replicas.
	flowing("delivery after the restart")
	p = begin("two of three nodes down for 60s")
	down := []int{(victim + 1) % 3, (victim + 2) % 3}
	k.Kill(down[0])
	k.Kill(down[1])
	outage := time.After(60 * time.Second)
	// Events written up to now may have been acknowledged while the second
	// node still lived; none written after it died can be.
	died, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	logAt = len(relay.out.String())
	<-outage // the fault's length, not a synchronisation
	if lsn, err := slotConfirmed(ctx, db, "cluster"); err != nil || lsn > died {
		t.Fatalf("slot confirmed %s (%v) past %s, the WAL position when the second node had died, with one node of three up", lsn, err, died)
	}
	said := relay.out.String()[logAt:]
	// It says why: which brokers do not answer.
	p.said = relayWarnings(said, 3)
	for _, i := range down {
		if !strings.Contains(said, fmt.Sprintf("broker %d at %s does not answer", i+1, k.Addr(i))) {
			t.Fatalf("in the 60s two brokers were down, the relay never said broker %d at %s does not answer:\n%s",
				i+1, k.Addr(i), strings.Join(p.said, "\n"))
		}
	}
	if relay.exited() {
		t.Fatal("the relay exited while two brokers were down")
	}
	k.Restart(down[0])
	k.Restart(down[1])
	flowing("delivery once the two nodes are back")
	p.end = time.Now()

	// 3. A node frozen: connections open, nothing answers.
	victim = busiestLeader(t, ctx, cl)
	p = begin(fmt.Sprintf("leader (node %d) paused for 45s", victim+1))
	logAt = len(relay.out.String())
	k.Pause(victim)
	flowing("delivery to go on around the frozen node")
	frozen := time.After(45*time.Second - time.Since(p.at))
	<-frozen // the fault's length, not a synchronisation
	k.Resume(victim)
	flowing("delivery after the node woke")
	p.end = time.Now()
	p.said = relayWarnings(relay.out.String()[logAt:], 3)

	if err := w.stop(); err != nil {
		t.Fatalf("writing: %v", err)
	}
	end, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "the slot to confirm everything written", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "cluster")
		return lsn >= end, err
	})
	recs := sc.readBack(t, brokers)
	res := sc.check(t, recs)
	checkRepeatsByPhase(t, sc, recs, phases)
	if dead, _ := kafkatest.ReadAll(ctx, brokers, []string{"outbox.dead-letter"}, 500*time.Millisecond); len(dead) != 0 {
		t.Fatalf("%d events dead-lettered during broker faults", len(dead))
	}
	t.Logf("confirmed position never ahead of the brokers: %d event checks", watch.check(t, sc, recs))
	t.Logf("%d events written, %d records delivered, %d repeats", sc.total(), res.delivered, len(res.duplicates))
	for i, ph := range phases {
		next := sc.total()
		if i+1 < len(phases) {
			next = phases[i+1].written
		}
		t.Logf("%s: %d events written from its start to the next phase's, %d repeated, delivery paused at most %s",
			ph.name, next-ph.written, ph.repeats, acks.longestStall(ph.at, ph.end).Round(100*time.Millisecond))
		for _, line := range ph.said {
			t.Logf("  the relay: %s", line)
		}
	}
}

// clusterPhase is one fault of TestApacheClusterFaults.
type clusterPhase struct {
	name      string
	at, end   time.Time
	written   int           // events written before it began
	confirmed pglogrepl.LSN // the slot's confirmed position when it began
	wal       pglogrepl.LSN // the WAL's end when it began
	ends      map[string]map[int32]int64
	repeats   int
	said      []string // the relay's first warnings
}

// relayWarnings returns the first n distinct warnings and errors in a
// stretch of the relay's log, without their timestamps.
func relayWarnings(log string, n int) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		i := strings.Index(line, "level=")
		if i < 0 || !(strings.HasPrefix(line[i:], "level=WARN") || strings.HasPrefix(line[i:], "level=ERROR")) {
			continue
		}
		if line = line[i:]; !slices.Contains(out, line) {
			out = append(out, line)
		}
		if len(out) == n {
			break
		}
	}
	return out
}

// checkRepeatsByPhase finds, for each repeated event, the phase its second
// copy was written in (by offset) and fails if the slot had confirmed the
// event before that phase began: a confirmed event is never sent again.
func checkRepeatsByPhase(t *testing.T, sc *scenario, recs []kafkatest.Record, phases []*clusterPhase) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range recs { // sorted by topic, partition, offset by check
		id := r.Headers["id"]
		if !seen[id] {
			seen[id] = true
			continue
		}
		var in *clusterPhase
		for _, ph := range phases {
			if r.Offset >= ph.ends[r.Topic][r.Partition] {
				in = ph
			}
		}
		if in == nil {
			t.Fatalf("event %s repeated at %s/%d@%d before the first fault", id, r.Topic, r.Partition, r.Offset)
		}
		in.repeats++
		if sc.confirmedBefore(in.confirmed)[id] {
			t.Fatalf("event %s was confirmed (slot at %s when %q began) yet sent again at %s/%d@%d",
				id, in.confirmed, in.name, r.Topic, r.Partition, r.Offset)
		}
	}
}

// ackMeter samples the relay's count of acknowledged events every 100ms.
type ackMeter struct {
	mu      sync.Mutex
	samples []ackSample
}

type ackSample struct {
	at    time.Time
	acked float64
}

func meterAcks(t *testing.T, addr string) *ackMeter {
	m := &ackMeter{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			s, err := scrape(addr)
			if err != nil {
				continue
			}
			m.mu.Lock()
			m.samples = append(m.samples, ackSample{time.Now(), s.sum("outbox_relay_events_published_total")})
			m.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// total returns the last count of acknowledged events.
func (m *ackMeter) total() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.samples) == 0 {
		return 0
	}
	return m.samples[len(m.samples)-1].acked
}

// longestStall returns the longest time between from and to during which
// the broker acknowledged nothing: how long delivery paused.
func (m *ackMeter) longestStall(from, to time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var (
		prev    float64 = -1
		since           = from
		longest time.Duration
	)
	for _, s := range m.samples {
		if s.at.Before(from) {
			prev = s.acked
			continue
		}
		if s.at.After(to) {
			break
		}
		if s.acked > prev {
			longest = max(longest, s.at.Sub(since))
			since, prev = s.at, s.acked
		}
	}
	return max(longest, to.Sub(since))
}

// steadyWriter writes small transactions until stopped.
type steadyWriter struct {
	stopped atomic.Bool
	done    chan error
}

func startSteadyWriter(ctx context.Context, sc *scenario) *steadyWriter {
	w := &steadyWriter{done: make(chan error, 1)}
	go func() {
		for !w.stopped.Load() {
			// About 300 events/s: 2 writers, 1-5 events a transaction.
			if err := sc.writeConcurrently(ctx, 2, 100, 5, func() { <-time.After(10 * time.Millisecond) }); err != nil {
				w.done <- err
				return
			}
		}
		w.done <- nil
	}()
	return w
}

func (w *steadyWriter) stop() error {
	w.stopped.Store(true)
	return <-w.done
}

// busiestLeader returns the index of the node leading the partition that
// holds the most records of the test's topics.
func busiestLeader(t *testing.T, ctx context.Context, cl *kgo.Client) int {
	t.Helper()
	var leader int32 = -1
	waitFor(t, time.Minute, "the busiest partition's leader", func() (bool, error) {
		ends, err := endOffsets(ctx, cl, topics)
		if err != nil {
			return false, nil
		}
		var topic string
		var part int32
		most := int64(-1)
		for tp, ps := range ends {
			for p, end := range ps {
				if end > most {
					topic, part, most = tp, p, end
				}
			}
		}
		req := kmsg.NewPtrMetadataRequest()
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = kmsg.StringPtr(topic)
		req.Topics = append(req.Topics, mt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil || len(resp.Topics) != 1 {
			return false, nil
		}
		for _, p := range resp.Topics[0].Partitions {
			if p.Partition == part && p.ErrorCode == 0 {
				leader = p.Leader
			}
		}
		return leader > 0, nil
	})
	return int(leader) - 1
}

// createTopics creates topics with partitions each and the cluster's
// default replication factor, and waits until every partition has a leader.
func createTopics(t *testing.T, brokers []string, partitions int32, names ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 30000
	for _, n := range names {
		ct := kmsg.NewCreateTopicsRequestTopic()
		ct.Topic, ct.NumPartitions, ct.ReplicationFactor = n, partitions, -1
		req.Topics = append(req.Topics, ct)
	}
	resp, err := req.RequestWith(t.Context(), cl)
	if err != nil {
		t.Fatalf("creating topics %v: %v", names, err)
	}
	for _, ct := range resp.Topics {
		if ct.ErrorCode != 0 && ct.ErrorCode != 36 /* TOPIC_ALREADY_EXISTS */ {
			t.Fatalf("creating topic %s: error code %d", ct.Topic, ct.ErrorCode)
		}
	}
	waitFor(t, time.Minute, "every new partition to have a leader", func() (bool, error) {
		ends, err := endOffsets(t.Context(), cl, names)
		if err != nil {
			return false, nil
		}
		n := 0
		for _, ps := range ends {
			n += len(ps)
		}
		return n == len(names)*int(partitions), nil
	})
}
