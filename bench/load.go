package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// aggregates is how many distinct aggregate ids the events spread over.
const aggregates = 1000

// batchInsert is one 1,000-row transaction; $1 numbers the batch. The
// payload is ~200 bytes of JSON.
const batchInsert = `
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', 'order-' || (g % 1000), 'order.created',
       json_build_object(
         'order_id', $1::bigint * 1000 + g,
         'customer_id', 'cust-' || (g % 977),
         'amount', round((random() * 1000)::numeric, 2),
         'currency', 'EUR',
         'status', 'created',
         'items', json_build_array(json_build_object('sku', 'SKU-' || (g % 311), 'qty', 1 + g % 5)),
         'note', repeat('x', 48))::jsonb
FROM generate_series(1, 1000) AS g`

const singleInsert = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', $1, 'order.created', $2::jsonb)`

// payload returns a ~200-byte JSON document shaped like the batch one.
func payload(buf []byte, n int) []byte {
	return fmt.Appendf(buf[:0],
		`{"order_id": %d, "customer_id": "cust-%d", "amount": %d.%02d, "currency": "EUR", "status": "created", "items": [{"sku": "SKU-%d", "qty": %d}], "note": "%s"}`,
		n, n%977, n%1000, n%100, n%311, 1+n%5, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
}

// connect opens a connection; asyncCommit turns synchronous_commit off
// for it (bulk loading only: a live writer's commit must reach the WAL
// flush, or the walsender would see it only after the WAL writer's delay).
func (e *env) connect(ctx context.Context, asyncCommit bool) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(e.url)
	if err != nil {
		return nil, err
	}
	if asyncCommit {
		cfg.RuntimeParams["synchronous_commit"] = "off"
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// onConns runs write(w, conn) on conns connections of their own (with
// asynchronous commit) at once, and returns the first error.
func (e *env) onConns(ctx context.Context, conns int, write func(w int, conn *pgx.Conn) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := e.connect(ctx, true)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			if err := write(w, conn); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// insertBatches writes n events in 1,000-row transactions over two
// connections.
func (e *env) insertBatches(ctx context.Context, n int) error {
	const conns = 2
	return e.onConns(ctx, conns, func(w int, conn *pgx.Conn) error {
		for b := w; b < n/1000; b += conns {
			if _, err := conn.Exec(ctx, batchInsert, b); err != nil {
				return fmt.Errorf("batch %d: %w", b, err)
			}
		}
		return nil
	})
}

// messagePrefix is the logical message prefix of the message shape: the
// relay's default --message-prefix.
const messagePrefix = "outbox"

// insertMessages writes n events as transactional logical decoding
// messages (outbox.Emit: the relay's version 1 envelope, nothing stored in
// a table), 1,000 per transaction, over two connections: the message-mode
// twin of insertBatches, with the same aggregates and payloads shaped
// alike. It returns the average payload size in bytes.
func (e *env) insertMessages(ctx context.Context, n int) (float64, error) {
	const conns = 2
	payloadBytes := make([]int, conns)
	err := e.onConns(ctx, conns, func(w int, conn *pgx.Conn) error {
		evs := make([]outbox.Event, 1000)
		for b := w; b < n/1000; b += conns {
			for g := range evs {
				i := b*1000 + g
				evs[g] = outbox.Event{
					AggregateType: "order",
					AggregateID:   fmt.Sprintf("order-%d", i%aggregates),
					EventType:     "order.created",
					Payload:       payload(nil, i),
				}
				payloadBytes[w] += len(evs[g].Payload)
			}
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				_, err := outbox.Emit(ctx, outbox.Pgx(tx), messagePrefix, evs...)
				return err
			})
			if err != nil {
				return fmt.Errorf("message batch %d: %w", b, err)
			}
		}
		return nil
	})
	total := 0
	for _, b := range payloadBytes {
		total += b
	}
	return float64(total) / float64(n), err
}

// insertSingles writes n events, one per transaction, from writers
// concurrent connections as fast as they go.
func (e *env) insertSingles(ctx context.Context, n, writers int) error {
	return e.onConns(ctx, writers, func(w int, conn *pgx.Conn) error {
		var buf []byte
		for i := w; i < n; i += writers {
			buf = payload(buf, i)
			if _, err := conn.Exec(ctx, singleInsert, fmt.Sprintf("order-%d", i%aggregates), string(buf)); err != nil {
				return fmt.Errorf("insert %d: %w", i, err)
			}
		}
		return nil
	})
}

// writeAtRate writes single-row transactions at rate events/s in total for
// d, from writers connections on a fixed schedule (open loop: a writer that
// falls behind catches up without skipping). It returns how many it wrote
// and for how long.
func (e *env) writeAtRate(ctx context.Context, rate, writers int, d time.Duration) (int, time.Duration, error) {
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	counts := make([]int, writers)
	interval := time.Duration(float64(time.Second) * float64(writers) / float64(rate))
	conns := make([]*pgx.Conn, writers)
	for w := range writers {
		conn, err := e.connect(ctx, false)
		if err != nil {
			return 0, 0, err
		}
		defer conn.Close(context.Background())
		conns[w] = conn
	}
	start := time.Now()
	end := start.Add(d)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := conns[w]
			var buf []byte
			// Writers are offset so the inserts spread over the interval.
			next := start.Add(interval * time.Duration(w) / time.Duration(writers))
			for i := 0; ; i++ {
				if next.After(end) {
					return
				}
				if wait := time.Until(next); wait > 0 {
					select {
					case <-time.After(wait):
					case <-ctx.Done():
						errs <- ctx.Err()
						return
					}
				}
				n := i*writers + w
				buf = payload(buf, n)
				if _, err := conn.Exec(ctx, singleInsert, fmt.Sprintf("order-%d", n%aggregates), string(buf)); err != nil {
					errs <- err
					return
				}
				counts[w]++
				next = next.Add(interval)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	total := 0
	for _, c := range counts {
		total += c
	}
	return total, took, <-errs
}

// pgbenchScript is one live transaction for pgbench: the row writeAtRate
// inserts, with the payload built from a random number server-side.
const pgbenchScript = `\set n random(0, 999999999)
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', 'order-' || (:n % 1000), 'order.created', ('{"order_id": ' || :n || ', "customer_id": "cust-' || (:n % 977) || '", "amount": ' || (:n % 1000) || '.' || lpad((:n % 100)::text, 2, '0') || ', "currency": "EUR", "status": "created", "items": [{"sku": "SKU-' || (:n % 311) || '", "qty": ' || (1 + :n % 5) || '}], "note": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}')::jsonb);
`

// pgbenchAtRate is writeAtRate done by pgbench: writers connections, two
// threads, --rate (a Poisson schedule; late transactions are not
// skipped), prepared statements. It returns the transactions pgbench
// committed, the length of its schedule (-T, which starts once its clients
// are connected), and its CPU time.
func (e *env) pgbenchAtRate(ctx context.Context, rate, writers int, d time.Duration) (int, time.Duration, time.Duration, error) {
	script := e.logPath("live.pgbench")
	if err := os.WriteFile(script, []byte(pgbenchScript), 0o644); err != nil {
		return 0, 0, 0, err
	}
	var out bytes.Buffer
	c, err := startChild("pgbench", &out, e.logPath("pgbench.log"), filepath.Join(e.pgBin, "pgbench"),
		"-n", "-M", "prepared", "-c", strconv.Itoa(writers), "-j", "2", "-R", strconv.Itoa(rate),
		"-T", strconv.Itoa(int(d.Seconds())), "-f", script, e.url)
	if err != nil {
		return 0, 0, 0, err
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		c.stop(5 * time.Second)
		return 0, 0, 0, ctx.Err()
	}
	cpu, _ := c.usage()
	if c.err != nil {
		return 0, 0, cpu, fmt.Errorf("pgbench: %v (see %s)", c.err, e.logPath("pgbench.log"))
	}
	m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindSubmatch(out.Bytes())
	if m == nil {
		return 0, 0, cpu, fmt.Errorf("pgbench printed no transaction count: %s", out.String())
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n, time.Duration(d.Seconds()) * time.Second, cpu, nil
}
