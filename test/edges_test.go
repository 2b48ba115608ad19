package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// freezeProduce makes the broker answer no produce request from the
// moment freeze is called until thaw is: each one sleeps in the broker,
// as a broker that accepts connections but never answers does.
func freezeProduce(cluster *kfake.Cluster) (freeze func(), thaw func(), frozen func() bool) {
	release := make(chan struct{})
	var armed, hit atomic.Bool
	var once sync.Once
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if armed.Load() {
			hit.Store(true)
			cluster.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	return func() { armed.Store(true) },
		func() { armed.Store(false); once.Do(func() { close(release) }) },
		hit.Load
}

// A broker that answers nothing for 45s or 120s, with the default flags and
// with wal_sender_timeout at its default or at 6s, ends neither the relay's
// replication session nor the walsender: the same walsender before and
// after, no repeats, and nothing confirmed past an event the broker had
// not acknowledged.
func TestBrokerStallEndsNoSession(t *testing.T) {
	for _, tc := range []struct {
		stall         time.Duration
		senderTimeout string
	}{
		{45 * time.Second, ""}, {45 * time.Second, "6s"}, {120 * time.Second, ""}, {120 * time.Second, "6s"},
	} {
		name := fmt.Sprintf("stall=%s/wal_sender_timeout=%s", tc.stall, cmpOr(tc.senderTimeout, "default"))
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			settings := map[string]string{}
			if tc.senderTimeout != "" {
				settings["wal_sender_timeout"] = tc.senderTimeout
			}
			db := pgtest.OnServer(t, pgtest.NewServer(t, settings))
			migrate(t, db)
			sc := newScenario(t, db, 50)
			cluster := kafkatest.NewCluster(t)
			freeze, thaw, frozen := freezeProduce(cluster)
			t.Cleanup(thaw)
			p := startRelayDefaults(t, faultArgs(db.URL, cluster, "stall")...)
			waitSlotActive(t, db, "stall")
			pid := walsenderPID(t, db, "stall")
			watch := watchConfirmed(t, db, "stall", cluster.ListenAddrs())
			if err := sc.writeConcurrently(ctx, 2, 500, 10, nil); err != nil {
				t.Fatal(err)
			}
			sc.readBack(t, cluster.ListenAddrs())

			freeze()
			conn := db.Conn(t)
			if err := sc.writeBulk(ctx, conn, 1000); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 60*time.Second, "a produce request to freeze", func() (bool, error) { return frozen(), nil })
			began := time.Now()
			for range 19 {
				if err := sc.writeBulk(ctx, conn, 1000); err != nil {
					t.Fatal(err)
				}
			}
			// The fault's duration.
			<-time.After(time.Until(began.Add(tc.stall)))
			if got := walsenderPID(t, db, "stall"); got != pid {
				t.Fatalf("walsender pid %d after the stall, was %d: the session ended", got, pid)
			}
			thaw()
			stalled := time.Since(began)

			recs := settleRecords(t, db, "stall", cluster, sc.total())
			res := sc.check(t, recs)
			checked := watch.check(t, sc, recs)
			if got := walsenderPID(t, db, "stall"); got != pid {
				t.Fatalf("walsender pid %d after delivery, was %d: the session ended", got, pid)
			}
			out := p.out.String()
			if strings.Contains(out, "reconnecting") {
				t.Fatalf("the session restarted during the stall:\n%s", tail(out, 30))
			}
			if tc.senderTimeout == "6s" && !strings.Contains(out, "status interval is longer than a third") {
				t.Errorf("no warning that --status-interval 10s is too long for wal_sender_timeout 6s")
			}
			t.Logf("%s stall: %d events, %d delivered, %d repeats, walsender %d throughout, %d confirmations checked against the broker",
				stalled.Round(time.Second), sc.total(), res.delivered, len(res.duplicates), pid, checked)
			if len(res.duplicates) != 0 {
				t.Fatalf("%d repeats after a stall", len(res.duplicates))
			}
		})
	}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// SIGTERM while the broker answers nothing stops within --shutdown-timeout,
