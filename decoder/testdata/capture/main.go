//go:build ignore

// Command capture records the pgoutput messages a real PostgreSQL sends for
// a fixed outbox scenario, as fixtures for the decoder tests. Tests must not
// depend on a server to check byte-level decoding, but the bytes must come
// from one: hand-written fixtures would only test our own reading of the
// protocol documentation.
//
// Run it against a throwaway server with wal_level=logical (it drops and
// creates tables and a publication):
//
//	go run decoder/testdata/capture/main.go -url 'postgres://postgres@127.0.0.1:54391/postgres'
//
// Each session writes decoder/testdata/<name>.hex: comment lines starting
// with '#', then one line per XLogData message: "<WALStart> <WALData hex>".
package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

const endPrefix = "outbox-capture.end"

const setup = `
drop publication if exists outbox_capture;
drop table if exists public.outbox, public.other, public.outbox_bytea, public.outbox_text, public.outbox_debezium;
create table public.outbox (id uuid primary key default gen_random_uuid(), aggregate_type text not null, aggregate_id text not null, event_type text not null, payload jsonb not null, headers jsonb not null default '{}', created_at timestamptz not null default now());
create table public.other (id int primary key, note text);
create table public.outbox_bytea (id uuid primary key, aggregate_type text not null, aggregate_id text not null, event_type text not null, payload bytea, headers jsonb, created_at timestamptz);
create table public.outbox_text (id uuid primary key, aggregate_type text not null, aggregate_id text not null, event_type text not null, payload text, created_at timestamp);
create table public.outbox_debezium (id uuid primary key, aggregatetype text not null, aggregateid text not null, type text not null, payload jsonb);
create publication outbox_capture for table public.outbox, public.other, public.outbox_bytea, public.outbox_text, public.outbox_debezium;
`

// session is one replication connection: its runtime parameters decide how
// the walsender renders values as text (bytea_output, DateStyle, TimeZone).
type session struct {
	name   string
	params map[string]string
	sql    []string
}

const cols = `(id, aggregate_type, aggregate_id, event_type, payload, headers, created_at)`

var pinned = map[string]string{"DateStyle": "ISO", "TimeZone": "UTC", "bytea_output": "hex"}

var sessions = []session{
	{
		name:   "outbox",
		params: pinned,
		sql: []string{
			`insert into public.outbox ` + cols + ` values ('11111111-1111-4111-8111-111111111111', 'order', 'order-1', 'OrderCreated', '{"total": 42.5, "items": [1, 2]}', '{"trace_id": "abc-123", "attempt": 2, "meta": {"a": [1, 2]}, "flag": true, "none": null, "esc": "quote\" tab\t é"}', '2026-11-23 12:00:00.123456+00')`,
			`begin;
			insert into public.outbox ` + cols + ` values
			  ('22222222-2222-4222-8222-222222222222', 'order', 'order-2', 'OrderCreated', '{"n": 2}', '{}', '2026-11-23 12:00:01+00'),
			  ('33333333-3333-4333-8333-333333333333', 'order', 'order-2', 'OrderPaid', '{"n": 3}', '{"k": "v"}', '2026-11-23 12:00:01.5+00'),
			  ('44444444-4444-4444-8444-444444444444', 'customer', 'cust-9', 'CustomerMoved', '[]', '{}', '2026-11-23 12:00:01.000001+00');
			insert into public.other values (1, 'not an event');
			commit`,
			`update public.outbox set event_type = 'Changed' where id = '22222222-2222-4222-8222-222222222222'`,
			`delete from public.outbox where id = '33333333-3333-4333-8333-333333333333'`,
			`truncate public.other`,
			`alter table public.outbox add column tenant text`,
			`insert into public.outbox ` + strings.Replace(cols, ")", ", tenant)", 1) + ` values ('55555555-5555-4555-8555-555555555555', 'order', 'order-5', 'OrderShipped', '{"n": 5}', '{}', '2026-11-23 12:00:05+00', 'acme')`,
			`select pg_logical_emit_message(true, 'outbox-relay.heartbeat', 'x')`,
			`select pg_logical_emit_message(false, 'outbox-relay.heartbeat', 'x')`,
			`select pg_logical_emit_message(true, 'someone.else', 'hello')`,
			`insert into public.outbox_bytea ` + cols + ` values ('66666666-6666-4666-8666-666666666666', 'blob', 'blob-1', 'BlobStored', '\x00015c41ff7e20'::bytea, '{}', '2026-11-23 12:00:06+00'), ('66666666-6666-4666-8666-666666666667', 'blob', 'blob-2', 'BlobEmpty', null, null, null)`,
			`insert into public.outbox_text (id, aggregate_type, aggregate_id, event_type, payload, created_at) values ('77777777-7777-4777-8777-777777777777', 'note', 'note-1', 'NoteTaken', 'plain text ünïcode', '2026-11-23 12:00:07.25')`,
			`insert into public.outbox_debezium (id, aggregatetype, aggregateid, type, payload) values ('88888888-8888-4888-8888-888888888888', 'Order', 'order-8', 'OrderCreated', '{"id": 8}')`,
		},
	},
	{
		name:   "bytea_escape",
		params: map[string]string{"DateStyle": "ISO", "TimeZone": "UTC", "bytea_output": "escape"},
		sql: []string{
			`insert into public.outbox_bytea ` + cols + ` values ('99999999-9999-4999-8999-999999999999', 'blob', 'blob-9', 'BlobStored', '\x00015c41ff7e20'::bytea, '{}', '2026-11-23 12:00:09+00')`,
		},
	},
	{
		name:   "iso_kolkata",
		params: map[string]string{"DateStyle": "ISO", "TimeZone": "Asia/Kolkata"},
		sql:    []string{tzRow("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa")},
	},
	{
		name:   "iso_sao_paulo",
		params: map[string]string{"DateStyle": "ISO", "TimeZone": "America/Sao_Paulo"},
		sql:    []string{tzRow("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb")},
	},
	{
		name:   "sql_dmy_kolkata",
		params: map[string]string{"DateStyle": "SQL, DMY", "TimeZone": "Asia/Kolkata"},
		sql:    []string{tzRow("cccccccc-cccc-4ccc-8ccc-cccccccccccc")},
	},
}

