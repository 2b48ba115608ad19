package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/pgserver"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sink/kafka"
	"github.com/outbox-relay/outbox-relay/slot"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run the whole pipeline on embedded defaults: a throwaway PostgreSQL, an in-process Kafka-protocol broker, sample events",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "duration", Usage: "stop after this long (0: until Ctrl-C)"},
			&cli.IntFlag{Name: "rate", Value: 300, Usage: "events written per second"},
			&cli.IntFlag{Name: "kafka-port", Usage: "loopback port for the broker (0: any free port)"},
			&cli.IntFlag{Name: "pg-port", Usage: "loopback port for PostgreSQL (0: any free port)"},
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "relay log level"},
		},
		Action: runDemo,
	}
}

func runDemo(c *cli.Context) error {
	rate := c.Int("rate")
	if rate < 1 || rate > 100000 {
		return usagef("--rate %d: want 1..100000 events per second", rate)
	}
	if c.Duration("duration") < 0 {
		return usagef("--duration must not be negative")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return usagef("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	ctx := c.Context
	if d := c.Duration("duration"); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	out := c.App.Writer
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level}))

	fmt.Fprintln(out, "outbox-relay demo: starting a throwaway PostgreSQL (wal_level=logical)...")
	pg, err := pgserver.Start(ctx, pgserver.Options{Port: c.Int("pg-port")})
	if err != nil {
		return fmt.Errorf("starting the demo PostgreSQL: %w", err)
	}
	defer func() {
		if err := pg.Close(); err != nil {
			fmt.Fprintf(c.App.ErrWriter, "stopping the demo PostgreSQL: %v\n", err)
		}
	}()
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3)}
	if p := c.Int("kafka-port"); p != 0 {
		opts = append(opts, kfake.Ports(p))
	}
	broker, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("starting the in-process Kafka-protocol broker: %w", err)
	}
	defer broker.Close()
	brokers := broker.ListenAddrs()
	url := pg.URL("postgres")

	fmt.Fprintf(out, "PostgreSQL   %s (data dir %s, removed on exit)\n", url, pg.DataDir())
	fmt.Fprintf(out, "Kafka broker %s\n", brokers[0])

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connecting to the demo PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	if err := migrations.Apply(ctx, conn, "public.outbox"); err != nil {
		return fmt.Errorf("creating the outbox table: %w", err)
	}

	slotCfg := slot.Config{Slot: "outbox_relay_demo", Publication: "outbox_relay_demo", Table: "public.outbox"}
	// The slot must exist before the first event is written: a slot only
	// sees transactions that commit after it was created.
	if _, err := slot.Ensure(ctx, conn, slotCfg); err != nil {
		return fmt.Errorf("creating the demo slot: %w", err)
	}
	cfg := relay.Config{
		ConnString:     url,
		Slot:           slotCfg,
		CreateSlot:     true,
		Decoder:        decoder.Config{Table: "public.outbox", Columns: decoder.DefaultColumns(), Topic: "outbox.{aggregate_type}"},
		StatusInterval: time.Second,
		Logger:         log,
	}
	kcfg := kafka.Config{Brokers: brokers, ClientID: "outbox-relay-demo", MaxInFlight: 10000, Logger: log}
	r, err := relay.New(cfg, kafkaPublisher(kcfg))
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	// The relay and the consumer outlive ctx (Ctrl-C, --duration) so that
	// what was written is delivered before the demo stops them.
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	relayErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		relayErr <- r.Run(runCtx)
	}()

	st := &demoStats{}
	consumeErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		consumeErr <- consumeDemo(runCtx, brokers, st)
	}()
	// The writer stops first, so the relay can deliver what was written.
	writeCtx, stopWriting := context.WithCancel(ctx)
	defer stopWriting()
	writeErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		writeErr <- writeDemo(writeCtx, url, rate, st)
	}()

	fmt.Fprintf(out, "writing ~%d order events/s over 20 aggregates (some transactions carry several events); Ctrl-C stops and cleans up\n", rate)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var runErr error
	shown := false // the sample records
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-relayErr:
			runErr = fmt.Errorf("relay stopped: %w", err)
			break loop
		case err := <-writeErr:
			if err != nil && runCtx.Err() == nil {
				runErr = fmt.Errorf("writing sample events: %w", err)
				break loop
			}
		case err := <-consumeErr:
			if err != nil && runCtx.Err() == nil {
				runErr = fmt.Errorf("reading events back: %w", err)
				break loop
			}
		case <-tick.C:
			if !shown {
				shown = printDemoSamples(out, st, brokers[0], url, slotCfg.Publication)
			}
			printDemoLine(ctx, out, conn, slotCfg.Slot, st)
		}
	}
	if runErr == nil {
		stopWriting()
		drainDemo(relayErr, st, 10*time.Second)
	}
	stop()
	wg.Wait()
	if !shown {
		printDemoSamples(out, st, brokers[0], url, slotCfg.Publication)
	}
	printDemoLine(context.Background(), out, conn, slotCfg.Slot, st)
	fmt.Fprintln(out)
	w, d, _, _ := st.snapshot()
	fmt.Fprintf(out, "stopped: %d events written, %d delivered; removing the demo PostgreSQL and broker\n", w, d)
	if runErr != nil {
		return runErr
	}
	if w > 0 && d == 0 {
		return errors.New("no events were delivered")
	}
	return nil
}

// drainDemo waits, up to limit, until every written event was delivered.
func drainDemo(relayErr <-chan error, st *demoStats, limit time.Duration) {
	deadline := time.After(limit)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st.mu.Lock()
		done := st.delivered >= st.written
		st.mu.Unlock()
		if done {
			return
		}
		select {
		case <-deadline:
			return
		case <-relayErr:
			return
		case <-tick.C:
		}
	}
}

