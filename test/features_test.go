package test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// insertHuge writes one event whose payload is over Kafka's default 1 MB
// record limit, and returns its id.
func insertHuge(t *testing.T, db *pgtest.DB) string {
	t.Helper()
	conn := db.Conn(t)
	var id string
	if err := conn.QueryRow(t.Context(), `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
		values ('order', 'agg-huge', 'too-big', jsonb_build_object('blob', repeat('x', 1200000))) returning id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// An event the broker rejects for good goes to the dead-letter topic with
// headers naming the error and the original topic; the stream goes on and
// the slot is confirmed past it.
func TestRejectedEventIsDeadLetteredAndTheStreamGoesOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	startRelay(t, "--pg-url", db.URL, "--kafka-brokers", brokers[0], "--slot", "dlq", "--publication", "dlq")
	waitSlotActive(t, db, "dlq")

	if err := sc.writeConcurrently(ctx, 1, 100, 5, nil); err != nil {
		t.Fatal(err)
	}
	huge := insertHuge(t, db)
	if err := sc.writeConcurrently(ctx, 1, 100, 5, nil); err != nil {
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
	if d.Headers["id"] != huge || d.Headers["outbox-relay-original-topic"] != "outbox.order" ||
		!strings.Contains(strings.ToLower(d.Headers["outbox-relay-error"]), "larger") {
		t.Fatalf("dead letter headers %v: want id %s, original topic outbox.order and the error", d.Headers, huge)
	}
	if len(d.Value) >= 1<<20 || d.Headers["outbox-relay-truncated"] == "" {
		t.Fatalf("dead letter of a too-large record carries %d payload bytes (truncation noted: %q); it must be cut down to fit", len(d.Value), d.Headers["outbox-relay-truncated"])
	}
	if _, err := kafkatest.ReadN(ctx, brokers, topics, sc.total()); err != nil {
		t.Fatalf("events after the rejected one: %v", err)
	}
	recs, _ := kafkatest.ReadAll(ctx, brokers, topics, time.Second)
	if res := sc.check(t, recs); len(res.duplicates) != 0 {
		t.Fatalf("%d duplicates: the session restarted", len(res.duplicates))
	}
	waitFor(t, 30*time.Second, "slot confirmed past the rejected event", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "dlq")
		return lsn >= end, err
	})
}

// With --on-error stop, a rejected event stops the relay (exit 1) without
// confirming past it, and a restart meets it again: never skipped silently.
func TestOnErrorStopNeverConfirmsPastARejectedEvent(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	args := []string{"--pg-url", db.URL, "--kafka-brokers", brokers[0], "--slot", "stoperr", "--publication", "stoperr", "--on-error", "stop"}
	p := startRelay(t, args...)
	waitSlotActive(t, db, "stoperr")

	if err := sc.writeConcurrently(ctx, 1, 50, 5, nil); err != nil {
		t.Fatal(err)
	}
	before, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	huge := insertHuge(t, db)
	if err := sc.writeConcurrently(ctx, 1, 50, 5, nil); err != nil {
		t.Fatal(err)
	}
	for run := range 2 {
		if code := p.waitExit(t, 60*time.Second); code != 1 {
			t.Fatalf("run %d: exit code %d at a rejected event with --on-error stop, want 1", run, code)
		}
		if out := p.out.String(); !strings.Contains(out, "slot skip --slot stoperr --event "+huge) {
			t.Fatalf("run %d: the stop does not name the skip command for %s:\n%s", run, huge, tail(out, 10))
		}
		lsn, err := slotConfirmed(ctx, db, "stoperr")
		if err != nil {
			t.Fatal(err)
		}
		if lsn > before {
			t.Fatalf("run %d: slot confirmed %s, past %s where the rejected event's transaction begins", run, lsn, before)
		}
		if run == 0 {
			p = startRelay(t, args...)
		}
	}
	if n, _ := kafkatest.ReadAll(ctx, brokers, []string{"outbox.dead-letter"}, 500*time.Millisecond); len(n) != 0 {
		t.Fatalf("%d dead letters with --on-error stop", len(n))
	}
}

// A second relay on the same slot waits as a standby, publishes nothing,
// and takes over within seconds when the active one dies.
func TestStandbyTakesOverWhenTheActiveRelayDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	args := []string{"--pg-url", db.URL, "--kafka-brokers", brokers[0], "--slot", "ha", "--publication", "ha"}

	active := startRelay(t, args...)
	waitSlotActive(t, db, "ha")
	standby := startRelay(t, args...)
	waitFor(t, 60*time.Second, "the second relay to report standby", func() (bool, error) {
		return strings.Contains(standby.out.String(), "standby"), nil
	})
	if err := sc.writeConcurrently(ctx, 2, 400, 10, nil); err != nil {
		t.Fatal(err)
	}
	first, err := kafkatest.ReadN(ctx, brokers, topics, sc.total())
	if err != nil {
		t.Fatal(err)
	}
	if res := sc.check(t, first); len(res.duplicates) != 0 {
		t.Fatalf("%d duplicates while one relay was standby: both published", len(res.duplicates))
	}
	if strings.Contains(standby.out.String(), "msg=streaming") {
		t.Fatalf("the standby streamed while the active relay held the slot")
	}

	killed := time.Now()
	if err := active.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the standby to take over", func() (bool, error) {
		return strings.Contains(standby.out.String(), "msg=streaming"), nil
	})
	t.Logf("standby took over %s after the active relay was killed", time.Since(killed).Round(time.Millisecond))
	if err := sc.writeConcurrently(ctx, 2, 400, 10, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kafkatest.ReadN(ctx, brokers, topics, sc.total()); err != nil {
		t.Fatal(err)
	}
	recs, _ := kafkatest.ReadAll(ctx, brokers, topics, time.Second)
	sc.check(t, recs)
	if code := standby.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// An idle outbox while another database is busy: heartbeats keep the slot
// advancing, and the relay never publishes them.
func TestHeartbeatsKeepAnIdleSlotMovingAndAreNeverPublished(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	other := pgtest.New(t) // another database on the same server
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	p := startRelay(t, "--pg-url", db.URL, "--kafka-brokers", brokers[0], "--slot", "hb", "--publication", "hb", "--heartbeat-interval", "500ms")
	waitSlotActive(t, db, "hb")

	other.Exec(t, `create table busy (n int, pad text)`)
	conn, err := pgx.Connect(ctx, other.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for range 20 {
		if _, err := conn.Exec(ctx, `insert into busy select g, repeat('p', 200) from generate_series(1, 2000) g`); err != nil {
			t.Fatal(err)
		}
	}
	// The outbox stays idle: the relay must send heartbeats...
	waitFor(t, 30*time.Second, "a heartbeat while the outbox is idle", func() (bool, error) {
		return strings.Contains(p.out.String(), "heartbeat sent"), nil
	})
	// ...and the slot must be confirmed past everything written so far,
	// the other database's rows and the heartbeats included.
	target, err := currentWAL(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the idle slot to be confirmed past the other database's writes", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "hb")
		return lsn >= target, err
	})
	recs, _ := kafkatest.ReadAllMatching(ctx, brokers, []string{`.*`}, time.Second)
	if len(recs) != 0 {
		t.Fatalf("%d records published from an idle outbox (heartbeats must never be published), e.g. topic %s", len(recs), recs[0].Topic)
	}
}
