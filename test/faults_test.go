package test

// Fault suite: each TestFault* runs the real relay binary against a
// real PostgreSQL and kfake, injects one fault, and checks with the shared
// scenario checker that every committed event arrives, in per-aggregate
// commit order, with repeats only where a crash or reconnect allows them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgserver"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// ---- helpers ---------------------------------------------------------------

func faultArgs(pgURL string, cluster *kfake.Cluster, name string, extra ...string) []string {
	args := []string{"--pg-url", pgURL, "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","),
		"--slot", name, "--publication", name}
	return append(args, extra...)
}

// settle waits until the slot is confirmed past everything written so far
// (the relay acked it all), then reads every record on the topics.
func settle(t *testing.T, db *pgtest.DB, slot string, cluster *kfake.Cluster, want int) []kafkatest.Record {
	t.Helper()
	return settleRecords(t, db, slot, cluster, want)
}

// settleRecords is settle for tests that run in parallel (which may not
// set environment variables).
func settleRecords(t *testing.T, db *pgtest.DB, slot string, cluster *kfake.Cluster, want int) []kafkatest.Record {
	t.Helper()
	ctx := t.Context()
	readCtx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	got, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), topics, want)
	if err != nil {
		t.Fatalf("reading: got %d of %d records: %v", len(got), want, err)
	}
	endWAL, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 120*time.Second, "slot confirmed to the end of the written WAL", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, slot)
		return lsn >= endWAL, err
	})
	// Everything is acked now; read it all (repeats included). A slow first
	// fetch can make ReadAll's quiet period end before any record arrived:
	// read again then.
	var recs []kafkatest.Record
	for attempt := 0; attempt < 5 && len(recs) < len(got); attempt++ {
		recs, _ = kafkatest.ReadAll(ctx, cluster.ListenAddrs(), topics, 3*time.Second)
	}
	if len(recs) < len(got) {
		t.Fatalf("ReadAll returned %d records, ReadN had %d", len(recs), len(got))
	}
	return recs
}

func waitSlotInactive(t *testing.T, db *pgtest.DB, slot string) {
	t.Helper()
	waitFor(t, 60*time.Second, "slot "+slot+" released", func() (bool, error) {
		conn, err := pgx.Connect(t.Context(), db.URL)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		var active bool
		err = conn.QueryRow(t.Context(), `select active from pg_replication_slots where slot_name = $1`, slot).Scan(&active)
		return !active, err
	})
}

// queryOne runs one query on a fresh connection (safe across server restarts).
func queryOne(ctx context.Context, db *pgtest.DB, sql string, args []any, dest ...any) error {
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

func execFresh(ctx context.Context, db *pgtest.DB, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// peakRSS returns the process's VmHWM (peak resident set) in MiB.
func peakRSS(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading relay memory: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return float64(kb) / 1024
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// waitForID consumes the topics from the start until a record with the
// given id header arrives.
func waitForID(ctx context.Context, brokers, topicNames []string, id string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topicNames...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		found := false
		fs.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == "id" && string(h.Value) == id {
					found = true
				}
			}
		})
		if found {
			return nil
		}
	}
}

func (s *scenario) lastIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.txs[len(s.txs)-1].ids...)
}

func exitCodeOf(p *relayProc) int {
	if p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// ---- 1. SIGKILL after broker acks, before the status update ---------------

func TestFaultKillAfterAckBeforeStatusUpdate(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	cluster := kafkatest.NewCluster(t)
	args := faultArgs(db.URL, cluster, "killack")

	// No timed status update during the run: only acks happen, nothing is
	// confirmed (the receive timeout must stay above the interval).
	relay := startRelay(t, append(args, "--status-interval", "1h", "--receive-timeout", "2h")...)
	waitSlotActive(t, db, "killack")
	startLSN, err := slotConfirmed(ctx, db, "killack")
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.writeConcurrently(ctx, 4, 5000, 20, nil); err != nil {
		t.Fatalf("writing: %v", err)
	}
	total := sc.total()
	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if got, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), topics, total); err != nil {
		t.Fatalf("before the kill: read %d of %d: %v", len(got), total, err)
	}
	// Every record is acked by the broker; now kill before any status update.
	if err := relay.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-relay.done
	waitSlotInactive(t, db, "killack")
	confirmed, err := slotConfirmed(ctx, db, "killack")
	if err != nil {
		t.Fatal(err)
	}
	safeIDs := sc.confirmedBefore(confirmed)

	startRelay(t, args...)
	recs := settle(t, db, "killack", cluster, total)
	res := sc.check(t, recs)
	for _, id := range res.duplicates {
		if safeIDs[id] {
			t.Fatalf("event %s was confirmed (slot at %s) yet sent again", id, confirmed)
		}
	}
	t.Logf("kill-after-ack: %d events written, %d records delivered, %d unique, %d repeats; slot confirmed %s at start, %s at the kill (%d events confirmed before the kill)",
		total, res.delivered, res.unique, len(res.duplicates), startLSN, confirmed, len(safeIDs))
}

