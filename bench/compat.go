package main

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The drop-in check: Debezium's outbox EventRouter at its defaults and the
// relay with --compat debezium read the same rows of a table laid out as
// Debezium documents it, and their records are compared one by one.

const (
	compatTable       = "public.dbz_outbox"
	compatPublication = "outbox_compat"
	compatRows        = 1000
)

// compatDDL is Debezium's outbox table: id, aggregatetype, aggregateid,
// type, payload.
const compatDDL = `
CREATE TABLE IF NOT EXISTS public.dbz_outbox (
    id            uuid         PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid   varchar(255) NOT NULL,
    type          varchar(255) NOT NULL,
    payload       jsonb
);
CREATE PUBLICATION outbox_compat FOR TABLE public.dbz_outbox`

// compatSpecials are rows whose payloads probe the encodings: text
// outside ASCII, numbers jsonb normalizes, nesting, escapes, empty
// documents and no payload at all.
var compatSpecials = []struct{ aggType, aggID, payload string }{
	{"customer", "cust-ü-1", `{"name": "Zoë ✓ 日本", "emoji": "🚀"}`},
	{"order", "order-n", `{"n": 1.50, "big": 12345678901234567890, "e": 1e3, "neg": -0.0}`},
	{"order", "order-nest", `{"a": [1, [2, [3, {"b": null}]]], "t": true, "f": false}`},
	{"order", "order-esc", `{"s": "quote \" backslash \\ newline \n tab \t <>&"}`},
	{"order", "order-empty", `{}`},
	{"order", "order-array", `[1, "two", 3.0]`},
	{"order", "order-string", `"just a string"`},
	{"customer", "cust-null", ``}, // NULL payload
}

// compatResult is the check's outcome.
type compatResult struct {
	Rows     int // rows written
	Debezium int // records Debezium published
	Relay    int // records the relay published
	Compared int // records matched by id and compared
	Equal    int // of those, equal in every field
	// Diffs counts the records that differ, by field; Examples shows the
	// first difference of each field.
	Diffs    map[string]int
	Examples map[string]string
	// Partition counts records whose partition differs (not a field the
	// check requires: see RESULTS.md).
	Partition int
	Took      time.Duration
	Err       string
}

// compatRecord is what the check compares of one record.
type compatRecord struct {
	topic     string
	partition int32
	key       []byte
	value     []byte
	id        []byte
	headers   []string
	timestamp time.Time
}