// says how many events were not confirmed and exits 1; a restart sends
// them, nothing lost.
func TestStopThatCannotDrainSaysSoWithinTheTimeout(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	cluster := kafkatest.NewCluster(t)
	freeze, thaw, frozen := freezeProduce(cluster)
	t.Cleanup(thaw)
	args := faultArgs(db.URL, cluster, "nodrain", "--shutdown-timeout", "5s", "--max-in-flight", "100")
	p := startRelay(t, args...)
	waitSlotActive(t, db, "nodrain")
	freeze()
	// One transaction of 1,000 rows: the pipeline is inside it, blocked in
	// Publish at the in-flight cap, when the stop comes.
	if err := sc.writeBulk(ctx, db.Conn(t), 1000); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "a produce request to freeze", func() (bool, error) { return frozen(), nil })
	stopped := time.Now()
	code := p.stop(t, syscall.SIGTERM, 20*time.Second)
	took := time.Since(stopped)
	out := p.out.String()
	if took > 5*time.Second+3*time.Second {
		t.Fatalf("the stop took %s with --shutdown-timeout 5s", took)
	}
	if code != 1 {
		t.Fatalf("exit code %d after a stop that could not drain, want 1:\n%s", code, tail(out, 20))
	}
	m := regexp.MustCompile(`not confirmed.* events=(\d+)`).FindStringSubmatch(out)
	if !strings.Contains(out, "will be sent again") || m == nil || m[1] == "0" {
		t.Fatalf("no warning with the number of unconfirmed events:\n%s", tail(out, 20))
	}
	t.Logf("stop with the broker frozen: exit %d after %s; %s events reported unconfirmed", code, took.Round(time.Millisecond), m[1])

	thaw()
	startRelay(t, args...)
	recs := settle(t, db, "nodrain", cluster, sc.total())
	sc.check(t, recs)
}

// A standby takes the slot before it connects to the broker: while another
// relay streams, it never builds a Kafka producer.
func TestStandbyBuildsNoProducerWhileWaiting(t *testing.T) {
	db := pgtest.New(t)
	migrate(t, db)
	cluster := kafkatest.NewCluster(t)
	args := faultArgs(db.URL, cluster, "waiting")
	startRelay(t, args...)
	waitSlotActive(t, db, "waiting")
	standby := startRelay(t, args...)
	waitFor(t, 60*time.Second, "three standby retries", func() (bool, error) {
		return strings.Count(standby.out.String(), "slot still in use") >= 3, nil
	})
	if n := strings.Count(standby.out.String(), "connected to Kafka"); n != 0 {
		t.Fatalf("the standby connected to Kafka %d times while it waited for the slot", n)
	}
}

// dropHeadersCheck lets a test write rows the migrated table's CHECK
// constraints refuse, as an older table without them would take.
func dropChecks(t *testing.T, db *pgtest.DB) {
	t.Helper()
	db.Exec(t, `alter table outbox drop constraint if exists outbox_headers_check`)
	db.Exec(t, `alter table outbox drop constraint if exists outbox_aggregate_type_check`)
}

