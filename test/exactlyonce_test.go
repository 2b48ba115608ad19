package test

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// The tests of --exactly-once. Every record is read back by a consumer
// reading committed data (kafkatest reads with isolation level
// read_committed), and none may be there twice.

func eosArgs(db *pgtest.DB, brokers []string, slot string, extra ...string) []string {
	return append([]string{"--pg-url", db.URL, "--kafka-brokers", strings.Join(brokers, ","), "--slot", slot, "--publication", slot,
		"--exactly-once"}, extra...)
}

// waitOtherWalsender waits until a walsender other than pid holds the
// slot: the relay reconnected, or another relay took it over.
func waitOtherWalsender(t *testing.T, db *pgtest.DB, slot string, pid int, what string) {
	t.Helper()
	waitFor(t, 60*time.Second, what, func() (bool, error) {
		conn, err := pgx.Connect(t.Context(), db.URL)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		var next *int
		err = conn.QueryRow(t.Context(), `select active_pid from pg_replication_slots where slot_name = $1`, slot).Scan(&next)
		return next != nil && *next != pid, err
	})
}

// exactlyOnce asserts that recs hold every event of sc once, in order per
// aggregate.
func exactlyOnce(t *testing.T, sc *scenario, recs []kafkatest.Record) checkResult {
	t.Helper()
	res := sc.check(t, recs)
	if len(res.duplicates) != 0 {
		t.Fatalf("a consumer reading committed data saw %d repeats (e.g. event %s) of %d events", len(res.duplicates), res.duplicates[0], sc.total())
	}
	return res
}

// Ten SIGKILLs of the relay at random moments mid-stream: a consumer
// reading committed data sees every event exactly once.
func TestExactlyOnceThroughTenKills(t *testing.T) {
	t.Parallel()
	exactlyOnceThroughKills(t, kafkatest.NewCluster(t).ListenAddrs(), "eos_kills")
}

func exactlyOnceThroughKills(t *testing.T, brokers []string, slot string) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	args := eosArgs(db, brokers, slot, "--create-slot")
	relay := startRelay(t, args...)
	waitSlotActive(t, db, slot)
	watch := watchConfirmed(t, db, slot, brokers)

	var written atomic.Int64
	writeErr := make(chan error, 1)
	go func() {
		// Paced so that ten kills land mid-stream: this shapes the load,
		// it synchronises nothing.
		writeErr <- sc.writeConcurrently(ctx, 4, 30000, 20, func() {
			written.Add(1)
			<-time.After(40 * time.Millisecond)
		})
	}()
	seed := uint64(time.Now().UnixNano())
	t.Logf("kill moments from seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed+1))
	outputs := []*relayProc{relay}
	for kill := 1; kill <= 10; kill++ {
		// A random number of transactions after the relay started.
		from, n := written.Load(), int64(10+rng.IntN(80))
		waitFor(t, 60*time.Second, "transactions to kill the relay in the middle of", func() (bool, error) {
			return written.Load() >= from+n, nil
		})
		if len(writeErr) > 0 {
			t.Fatalf("the writers finished before kill %d: the kills were not mid-stream", kill)
		}
		if err := relay.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-relay.done
		waitSlotInactive(t, db, slot)
		relay = startRelay(t, args...)
		outputs = append(outputs, relay)
		waitSlotActive(t, db, slot)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	recs := sc.readBack(t, brokers)
	res := exactlyOnce(t, sc, recs)
	skips := 0
	for _, p := range outputs {
		skips += strings.Count(p.out.String(), "skipped events the Kafka checkpoint shows committed already")
	}
	t.Logf("10 kills: %d events written, %d delivered to read_committed, %d repeats; %d restarts skipped events Kafka had committed past the slot's position",
		sc.total(), res.delivered, len(res.duplicates), skips)
	t.Logf("confirmed position never ahead of what Kafka holds: %d event checks", watch.check(t, sc, recs))
}

// The walsender terminated by pg_terminate_backend, three times mid-stream:
// the session ends, its open Kafka transaction is aborted, and the next
// one resumes after the checkpoint.
func TestExactlyOnceThroughTerminatedWalsender(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	brokers := kafkatest.NewCluster(t).ListenAddrs()
	startRelay(t, eosArgs(db, brokers, "eos_term", "--create-slot")...)
	waitSlotActive(t, db, "eos_term")
	var written atomic.Int64
	writeErr := make(chan error, 1)
	go func() {
		writeErr <- sc.writeConcurrently(ctx, 4, 8000, 20, func() {
			written.Add(1)
			<-time.After(20 * time.Millisecond)
		})
	}()
	for range 3 {
		from := written.Load()
		waitFor(t, 60*time.Second, "transactions to terminate the walsender in the middle of", func() (bool, error) {
			return written.Load() >= from+60, nil
		})
		pid := walsenderPID(t, db, "eos_term")
		db.Exec(t, `select pg_terminate_backend($1)`, pid)
		waitOtherWalsender(t, db, "eos_term", pid, "a new walsender")
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	res := exactlyOnce(t, sc, sc.readBack(t, brokers))
	t.Logf("3 walsenders terminated: %d events, %d delivered, 0 repeats", sc.total(), res.delivered)
}

// Produce requests failing with a retriable error (leader moved): retried
// inside the transaction, in order, exactly once.
func TestExactlyOnceThroughProduceErrors(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	cluster := kafkatest.NewCluster(t)
	// Every third of the first 90 produce requests fails. (Each failure
	// costs a retry backoff inside a transaction whose commit waits for
	// it: failing every third request for the whole run would slow the
	// run to a crawl, not test anything more.)
	var n, failed atomic.Int64
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if i := n.Add(1); i%3 != 0 || i > 90 {
			return nil, nil, false
		}
		failed.Add(1)
		return produceError(req, 6 /* NOT_LEADER_OR_FOLLOWER */), nil, true
	})
	brokers := cluster.ListenAddrs()
	addr := freeAddr(t)
	startRelay(t, eosArgs(db, brokers, "eos_perr", "--create-slot", "--metrics-addr", addr)...)
	waitSlotActive(t, db, "eos_perr")
	if err := sc.writeConcurrently(t.Context(), 4, 4000, 20, nil); err != nil {
		t.Fatalf("writing: %v", err)
	}
	res := exactlyOnce(t, sc, sc.readBack(t, brokers))
	m := mustScrape(t, addr)
	txns, events := m.sum("outbox_relay_kafka_transaction_commit_seconds_count"), m.sum("outbox_relay_kafka_transaction_events_sum")
	if txns < 1 || events != float64(sc.total()) {
		t.Fatalf("metrics: %v Kafka transactions holding %v events; want some, holding the %d events", txns, events, sc.total())
	}
	if failed.Load() < 30 {
		t.Fatalf("only %d produce requests failed: the fault was not exercised", failed.Load())
	}
	t.Logf("produce errors: %d requests, %d failed; %d delivered, 0 repeats; %v Kafka transactions", n.Load(), failed.Load(), res.delivered, txns)
}