func tzRow(id string) string {
	return `insert into public.outbox ` + cols + ` values ('` + id + `', 'order', 'order-tz', 'TimeZoned', '{}', '{}', '2026-11-23 12:00:00.123456+00')`
}

func main() {
	url := flag.String("url", "postgres://postgres@127.0.0.1:54391/postgres", "PostgreSQL URL (wal_level=logical; tables are dropped and created)")
	out := flag.String("out", "decoder/testdata", "directory for the .hex files")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, *url, *out); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, url, out string) error {
	sqlConn, err := pgconn.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer sqlConn.Close(context.Background())
	if _, err := sqlConn.Exec(ctx, setup).ReadAll(); err != nil {
		return fmt.Errorf("creating the scenario's tables: %w", err)
	}
	for _, s := range sessions {
		if err := capture(ctx, url, sqlConn, s, out); err != nil {
			return fmt.Errorf("session %s: %w", s.name, err)
		}
	}
	return nil
}

func capture(ctx context.Context, url string, sqlConn *pgconn.PgConn, s session, out string) error {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range s.params {
		cfg.RuntimeParams[k] = v
	}
	repl, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting for replication: %w", err)
	}
	defer repl.Close(context.Background())

	slot := "capture_" + s.name
	if _, err := pglogrepl.CreateReplicationSlot(ctx, repl, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, SnapshotAction: "NOEXPORT_SNAPSHOT"}); err != nil {
		return fmt.Errorf("creating slot %s: %w", slot, err)
	}
	for _, q := range s.sql {
		if _, err := sqlConn.Exec(ctx, q).ReadAll(); err != nil {
			return fmt.Errorf("running %q: %w", q, err)
		}
	}
	// A transactional marker tells the reader where the scenario ends.
	if _, err := sqlConn.Exec(ctx, fmt.Sprintf("select pg_logical_emit_message(true, '%s', '%s')", endPrefix, s.name)).ReadAll(); err != nil {
		return err
	}
	if err := pglogrepl.StartReplication(ctx, repl, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'outbox_capture'", "messages 'true'"},
	}); err != nil {
		return fmt.Errorf("starting replication: %w", err)
	}

	var buf bytes.Buffer
	keys := make([]string, 0, len(s.params))
	for k := range s.params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(&buf, "# pgoutput proto_version 1 from PostgreSQL %s, captured by decoder/testdata/capture/main.go\n", sqlConn.ParameterStatus("server_version"))
	for _, k := range keys {
		fmt.Fprintf(&buf, "# walsender %s = %s\n", k, s.params[k])
	}
	fmt.Fprintf(&buf, "# <WALStart> <WALData hex>\n")

	sawEnd := false
	for {
		msg, err := repl.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("receiving: %w", err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				return fmt.Errorf("server error: %s", e.Message)
			}
			continue
		}
		if len(cd.Data) == 0 {
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return err
			}
			if pkm.ReplyRequested {
				// Nothing is confirmed: the slot is temporary.
				if err := pglogrepl.SendStandbyStatusUpdate(ctx, repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: 1}); err != nil {
					return err
				}
			}
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return err
			}
			fmt.Fprintf(&buf, "%s %s\n", x.WALStart, hex.EncodeToString(x.WALData))
			if len(x.WALData) > 0 && x.WALData[0] == 'M' && bytes.Contains(x.WALData, []byte(endPrefix)) {
				sawEnd = true
			}
			if sawEnd && len(x.WALData) > 0 && x.WALData[0] == 'C' {
				path := filepath.Join(out, s.name+".hex")
				log.Printf("writing %s", path)
				return os.WriteFile(path, buf.Bytes(), 0o644)
			}
		}
	}
}
