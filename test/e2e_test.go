package test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

var topics = []string{"outbox.order", "outbox.customer"}

// A clean run delivers every committed event exactly once, in commit order
// per aggregate, and the slot is confirmed to the end. The same runs
// against Apache Kafka in TestApacheEndToEndEveryEventOnceInCommitOrder.
func TestEndToEndEveryEventOnceInCommitOrder(t *testing.T) {
	cluster := kafkatest.NewCluster(t, kfake.DefaultNumPartitions(8))
	everyEventOnceInCommitOrder(t, cluster.ListenAddrs())
}

func everyEventOnceInCommitOrder(t *testing.T, brokers []string) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 200)

	relay := startRelay(t, "--pg-url", db.URL, "--kafka-brokers", strings.Join(brokers, ","), "--slot", "e2e", "--publication", "e2e")
	waitSlotActive(t, db, "e2e")
	watch := watchConfirmed(t, db, "e2e", brokers)

	start := time.Now()
	bulkDone := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			bulkDone <- err
			return
		}
		defer conn.Close(context.Background())
		bulkDone <- sc.writeBulk(ctx, conn, 5000)
	}()
	if err := sc.writeConcurrently(ctx, 4, 15000, 50, nil); err != nil {
		t.Fatalf("writing: %v", err)
	}
	if err := <-bulkDone; err != nil {
		t.Fatalf("bulk insert: %v", err)
	}
	if sc.total() != 20000 {
		t.Fatalf("wrote %d events, want 20000", sc.total())
	}
	endWAL, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}

	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	recs, err := kafkatest.ReadN(readCtx, brokers, topics, 20000)
	if err != nil {
		t.Fatalf("reading records: got %d of 20000: %v", len(recs), err)
	}
	elapsed := time.Since(start)
	res := sc.check(t, recs)
	if len(res.duplicates) != 0 {
		t.Fatalf("clean run delivered %d duplicates, e.g. %s", len(res.duplicates), res.duplicates[0])
	}
	t.Logf("20000 events written and delivered in %s (%.0f events/s end to end)", elapsed.Round(time.Millisecond), 20000/elapsed.Seconds())

	// Nothing more arrives: exactly once means no late repeats either.
	more, _ := kafkatest.ReadAll(ctx, brokers, topics, 2*time.Second)
	if len(more) != 20000 {
		t.Fatalf("topics hold %d records after the run, want exactly 20000", len(more))
	}

	waitFor(t, 30*time.Second, "slot confirmed to the end of the written WAL", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "e2e")
		return lsn >= endWAL, err
	})
	t.Logf("confirmed position never ahead of the broker: %d event checks", watch.check(t, sc, recs))

	// An independent client sees the same records.
	checkWithKcat(t, brokers[0], recs)

	if code := relay.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM, want 0", code)
	}
}