// A row whose headers are a JSON array is poison: by default it goes to the
// dead-letter topic with its id, the error, its topic and the raw row; the
// slot moves past it and the events behind it flow, once.
func TestPoisonRowIsDeadLetteredAndLaterEventsFlow(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	db := pgtest.New(t)
	migrate(t, db)
	dropChecks(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	p := startRelay(t, faultArgs(db.URL, cluster, "poisonrow")...)
	waitSlotActive(t, db, "poisonrow")
	if err := sc.writeConcurrently(ctx, 1, 50, 5, nil); err != nil {
		t.Fatal(err)
	}
	var bad string
	if err := db.Conn(t).QueryRow(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		values ('order', 'agg-1', 'Broken', '{"n":1}', '["not","an","object"]') returning id::text`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	if err := sc.writeConcurrently(ctx, 1, 50, 5, nil); err != nil {
		t.Fatal(err)
	}
	end, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := kafkatest.ReadN(ctx, brokers, []string{"outbox.dead-letter"}, 1)
	if err != nil {
		t.Fatalf("reading the dead-letter topic: %v", err)
	}
	d := dead[0]
	if d.Headers["id"] != bad || d.Headers["outbox-relay-original-topic"] != "outbox.order" ||
		!strings.Contains(d.Headers["outbox-relay-error"], "headers") || !strings.Contains(string(d.Value), `not`) {
		t.Fatalf("dead letter %q headers %v: want id %s, the original topic, the error and the raw row", d.Value, d.Headers, bad)
	}
	recs := settle(t, db, "poisonrow", cluster, sc.total())
	if res := sc.check(t, recs); len(res.duplicates) != 0 {
		t.Fatalf("%d repeats: the session restarted at the poison row", len(res.duplicates))
	}
	waitFor(t, 30*time.Second, "slot confirmed past the poison row", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "poisonrow")
		return lsn >= end, err
	})
	if strings.Contains(p.out.String(), "reconnecting") {
		t.Fatal("the session restarted at the poison row")
	}
}

// With --on-error stop, a poison row stops the relay (exit 1) with the
// command that skips it; that command shows the row and records the skip,
// and the restarted relay passes it and delivers the rest.
func TestOnErrorStopNamesTheSkipCommandThatGoesOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	db := pgtest.New(t)
	migrate(t, db)
	dropChecks(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	args := faultArgs(db.URL, cluster, "skipper", "--on-error", "stop")
	p := startRelay(t, args...)
	waitSlotActive(t, db, "skipper")
	if err := sc.writeConcurrently(ctx, 1, 50, 5, nil); err != nil {
		t.Fatal(err)
	}
	before, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	var bad string
	if err := db.Conn(t).QueryRow(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		values ('order', 'agg-1', 'Broken', '{"n":1}', '"a string"') returning id::text`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	if err := sc.writeConcurrently(ctx, 1, 50, 5, nil); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, 60*time.Second); code != 1 {
		t.Fatalf("exit code %d at a poison row with --on-error stop, want 1", code)
	}
	out := p.out.String()
	cmdRe := regexp.MustCompile("`outbox-relay (slot skip --slot skipper --event " + bad + " --lsn [0-9A-F]+/[0-9A-F]+)`")
	m := cmdRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the stop message does not name the skip command for event %s:\n%s", bad, tail(out, 10))
	}
	if lsn, err := slotConfirmed(ctx, db, "skipper"); err != nil || lsn > before {
		t.Fatalf("slot confirmed %s (%v), past %s where the poison row's transaction begins", lsn, err, before)
	}

	skip := relayCmd(ctx, append(strings.Fields(m[1]), "--pg-url", db.URL)...)
	shown, err := skip.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", m[1], err, shown)
	}
	if !strings.Contains(string(shown), bad) || !strings.Contains(string(shown), `"a string"`) {
		t.Fatalf("slot skip did not show the row it skips:\n%s", shown)
	}

	startRelay(t, args...)
	recs := settle(t, db, "skipper", cluster, sc.total())
	sc.check(t, recs)
	for _, r := range recs {
		if r.Headers["id"] == bad {
			t.Fatalf("the skipped event %s was published", bad)
		}
	}
	if n, _ := kafkatest.ReadAll(ctx, brokers, []string{"outbox.dead-letter"}, 500*time.Millisecond); len(n) != 0 {
		t.Fatalf("%d dead letters with --on-error stop", len(n))
	}
}