// The crash between the Kafka commit and the confirmation to PostgreSQL,
// made certain: the slot is put back to where it was before the events
// were published, and the restarted relay sends none of them again.
func TestExactlyOnceCheckpointAheadOfTheSlot(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	brokers := kafkatest.NewCluster(t).ListenAddrs()
	args := eosArgs(db, brokers, "eos_ahead", "--create-slot")
	relay := startRelay(t, args...)
	waitSlotActive(t, db, "eos_ahead")
	// A copy of the slot at its position before any event.
	db.Exec(t, `select pg_copy_logical_replication_slot('eos_ahead', 'eos_ahead_before')`)
	if err := sc.writeConcurrently(ctx, 2, 2000, 20, nil); err != nil {
		t.Fatal(err)
	}
	sc.readBack(t, brokers)
	if code := relay.stop(t, syscall.SIGTERM, 60*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM", code)
	}
	// The slot goes back: as if the relay had crashed right after its
	// Kafka commits, before any confirmation.
	for _, q := range []string{
		`select pg_drop_replication_slot('eos_ahead')`,
		`select pg_copy_logical_replication_slot('eos_ahead_before', 'eos_ahead')`,
		`select pg_drop_replication_slot('eos_ahead_before')`,
	} {
		db.Exec(t, q)
	}
	relay = startRelay(t, args...)
	waitSlotActive(t, db, "eos_ahead")
	if err := sc.writeConcurrently(ctx, 2, 500, 20, nil); err != nil {
		t.Fatal(err)
	}
	res := exactlyOnce(t, sc, sc.readBack(t, brokers))
	out := relay.out.String()
	if !strings.Contains(out, "skipped events the Kafka checkpoint shows committed already") {
		t.Fatalf("the restarted relay did not say it skipped committed events")
	}
	t.Logf("slot put back before 2000 committed events: %d events, %d delivered, 0 repeats", sc.total(), res.delivered)
}