func checkWithKcat(t *testing.T, broker string, recs []kafkatest.Record) {
	t.Helper()
	if !kafkatest.KcatAvailable() {
		t.Fatal("kcat is not installed: run `make setup` (Debian/Ubuntu: apt-get install kcat)")
	}
	want := map[string]int{}
	for _, r := range recs {
		want[r.Topic]++
	}
	ids := map[string]bool{}
	for _, r := range recs {
		ids[r.Headers["id"]] = true
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for topic, n := range want {
		got, err := kafkatest.KcatRead(ctx, broker, topic, n)
		if err != nil {
			t.Fatalf("kcat reading %s: %v", topic, err)
		}
		if len(got) != n {
			t.Fatalf("kcat read %d records from %s, the Go client %d", len(got), topic, n)
		}
		for _, r := range got {
			if !ids[r.Headers["id"]] {
				t.Fatalf("kcat saw record id %q the Go client did not", r.Headers["id"])
			}
		}
	}
}

func waitSlotActive(t *testing.T, db *pgtest.DB, slot string) {
	t.Helper()
	waitFor(t, 60*time.Second, "slot "+slot+" streaming", func() (bool, error) {
		conn, err := pgx.Connect(t.Context(), db.URL)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		// A slot is also active while pg_create_logical_replication_slot
		// builds it: wait for a walsender to hold it.
		var streaming bool
		err = conn.QueryRow(t.Context(), `select exists (select 1 from pg_replication_slots s
			join pg_stat_replication r on r.pid = s.active_pid where s.slot_name = $1)`, slot).Scan(&streaming)
		return streaming, err
	})
}

// A relay killed with SIGKILL mid-stream loses nothing when restarted, and
// repeats only events after the last confirmed LSN.
func TestCrashLosesNothingAndRepeatsOnlyUnconfirmed(t *testing.T) {
	crashLosesNothing(t, kafkatest.NewCluster(t).ListenAddrs())
}

func crashLosesNothing(t *testing.T, brokers []string) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	args := []string{"--pg-url", db.URL, "--kafka-brokers", strings.Join(brokers, ","), "--slot", "crash", "--publication", "crash"}

	relay := startRelay(t, args...)
	waitSlotActive(t, db, "crash")
	watch := watchConfirmed(t, db, "crash", brokers)

	start, err := slotConfirmed(ctx, db, "crash")
	if err != nil {
		t.Fatal(err)
	}
	writeErr := make(chan error, 1)
	var written atomic.Int64
	go func() {
		// Paced so that the kill lands in the middle of the stream: this
		// shapes the load, it does not synchronise anything.
		writeErr <- sc.writeConcurrently(ctx, 4, 12000, 20, func() {
			written.Add(1)
			<-time.After(5 * time.Millisecond)
		})
	}()
	// Kill once the slot has confirmed some transactions, with most still
	// to be written.
	waitFor(t, 60*time.Second, "the slot to confirm some transactions", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "crash")
		return lsn > start && written.Load() >= 200, err
	})
	if err := relay.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-relay.done
	// The walsender notices the dead client; then the slot's position is final.
	waitFor(t, 30*time.Second, "slot released after the kill", func() (bool, error) {
		conn, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		var active bool
		err = conn.QueryRow(ctx, `select active from pg_replication_slots where slot_name = 'crash'`).Scan(&active)
		return !active, err
	})
	confirmed, err := slotConfirmed(ctx, db, "crash")
	if err != nil {
		t.Fatal(err)
	}
	safeIDs := sc.confirmedBefore(confirmed)

	startRelay(t, args...)
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	total := sc.total()
	if _, err := kafkatest.ReadN(readCtx, brokers, topics, total); err != nil {
		t.Fatalf("reading: %v", err)
	}
	// ReadN returns once there are total records; the repeats may still
	// be arriving, so the check reads everything once it has settled.
	recs, _ := kafkatest.ReadAll(ctx, brokers, topics, 2*time.Second)
	res := sc.check(t, recs)
	for _, id := range res.duplicates {
		if safeIDs[id] {
			t.Fatalf("event %s was confirmed (slot at %s before the restart) yet sent again", id, confirmed)
		}
	}
	t.Logf("crash: %d events written, %d records delivered, %d repeats (all after confirmed LSN %s); %d events were confirmed before the kill",
		total, res.delivered, len(res.duplicates), confirmed, len(safeIDs))
	if len(safeIDs) == 0 || len(safeIDs) == total {
		t.Fatalf("%d of %d events confirmed before the kill: the kill was not mid-stream", len(safeIDs), total)
	}
	t.Logf("confirmed position never ahead of the broker: %d event checks", watch.check(t, sc, recs))
}

// A graceful stop drains and confirms: a restart sends zero duplicates.
func TestGracefulStopThenRestartSendsNoDuplicates(t *testing.T) {
	gracefulStopNoDuplicates(t, kafkatest.NewCluster(t).ListenAddrs())
}

func gracefulStopNoDuplicates(t *testing.T, brokers []string) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	args := []string{"--pg-url", db.URL, "--kafka-brokers", strings.Join(brokers, ","), "--slot", "graceful", "--publication", "graceful"}

	relay := startRelay(t, args...)
	waitSlotActive(t, db, "graceful")
	watch := watchConfirmed(t, db, "graceful", brokers)
	writeErr := make(chan error, 1)
	go func() { writeErr <- sc.writeConcurrently(ctx, 4, 8000, 30, nil) }()
	waitFor(t, 60*time.Second, "records flowing", func() (bool, error) {
		recs, err := kafkatest.ReadAll(ctx, brokers, topics, 200*time.Millisecond)
		return len(recs) > 1500, err
	})
	if code := relay.stop(t, syscall.SIGTERM, 60*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM, want 0", code)
	}
	if !strings.Contains(relay.out.String(), "final status update sent") {
		t.Fatalf("no final status update logged on SIGTERM")
	}
	startRelay(t, args...)
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	recs := sc.readBack(t, brokers)
	res := sc.check(t, recs)
	if len(res.duplicates) != 0 {
		t.Fatalf("graceful stop then restart sent %d duplicates, e.g. %s", len(res.duplicates), res.duplicates[0])
	}
	watch.check(t, sc, recs)
}

// Transient produce errors are retried without loss or reorder.
func TestProduceErrorsAreRetriedInOrder(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	cluster := kafkatest.NewCluster(t)

	// Fail every third produce request with a retriable error.
	var n atomic.Int64
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if n.Add(1)%3 != 0 {
			return nil, nil, false
		}
		return produceError(req, 6 /* NOT_LEADER_OR_FOLLOWER */), nil, true
	})

	startRelay(t, "--pg-url", db.URL, "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","), "--slot", "perr", "--publication", "perr")
	waitSlotActive(t, db, "perr")
	watch := watchConfirmed(t, db, "perr", cluster.ListenAddrs())
	if err := sc.writeConcurrently(ctx, 4, 4000, 20, nil); err != nil {
		t.Fatalf("writing: %v", err)
	}
	recs := sc.readBack(t, cluster.ListenAddrs())
	res := sc.check(t, recs)
	watch.check(t, sc, recs)
	if n.Load() < 3 {
		t.Fatalf("only %d produce requests seen: the fault was not exercised", n.Load())
	}
	t.Logf("produce errors: %d requests, %d failed; %d delivered, %d repeats", n.Load(), n.Load()/3, res.delivered, len(res.duplicates))
}