// demoStats is shared by the writer, the consumer and the status line.
type demoStats struct {
	mu        sync.Mutex
	written   int64
	delivered int64
	latencies []time.Duration // since the last status line
	samples   []*kgo.Record   // the first few records read back
}

// demoSamples is how many delivered records the demo shows.
const demoSamples = 3

// printDemoSamples shows the first records the consumer read, as a
// consumer sees them, and how to read more; it reports whether there
// were enough to show.
func printDemoSamples(w io.Writer, st *demoStats, broker, pgURL, publication string) bool {
	st.mu.Lock()
	recs := slices.Clone(st.samples)
	st.mu.Unlock()
	if len(recs) < demoSamples {
		return false
	}
	if isTerminal(w) {
		fmt.Fprintln(w) // past the status line
	}
	fmt.Fprintf(w, "the first %d records delivered, as a Kafka consumer reads them:\n", len(recs))
	for _, r := range recs {
		var headers []string
		for _, h := range r.Headers {
			headers = append(headers, h.Key+"="+string(h.Value))
		}
		fmt.Fprintf(w, "  topic %s  partition %d  offset %d  key %s\n    headers %s\n    value   %s\n",
			r.Topic, r.Partition, r.Offset, r.Key, strings.Join(headers, " "), r.Value)
	}
	fmt.Fprintf(w, "read more while the demo runs:\n"+
		"  kcat -b %s -C -t outbox.order -f '%%t [%%p] @%%o key %%k headers %%h: %%s\\n'   (apt-get install kcat)\n"+
		"  outbox-relay run --pg-url '%s' --publication %s --slot demo_stdout --sink stdout --metrics-addr ''   (the events as JSON lines, from a slot of its own: those written from now on)\n",
		broker, pgURL, publication)
	return true
}

func (s *demoStats) snapshot() (written, delivered int64, p50, p99 time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lat := s.latencies
	s.latencies = nil
	if len(lat) > 0 {
		slices.Sort(lat)
		p50 = lat[len(lat)*50/100]
		p99 = lat[min(len(lat)*99/100, len(lat)-1)]
	}
	return s.written, s.delivered, p50, p99
}

func printDemoLine(ctx context.Context, w io.Writer, conn *pgx.Conn, slotName string, st *demoStats) {
	written, delivered, p50, p99 := st.snapshot()
	var confirmed pglogrepl.LSN
	var lag int64
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_ = conn.QueryRow(qctx, `select confirmed_flush_lsn, pg_current_wal_lsn() - confirmed_flush_lsn
		from pg_replication_slots where slot_name = $1`, slotName).Scan(&confirmed, &lag)
	line := fmt.Sprintf("written %7d  delivered %7d  latency p50 %6s p99 %6s  confirmed %-12s slot lag %s",
		written, delivered, fmtLatency(p50), fmtLatency(p99), confirmed, walBytes(lag))
	if isTerminal(w) {
		fmt.Fprintf(w, "\r%s\033[K", line)
	} else {
		fmt.Fprintln(w, line)
	}
}

func fmtLatency(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(100 * time.Microsecond).String()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// writeDemo inserts order events at rate per second: mostly one event per
// transaction, sometimes created+paid together.
func writeDemo(ctx context.Context, url string, rate int, st *demoStats) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rng := rand.New(rand.NewPCG(1, 2))
	// Write in small bursts every 10ms to approximate the rate smoothly.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var sent int64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		due := int64(time.Since(start).Seconds() * float64(rate))
		for sent < due {
			n := 1
			if rng.IntN(5) == 0 {
				n = 2 // a multi-event transaction
			}
			if err := writeDemoTx(ctx, conn, rng, n); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			sent += int64(n)
			st.mu.Lock()
			st.written += int64(n)
			st.mu.Unlock()
		}
	}
}

var demoEvents = []string{"OrderCreated", "OrderPaid"}

func writeDemoTx(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, n int) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	agg := "order-" + strconv.Itoa(1+rng.IntN(20))
	for i := range n {
		payload, _ := json.Marshal(map[string]any{
			"order_id":   agg,
			"amount":     rng.IntN(10000),
			"written_at": time.Now().UnixNano(),
		})
		if _, err := tx.Exec(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			values ('order', $1, $2, $3, '{"source":"demo"}')`, agg, demoEvents[i%len(demoEvents)], payload); err != nil {
			return err
		}
	}
	// Not cancellable: a stop that cut the commit short could leave it
	// committed but not counted as written.
	return tx.Commit(context.WithoutCancel(ctx))
}

// consumeDemo reads the events back with an independent Kafka client and
// measures write-to-delivery latency.
func consumeDemo(ctx context.Context, brokers []string, st *demoStats) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeRegex(), kgo.ConsumeTopics(`^outbox\..*`),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// The topics appear when the relay first produces: look for them
		// every second instead of kgo's default five minutes.
		kgo.MetadataMinAge(250*time.Millisecond), kgo.MetadataMaxAge(time.Second),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		now := time.Now()
		var n int64
		var lats []time.Duration
		var samples []*kgo.Record
		fetches.EachRecord(func(r *kgo.Record) {
			n++
			if len(samples) < demoSamples {
				samples = append(samples, r)
			}
			var p struct {
				WrittenAt int64 `json:"written_at"`
			}
			if json.Unmarshal(r.Value, &p) == nil && p.WrittenAt > 0 {
				lats = append(lats, now.Sub(time.Unix(0, p.WrittenAt)))
			}
		})
		st.mu.Lock()
		st.delivered += n
		st.latencies = append(st.latencies, lats...)
		if len(st.samples) < demoSamples {
			st.samples = append(st.samples, samples[:min(len(samples), demoSamples-len(st.samples))]...)
		}
		st.mu.Unlock()
	}
}