// ---- 4. Transient produce errors and leader moves under load --------------

func TestFaultLeaderMovesAndProduceErrors(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 60)
	cluster := kafkatest.NewCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(4, topics...))

	var reqs, failed atomic.Int64
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if reqs.Add(1)%4 != 0 {
			return nil, nil, false
		}
		failed.Add(1)
		return produceError(req, 6 /* NOT_LEADER_OR_FOLLOWER */), nil, true
	})

	startRelay(t, faultArgs(db.URL, cluster, "moves")...)
	waitSlotActive(t, db, "moves")

	writeErr := make(chan error, 1)
	go func() { writeErr <- sc.writeConcurrently(ctx, 4, 8000, 20, nil) }()

	// Move every partition's leader around while the writers run: every
	// 200ms for 5s (the ticker paces the fault, it synchronises nothing).
	moves := 0
	tick := time.NewTicker(200 * time.Millisecond)
	for round := 0; round < 25; round++ {
		<-tick.C
		for ti, topic := range topics {
			for p := int32(0); p < 4; p++ {
				node := int32((round + int(p) + ti) % 3)
				if err := cluster.MoveTopicPartition(topic, p, node); err != nil {
					t.Fatalf("moving %s/%d to node %d: %v", topic, p, node, err)
				}
				moves++
			}
		}
	}
	tick.Stop()
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	total := sc.total()
	recs := settle(t, db, "moves", cluster, total)
	res := sc.check(t, recs)
	t.Logf("leader moves: %d events written, %d delivered, %d repeats; %d partition moves; %d produce requests, %d failed with NOT_LEADER_OR_FOLLOWER",
		total, res.delivered, len(res.duplicates), moves, reqs.Load(), failed.Load())
	if failed.Load() == 0 {
		t.Fatalf("no produce request failed: the fault was not exercised")
	}
}

// ---- 6. Walsender terminated, then PostgreSQL restarted (immediate) -------

func TestFaultWalsenderTerminatedAndPostgresRestarted(t *testing.T) {
	ctx := t.Context()
	srv := pgtest.NewServer(t, nil)
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	cluster := kafkatest.NewCluster(t)
	relay := startRelay(t, faultArgs(db.URL, cluster, "pgrestart")...)
	waitSlotActive(t, db, "pgrestart")
	pid1 := walsenderPID(t, db, "pgrestart")

	// Phase 1: terminate the walsender while writers run.
	writeErr := make(chan error, 1)
	go func() { writeErr <- sc.writeConcurrently(ctx, 3, 4000, 20, nil) }()
	waitFor(t, 60*time.Second, "records flowing", func() (bool, error) {
		recs, err := kafkatest.ReadAll(ctx, cluster.ListenAddrs(), topics, 200*time.Millisecond)
		return len(recs) > 500, err
	})
	if err := execFresh(ctx, db, `select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'pgrestart'`); err != nil {
		t.Fatal(err)
	}
	terminated := time.Now()
	waitFor(t, 60*time.Second, "relay logs a reconnect", func() (bool, error) {
		return strings.Contains(relay.out.String(), "reconnecting"), nil
	})
	var pid2 int
	waitFor(t, 90*time.Second, "a new walsender holds the slot", func() (bool, error) {
		var pid *int
		err := queryOne(ctx, db, `select s.active_pid from pg_replication_slots s join pg_stat_replication r on r.pid = s.active_pid where s.slot_name = 'pgrestart'`, nil, &pid)
		if err != nil || pid == nil {
			return false, err
		}
		pid2 = *pid
		return pid2 != pid1, nil
	})
	reconnectedAfter := time.Since(terminated)
	if err := <-writeErr; err != nil {
		t.Fatalf("writing (phase 1): %v", err)
	}
	phase1 := sc.total()
	recs := settle(t, db, "pgrestart", cluster, phase1)
	res1 := sc.check(t, recs)

	// Phase 2: immediate restart (a crash) with the writers paused.
	restartBegan := time.Now()
	if err := srv.Restart(ctx, true); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	if err := sc.writeConcurrently(ctx, 1, 1, 1, nil); err != nil {
		t.Fatalf("writing the marker after the restart: %v", err)
	}
	marker := sc.lastIDs()[0]
	mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := waitForID(mctx, cluster.ListenAddrs(), topics, marker); err != nil {
		t.Fatalf("the first event written after the restart was not delivered: %v", err)
	}
	recovered := time.Now()

	// Phase 3: more writes after the restart.
	if err := sc.writeConcurrently(ctx, 3, 3000, 20, nil); err != nil {
		t.Fatalf("writing (phase 3): %v", err)
	}
	total := sc.total()
	recs = settle(t, db, "pgrestart", cluster, total)
	res := sc.check(t, recs)
	reconnects := strings.Count(relay.out.String(), "reconnecting")
	t.Logf("walsender terminate + immediate restart: %d events written, %d delivered, %d repeats (%d after the terminate alone); walsender pid %d -> %d, slot held again %s after the terminate; restart took %s, first new event delivered %s after the restart began (%s after it returned); %d reconnect log lines",
		total, res.delivered, len(res.duplicates), len(res1.duplicates), pid1, pid2, reconnectedAfter.Round(time.Millisecond),
		restarted.Sub(restartBegan).Round(time.Millisecond), recovered.Sub(restartBegan).Round(time.Millisecond),
		recovered.Sub(restarted).Round(time.Millisecond), reconnects)
	if relay.exited() {
		t.Fatalf("relay exited: %v", relay.err)
	}
}

