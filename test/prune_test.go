package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// countRows counts the outbox rows on a fresh connection.
func countRows(t *testing.T, db *pgtest.DB, where string, args ...any) int {
	t.Helper()
	var n int
	if err := queryOne(t.Context(), db, `select count(*) from outbox `+where, args, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

const pruneWaitLine = "pruning: old rows wait for the relay to confirm"

// --prune-after deletes rows once they are old and confirmed, and never a
// row the broker has not acknowledged: while the broker refuses every
// record, old rows stay however many pruning rounds pass; once it
// acknowledges again they go. A transaction that was open (uncommitted)
// for longer than the prune age is pruned only after it committed and was
// relayed.
func TestPruneDeletesOnlyConfirmedRows(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	cluster, down := refusingCluster(t)
	brokers := cluster.ListenAddrs()

	p := startRelay(t, "--pg-url", db.URL, "--kafka-brokers", brokers[0], "--slot", "prune", "--publication", "prune",
		"--prune-after", "1s")
	waitSlotActive(t, db, "prune")

	// A transaction that stays open past the prune age: its row is older
	// than 1s by created_at long before it commits.
	late, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close(context.Background())
	lateTx, err := late.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lateID string
	if err := lateTx.QueryRow(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
		values ('late', 'late-1', 'created', '{}') returning id::text`).Scan(&lateID); err != nil {
		t.Fatal(err)
	}

	// Healthy broker: events are delivered, then pruned.
	if err := sc.writeConcurrently(ctx, 2, 1000, 10, nil); err != nil {
		t.Fatal(err)
	}
	sc.readBack(t, brokers)
	waitFor(t, 60*time.Second, "confirmed rows to be pruned", func() (bool, error) {
		return countRows(t, db, "where aggregate_type <> 'late'") == 0, nil
	})
	if !strings.Contains(p.out.String(), "pruned outbox rows") {
		t.Fatalf("rows disappeared but the relay did not log pruning them")
	}

	// The late transaction commits now; its row is already "old".
	if err := lateTx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	lateCtx, cancelLate := context.WithTimeout(ctx, time.Minute)
	defer cancelLate()
	if err := waitForID(lateCtx, brokers, []string{"outbox.late"}, lateID); err != nil {
		t.Fatalf("the late transaction's event never arrived: %v", err)
	}
	waitFor(t, 60*time.Second, "the late transaction's row to be pruned", func() (bool, error) {
		return countRows(t, db, "where id = $1", lateID) == 0, nil
	})

	// The broker refuses everything: nothing is acknowledged, so nothing
	// may be pruned, however old.
	down.Store(true)
	before := sc.total()
	if err := sc.writeConcurrently(ctx, 2, 500, 10, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the new rows to be older than the prune age", func() (bool, error) {
		return countRows(t, db, "where created_at >= now() - interval '1.5 seconds'") == 0, nil
	})
	// Wait for three rounds that found old rows and held them back, or for
	// a row to disappear, whichever comes first.
	rounds := strings.Count(p.out.String(), pruneWaitLine)
	waitFor(t, 30*time.Second, "three pruning rounds with old, unconfirmed rows", func() (bool, error) {
		return strings.Count(p.out.String(), pruneWaitLine) >= rounds+3 || countRows(t, db, "") != sc.total()-before, nil
	})
	if n := countRows(t, db, ""); n != sc.total()-before {
		t.Fatalf("%d rows left while the broker refused every record, want all %d unacknowledged rows", n, sc.total()-before)
	}

	// The broker recovers: everything arrives once, then the rows go.
	down.Store(false)
	recs := sc.readBack(t, brokers)
	res := sc.check(t, recs)
	waitFor(t, 60*time.Second, "the delivered rows to be pruned", func() (bool, error) {
		return countRows(t, db, "") == 0, nil
	})
	t.Logf("prune: %d events delivered (%d repeats), table empty; %d rounds held old unconfirmed rows", res.delivered, len(res.duplicates), strings.Count(p.out.String(), pruneWaitLine)-rounds)
}

// A table partitioned by created_at relays through its root
// (publish_via_partition_root), pruning deletes across partitions, a
// partition dropped whole publishes nothing, and an event inserted and
// deleted in one transaction is still relayed (the WAL has the insert; the
// publication publishes inserts only).
func TestPartitionedOutboxRelaysPrunesAndDropsPartitions(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	db.Exec(t, `create table outbox (
			id uuid not null default gen_random_uuid(),
			aggregate_type text not null, aggregate_id text not null, event_type text not null,
			payload jsonb not null, headers jsonb not null default '{}',
			created_at timestamptz not null default now(),
			primary key (id, created_at)
		) partition by range (created_at)`)
	// Day partitions: the two before yesterday, and one from yesterday on.
	day := time.Now().UTC().Truncate(24 * time.Hour)
	parts := []struct {
		name     string
		from, to string
	}{
		{"outbox_d3", day.AddDate(0, 0, -3).Format(time.RFC3339), day.AddDate(0, 0, -2).Format(time.RFC3339)},
		{"outbox_d2", day.AddDate(0, 0, -2).Format(time.RFC3339), day.AddDate(0, 0, -1).Format(time.RFC3339)},
		{"outbox_now", day.AddDate(0, 0, -1).Format(time.RFC3339), "MAXVALUE"},
	}
	for _, pt := range parts {
		to := "'" + pt.to + "'"
		if pt.to == "MAXVALUE" {
			to = "MAXVALUE"
		}
		db.Exec(t, fmt.Sprintf(`create table %s partition of outbox for values from ('%s') to (%s)`, pt.name, pt.from, to))
	}
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	p := startRelay(t, "--pg-url", db.URL, "--kafka-brokers", brokers[0], "--slot", "parts", "--publication", "parts",
		"--prune-after", "1h")
	waitSlotActive(t, db, "parts")

	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	insert := func(agg string, n int, age string) []string {
		t.Helper()
		rows, err := conn.Query(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
			select 'order', $1, 'n' || g, jsonb_build_object('n', g), now() - $3::interval
			from generate_series(1, $2::int) g returning id::text`, agg, n, age)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	// Each aggregate's events in one statement: their order is the
	// generate_series order.
	var want []string
	want = append(want, insert("agg-d3", 100, "50 hours")...)
	want = append(want, insert("agg-d2", 100, "26 hours")...)
	recent := insert("agg-now", 100, "0 seconds")
	want = append(want, recent...)

	// Insert and delete in one transaction: relayed, and never in the table.
	var inOut string
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
		values ('order', 'agg-inout', 'created', '{"in":"out"}') returning id::text`).Scan(&inOut); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `delete from outbox where id = $1`, inOut); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	want = append(want, inOut)

	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	recs, err := kafkatest.ReadN(readCtx, brokers, []string{"outbox.order"}, len(want))
	if err != nil {
		t.Fatalf("reading %d records: %v", len(want), err)
	}
	checkIDsInOrder(t, recs, want)

	// Rows older than an hour go, in every partition; the recent ones stay.
	waitFor(t, 60*time.Second, "rows older than the prune age to be pruned", func() (bool, error) {
		return countRows(t, db, "where created_at < now() - interval '1 hour'") == 0, nil
	})
	if n := countRows(t, db, ""); n != len(recent) {
		t.Fatalf("%d rows left, want the %d recent ones", n, len(recent))
	}

	// Dropping a partition whole publishes nothing and the relay streams on.
	db.Exec(t, `drop table outbox_d3`)
	more := insert("agg-after", 10, "0 seconds")
	readCtx2, cancel2 := context.WithTimeout(ctx, time.Minute)
	defer cancel2()
	recs, err = kafkatest.ReadN(readCtx2, brokers, []string{"outbox.order"}, len(want)+len(more))
	if err != nil {
		t.Fatalf("reading after dropping a partition: %v", err)
	}
	checkIDsInOrder(t, recs, append(want, more...))
	if p.exited() {
		t.Fatalf("the relay exited after a partition was dropped")
	}
}

// checkIDsInOrder asserts recs holds exactly want, each once, every key's
// records in the order of want.
func checkIDsInOrder(t *testing.T, recs []kafkatest.Record, want []string) {
	t.Helper()
	pos := map[string]int{}
	for i, id := range want {
		pos[id] = i
	}
	seen := map[string]bool{}
	last := map[string]int{}
	for _, r := range recs {
		id := r.Headers["id"]
		i, ok := pos[id]
		switch {
		case !ok:
			t.Fatalf("unexpected record id %q (key %s)", id, r.Key)
		case seen[id]:
			t.Fatalf("record %s delivered twice", id)
		}
		seen[id] = true
		if prev, ok := last[string(r.Key)]; ok && prev > i {
			t.Fatalf("key %s: record %s arrived after a later one", r.Key, id)
		}
		last[string(r.Key)] = i
	}
	if len(seen) != len(want) {
		t.Fatalf("%d distinct records, want %d", len(seen), len(want))
	}
}

// --prune-after on a table it cannot prune is a configuration error that
// says what to do, before anything streams: no age column mapped (a
// Debezium table has none), or a role without DELETE.
func TestPruneWithoutAgeColumnOrDeletePrivilegeIsAClearConfigError(t *testing.T) {
	db := pgtest.New(t)
	db.Exec(t, `create table outbox_dbz (
		id uuid primary key, aggregatetype varchar(255) not null, aggregateid varchar(255) not null,
		type varchar(255) not null, payload jsonb)`)
	expectConfigError(t, []string{"--pg-url", db.URL, "--kafka-brokers", "127.0.0.1:1", "--table", "outbox_dbz",
		"--compat", "debezium", "--prune-after", "24h"},
		"no created_at column is mapped", "--columns created_at=")

	migrate(t, db)
	db.Exec(t, `do $$ begin if not exists (select from pg_roles where rolname = 'relay_nodelete') then
		create role relay_nodelete login replication; end if; end $$`)
	db.Exec(t, `grant select on outbox to relay_nodelete`)
	expectConfigError(t, []string{"--pg-url", withUser(t, db.URL, "relay_nodelete", ""), "--kafka-brokers", "127.0.0.1:1",
		"--prune-after", "24h", "--create-slot=false"},
		"may not delete from", "GRANT DELETE ON")
}