// Kafka's topic-name rule applies to Kafka only: an aggregate type that
// renders an illegal Kafka topic is poison there (dead-lettered, the
// stream goes on), and nothing at all to --sink stdout.
func TestKafkaTopicRuleAppliesToKafkaOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	db := pgtest.New(t)
	migrate(t, db)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('bad topic!', 'a', 'X', '{}')`)
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('order', 'a', 'Y', '{}')`)

	// stdout publishes both.
	out := relayCmd(context.Background(), "run", "--pg-url", db.URL, "--slot", "stdouttopic", "--publication", "stdouttopic", "--sink", "stdout")
	// The slot is created at start, after the inserts: write them again.
	var buf syncBuffer
	out.Stdout, out.Stderr = &buf, &buf
	if err := out.Start(); err != nil {
		t.Fatal(err)
	}
	waitSlotActive(t, db, "stdouttopic")
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('bad topic!', 'a', 'X2', '{}')`)
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('order', 'a', 'Y2', '{}')`)
	waitFor(t, 30*time.Second, "both events on stdout", func() (bool, error) {
		s := buf.String()
		return strings.Contains(s, "X2") && strings.Contains(s, "Y2"), nil
	})
	_ = out.Process.Signal(syscall.SIGTERM)
	_ = out.Wait()

	p := startRelay(t, faultArgs(db.URL, cluster, "kafkatopic")...)
	waitSlotActive(t, db, "kafkatopic")
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('bad topic!', 'a', 'X3', '{}')`)
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('order', 'a', 'Y3', '{}')`)
	dead, err := kafkatest.ReadN(ctx, brokers, []string{"outbox.dead-letter"}, 1)
	if err != nil {
		t.Fatalf("reading the dead-letter topic: %v", err)
	}
	if dead[0].Headers["outbox-relay-original-topic"] != "outbox.bad topic!" {
		t.Fatalf("dead letter headers %v", dead[0].Headers)
	}
	if _, err := kafkatest.ReadN(ctx, brokers, []string{"outbox.order"}, 1); err != nil {
		t.Fatalf("the event after the illegal topic: %v", err)
	}
	if strings.Contains(p.out.String(), "reconnecting") {
		t.Fatal("the session restarted at an illegal topic")
	}
}

// A record far over the broker's limit in a header, not the payload, is
// dead-lettered cut down to fit, once; the good event behind it is
// delivered once (a dead letter too large itself used to loop).
func TestOversizedHeaderIsDeadLetteredOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	db := pgtest.New(t)
	migrate(t, db)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	p := startRelay(t, faultArgs(db.URL, cluster, "bighdr")...)
	waitSlotActive(t, db, "bighdr")
	var big, good string
	conn := db.Conn(t)
	if err := conn.QueryRow(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		values ('order', 'agg-1', 'Big', '{}', jsonb_build_object('h', repeat('x', 2000000))) returning id::text`).Scan(&big); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
		values ('order', 'agg-1', 'Good', '{}') returning id::text`).Scan(&good); err != nil {
		t.Fatal(err)
	}
	end, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "slot confirmed past both", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "bighdr")
		return lsn >= end, err
	})
	dead, _ := kafkatest.ReadAll(ctx, brokers, []string{"outbox.dead-letter"}, time.Second)
	recs, _ := kafkatest.ReadAll(ctx, brokers, []string{"outbox.order"}, time.Second)
	if len(dead) != 1 || dead[0].Headers["id"] != big || dead[0].Headers["outbox-relay-truncated"] == "" {
		t.Fatalf("%d dead letters (want 1 for %s, cut down): %v", len(dead), big, dead)
	}
	if len(recs) != 1 || recs[0].Headers["id"] != good {
		t.Fatalf("%d records on outbox.order, want the good event once", len(recs))
	}
	if strings.Contains(p.out.String(), "reconnecting") {
		t.Fatal("the session restarted at the oversized record")
	}
}

// norace builds the relay without the race detector, whose shadow memory
// would dominate a memory measurement.
var norace = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "outbox-relay-norace-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "outbox-relay")
	build := exec.Command("go", "build", "-o", bin, "../cmd/outbox-relay")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v\n%s", err, out)
	}
	return bin, nil
})

