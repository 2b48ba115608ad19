#!/bin/bash
# Table mode vs message mode: same 100,000 events, 1,000 per transaction,
# drained by the relay (stdout sink to /dev/null) from its own slot, plus
# the WAL each mode writes per event. Needs PostgreSQL server binaries and
# `make build`; run as root (initdb runs as the postgres user).
set -e
B=${PG_BIN:-/usr/lib/postgresql/15/bin}; P=${PORT:-55998}; D=${TMPDIR:-/tmp}/modecmp; R=${RELAY:-$PWD/bin/outbox-relay}
rm -rf $D; mkdir $D; chown postgres $D
runuser -u postgres -- $B/initdb -D $D/d -A trust -U postgres --no-sync >/dev/null 2>&1
runuser -u postgres -- $B/pg_ctl -D $D/d -o "-p $P -c wal_level=logical -c listen_addresses=127.0.0.1 -c unix_socket_directories=$D -c fsync=off" -l $D/log -w start >/dev/null
q() { psql -h 127.0.0.1 -p $P -U postgres -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }
q -c "create database tbl" -c "create database msg"
for db in tbl msg; do
  $R migrate --pg-url "postgres://postgres@127.0.0.1:$P/$db?sslmode=disable" >/dev/null
  $R slot create --pg-url "postgres://postgres@127.0.0.1:$P/$db?sslmode=disable" --slot s_$db --publication p_$db >/dev/null
done
PAY='{"order_id": 123456, "customer": "customer-0001", "items": [{"sku": "SKU-0001", "qty": 2, "price": 19.99}, {"sku": "SKU-0002", "qty": 1, "price": 5.49}], "note": "deliver after 5pm, ring twice"}'
a=$(q -d tbl -c "select pg_current_wal_insert_lsn()")
q -d tbl -c "do \$\$ begin for t in 1..100 loop insert into outbox (aggregate_type, aggregate_id, event_type, payload) select 'order', 'agg-' || (g % 1000), 'OrderPlaced', '$PAY'::jsonb from generate_series(1, 1000) g; commit; end loop; end \$\$"
b=$(q -d tbl -c "select pg_current_wal_insert_lsn()")
q -d msg -c "do \$\$ begin for t in 1..100 loop perform pg_logical_emit_message(true, 'outbox', jsonb_build_object('v', 1, 'id', gen_random_uuid(), 'aggregate_type', 'order', 'aggregate_id', 'agg-' || (g % 1000), 'event_type', 'OrderPlaced', 'payload', '$PAY'::jsonb, 'created_at', now())::text) from generate_series(1, 1000) g; commit; end loop; end \$\$"
c=$(q -d tbl -c "select pg_current_wal_insert_lsn()")
echo "WAL bytes/event: table $(q -c "select round(pg_wal_lsn_diff('$b','$a')/100000.0)")  message $(q -c "select round(pg_wal_lsn_diff('$c','$b')/100000.0)")"
for db in tbl msg; do
  start=$(date +%s.%N)
  $R run --pg-url "postgres://postgres@127.0.0.1:$P/$db?sslmode=disable" --slot s_$db --publication p_$db --sink stdout --metrics-addr "" --status-interval 200ms --log-level warn > /dev/null 2>$D/$db.err &
  pid=$!
  until [ "$(q -d $db -c "select confirmed_flush_lsn >= '$c' from pg_replication_slots where slot_name='s_$db'")" = t ]; do sleep 0.05; done
  end=$(date +%s.%N)
  kill -TERM $pid; wait $pid || true
  echo "$db: 100000 events drained in $(echo "$end - $start" | bc) s -> $(echo "100000 / ($end - $start)" | bc) events/s"
done
runuser -u postgres -- $B/pg_ctl -D $D/d -m immediate stop >/dev/null; rm -rf $D