// ---- 7. Network blackhole to PostgreSQL -----------------------------------

func TestFaultNetworkBlackhole(t *testing.T) {
	testBlackhole(t, "")
}

// The same with connect_timeout in the URL: the workaround a user has if the
// relay sets no deadline of its own on connection set-up.
func TestFaultNetworkBlackholeWithConnectTimeoutInURL(t *testing.T) {
	testBlackhole(t, "connect_timeout=5")
}

func testBlackhole(t *testing.T, extraQuery string) {
	ctx := t.Context()
	// A short wal_sender_timeout so the server drops the frozen walsender
	// (and releases the slot) soon after the blackhole starts.
	srv := pgtest.NewServer(t, map[string]string{"wal_sender_timeout": "10s"})
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	sc := newScenario(t, db, 40)
	cluster := kafkatest.NewCluster(t)
	proxy := startTCPProxy(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.Port())))
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = proxy.Addr()
	if extraQuery != "" {
		u.RawQuery += "&" + extraQuery
	}
	relay := startRelay(t, faultArgs(u.String(), cluster, "blackhole", "--receive-timeout", "5s")...)
	waitSlotActive(t, db, "blackhole")

	if err := sc.writeConcurrently(ctx, 2, 1000, 20, nil); err != nil {
		t.Fatal(err)
	}
	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), topics, sc.total()); err != nil {
		t.Fatalf("before the blackhole: %v", err)
	}

	logBefore := len(relay.out.String())
	proxy.blackhole()
	blackholed := time.Now()
	// Writes go on directly to the server during the blackhole.
	if err := sc.writeConcurrently(ctx, 2, 1000, 20, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the relay noticing the silence", func() (bool, error) {
		return strings.Contains(relay.out.String()[logBefore:], "presumed dead"), nil
	})
	noticed := time.Since(blackholed)
	// The fault's duration: the blackhole lasts a while longer, so the
	// relay's first reconnect attempts meet it.
	<-time.After(4 * time.Second)
	proxy.resume()
	resumed := time.Now()
	acceptedAtResume, frozen := proxy.stats()

	// Recovery: a new session streams again.
	logAtResume := len(relay.out.String())
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(relay.out.String()[logAtResume:], "streaming") {
		if time.Now().After(deadline) {
			accepted, _ := proxy.stats()
			t.Fatalf("relay did not stream again within 90s after the network came back (noticed the silence after %s; "+
				"proxy accepted %d connections, %d of them frozen by the blackhole, %d new since the resume). "+
				"A reconnect attempt made during the blackhole has no deadline: connection set-up (prepare's admin "+
				"connection / the replication connection) hangs on a peer that never answers. Relay output since the resume:\n%s",
				noticed.Round(time.Millisecond), accepted, frozen, accepted-acceptedAtResume, tail(relay.out.String()[logAtResume:], 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	streamingAgain := time.Since(resumed)
	total := sc.total()
	recs := settle(t, db, "blackhole", cluster, total)
	res := sc.check(t, recs)
	accepted, _ := proxy.stats()
	t.Logf("blackhole (%q): %d events written, %d delivered, %d repeats; silence noticed %s after the blackhole (receive timeout 5s); streaming again %s after the resume; proxy connections %d (%d frozen)",
		extraQuery, total, res.delivered, len(res.duplicates), noticed.Round(time.Millisecond), streamingAgain.Round(time.Millisecond), accepted, frozen)
	if noticed > 15*time.Second {
		t.Fatalf("the relay took %s to notice a blackhole with --receive-timeout 5s", noticed)
	}
}

// ---- 8. Broker stalled for 3x wal_sender_timeout, memory bounded ----------

func TestFaultStalledBrokerBoundedMemory(t *testing.T) {
	ctx := t.Context()
	srv := pgtest.NewServer(t, map[string]string{"wal_sender_timeout": "2s"})
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	cluster := kafkatest.NewCluster(t)

	release := make(chan struct{})
	var stalled atomic.Bool
	relay := startRelay(t, faultArgs(db.URL, cluster, "stallmem", "--max-in-flight", "1000")...)
	waitSlotActive(t, db, "stallmem")
	pidBefore := walsenderPID(t, db, "stallmem")
	rssStart := peakRSS(t, relay.cmd.Process.Pid)

	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		if stalled.CompareAndSwap(false, true) {
			cluster.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	conn := db.Conn(t)
	if err := sc.writeBulk(ctx, conn, 1000); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "produce stalled", func() (bool, error) { return stalled.Load(), nil })
	stallBegan := time.Now()
	for range 49 {
		if err := sc.writeBulk(ctx, conn, 1000); err != nil {
			t.Fatal(err)
		}
	}
	// The fault's duration: at least three wal_sender_timeouts.
	if d := 6*time.Second - time.Since(stallBegan); d > 0 {
		<-time.After(d)
	}
	stallLasted := time.Since(stallBegan)
	rssStall := peakRSS(t, relay.cmd.Process.Pid)
	if pid := walsenderPID(t, db, "stallmem"); pid != pidBefore {
		t.Fatalf("walsender pid changed from %d to %d during the stall: it timed out", pidBefore, pid)
	}
	close(release)
	total := sc.total()
	recs := settle(t, db, "stallmem", cluster, total)
	res := sc.check(t, recs)
	rssEnd := peakRSS(t, relay.cmd.Process.Pid)
	if pid := walsenderPID(t, db, "stallmem"); pid != pidBefore {
		t.Fatalf("walsender pid changed from %d to %d: the stream reconnected", pidBefore, pid)
	}
	t.Logf("stall: %d events written (50 x 1000-row transactions) during a %s stall, %d delivered, %d repeats; walsender pid %d unchanged; relay peak RSS (VmHWM, -race build) %.1f MiB at start, %.1f MiB after the stall, %.1f MiB after delivering everything",
		total, stallLasted.Round(time.Millisecond), res.delivered, len(res.duplicates), pidBefore, rssStart, rssStall, rssEnd)
	if len(res.duplicates) != 0 {
		t.Fatalf("stall caused %d duplicates", len(res.duplicates))
	}
	if rssEnd > 300 {
		t.Fatalf("relay peak RSS %.1f MiB, want under 300 MiB with --max-in-flight 1000", rssEnd)
	}
}

// ---- 10. Slot invalidated; slot dropped while running ---------------------

func TestFaultSlotInvalidated(t *testing.T) {
	ctx := t.Context()
	srv := pgtest.NewServer(t, map[string]string{
		"max_slot_wal_keep_size": "1MB",
		"wal_keep_size":          "0",
		"min_wal_size":           "32MB",
		"max_wal_size":           "64MB",
	})
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	args := faultArgs(db.URL, cluster, "lostslot")
	relay := startRelay(t, args...)
	waitSlotActive(t, db, "lostslot")
	if err := sc.writeConcurrently(ctx, 1, 200, 10, nil); err != nil {
		t.Fatal(err)
	}
	recs := settle(t, db, "lostslot", cluster, sc.total())
	sc.check(t, recs)
	if code := relay.stop(t, syscall.SIGTERM, 60*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d", code)
	}
	waitSlotInactive(t, db, "lostslot")

	db.Exec(t, `create table filler (id bigserial primary key, pad text)`)
	var status string
	rounds := 0
	for ; rounds < 30; rounds++ {
		db.Exec(t, `insert into filler (pad) select repeat('x', 200) from generate_series(1, 5000)`)
		db.Exec(t, `select pg_switch_wal()`)
		db.Exec(t, `checkpoint`)
		if err := queryOne(ctx, db, `select coalesce(wal_status, '') from pg_replication_slots where slot_name = 'lostslot'`, nil, &status); err != nil {
			t.Fatal(err)
		}
		if status == "lost" {
			break
		}
	}
	if status != "lost" {
		t.Fatalf("slot wal_status %q after %d rounds of WAL, want lost", status, rounds)
	}
	// Events written after the invalidation: the relay cannot deliver them
	// from this slot, and must say so rather than start over silently.
	if err := sc.writeConcurrently(ctx, 1, 20, 5, nil); err != nil {
		t.Fatal(err)
	}

	relay2 := startRelay(t, args...)
	code := relay2.waitExit(t, 60*time.Second)
	out := relay2.out.String()
	t.Logf("relay on the lost slot exited with code %d after %d WAL rounds; output tail:\n%s", code, rounds+1, tail(out, 5))
	if code == 0 {
		t.Fatalf("relay exited 0 on an invalidated slot")
	}
	if !strings.Contains(out, "invalidated") || !strings.Contains(out, "lostslot") {
		t.Fatalf("exit message does not say slot lostslot was invalidated:\n%s", tail(out, 20))
	}
	if !strings.Contains(out, "slot drop") && !strings.Contains(out, "re-create") {
		t.Fatalf("exit message does not say what to do:\n%s", tail(out, 20))
	}
	var walStatus string
	var restart *string
	if err := queryOne(ctx, db, `select coalesce(wal_status, ''), restart_lsn::text from pg_replication_slots where slot_name = 'lostslot'`, nil, &walStatus, &restart); err != nil {
		t.Fatalf("slot lostslot after the relay exited: %v (was it dropped?)", err)
	}
	if walStatus != "lost" {
		t.Fatalf("slot lostslot has wal_status %q after the relay ran: it was recreated", walStatus)
	}
	if strings.Contains(out, "created publication and slot") {
		t.Fatalf("relay logged creating a slot")
	}
}

func TestFaultSlotDroppedWhileRunning(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	relay := startRelay(t, faultArgs(db.URL, cluster, "dropslot")...)
	waitSlotActive(t, db, "dropslot")
	if err := sc.writeConcurrently(ctx, 1, 200, 10, nil); err != nil {
		t.Fatal(err)
	}
	sc.check(t, settle(t, db, "dropslot", cluster, sc.total()))

	// Terminate the walsender and drop the slot before the relay's next
	// session takes it again.
	attempts := 0
	waitFor(t, 60*time.Second, "slot dropped", func() (bool, error) {
		attempts++
		conn, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		_, _ = conn.Exec(ctx, `select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'dropslot' and active_pid is not null`)
		for range 50 {
			_, err = conn.Exec(ctx, `select pg_drop_replication_slot('dropslot')`)
			if err == nil {
				return true, nil
			}
			if strings.Contains(err.Error(), "does not exist") {
				return true, nil
			}
			time.Sleep(5 * time.Millisecond) // retry the drop while the walsender exits
		}
		return false, err
	})
	code := relay.waitExit(t, 90*time.Second)
	out := relay.out.String()
	t.Logf("slot dropped (after %d attempts): relay exited with code %d; tail:\n%s", attempts, code, tail(out, 4))
	if code == 0 {
		t.Fatalf("relay exited 0 after its slot was dropped")
	}
	if !regexp.MustCompile(`dropslot.*(disappeared|dropped|does not exist|missing)`).MatchString(out) {
		t.Fatalf("exit message does not say slot dropslot is gone:\n%s", tail(out, 20))
	}
	var n int
	if err := queryOne(ctx, db, `select count(*) from pg_replication_slots where slot_name = 'dropslot'`, nil, &n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("slot dropslot exists again after the relay ran: it was recreated silently")
	}
}

// ---- 12. Huge transaction; interleaved commits; rollback ------------------

func TestFaultHugeTransaction(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	const aggs, rows = 50, 200000
	sc := newScenario(t, db, aggs)
	cluster := kafkatest.NewCluster(t)
	relay := startRelay(t, faultArgs(db.URL, cluster, "huge", "--max-in-flight", "10000")...)
	waitSlotActive(t, db, "huge")
	rssStart := peakRSS(t, relay.cmd.Process.Pid)

	conn := db.Conn(t)
	began := time.Now()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One statement, one transaction, ~100-byte payloads with the
	// per-aggregate seq the checker verifies.
	r, err := tx.Query(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
		select case when g % $2 % 2 = 0 then 'order' else 'customer' end,
		       'agg-' || (g % $2),
		       'bulk',
		       jsonb_build_object('seq', g / $2 + 1, 'pad', repeat('p', 70))
		from generate_series(0, $1::int - 1) g
		order by g
		returning id::text`, rows, aggs)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `update agg_seq set n = n + $1`, rows/aggs); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	committed := time.Since(began)
	if err := sc.recordTx(ctx, conn, ids); err != nil {
		t.Fatal(err)
	}
	recs := settle(t, db, "huge", cluster, rows)
	delivered := time.Since(began)
	res := sc.check(t, recs)
	rss := peakRSS(t, relay.cmd.Process.Pid)
	t.Logf("huge transaction: %d rows in one INSERT (commit after %s), %d delivered, %d repeats, all delivered and confirmed %s after the insert began; relay peak RSS (VmHWM, -race build) %.1f MiB (%.1f MiB at start) with --max-in-flight 10000",
		rows, committed.Round(time.Millisecond), res.delivered, len(res.duplicates), delivered.Round(time.Millisecond), rss, rssStart)
	if len(res.duplicates) != 0 {
		t.Fatalf("clean run delivered %d duplicates", len(res.duplicates))
	}
}

func TestFaultInterleavedCommitsAndRollback(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	cluster := kafkatest.NewCluster(t)
	startRelay(t, faultArgs(db.URL, cluster, "interleave")...)
	waitSlotActive(t, db, "interleave")

	ins := func(tx pgx.Tx, label string) {
		t.Helper()
		if _, err := tx.Exec(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
			values ('order', 'il-1', 'step', jsonb_build_object('label', $1::text))`, label); err != nil {
			t.Fatal(err)
		}
	}
	connA, connB, connC := db.Conn(t), db.Conn(t), db.Conn(t)
	txA, err := connA.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ins(txA, "A1")
	txB, err := connB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ins(txB, "B1")
	ins(txA, "A2")
	ins(txB, "B2")
	txC, err := connC.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ins(txC, "C-rolled-back")
	if err := txB.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := txC.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// A marker after all of them: once it arrives, everything before it has.
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('order', 'il-1', 'step', '{"label":"M"}')`)

	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), []string{"outbox.order"}, 5); err != nil {
		t.Fatalf("reading: %v", err)
	}
	recs, _ := kafkatest.ReadAll(ctx, cluster.ListenAddrs(), []string{"outbox.order"}, 2*time.Second)
	var labels []string
	for _, r := range recs {
		var p struct{ Label string }
		if err := json.Unmarshal(r.Value, &p); err != nil {
			t.Fatal(err)
		}
		labels = append(labels, p.Label)
	}
	// One key, one partition: ReadAll returns it in offset order.
	got := strings.Join(labels, ",")
	t.Logf("interleaved: records in partition order: %s", got)
	if got != "B1,B2,A1,A2,M" {
		t.Fatalf("records in order %s, want B1,B2,A1,A2,M (commit order; the rolled-back transaction publishes nothing)", got)
	}
}

// ---- 13. ALTER TABLE on the outbox while running --------------------------

func TestFaultAlterTableAddColumnAcrossRestart(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	cluster := kafkatest.NewCluster(t)
	args := faultArgs(db.URL, cluster, "alteradd")
	relay := startRelay(t, args...)
	waitSlotActive(t, db, "alteradd")

	if err := sc.writeConcurrently(ctx, 2, 300, 10, nil); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `alter table outbox add column extra text`)
	if err := sc.writeConcurrently(ctx, 2, 300, 10, nil); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload, extra)
		select 'order', 'agg-0', 'updated', jsonb_build_object('seq', n + 1), 'x' from agg_seq where id = 'agg-0'`)
	db.Exec(t, `update agg_seq set n = n + 1 where id = 'agg-0'`)
	// That row is not in sc: count it separately.
	extraRows := 1
	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), topics, sc.total()+extraRows); err != nil {
		t.Fatalf("after the first ALTER: %v", err)
	}
	// ALTER, then stop before the next insert; restart; insert.
	db.Exec(t, `alter table outbox add column extra2 int not null default 7`)
	if code := relay.stop(t, syscall.SIGTERM, 60*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d", code)
	}
	db.Exec(t, `alter table outbox add column extra3 jsonb`)
	relay = startRelay(t, args...)
	waitSlotActive(t, db, "alteradd")
	if err := sc.writeConcurrently(ctx, 2, 400, 10, nil); err != nil {
		t.Fatal(err)
	}
	readCtx2, cancel2 := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel2()
	if got, err := kafkatest.ReadN(readCtx2, cluster.ListenAddrs(), topics, sc.total()+extraRows); err != nil {
		t.Fatalf("after the restart: read %d of %d: %v\n%s", len(got), sc.total()+extraRows, err, tail(relay.out.String(), 20))
	}
	endWAL, _ := currentWAL(ctx, db)
	waitFor(t, 120*time.Second, "slot confirmed", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "alteradd")
		return lsn >= endWAL, err
	})
	recs, _ := kafkatest.ReadAll(ctx, cluster.ListenAddrs(), topics, 2*time.Second)
	// Hand the extra row to the checker as a committed event.
	var extraID string
	if err := queryOne(ctx, db, `select id::text from outbox where extra = 'x'`, nil, &extraID); err != nil {
		t.Fatal(err)
	}
	sc.mu.Lock()
	sc.txs = append(sc.txs, writtenTx{ids: []string{extraID}})
	sc.mu.Unlock()
	res := sc.check(t, recs)
	if len(res.duplicates) != 0 {
		t.Fatalf("%d duplicates after a graceful restart", len(res.duplicates))
	}
	t.Logf("alter add column: %d events written (3 ALTERs, one SIGTERM between an ALTER and the next insert), %d delivered, %d repeats",
		sc.total(), res.delivered, len(res.duplicates))
}