// A checkpoint written from another database (another system identifier)
// stops the relay with exit code 2 and says what to do, before it
// publishes anything.
func TestExactlyOnceRefusesACheckpointOfAnotherDatabase(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	brokers := kafkatest.NewCluster(t).ListenAddrs()
	first := pgtest.New(t)
	migrate(t, first)
	sc := newScenario(t, first, 5)
	relay := startRelay(t, eosArgs(first, brokers, "eos_other", "--create-slot")...)
	waitSlotActive(t, first, "eos_other")
	if err := sc.writeConcurrently(ctx, 1, 20, 5, nil); err != nil {
		t.Fatal(err)
	}
	sc.readBack(t, brokers)
	if code := relay.stop(t, syscall.SIGTERM, 60*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM", code)
	}

	other := pgtest.OnServer(t, pgtest.NewServer(t, nil))
	migrate(t, other)
	relay = startRelay(t, eosArgs(other, brokers, "eos_other", "--create-slot")...)
	select {
	case <-relay.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the relay did not stop at a checkpoint of another database")
	}
	if code := relay.stop(t, syscall.SIGTERM, time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	out := relay.out.String()
	if !strings.Contains(out, "belongs to another database") || !strings.Contains(out, "--kafka-checkpoint-topic") {
		t.Fatalf("the error does not say what is wrong and what to do:\n%s", tail(out, 10))
	}
}

// A standby takes over from an active relay frozen by SIGSTOP; when the old
// one resumes, it is fenced: nothing it writes becomes visible, it says so
// and returns to standby.
func TestExactlyOnceStandbyTakeoverFencesTheFrozenRelay(t *testing.T) {
	t.Parallel()
	standbyTakeoverFencesTheFrozenRelay(t, kafkatest.NewCluster(t).ListenAddrs())
}

func standbyTakeoverFencesTheFrozenRelay(t *testing.T, brokers []string) {
	ctx := t.Context()
	db := pgtest.OnServer(t, pgtest.NewServer(t, map[string]string{"wal_sender_timeout": "2s"}))
	migrate(t, db)
	sc := newScenario(t, db, 50)
	// A long linger keeps a Kafka transaction open most of the time, so the
	// freeze catches one.
	args := eosArgs(db, brokers, "eos_standby", "--create-slot", "--kafka-txn-linger", "1s")
	active := startRelay(t, args...)
	waitSlotActive(t, db, "eos_standby")
	standby := startRelay(t, args...)
	waitFor(t, 30*time.Second, "the second relay to stand by", func() (bool, error) {
		return strings.Contains(standby.out.String(), "standby"), nil
	})

	var written atomic.Int64
	writeErr, stopWriting := make(chan error, 1), make(chan struct{})
	go func() {
		// Writes go on through the takeover and the fencing, however
		// long they take.
		writeErr <- sc.writeUntil(ctx, 4, 20, stopWriting, func() {
			written.Add(1)
			<-time.After(20 * time.Millisecond)
		})
	}()
	// Frozen while publishing (not while it connects its producer: see
	// README.md, Exactly once).
	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(readCtx, brokers, topics, 100); err != nil {
		t.Fatalf("waiting for the active relay to publish: %v", err)
	}
	// The walsender the active relay has now: its first session may have
	// ended (Apache Kafka's checkpoint topic without a leader yet).
	activePID := walsenderPID(t, db, "eos_standby")
	if err := active.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitOtherWalsender(t, db, "eos_standby", activePID, "the standby to take the slot")
	from := written.Load()
	waitFor(t, 60*time.Second, "writes after the takeover", func() (bool, error) { return written.Load() >= from+50, nil })
	frozenOut := len(active.out.String())
	if err := active.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Awake, it finds itself fenced (when the producer tries the broker
	// before the lost replication connection ends the session) or goes
	// back to standby; both say so.
	waitFor(t, 60*time.Second, "the old relay to find itself fenced or back to standby", func() (bool, error) {
		after := active.out.String()[frozenOut:]
		return strings.Contains(after, "fenced") || strings.Contains(after, "standby: slot"), nil
	})
	from = written.Load()
	waitFor(t, 60*time.Second, "writes after the fencing", func() (bool, error) { return written.Load() >= from+50, nil })
	close(stopWriting)
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	res := exactlyOnce(t, sc, sc.readBack(t, brokers))
	if active.exited() {
		t.Fatalf("the fenced relay exited instead of returning to standby")
	}
	t.Logf("standby takeover after SIGSTOP: %d events, %d delivered, 0 repeats", sc.total(), res.delivered)
}

// One PostgreSQL transaction far larger than a Kafka transaction may hold
// goes out in several, each checkpoint counting the rows published of it;
// a kill in its middle, and the restart publishes only the rest.
func TestExactlyOnceKillInsideATransactionLargerThanAKafkaOne(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	brokers := kafkatest.NewCluster(t).ListenAddrs()
	args := eosArgs(db, brokers, "eos_big", "--create-slot", "--kafka-txn-max-events", "500", "--max-in-flight", "1000")
	relay := startRelay(t, args...)
	waitSlotActive(t, db, "eos_big")
	if err := sc.writeBulk(ctx, db.Conn(t), 60000); err != nil {
		t.Fatal(err)
	}
	// Some of it committed to Kafka, not all: the kill lands inside it.
	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(readCtx, brokers, topics, 2000); err != nil {
		t.Fatalf("waiting for part of the transaction in Kafka: %v", err)
	}
	if err := relay.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-relay.done
	before, _ := kafkatest.ReadAll(ctx, brokers, topics, 200*time.Millisecond)
	if len(before) >= 60000 {
		t.Fatalf("all %d events were committed before the kill: it did not land inside the transaction", len(before))
	}
	waitSlotInactive(t, db, "eos_big")
	relay = startRelay(t, args...)
	res := exactlyOnce(t, sc, sc.readBack(t, brokers))
	if !strings.Contains(relay.out.String(), "skipped events the Kafka checkpoint shows committed already") {
		t.Fatal("the restarted relay did not skip the rows the checkpoint counted")
	}
	t.Logf("kill inside a 60,000-row transaction with %d of its events committed in Kafka: %d delivered, 0 repeats", len(before), res.delivered)
}

// An event Publish refuses (larger than a record may be) is dead-lettered
// in the same Kafka transaction as the events around it: the dead letter
// and every event are visible once, and the session never restarts.
func TestExactlyOnceDeadLetterInTheSameTransaction(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	brokers := kafkatest.NewCluster(t).ListenAddrs()
	relay := startRelay(t, eosArgs(db, brokers, "eos_dlq", "--create-slot")...)
	waitSlotActive(t, db, "eos_dlq")
	if err := sc.writeConcurrently(ctx, 1, 100, 5, nil); err != nil {
		t.Fatal(err)
	}
	huge := insertHuge(t, db)
	if err := sc.writeConcurrently(ctx, 1, 100, 5, nil); err != nil {
		t.Fatal(err)
	}
	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	dead, err := kafkatest.ReadN(readCtx, brokers, []string{"outbox.dead-letter"}, 1)
	if err != nil {
		t.Fatalf("reading the dead-letter topic: %v", err)
	}
	if dead[0].Headers["id"] != huge {
		t.Fatalf("dead letter of %s, want %s", dead[0].Headers["id"], huge)
	}
	exactlyOnce(t, sc, sc.readBack(t, brokers))
	if again, _ := kafkatest.ReadAll(ctx, brokers, []string{"outbox.dead-letter"}, time.Second); len(again) != 1 {
		t.Fatalf("%d dead letters, want 1", len(again))
	}
	if strings.Contains(relay.out.String(), "reconnecting") {
		t.Fatal("the session restarted at the refused event")
	}
}

// An event the broker rejects after accepting it into a transaction aborts
// that transaction; the next session sets the event aside in stream order,
// and a consumer reading committed data sees its dead letter and every
// other event once.
func TestExactlyOnceBrokerRejectionInsideATransaction(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	var rejected atomic.Int64
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		for _, rt := range req.(*kmsg.ProduceRequest).Topics {
			if rt.Topic == "outbox.refused" {
				rejected.Add(1)
				return produceError(req, 87 /* INVALID_RECORD */), nil, true
			}
		}
		return nil, nil, false
	})
	brokers := cluster.ListenAddrs()
	relay := startRelay(t, eosArgs(db, brokers, "eos_reject", "--create-slot")...)
	waitSlotActive(t, db, "eos_reject")
	if err := sc.writeConcurrently(ctx, 1, 100, 5, nil); err != nil {
		t.Fatal(err)
	}
	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(readCtx, brokers, topics, 100); err != nil {
		t.Fatal(err)
	}
	var refused string
	if err := db.Conn(t).QueryRow(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
		values ('refused', 'agg-r', 'refused', '{"n":1}') returning id::text`).Scan(&refused); err != nil {
		t.Fatal(err)
	}
	if err := sc.writeConcurrently(ctx, 1, 100, 5, nil); err != nil {
		t.Fatal(err)
	}
	dead, err := kafkatest.ReadN(readCtx, brokers, []string{"outbox.dead-letter"}, 1)
	if err != nil {
		t.Fatalf("reading the dead-letter topic: %v", err)
	}
	if dead[0].Headers["id"] != refused || dead[0].Headers["outbox-relay-original-topic"] != "outbox.refused" {
		t.Fatalf("dead letter headers %v: want id %s from outbox.refused", dead[0].Headers, refused)
	}
	exactlyOnce(t, sc, sc.readBack(t, brokers))
	if n, _ := kafkatest.ReadAll(ctx, brokers, []string{"outbox.refused"}, time.Second); len(n) != 0 {
		t.Fatalf("%d records of the refused topic visible to read_committed", len(n))
	}
	// The session ends at the rejection: at the commit that finds it, or,
	// while the transaction is still filling, at the next event for a
	// partition the rejection failed.
	said := relay.out.String()
	if rejected.Load() == 0 || !strings.Contains(said, "rejected inside a Kafka transaction") && !strings.Contains(said, "an earlier record of this partition failed") {
		t.Fatalf("the broker's rejection was not exercised (%d produce requests refused)", rejected.Load())
	}
}