// compat runs the check on the Apache Kafka node (Debezium) and a kfake
// broker (the relay), so that their topics do not mix.
func (e *env) compat(ctx context.Context) compatResult {
	start := time.Now()
	r := compatResult{Diffs: map[string]int{}, Examples: map[string]string{}}
	fail := func(err error) compatResult {
		r.Err = err.Error()
		r.Took = time.Since(start)
		log.Printf("[compat] FAILED: %v", err)
		return r
	}
	if e.ak == nil {
		return fail(fmt.Errorf("needs Apache Kafka (not with --no-apache)"))
	}
	if _, err := e.admin.Exec(ctx, compatDDL); err != nil {
		return fail(err)
	}
	for _, s := range []string{"compat_debezium", "compat_relay"} {
		if err := e.ensureSlot(ctx, s); err != nil {
			return fail(err)
		}
	}
	topics := []string{"outbox.event.order", "outbox.event.customer"}
	if err := e.ak.createTopics(ctx, topics...); err != nil {
		return fail(err)
	}
	// Most rows in 1,000-row-sized transactions, the specials one per
	// transaction.
	bulk := compatRows - len(compatSpecials)
	if _, err := e.admin.Exec(ctx, `
INSERT INTO public.dbz_outbox (id, aggregatetype, aggregateid, type, payload)
SELECT gen_random_uuid(), CASE WHEN g % 3 = 0 THEN 'customer' ELSE 'order' END, 'agg-' || (g % 97), 'created',
       json_build_object('n', g, 'amount', round((random() * 1000)::numeric, 2), 'note', repeat('x', g % 40))::jsonb
FROM generate_series(1, $1) AS g`, bulk); err != nil {
		return fail(err)
	}
	for _, s := range compatSpecials {
		var p any = s.payload
		if s.payload == "" {
			p = nil
		}
		if _, err := e.admin.Exec(ctx, `INSERT INTO public.dbz_outbox VALUES (gen_random_uuid(), $1, $2, 'special', $3::jsonb)`, s.aggType, s.aggID, p); err != nil {
			return fail(err)
		}
	}
	r.Rows = compatRows
	end, err := e.walEnd(ctx)
	if err != nil {
		return fail(err)
	}

	// Debezium, its router at its defaults.
	dbz, err := e.startConnect(connectorSpec{name: "debezium-compat", slot: "compat_debezium", table: compatTable, publication: compatPublication}, e.ak.addr)
	if err != nil {
		return fail(err)
	}
	defer dbz.stop(30 * time.Second)
	if _, err := e.waitSlotActive(ctx, "compat_debezium", dbz, 3*time.Minute); err != nil {
		return fail(err)
	}
	dbzRecs, err := readRecords(ctx, e.ak.addr, topics, compatRows, 3*time.Minute)
	if err != nil {
		return fail(fmt.Errorf("reading Debezium's records: %w", err))
	}
	r.Debezium = len(dbzRecs)
	dbz.stop(30 * time.Second)

	// The relay, the command itself with --compat debezium.
	b, err := e.startBroker(ctx)
	if err != nil {
		return fail(err)
	}
	defer b.stop(10 * time.Second)
	bin, err := buildRelay(e.o.tmpDir)
	if err != nil {
		return fail(err)
	}
	rc, err := startChild("relay-compat", nil, e.logPath("relay-compat.log"), bin, "run",
		"--pg-url", e.url, "--slot", "compat_relay", "--publication", compatPublication, "--table", compatTable,
		"--compat", "debezium", "--kafka-brokers", b.addr, "--metrics-addr", "", "--status-interval", "100ms")
	if err != nil {
		return fail(err)
	}
	defer rc.stop(30 * time.Second)
	if _, err := e.waitConfirmed(ctx, "compat_relay", end, rc, 2*time.Minute); err != nil {
		return fail(err)
	}
	relayRecs, err := readRecords(ctx, b.addr, topics, compatRows, time.Minute)
	if err != nil {
		return fail(fmt.Errorf("the relay's records: %w", err))
	}
	r.Relay = len(relayRecs)
	rc.stop(30 * time.Second)
	r.Took = time.Since(start)

	byID := map[string]compatRecord{}
	for _, rec := range relayRecs {
		byID[string(rec.id)] = rec
	}
	diff := func(field, id, want, got string) {
		r.Diffs[field]++
		if _, ok := r.Examples[field]; !ok {
			r.Examples[field] = fmt.Sprintf("event %s: Debezium %s, relay %s", id, want, got)
		}
	}
	for _, d := range dbzRecs {
		id := string(d.id)
		rl, ok := byID[id]
		if !ok {
			diff("missing in the relay's records", id, "has it", "has none")
			continue
		}
		r.Compared++
		same := true
		if d.topic != rl.topic {
			diff("topic", id, d.topic, rl.topic)
			same = false
		}
		if !bytes.Equal(d.key, rl.key) {
			diff("key", id, fmt.Sprintf("%q", d.key), fmt.Sprintf("%q", rl.key))
			same = false
		}
		if !bytes.Equal(d.value, rl.value) || (d.value == nil) != (rl.value == nil) {
			diff("value", id, quoteValue(d.value), quoteValue(rl.value))
			same = false
		}
		if !d.timestamp.Equal(rl.timestamp) {
			diff("timestamp", id, d.timestamp.Format(time.RFC3339Nano), rl.timestamp.Format(time.RFC3339Nano))
			same = false
		}
		if strings.Join(d.headers, ",") != strings.Join(rl.headers, ",") {
			diff("header names", id, "["+strings.Join(d.headers, ",")+"]", "["+strings.Join(rl.headers, ",")+"]")
		}
		if d.partition != rl.partition {
			r.Partition++
		}
		if same {
			r.Equal++
		}
	}
	log.Printf("[compat] %d rows; Debezium %d records, relay %d; %d paired by id; %d equal in topic, key, value and timestamp at once; records differing, by field: %v; in %s",
		r.Rows, r.Debezium, r.Relay, r.Compared, r.Equal, r.Diffs, time.Since(start).Round(time.Millisecond))
	for f, ex := range r.Examples {
		log.Printf("[compat] %s differs, e.g. %s", f, ex)
	}
	return r
}

