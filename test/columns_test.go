package test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// A column the flags need and the table lacks is a configuration error at
// start (exit 2) that names the column and the flag to change, not a
// decoding error at the first row.
func TestColumnsTheFlagsNeedAreCheckedAtStart(t *testing.T) {
	db := pgtest.New(t)
	migrate(t, db)
	db.Exec(t, `create table no_headers (id uuid primary key default gen_random_uuid(), aggregate_type text not null,
		aggregate_id text not null, event_type text not null, payload jsonb not null, created_at timestamptz not null default now())`)
	for i, tc := range []struct {
		name    string
		args    []string
		phrases []string
	}{
		{"mapped column", []string{"--columns", "aggregate_id=nope"},
			[]string{"column nope (mapped as the aggregate_id column) is missing from table public.outbox", "--columns aggregate_id="}},
		{"topic placeholder", []string{"--topic", "x.{nope}"},
			[]string{"column nope", "is missing from table public.outbox", "--topic"}},
		{"header column", []string{"--header-columns", "nope"},
			[]string{"column nope", "is missing from table public.outbox", "--header-columns"}},
		{"no headers column under default flags", []string{"--table", "public.no_headers"},
			[]string{"column headers (mapped by default as the headers column) is missing from table public.no_headers", "--columns headers="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "cols" + strconv.Itoa(i)
			args := append([]string{"--pg-url", db.URL, "--kafka-brokers", "127.0.0.1:1", "--slot", name, "--publication", name}, tc.args...)
			expectConfigError(t, args, tc.phrases...)
		})
	}

	// The fix the error gives works: mapping no headers column streams.
	cluster := kafkatest.NewCluster(t)
	startRelay(t, faultArgs(db.URL, cluster, "noheaders", "--table", "public.no_headers", "--columns", "headers=")...)
	waitSlotActive(t, db, "noheaders")
	db.Exec(t, `insert into no_headers (aggregate_type, aggregate_id, event_type, payload) values ('order', 'o-1', 'created', '{}')`)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(ctx, cluster.ListenAddrs(), []string{"outbox.order"}, 1); err != nil {
		t.Fatalf("with --columns headers=: %v", err)
	}
}

// Dropping the headers column while the relay runs stops it, like any
// column it uses: events without their headers must not flow silently.
// Nothing is confirmed past the first row without the column.
func TestFaultAlterTableDropHeadersColumn(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 10)
	cluster := kafkatest.NewCluster(t)
	relay := startRelay(t, faultArgs(db.URL, cluster, "dropheaders")...)
	waitSlotActive(t, db, "dropheaders")
	if err := sc.writeConcurrently(ctx, 1, 100, 10, nil); err != nil {
		t.Fatal(err)
	}
	sc.check(t, settle(t, db, "dropheaders", cluster, sc.total()))

	db.Exec(t, `alter table outbox drop column headers`)
	before, err := currentWAL(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `insert into outbox (aggregate_type, aggregate_id, event_type, payload) values ('order', 'agg-0', 'updated', '{"seq": 999}')`)
	code := relay.waitExit(t, 60*time.Second)
	out := relay.out.String()
	confirmed, err := slotConfirmed(ctx, db, "dropheaders")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drop headers: relay exited with code %d; slot confirmed %s, WAL before the insert %s; tail:\n%s", code, confirmed, before, tail(out, 4))
	if code == 0 {
		t.Fatalf("relay exited 0")
	}
	if !strings.Contains(out, "column headers is missing") {
		t.Fatalf("the error does not name the missing column headers:\n%s", tail(out, 20))
	}
	if confirmed > before {
		t.Fatalf("slot confirmed %s, past the row without headers (WAL was at %s before it)", confirmed, before)
	}
	recs, _ := kafkatest.ReadAll(ctx, cluster.ListenAddrs(), topics, 2*time.Second)
	if len(recs) != sc.total() {
		t.Fatalf("%d records on the topics, want %d (the row without headers must not be published)", len(recs), sc.total())
	}
}

// A headers key named like one of the relay's own headers cannot replace
// it: the record's id header is the row's id, and the relay says once
// that it left the key out.
func TestHeadersJSONCannotForgeTheIDHeader(t *testing.T) {
	db := pgtest.New(t)
	migrate(t, db)
	cluster := kafkatest.NewCluster(t)
	relay := startRelay(t, faultArgs(db.URL, cluster, "forged")...)
	waitSlotActive(t, db, "forged")
	conn := db.Conn(t)
	var ids []string
	for range 2 {
		var id string
		if err := conn.QueryRow(t.Context(), `insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			values ('order', 'o-1', 'created', '{}', '{"id": "forged", "event_type": "x", "tenant": "acme"}') returning id::text`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	recs, err := kafkatest.ReadN(ctx, cluster.ListenAddrs(), []string{"outbox.order"}, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		if r.Headers["id"] != ids[i] || r.Headers["event_type"] != "created" || r.Headers["tenant"] != "acme" {
			t.Errorf("record %d headers %v, want id %s, event_type created, tenant acme", i, r.Headers, ids[i])
		}
	}
	waitFor(t, 30*time.Second, "the warning about the dropped headers", func() (bool, error) {
		return strings.Contains(relay.out.String(), "header left out of events"), nil
	})
	if n := strings.Count(relay.out.String(), "header left out of events"); n != 2 {
		t.Errorf("%d warnings, want 2 (id and event_type, once each):\n%s", n, tail(relay.out.String(), 20))
	}
}
