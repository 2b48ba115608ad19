package migrations_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type column struct {
	Name, Type, Nullable string
	Default              *string
}

func columns(t *testing.T, conn *pgx.Conn, schema, table string) []column {
	t.Helper()
	rows, _ := conn.Query(t.Context(), `select column_name::text, data_type::text, is_nullable::text, column_default::text
		from information_schema.columns where table_schema = $1 and table_name = $2 order by ordinal_position`, schema, table)
	cols, err := pgx.CollectRows(rows, pgx.RowToStructByPos[column])
	if err != nil {
		t.Fatal(err)
	}
	return cols
}

func TestApplyCreatesTheDocumentedTable(t *testing.T) {
	db := pgtest.New(t)
	conn := db.Conn(t)
	if err := migrations.Apply(t.Context(), conn, "outbox"); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	def := func(s string) *string { return &s }
	want := []column{
		{"id", "uuid", "NO", def("gen_random_uuid()")},
		{"aggregate_type", "text", "NO", nil},
		{"aggregate_id", "text", "NO", nil},
		{"event_type", "text", "NO", nil},
		{"payload", "jsonb", "NO", nil},
		{"headers", "jsonb", "NO", def("'{}'::jsonb")},
		{"created_at", "timestamp with time zone", "NO", def("now()")},
	}
	got := columns(t, conn, "public", "outbox")
	if len(got) != len(want) {
		t.Fatalf("columns = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Name != w.Name || g.Type != w.Type || g.Nullable != w.Nullable || (g.Default == nil) != (w.Default == nil) ||
			(g.Default != nil && *g.Default != *w.Default) {
			t.Errorf("column %d = %+v (default %v), want %+v (default %v)", i, g, deref(g.Default), w, deref(w.Default))
		}
	}

	var pk, idx string
	err := conn.QueryRow(t.Context(), `select
		(select pg_get_constraintdef(oid) from pg_constraint where conrelid = 'public.outbox'::regclass and contype = 'p'),
		(select indexdef from pg_indexes where schemaname = 'public' and tablename = 'outbox' and indexname = 'outbox_created_at_idx')`).Scan(&pk, &idx)
	if err != nil {
		t.Fatal(err)
	}
	if pk != "PRIMARY KEY (id)" || !strings.Contains(idx, "(created_at)") {
		t.Errorf("primary key %q, created_at index %q", pk, idx)
	}

	// An application inserts only what it knows; the rest is defaulted.
	var id, headers string
	err = conn.QueryRow(t.Context(), `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
		values ('order', '42', 'created', '{"total": 1}') returning id::text, headers::text`).Scan(&id, &headers)
	if err != nil || len(id) != 36 || headers != "{}" {
		t.Errorf("insert returned id %q headers %q err %v", id, headers, err)
	}
}

// The table refuses the obvious poison at write time, so it never reaches
// the WAL: headers that are not an object, empty routing fields.
func TestApplyAddsChecksThatRefusePoisonRows(t *testing.T) {
	db := pgtest.New(t)
	conn := db.Conn(t)
	if err := migrations.Apply(t.Context(), conn, "outbox"); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, tc := range []struct {
		name, values, constraint string
	}{
		{"headers an array", `('order', '42', 'created', '{}', '[1, 2]')`, "outbox_headers_check"},
		{"headers a string", `('order', '42', 'created', '{}', '"x"')`, "outbox_headers_check"},
		{"headers JSON null", `('order', '42', 'created', '{}', 'null')`, "outbox_headers_check"},
		{"empty aggregate_type", `('', '42', 'created', '{}', '{}')`, "outbox_aggregate_type_check"},
		{"empty aggregate_id", `('order', '', 'created', '{}', '{}')`, "outbox_aggregate_id_check"},
		{"empty event_type", `('order', '42', '', '{}', '{}')`, "outbox_event_type_check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := conn.Exec(t.Context(), `insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers) values `+tc.values)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "23514" || pgErr.ConstraintName != tc.constraint {
				t.Fatalf("insert %s: %v, want a check_violation of %s", tc.values, err, tc.constraint)
			}
		})
	}
	if _, err := conn.Exec(t.Context(), `insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		values ('order', '42', 'created', 'null', '{"tenant": "acme", "n": null}')`); err != nil {
		t.Errorf("a good row: %v", err)
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func TestApplyTwiceChangesNothing(t *testing.T) {
	db := pgtest.New(t)
	conn := db.Conn(t)
	for i := 0; i < 2; i++ {
		if err := migrations.Apply(t.Context(), conn, "public.outbox"); err != nil {
			t.Fatalf("Apply #%d: %v", i+1, err)
		}
	}
	ok, err := migrations.Exists(t.Context(), conn, "outbox")
	if err != nil || !ok {
		t.Errorf("Exists = %v, %v", ok, err)
	}
}

func TestApplyLeavesAnExistingTableAlone(t *testing.T) {
	db := pgtest.New(t)
	conn := db.Conn(t)
	db.Exec(t, `CREATE TABLE outbox (aggregatetype text, aggregateid text, type text, payload jsonb)`)
	if err := migrations.Apply(t.Context(), conn, "outbox"); err != nil {
		t.Fatalf("Apply over a Debezium-style table: %v", err)
	}
	if got := columns(t, conn, "public", "outbox"); len(got) != 4 {
		t.Errorf("the existing table changed: %+v", got)
	}
}

func TestApplyCreatesTheSchemaAndQuotesNames(t *testing.T) {
	db := pgtest.New(t)
	conn := db.Conn(t)
	for _, table := range []string{"events.outbox", `Odd Schema.Out"box`} {
		if err := migrations.Apply(t.Context(), conn, table); err != nil {
			t.Fatalf("Apply(%q): %v", table, err)
		}
		tbl, _ := pgname.ParseTable(table)
		if got := columns(t, conn, tbl.Schema, tbl.Name); len(got) != 7 {
			t.Errorf("table %q has columns %+v", table, got)
		}
		if ok, err := migrations.Exists(t.Context(), conn, table); !ok || err != nil {
			t.Errorf("Exists(%q) = %v, %v", table, ok, err)
		}
	}
	if ok, err := migrations.Exists(t.Context(), conn, "public.outbox"); ok || err != nil {
		t.Errorf("Exists(public.outbox) = %v, %v; want false: it was never created", ok, err)
	}
}

func TestConcurrentApplyIsSafe(t *testing.T) {
	db := pgtest.New(t)
	conns := make([]*pgx.Conn, 4)
	for i := range conns {
		conns[i] = db.Conn(t)
	}
	errs := make(chan error, len(conns))
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- migrations.Apply(context.Background(), c, "race.outbox")
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Apply: %v", err)
		}
	}
}

func TestApplyByARoleThatMayNotCreateTablesWhenTheTableExists(t *testing.T) {
	db := pgtest.New(t)
	if err := migrations.Apply(t.Context(), db.Conn(t), "outbox"); err != nil {
		t.Fatal(err)
	}
	role := db.Name + "_app"
	db.Exec(t, "CREATE ROLE "+role+" LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC")
	t.Cleanup(func() {
		if c, err := pgx.Connect(context.Background(), db.URL); err == nil {
			c.Exec(context.Background(), "DROP ROLE IF EXISTS "+role)
			c.Close(context.Background())
		}
	})
	cfg, err := pgx.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = role
	app, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())
	if err := migrations.Apply(t.Context(), app, "outbox"); err != nil {
		t.Errorf("Apply by %s over an existing table: %v", role, err)
	}
	if err := migrations.Apply(t.Context(), app, "other"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Apply by %s of a new table = %v, want permission denied", role, err)
	}
}