func quoteValue(v []byte) string {
	if v == nil {
		return "null"
	}
	if len(v) > 80 {
		return fmt.Sprintf("%q...", v[:80])
	}
	return fmt.Sprintf("%q", v)
}

// readRecords reads topics from their start until n records arrived.
func readRecords(ctx context.Context, brokers string, topics []string, n int, limit time.Duration) ([]compatRecord, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(topics...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var out []compatRecord
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return out, fmt.Errorf("%d of %d records within %s", len(out), n, limit)
		}
		fs.EachRecord(func(rec *kgo.Record) {
			c := compatRecord{topic: rec.Topic, partition: rec.Partition, key: rec.Key, value: rec.Value, timestamp: rec.Timestamp}
			for _, h := range rec.Headers {
				c.headers = append(c.headers, h.Key)
				if h.Key == "id" {
					c.id = h.Value
				}
			}
			sort.Strings(c.headers)
			out = append(out, c)
		})
	}
	return out, nil
}

// buildRelay builds the relay command into dir.
func buildRelay(dir string) (string, error) {
	bin, err := filepath.Abs(filepath.Join(dir, "outbox-relay"))
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/outbox-relay")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building the relay (go build ./cmd/outbox-relay, from the repository's root): %w", err)
	}
	return bin, nil
}

// compatOnly runs the check alone and prints its result.
func (e *env) compatOnly(ctx context.Context) error {
	if e.ak == nil {
		return fmt.Errorf("--compat-only needs Apache Kafka (not with --no-apache)")
	}
	r := e.compat(ctx)
	fmt.Print(r.summary())
	switch {
	case r.Err != "":
		return fmt.Errorf("compat check: %s", r.Err)
	case r.Compared != r.Rows || r.Relay != r.Rows:
		return fmt.Errorf("compat check: %d rows, Debezium %d records, relay %d, %d matched by id", r.Rows, r.Debezium, r.Relay, r.Compared)
	}
	return nil
}

// summary is the result as Markdown, for the terminal and RESULTS.md.
func (r compatResult) summary() string {
	var b strings.Builder
	if r.Err != "" {
		fmt.Fprintf(&b, "The check failed: %s\n", r.Err)
		return b.String()
	}
	fmt.Fprintf(&b, "%d rows; Debezium published %d records, the relay %d; %d paired by their id header (so the id header is equal in each pair) and compared. Equal, field by field: ",
		r.Rows, r.Debezium, r.Relay, r.Compared)
	for i, f := range []string{"topic", "key", "value", "timestamp"} {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d of %d", f, r.Compared-r.Diffs[f], r.Compared)
	}
	fmt.Fprintf(&b, "; all of them at once: %d (check took %s).\n\n", r.Equal, r.Took.Round(time.Second))
	if len(r.Diffs) > 0 {
		b.WriteString("| field | records that differ | first example |\n|---|---:|---|\n")
		fields := make([]string, 0, len(r.Diffs))
		for f := range r.Diffs {
			fields = append(fields, f)
		}
		sort.Strings(fields)
		for _, f := range fields {
			fmt.Fprintf(&b, "| %s | %d | %s |\n", f, r.Diffs[f], strings.ReplaceAll(r.Examples[f], "|", "\\|"))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Partition (not a required field; both hash the key with murmur2 over the topic's partitions, which the two brokers give alike): %d of %d records differ.\n", r.Partition, r.Compared)
	return b.String()
}