// produceError answers a produce request with errCode for every partition.
func produceError(req kmsg.Request, errCode int16) kmsg.Response {
	preq := req.(*kmsg.ProduceRequest)
	resp := preq.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range preq.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = errCode
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// A broker that stalls for three times wal_sender_timeout does not get the
// walsender dropped: status updates go on while the pipeline is blocked.
func TestStalledBrokerKeepsWalsenderAlive(t *testing.T) {
	ctx := t.Context()
	srv := pgtest.NewServer(t, map[string]string{"wal_sender_timeout": "2s"})
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	cluster := kafkatest.NewCluster(t)

	release := make(chan struct{})
	var stalled atomic.Bool
	startRelay(t, "--pg-url", db.URL, "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","), "--slot", "stall", "--publication", "stall",
		"--max-in-flight", "100")
	waitSlotActive(t, db, "stall")
	pidBefore := walsenderPID(t, db, "stall")

	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		if stalled.CompareAndSwap(false, true) {
			// Only the producer's connection sleeps; fetches go on.
			cluster.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	if err := sc.writeConcurrently(ctx, 2, 1000, 10, nil); err != nil {
		t.Fatalf("writing: %v", err)
	}
	waitFor(t, 30*time.Second, "produce stalled", func() (bool, error) { return stalled.Load(), nil })
	// The fault itself: the broker stays stalled for three wal_sender_timeouts.
	<-time.After(6 * time.Second)
	if pid := walsenderPID(t, db, "stall"); pid != pidBefore {
		t.Fatalf("walsender pid changed from %d to %d during the stall: it timed out", pidBefore, pid)
	}
	close(release)

	recs := sc.readBack(t, cluster.ListenAddrs())
	res := sc.check(t, recs)
	if len(res.duplicates) != 0 {
		t.Fatalf("stall caused %d duplicates: the session restarted", len(res.duplicates))
	}
	if pid := walsenderPID(t, db, "stall"); pid != pidBefore {
		t.Fatalf("walsender pid changed from %d to %d: the stream reconnected", pidBefore, pid)
	}
}

func walsenderPID(t *testing.T, db *pgtest.DB, slot string) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var pid *int
	if err := conn.QueryRow(t.Context(), `select active_pid from pg_replication_slots where slot_name = $1`, slot).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if pid == nil {
		t.Fatalf("slot %s has no active walsender", slot)
	}
	return *pid
}

// A relay SIGKILLed while events arrive at about 5,000 a second, with the
// default status interval (10s): nothing is lost, nothing confirmed is sent
// again, and it reports how many events the restart repeated (the safe
// position is confirmed about a second after it moves, so that is about a
// second's worth rather than up to ten).
func TestCrashAtSteadyRateRepeatsOnlyUnconfirmed(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	brokers := kafkatest.NewCluster(t).ListenAddrs()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	args := []string{"--pg-url", db.URL, "--kafka-brokers", strings.Join(brokers, ","), "--slot", "steady", "--publication", "steady"}
	relay := startRelayDefaults(t, args...)
	waitSlotActive(t, db, "steady")

	// About 476 transactions of 10.5 events on average a second: the
	// load's shape, nothing is synchronised by it.
	const txPerSecond = 476
	var (
		mu      sync.Mutex
		next    = time.Now()
		written atomic.Int64
	)
	pace := func() {
		written.Add(1)
		mu.Lock()
		next = next.Add(time.Second / txPerSecond)
		at := next
		mu.Unlock()
		<-time.After(time.Until(at))
	}
	writeErr := make(chan error, 1)
	go func() { writeErr <- sc.writeConcurrently(ctx, 4, 60000, 20, pace) }()
	waitFor(t, 60*time.Second, "six seconds of steady writes", func() (bool, error) {
		return written.Load() >= 6*txPerSecond, nil
	})
	if err := relay.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-relay.done
	waitSlotInactive(t, db, "steady")
	confirmed, err := slotConfirmed(ctx, db, "steady")
	if err != nil {
		t.Fatal(err)
	}
	safeIDs := sc.confirmedBefore(confirmed)
	startRelayDefaults(t, args...)
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	recs := sc.readBack(t, brokers)
	res := sc.check(t, recs)
	for _, id := range res.duplicates {
		if safeIDs[id] {
			t.Fatalf("event %s was confirmed (slot at %s) yet sent again", id, confirmed)
		}
	}
	t.Logf("kill at ~5,000 events/s, status interval 10s: %d events written, %d delivered, %d repeated after the restart",
		sc.total(), res.delivered, len(res.duplicates))
}