func TestFaultAlterTableDropRequiredColumn(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	relay := startRelay(t, faultArgs(db.URL, cluster, "alterdrop")...)
	waitSlotActive(t, db, "alterdrop")
	if err := sc.writeConcurrently(ctx, 1, 100, 10, nil); err != nil {
		t.Fatal(err)
	}
	sc.check(t, settle(t, db, "alterdrop", cluster, sc.total()))

	db.Exec(t, `alter table outbox drop column event_type`)
	before, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, payload) values ('order', 'agg-0', '{"seq": 999}')`)
	code := relay.waitExit(t, 60*time.Second)
	out := relay.out.String()
	confirmed, err := slotConfirmed(ctx, db, "alterdrop")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drop column: relay exited with code %d; slot confirmed %s, WAL before the insert %s; tail:\n%s", code, confirmed, before, tail(out, 4))
	if code == 0 {
		t.Fatalf("relay exited 0")
	}
	if !strings.Contains(out, "event_type") {
		t.Fatalf("the error does not name the missing column event_type:\n%s", tail(out, 20))
	}
	if confirmed > before {
		t.Fatalf("slot confirmed %s, past the undeliverable insert (WAL was at %s before it)", confirmed, before)
	}
	recs, _ := kafkatest.ReadAll(ctx, cluster.ListenAddrs(), topics, 2*time.Second)
	if len(recs) != sc.total() {
		t.Fatalf("%d records on the topics, want %d (the row without event_type must not be published)", len(recs), sc.total())
	}
}

// ---- 14. Session settings that change text output -------------------------

func TestFaultSessionSettingsDoNotChangeBytes(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	db.Exec(t, `create table outbox_bin (
		id uuid primary key default gen_random_uuid(),
		aggregate_type text not null,
		aggregate_id text not null,
		event_type text not null,
		payload bytea not null,
		headers jsonb not null default '{}',
		created_at timestamptz not null default now())`)
	for _, s := range []string{
		`bytea_output = 'escape'`, `DateStyle = 'SQL, DMY'`, `TimeZone = 'Asia/Kolkata'`,
		`extra_float_digits = 0`, `IntervalStyle = 'sql_standard'`,
	} {
		db.Exec(t, `alter database `+pgx.Identifier{db.Name}.Sanitize()+` set `+s)
		db.Exec(t, `alter role postgres in database `+pgx.Identifier{db.Name}.Sanitize()+` set `+s)
	}
	cluster := kafkatest.NewCluster(t)
	startRelay(t, faultArgs(db.URL, cluster, "settings_json")...)
	startRelay(t, faultArgs(db.URL, cluster, "settings_bin", "--table", "outbox_bin")...)
	waitSlotActive(t, db, "settings_json")
	waitSlotActive(t, db, "settings_bin")

	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	conn := db.Conn(t)
	// The writer's session has the odd settings too (they are per database).
	var ds string
	if err := conn.QueryRow(ctx, `show DateStyle`).Scan(&ds); err != nil {
		t.Fatal(err)
	}
	fixed := time.Date(2024, 3, 5, 6, 7, 8, 123000000, time.UTC)
	type want struct {
		value []byte
		ts    time.Time
	}
	wants := map[string]want{}
	add := func(sql string, args ...any) {
		t.Helper()
		var id string
		var ts time.Time
		if err := conn.QueryRow(ctx, sql, args...).Scan(&id, &ts); err != nil {
			t.Fatal(err)
		}
		wants[id] = want{ts: ts}
	}
	add(`insert into outbox_bin (aggregate_type, aggregate_id, event_type, payload, created_at) values ('bin', 'b-1', 'raw', $1, $2) returning id::text, created_at`, all, fixed)
	add(`insert into outbox_bin (aggregate_type, aggregate_id, event_type, payload) values ('bin', 'b-1', 'raw', $1) returning id::text, created_at`, all)
	add(`insert into outbox (aggregate_type, aggregate_id, event_type, payload, created_at) values ('json', 'j-1', 'f',
		'{"f": 0.1, "g": 3.141592653589793, "h": 1e-7, "i": 12345678901234567890.5, "s": "\u00e9\\n"}', $1) returning id::text, created_at`, fixed)
	add(`insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('json', 'j-1', 'f',
		jsonb_build_object('f', 2.0/3, 'g', 1.5e300::float8, 'h', 'ü')) returning id::text, created_at`)
	// Expected bytes: the bytea as inserted; jsonb as its canonical text.
	for id := range wants {
		w := wants[id]
		var v []byte
		err := conn.QueryRow(ctx, `select convert_to(payload::text, 'UTF8') from outbox where id = $1::uuid
			union all select payload from outbox_bin where id = $1::uuid`, id).Scan(&v)
		if err != nil {
			t.Fatal(err)
		}
		w.value = v
		wants[id] = w
	}
	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	recs, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), []string{"outbox.bin", "outbox.json"}, 4)
	if err != nil {
		t.Fatalf("reading: got %d of 4: %v", len(recs), err)
	}
	for _, r := range recs {
		id := r.Headers["id"]
		w, ok := wants[id]
		if !ok {
			t.Fatalf("unexpected record %s", id)
		}
		if !bytes.Equal(r.Value, w.value) {
			t.Errorf("record %s on %s: value %q, want %q", id, r.Topic, r.Value, w.value)
		}
		if !r.Timestamp.Equal(w.ts.Truncate(time.Millisecond)) {
			t.Errorf("record %s on %s: timestamp %s, want created_at %s", id, r.Topic, r.Timestamp.UTC(), w.ts.UTC())
		}
	}
	t.Logf("session settings (DateStyle %q for the writer, bytea_output escape, TimeZone Asia/Kolkata, extra_float_digits 0): %d records checked byte for byte and timestamps", ds, len(recs))
}

// ---- 15. UPDATE and DELETE publish nothing --------------------------------

func TestFaultUpdateAndDeletePublishNothing(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	startRelay(t, faultArgs(db.URL, cluster, "upddel")...)
	waitSlotActive(t, db, "upddel")
	if err := sc.writeConcurrently(ctx, 1, 100, 10, nil); err != nil {
		t.Fatal(err)
	}
	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), topics, 100); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `update outbox set payload = payload || '{"updated": true}', event_type = 'changed'`)
	db.Exec(t, `delete from outbox where aggregate_id in ('agg-1', 'agg-2', 'agg-3')`)
	recs := settle(t, db, "upddel", cluster, 100)
	res := sc.check(t, recs)
	if res.delivered != 100 {
		t.Fatalf("%d records after UPDATE and DELETE of outbox rows, want exactly the 100 inserts", res.delivered)
	}
	t.Logf("update/delete: 100 inserts, all rows updated, 3 aggregates' rows deleted: %d records delivered", res.delivered)
}

// ---- 16. verify-full against the wrong CA --------------------------------

func TestFaultVerifyFullWrongCA(t *testing.T) {
	ctx := t.Context()
	srv := pgtest.NewServer(t, nil)
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	dir := t.TempDir()
	rightCA := enableSSL(t, srv)
	wrongCA := kafkatest.NewCA(t, "wrong CA").PEM
	wrongPath := filepath.Join(dir, "wrong-ca.pem")
	if err := os.WriteFile(wrongPath, wrongCA, 0o644); err != nil {
		t.Fatal(err)
	}
	const secret = "S3cret-Pw-9f2b"
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("postgres", secret)
	q := url.Values{"sslmode": {"verify-full"}, "sslrootcert": {wrongPath}}
	u.RawQuery = q.Encode()
	cluster := kafkatest.NewCluster(t)

	began := time.Now()
	bad := startRelay(t, faultArgs(u.String(), cluster, "tlsbad")...)
	select {
	case <-bad.done:
		code := exitCodeOf(bad)
		out := bad.out.String()
		t.Logf("wrong CA: exit code %d after %s; output tail:\n%s", code, time.Since(began).Round(time.Millisecond), tail(out, 4))
		if code == 0 {
			t.Errorf("exit code 0 with the wrong CA")
		} else if code != 2 {
			t.Errorf("exit code %d, want 2 (a configuration problem)", code)
		}
		if !strings.Contains(strings.ToLower(out), "certificate") {
			t.Errorf("the message does not mention the certificate:\n%s", tail(out, 12))
		}
	case <-time.After(60 * time.Second):
		// Go on with the right CA: report this, do not stop here.
		out := bad.out.String()
		t.Errorf("relay with sslmode=verify-full and the wrong CA still running after 60s: a certificate verification failure is retried as if transient (%d reconnect attempts logged); last line:\n%s",
			strings.Count(out, "reconnecting"), tail(strings.TrimSpace(out), 1))
		bad.cmd.Process.Kill()
		<-bad.done
	}
	if strings.Contains(bad.out.String(), secret) {
		t.Fatalf("the password appears in the relay's output")
	}

	// The right CA streams, over TLS.
	rightPath := filepath.Join(dir, "right-ca.pem")
	if err := os.WriteFile(rightPath, rightCA, 0o644); err != nil {
		t.Fatal(err)
	}
	q.Set("sslrootcert", rightPath)
	u.RawQuery = q.Encode()
	good := startRelay(t, faultArgs(u.String(), cluster, "tlsgood")...)
	waitSlotActive(t, db, "tlsgood")
	var ssl bool
	if err := queryOne(ctx, db, `select s.ssl from pg_stat_ssl s join pg_replication_slots r on r.active_pid = s.pid where r.slot_name = 'tlsgood'`, nil, &ssl); err != nil {
		t.Fatal(err)
	}
	if !ssl {
		t.Fatalf("the replication connection is not using TLS")
	}
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('order', 'tls-1', 'x', '{}')`)
	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), []string{"outbox.order"}, 1); err != nil {
		t.Fatalf("right CA: nothing delivered: %v", err)
	}

	// A burst over TLS: the reader's batching, read deadlines and
	// coalescing (the socket's low-water mark, under crypto/tls) run on
	// this connection as on a plain one: every event arrives once, in
	// order per aggregate, and the slot is confirmed to the end.
	sc := newScenario(t, db, 20)
	const burst = 3000
	if err := sc.writeConcurrently(ctx, 4, burst, 5, nil); err != nil {
		t.Fatal(err)
	}
	var recs []kafkatest.Record
	for _, r := range settle(t, db, "tlsgood", cluster, burst+1) {
		if string(r.Key) != "tls-1" {
			recs = append(recs, r)
		}
	}
	if res := sc.check(t, recs); len(res.duplicates) != 0 {
		t.Errorf("%d repeats over TLS without a fault, want 0", len(res.duplicates))
	}
	if strings.Contains(good.out.String(), secret) {
		t.Fatalf("the password appears in the relay's output")
	}
}

// enableSSL issues a server certificate for 127.0.0.1 from a new CA, installs
// it in the data directory, turns ssl on and restarts; it returns the CA PEM.
func enableSSL(t *testing.T, srv *pgserver.Server) []byte {
	t.Helper()
	ca := kafkatest.NewCA(t, "outbox-relay test CA")
	certPEM, keyPEM := ca.ServerCert(t, "127.0.0.1", "localhost")
	certPath := filepath.Join(srv.DataDir(), "server.crt")
	keyPath := filepath.Join(srv.DataDir(), "server.key")
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		for _, p := range []string{certPath, keyPath} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	admin, err := pgx.Connect(t.Context(), srv.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`alter system set ssl = on`, `alter system set ssl_cert_file = 'server.crt'`, `alter system set ssl_key_file = 'server.key'`} {
		if _, err := admin.Exec(t.Context(), s); err != nil {
			t.Fatal(err)
		}
	}
	admin.Close(context.Background())
	if err := srv.Restart(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	return ca.PEM
}