// 400 events of ~900 KB behind a broker frozen for 40s: the relay holds no
// more than its byte budget of them (peak RSS at most 256 MiB with the
// default flags), then delivers all 400, once.
func TestLargeEventsBehindAFrozenBrokerStayWithinTheByteBudget(t *testing.T) {
	t.Parallel() // mostly waiting: alongside the stall tests
	ctx := t.Context()
	bin, err := norace()
	if err != nil {
		t.Fatalf("building the relay without -race: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(bin)) })
	db := pgtest.New(t)
	migrate(t, db)
	cluster := kafkatest.NewCluster(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "2000000"}))
	freeze, thaw, frozen := freezeProduce(cluster)
	t.Cleanup(thaw)
	p := launchRelay(t, bin, faultArgs(db.URL, cluster, "bigmem")...)
	waitSlotActive(t, db, "bigmem")
	freeze()
	// ~900 KB of incompressible text per event, 10 events a transaction.
	ids := make([]string, 0, 400)
	conn := db.Conn(t)
	for range 40 {
		rows, err := conn.Query(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
			select 'order', 'agg-' || (g % 20), 'Big',
			       to_jsonb((select string_agg(md5(random()::text || i::text), '') from generate_series(1, 28000) i))
			from generate_series(1, 10) g returning id::text`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 60*time.Second, "a produce request to freeze", func() (bool, error) { return frozen(), nil })
	<-time.After(40 * time.Second) // the fault's duration
	rss := peakRSS(t, p.cmd.Process.Pid)
	thaw()
	recs, err := kafkatest.ReadN(ctx, cluster.ListenAddrs(), []string{"outbox.order"}, len(ids))
	if err != nil {
		t.Fatalf("reading: %d of %d: %v", len(recs), len(ids), err)
	}
	all, _ := kafkatest.ReadAll(ctx, cluster.ListenAddrs(), []string{"outbox.order"}, 2*time.Second)
	seen := map[string]int{}
	for _, r := range all {
		seen[r.Headers["id"]]++
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Fatalf("event %s delivered %d times", id, seen[id])
		}
	}
	rssEnd := peakRSS(t, p.cmd.Process.Pid)
	t.Logf("400 events of ~900 KB behind a broker frozen for 40s: peak RSS %.1f MiB during the stall, %.1f MiB after delivering all %d once", rss, rssEnd, len(all))
	if rssEnd > 256 {
		t.Fatalf("peak RSS %.1f MiB, want at most 256 MiB with the default byte budget", rssEnd)
	}
}

// A topic authorization failure is an infrastructure error, not poison:
// nothing is dead-lettered or confirmed past it, the relay logs the cause
// and the fix and retries, and once the ACL is there every event arrives
// in order.
func TestAuthorizationFailureIsRetriedNeverDeadLettered(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	var denied atomic.Bool
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if !denied.Load() {
			return nil, nil, false
		}
		return produceError(req, 29 /* TOPIC_AUTHORIZATION_FAILED */), nil, true
	})
	p := startRelay(t, faultArgs(db.URL, cluster, "acl")...)
	waitSlotActive(t, db, "acl")
	watch := watchConfirmed(t, db, "acl", brokers)
	denied.Store(true)
	before, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.writeConcurrently(ctx, 2, 300, 5, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the relay to name the missing ACL and retry", func() (bool, error) {
		out := p.out.String()
		return strings.Contains(out, "grant WRITE") && strings.Count(out, "reconnecting") >= 2, nil
	})
	if lsn, err := slotConfirmed(ctx, db, "acl"); err != nil || lsn > before {
		t.Fatalf("slot confirmed %s (%v) past %s while every record was denied", lsn, err, before)
	}
	denied.Store(false)
	recs := settle(t, db, "acl", cluster, sc.total())
	sc.check(t, recs)
	watch.check(t, sc, recs)
	if dead, _ := kafkatest.ReadAll(ctx, brokers, []string{"outbox.dead-letter"}, 500*time.Millisecond); len(dead) != 0 {
		t.Fatalf("%d events dead-lettered for an authorization failure", len(dead))
	}
	if p.exited() {
		t.Fatal("the relay exited on an authorization failure")
	}
}
