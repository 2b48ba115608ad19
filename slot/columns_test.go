package slot_test

import (
	"slices"
	"testing"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/slot"
)

func TestTableColumnsInOrderWithoutDroppedOnes(t *testing.T) {
	db, conn, cfg := setup(t)
	db.Exec(t, `alter table outbox drop column created_at, add column tenant text generated always as (aggregate_type) stored`)
	got, err := slot.TableColumns(t.Context(), conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []slot.Column{{Name: "id"}, {Name: "aggregate_type"}, {Name: "aggregate_id"}, {Name: "event_type"}, {Name: "payload"}, {Name: "headers"}, {Name: "tenant", Generated: true}}
	if !slices.Equal(got, want) {
		t.Errorf("columns %+v, want %+v", got, want)
	}
	cfg.Table = "public.nope"
	_, err = slot.TableColumns(t.Context(), conn, cfg)
	problem(t, err, "table public.nope does not exist")
}

// A column the configuration needs that the table lacks stops the relay
// at start, naming the column and the flag that fixes it.
func TestCheckColumnsNamesTheMissingColumnAndTheFlag(t *testing.T) {
	db, conn, cfg := setup(t)
	db.Exec(t, `create table no_headers (id uuid primary key, aggregate_type text, aggregate_id text, event_type text, payload jsonb, created_at timestamptz,
		tenant text generated always as (aggregate_type) stored)`)
	mapped := func(spec string) decoder.Columns {
		c, err := decoder.ParseColumns(spec)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name  string
		table string
		dec   decoder.Config
		want  []string // nil: no problem
	}{
		{"defaults", "public.outbox", decoder.Config{}, nil},
		{"every kind of column present", "public.outbox", decoder.Config{Topic: "t.{created_at}", HeaderColumns: []string{"payload"}, TraceColumn: "absent_is_fine"}, nil},
		{"no headers column under default flags", "public.no_headers", decoder.Config{},
			[]string{"column headers (mapped by default as the headers column) is missing from table public.no_headers; add it, or map none with --columns headers="}},
		{"headers mapped to none", "public.no_headers", decoder.Config{Columns: mapped("headers=")}, nil},
		{"mapped column", "public.outbox", decoder.Config{Columns: mapped("aggregate_id=nope")},
			[]string{"column nope (mapped as the aggregate_id column) is missing from table public.outbox", "--columns aggregate_id=<column>"}},
		{"topic placeholder", "public.outbox", decoder.Config{Topic: "x.{nope}"},
			[]string{"column nope (a placeholder of --topic) is missing", "change --topic"}},
		{"header column", "public.outbox", decoder.Config{HeaderColumns: []string{"nope"}},
			[]string{"column nope (listed in --header-columns) is missing", "remove it from --header-columns"}},
		{"several missing", "public.outbox", decoder.Config{Columns: mapped("event_type=kind"), HeaderColumns: []string{"a", "b"}},
			[]string{"column kind (mapped as the event_type column) is missing", "(also missing: a, b)"}},
		{"generated column", "public.no_headers", decoder.Config{Columns: mapped("headers="), HeaderColumns: []string{"tenant"}},
			[]string{"column tenant (listed in --header-columns) of table public.no_headers is a generated column"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.Table = tc.table
			tc.dec.Table = tc.table
			err := slot.CheckColumns(t.Context(), conn, c, tc.dec.NeededColumns())
			if tc.want == nil {
				if err != nil {
					t.Fatalf("CheckColumns: %v", err)
				}
				return
			}
			problem(t, err, tc.want...)
		})
	}
}

// A partitioned outbox table is checked by its root, the name its rows are
// published under.
func TestCheckColumnsOfAPartitionedTable(t *testing.T) {
	db, conn, cfg := setup(t)
	db.Exec(t, `create table parted (id uuid not null, aggregate_type text not null, aggregate_id text not null, event_type text not null,
		payload jsonb not null, headers jsonb not null default '{}', created_at timestamptz not null default now(), primary key (id, created_at))
		partition by range (created_at)`)
	db.Exec(t, `create table parted_all partition of parted default`)
	cfg.Table = "public.parted"
	if err := slot.CheckColumns(t.Context(), conn, cfg, decoder.Config{Table: cfg.Table}.NeededColumns()); err != nil {
		t.Fatalf("CheckColumns: %v", err)
	}
	db.Exec(t, `alter table parted drop column headers`)
	err := slot.CheckColumns(t.Context(), conn, cfg, decoder.Config{Table: cfg.Table}.NeededColumns())
	problem(t, err, "column headers (mapped by default as the headers column) is missing from table public.parted")
}
