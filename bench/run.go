package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgserver"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/slot"
)

const publication = "outbox_bench"

// The consumers, as the tables name them.
const (
	cRecvlogical = "pg_recvlogical"
	cRaw         = "raw reader"
	cNull        = "relay->null"
	cKfake       = "relay->kfake"
	cApache      = "relay->Apache Kafka"
	cPoller      = "poller->kfake"
	// The relay with --exactly-once: Kafka transactions, read_committed.
	cKfakeEOS  = "relay->kfake (exactly-once)"
	cApacheEOS = "relay->Apache Kafka (exactly-once)"
	// The peers (bench/peers.go).
	cDebezium    = "Debezium->Apache Kafka"
	cWalListener = "wal-listener->Apache Kafka"
)

// exactlyOnce reports whether consumer is the relay with --exactly-once.
func exactlyOnce(consumer string) bool { return consumer == cKfakeEOS || consumer == cApacheEOS }

// fileTag names a consumer in the tmp directory's file names.
func fileTag(consumer string) string {
	switch consumer {
	case cNull:
		return "null"
	case cKfake:
		return "kfake"
	case cApache:
		return "apache"
	case cKfakeEOS:
		return "kfake-eos"
	case cApacheEOS:
		return "apache-eos"
	case cDebezium:
		return "debezium"
	case cWalListener:
		return "wal-listener"
	}
	return strings.ReplaceAll(consumer, " ", "-")
}

// env is one benchmark run's shared state.
type env struct {
	o     options
	exe   string
	pg    *pgserver.Server
	url   string
	admin *pgx.Conn
	res   *results
	pgBin string
	loads []string // load averages sampled during the run
	// ak is the Apache Kafka cluster every Apache Kafka row shares; nil
	// with --no-apache.
	ak *apache
}

func (e *env) logPath(name string) string { return filepath.Join(e.o.tmpDir, name) }

// drainResult is one consumer draining one shape's backlog.
type drainResult struct {
	Shape    string
	Consumer string
	Events   int
	Wall     time.Duration
	CPU      time.Duration // the consumer process
	RSSKiB   int64
	PGCPU    time.Duration // the whole PostgreSQL server during the drain
	// BrokerCPU and BrokerRSSKiB are the broker process's CPU time and
	// peak RSS over the same interval (kfake or Apache Kafka).
	BrokerCPU    time.Duration
	BrokerRSSKiB int64
	Other        time.Duration // processes outside the benchmark, same interval
	// Startup is, for the peers, the time from their start to streaming
	// from the slot, and StartupCPU their CPU time meanwhile; Wall and
	// CPU are then the drain's alone.
	Startup    time.Duration
	StartupCPU time.Duration
	// Partial says why a peer's drain stopped early (--peer-limit); its
	// Events and Wall are then what it drained in that time.
	Partial string
	Load    string
	Err     string
	Profile string // pprof -top of the relay, if profiled
}

func (d drainResult) rate() float64 {
	if d.Wall <= 0 {
		return 0
	}
	return float64(d.Events) / d.Wall.Seconds()
}

// liveResult is one consumer at a fixed write rate.
type liveResult struct {
	Consumer    string
	TargetRate  int
	Events      int
	Achieved    float64
	CreateToAck percentiles
	CommitToAck percentiles // relay only: commit time from the WAL
	// CommitToReceive (relay and raw reader) and ReceiveToAck (relay)
	// split the latency where the replication reader received the event.
	CommitToReceive percentiles
	ReceiveToAck    percentiles
	PublishToAck    percentiles // the sink's part of ReceiveToAck
	CPU             time.Duration
	RSSKiB          int64
	PGCPU           time.Duration
	// BrokerCPU and BrokerRSSKiB are the broker's, over the same interval
	// as PGCPU.
	BrokerCPU    time.Duration
	BrokerRSSKiB int64
	// WriterCPU is the load generator's CPU time when it is pgbench.
	WriterCPU time.Duration
	// Other is the CPU time of processes outside the benchmark while the
	// writers ran: anything else busy on the machine perturbs the run.
	Other time.Duration
	// Profile is pprof -top of the relay, if profiled.
	Profile string
	// Tail is how long the consumer took, after the writers stopped, to
	// deliver the rest: near zero when it kept up with the rate.
	Tail time.Duration
	Load string
	Err  string
}

type percentiles struct {
	N                  int
	P50, P95, P99, Max time.Duration
}

func percentilesOf(us []int64) percentiles {
	if len(us) == 0 {
		return percentiles{}
	}
	s := append([]int64(nil), us...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		i = max(0, min(i, len(s)-1))
		return time.Duration(s[i]) * time.Microsecond
	}
	return percentiles{N: len(s), P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: time.Duration(s[len(s)-1]) * time.Microsecond}
}

type results struct {
	Started  time.Time
	Finished time.Time
	Options  options
	Command  string
	Machine  machine
	Payload  float64 // average payload bytes
	Inserts  map[string]time.Duration
	// WALBytes is the WAL written by each shape's inserts
	// (pg_current_wal_insert_lsn after minus before).
	WALBytes map[string]int64
	// MessagePayload is the average payload bytes of the message shape.
	MessagePayload float64
	Drains         []drainResult
	Live           []liveResult
	// Apache is the Apache Kafka cluster's set-up, nil with --no-apache.
	Apache *apache
	// Compat is the drop-in check's result, nil when it did not run.
	Compat *compatResult
	// ApacheCPU is the broker JVM's CPU time from its warm-up's end to the
	// end of the run, idle time between its rows included.
	ApacheCPU time.Duration
}

func run(ctx context.Context, o options) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	for _, d := range []string{o.outDir, o.tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	e := &env{o: o, exe: exe, res: &results{Started: time.Now(), Options: o, Command: commandLine(), Inserts: map[string]time.Duration{}, WALBytes: map[string]int64{}}}
	e.loads = append(e.loads, loadAverage())
	log.Printf("load average at start: %s (2 cores: above ~1.5 the numbers are perturbed)", loadAverage())

	e.pg, err = pgserver.Start(ctx, pgserver.Options{
		Settings: map[string]string{
			"shared_buffers":     "256MB",
			"max_wal_size":       "8GB",
			"min_wal_size":       "1GB",
			"checkpoint_timeout": "30min",
			"wal_buffers":        "16MB",
			"synchronous_commit": "on", // bulk writers turn it off per session
		},
		Logf: log.Printf,
	})
	if err != nil {
		return err
	}
	defer e.pg.Close()
	e.url = e.pg.URL("postgres")
	e.pgBin = pgBinDir()
	e.res.Machine = describeMachine(ctx, e)

	e.admin, err = pgx.Connect(ctx, e.url)
	if err != nil {
		return err
	}
	defer e.admin.Close(context.Background())
	if err := migrations.Apply(ctx, e.admin, "public.outbox"); err != nil {
		return err
	}
	// The poller's column; nullable without a default, so adding it rewrites
	// nothing and the relay's decoder ignores it.
	if _, err := e.admin.Exec(ctx, `ALTER TABLE outbox ADD COLUMN processed_at timestamptz`); err != nil {
		return err
	}

	if !o.noApache {
		if e.ak, err = e.startApache(ctx); err != nil {
			return err
		}
		defer e.ak.close()
		e.res.Apache = e.ak
	}
	if o.compatOnly {
		return e.compatOnly(ctx)
	}

	// The live runs come first, on the fresh server: run after the drains
	// they measured the residue of the drains' millions of inserts, which
	// the bare reader's tail latency showed as much as the relay's.
	if err := e.live(ctx); err != nil {
		return fmt.Errorf("live latency: %w", err)
	}
	for _, shape := range strings.Split(o.shapes, ",") {
		if shape = strings.TrimSpace(shape); shape == "" {
			continue
		}
		if err := e.shape(ctx, shape); err != nil {
			return fmt.Errorf("shape %s: %w", shape, err)
		}
	}
	if o.compat && e.ak != nil && ctx.Err() == nil {
		c := e.compat(ctx)
		e.res.Compat = &c
	}
	e.loads = append(e.loads, loadAverage())
	e.res.Finished = time.Now()
	if e.ak != nil {
		e.res.ApacheCPU = e.ak.cpu() - e.ak.cpuAtStart
	}
	return e.writeResults()
}

// commandLine is how the bench was run, for RESULTS.md: make sets
// MAKELEVEL in the environment of the commands it runs.
func commandLine() string {
	args := strings.Join(os.Args[1:], " ")
	switch {
	case os.Getenv("MAKELEVEL") != "" && args == "":
		return "make bench"
	case os.Getenv("MAKELEVEL") != "":
		return fmt.Sprintf("make bench BENCH_FLAGS='%s'", args)
	}
	return strings.TrimSpace("go run ./bench " + args)
}

func pgBinDir() string {
	if d := os.Getenv("OUTBOX_RELAY_PG_BIN"); d != "" {
		return d
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "pg_recvlogical")); err == nil {
			return d
		}
	}
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_recvlogical")
	sort.Strings(m)
	if len(m) > 0 {
		return filepath.Dir(m[len(m)-1])
	}
	return ""
}

// shape measures every consumer on one backlog of o.events events.
func (e *env) shape(ctx context.Context, shape string) error {
	consumers := []string{cRecvlogical, cNull, cKfake}
	if e.o.exactlyOnce && shape != "message" {
		consumers = append(consumers, cKfakeEOS)
	}
	if e.ak != nil {
		consumers = append(consumers, cApache)
		if e.o.exactlyOnce && shape != "message" {
			consumers = append(consumers, cApacheEOS)
		}
		// The peers read rows, not logical messages.
		if shape != "message" {
			consumers = append(consumers, e.peers()...)
		}
	}
	consumers = e.onlyConsumers(consumers)
	slots := map[string]string{}
	if _, err := e.admin.Exec(ctx, `TRUNCATE outbox`); err != nil {
		return err
	}
	// Every slot exists before the first insert: each consumer drains the
	// same WAL.
	for _, c := range consumers {
		name := slotName(c, shape)
		slots[c] = name
		if _, err := slot.Ensure(ctx, e.admin, slot.Config{Slot: name, Publication: publication, Table: "public.outbox"}); err != nil {
			return err
		}
	}
	log.Printf("[%s] inserting %d events", shape, e.o.events)
	walStart, err := e.walEnd(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	switch shape {
	case "batch":
		err = e.insertBatches(ctx, e.o.events)
	case "single":
		err = e.insertSingles(ctx, e.o.events, e.o.writers)
	case "message":
		e.res.MessagePayload, err = e.insertMessages(ctx, e.o.events)
	default:
		return fmt.Errorf("unknown shape %q (want batch, message or single)", shape)
	}
	if err != nil {
		return err
	}
	took := time.Since(start)
	e.res.Inserts[shape] = took
	end, err := e.walEnd(ctx)
	if err != nil {
		return err
	}
	e.res.WALBytes[shape] = int64(end - walStart)
	if e.res.Payload == 0 && shape != "message" {
		_ = e.admin.QueryRow(ctx, `SELECT avg(octet_length(payload::text)) FROM outbox`).Scan(&e.res.Payload)
	}
	log.Printf("[%s] inserted %d events in %s (%.0f/s); WAL end %s, %.0f WAL bytes/event", shape, e.o.events, took.Round(time.Millisecond),
		float64(e.o.events)/took.Seconds(), end, float64(end-walStart)/float64(e.o.events))
	// Let the WAL writer and autovacuum settle so the drains start alike.
	if _, err := e.admin.Exec(ctx, `CHECKPOINT`); err != nil {
		return err
	}

	for _, c := range consumers {
		var r drainResult
		switch c {
		case cRecvlogical:
			r = e.drainRecvlogical(ctx, shape, slots[c], end)
		case cDebezium:
			r = e.drainDebezium(ctx, shape, slots[c])
		case cWalListener:
			r = e.drainWalListener(ctx, shape, slots[c])
		default:
			r = e.drainRelay(ctx, shape, slots[c], c, end)
		}
		if r.Partial == "" {
			r.Events = e.o.events
		}
		e.logDrain(r)
		e.res.Drains = append(e.res.Drains, r)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := e.admin.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slots[c]); err != nil {
			return err
		}
	}
	if shape == "batch" && !e.o.skipPoller {
		r := e.drainPoller(ctx, shape)
		e.logDrain(r)
		e.res.Drains = append(e.res.Drains, r)
	}
	return ctx.Err()
}

// slotName is a consumer's slot for shape: lower-case letters, digits and
// underscores.
func slotName(consumer, shape string) string {
	c := strings.NewReplacer("->", "_", "pg_", "").Replace(strings.ToLower(consumer))
	c = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, c)
	return "bench_" + c + "_" + shape
}

func (e *env) logDrain(r drainResult) {
	if r.Err != "" {
		log.Printf("[%s] %s: FAILED: %s", r.Shape, r.Consumer, r.Err)
		return
	}
	log.Printf("[%s] %-19s %8d events in %7s = %8.0f ev/s; cpu %s, rss %d MiB, postgres cpu %s, broker cpu %s, broker rss %d MiB; other processes cpu %s; load %s",
		r.Shape, r.Consumer, r.Events, r.Wall.Round(time.Millisecond), r.rate(), r.CPU.Round(time.Millisecond), r.RSSKiB/1024, r.PGCPU.Round(time.Millisecond),
		r.BrokerCPU.Round(time.Millisecond), r.BrokerRSSKiB/1024, r.Other.Round(10*time.Millisecond), r.Load)
}

// walEnd returns the current WAL insert position: every insert so far is
// before it.
func (e *env) walEnd(ctx context.Context) (pglogrepl.LSN, error) {
	var s string
	if err := e.admin.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(s)
}

// waitConfirmed polls the slot until its confirmed_flush_lsn reaches end,
// or the consumer exits, or limit passes.
func (e *env) waitConfirmed(ctx context.Context, slotName string, end pglogrepl.LSN, c *child, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		var s *string
		if err := e.admin.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slotName).Scan(&s); err != nil {
			return time.Time{}, err
		}
		if s != nil {
			lsn, err := pglogrepl.ParseLSN(*s)
			if err != nil {
				return time.Time{}, err
			}
			if lsn >= end {
				return time.Now(), nil
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("slot %s not confirmed up to %s within %s", slotName, end, limit)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-c.done:
			return time.Time{}, fmt.Errorf("%s exited before confirming %s: %v", c.name, end, c.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitWalsendersGone waits (up to 5s) until the PostgreSQL server has no
// walsender process left: an exited consumer's walsender counts in the
// server's CPU time only once the postmaster has reaped it.
func (e *env) waitWalsendersGone(ctx context.Context) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if walsenders(e.pg.DataDir()) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// drainLimit bounds one drain: generous, so only a hang trips it.
func (e *env) drainLimit() time.Duration {
	return 2*time.Minute + time.Duration(e.o.events/2000)*time.Second
}

func (e *env) drainRecvlogical(ctx context.Context, shape, slotName string, end pglogrepl.LSN) drainResult {
	r := drainResult{Shape: shape, Consumer: cRecvlogical, Events: e.o.events}
	pgBefore, _ := postgresCPU(e.pg.DataDir())
	otherBefore := e.otherSnapshot()
	start := time.Now()
	args := []string{"-d", e.url, "--slot", slotName, "--start", "--no-loop", "-f", "/dev/null",
		"--endpos", end.String(), "-o", "proto_version=1", "-o", "publication_names=" + publication}
	if shape == "message" {
		// pgoutput leaves logical messages out unless asked.
		args = append(args, "-o", "messages=true")
	}
	c, err := startChild("pg_recvlogical", nil, e.logPath("recvlogical-"+shape+".log"), filepath.Join(e.pgBin, "pg_recvlogical"), args...)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	select {
	case <-c.done:
	case <-time.After(e.drainLimit()):
		c.stop(5 * time.Second)
		r.Err = "pg_recvlogical did not reach the end position in time"
		return r
	case <-ctx.Done():
		c.stop(5 * time.Second)
		r.Err = ctx.Err().Error()
		return r
	}
	r.Wall = time.Since(start)
	r.Load = loadAverage()
	r.Other = otherCPU(otherBefore, e.otherSnapshot())
	// Its walsender exits with it; once the postmaster has reaped it, its
	// CPU time is in the postmaster's children's total.
	e.waitWalsendersGone(ctx)
	pgAfter, _ := postgresCPU(e.pg.DataDir())
	r.PGCPU = pgAfter - pgBefore
	if c.err != nil {
		r.Err = fmt.Sprintf("pg_recvlogical: %v (see %s)", c.err, e.logPath("recvlogical-"+shape+".log"))
	}
	r.CPU, r.RSSKiB = c.usage()
	return r
}

// relayOpts are the relay helper's optional settings.
type relayOpts struct {
	brokers       string
	latency       bool
	profile       string // CPU profile file
	trace         string // runtime/trace file
	messagePrefix string // message mode
	exactlyOnce   bool
}

// startRelay starts the relay helper on slotName.
func (e *env) startRelay(name, slotName, sinkName string, o relayOpts) (*child, error) {
	stats := e.logPath(name + ".stats.json")
	os.Remove(stats)
	args := []string{"relay", "-pg-url", e.url, "-slot", slotName, "-publication", publication, "-sink", sinkName, "-stats", stats}
	if o.brokers != "" {
		args = append(args, "-brokers", o.brokers)
	}
	if o.latency {
		args = append(args, "-latency")
	}
	if o.profile != "" {
		args = append(args, "-cpuprofile", o.profile)
	}
	if o.trace != "" {
		args = append(args, "-trace", o.trace)
	}
	if o.messagePrefix != "" {
		args = append(args, "-message-prefix", o.messagePrefix)
	}
	if o.exactlyOnce {
		args = append(args, "-exactly-once")
	}
	if e.o.linger > 0 {
		args = append(args, "-kafka-linger", e.o.linger.String())
	}
	c, err := startChildEnv(name, e.consumerEnv(), nil, e.logPath(name+".log"), e.exe, args...)
	if err != nil {
		return nil, err
	}
	c.stats = stats
	return c, nil
}

// consumerEnv is the environment added for the relay and raw reader.
func (e *env) consumerEnv() []string {
	if e.o.procs > 0 {
		return []string{fmt.Sprintf("GOMAXPROCS=%d", e.o.procs)}
	}
	return nil
}

// brokerFor returns the address and process id of consumer's broker: a
// fresh kfake process (stop it when done), or the shared Apache Kafka
// node. The relay without a broker has none.
func (e *env) brokerFor(ctx context.Context, consumer string) (addr string, pid int, kfake *broker, err error) {
	switch consumer {
	case cKfake, cPoller, cKfakeEOS:
		b, err := e.startBroker(ctx)
		if err != nil {
			return "", 0, nil, err
		}
		return b.addr, b.cmd.Process.Pid, b, nil
	case cApache, cApacheEOS, cDebezium, cWalListener:
		return e.ak.addr, e.ak.pid(), nil, nil
	}
	return "", 0, nil, nil
}

func (e *env) drainRelay(ctx context.Context, shape, slotName, consumer string, end pglogrepl.LSN) drainResult {
	r := drainResult{Shape: shape, Consumer: consumer, Events: e.o.events}
	brokers, brokerPid, kfake, err := e.brokerFor(ctx, consumer)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	if kfake != nil {
		defer kfake.stop(10 * time.Second)
	}
	sinkName := "kafka"
	if consumer == cNull {
		sinkName = "null"
	}
	name := fmt.Sprintf("relay-%s-%s", shape, fileTag(consumer))
	profile := ""
	if e.o.profile {
		profile = e.logPath(name + ".pprof")
	}
	var brokerUsage func() (time.Duration, int64)
	if brokerPid != 0 {
		brokerUsage = meter(brokerPid)
	}
	pgBefore, _ := postgresCPU(e.pg.DataDir())
	otherBefore := e.otherSnapshot()
	start := time.Now()
	ro := relayOpts{brokers: brokers, profile: profile, exactlyOnce: exactlyOnce(consumer)}
	if shape == "message" {
		ro.messagePrefix = messagePrefix
	}
	c, err := e.startRelay(name, slotName, sinkName, ro)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	done, err := e.waitConfirmed(ctx, slotName, end, c, e.drainLimit())
	r.Load = loadAverage()
	r.Other = otherCPU(otherBefore, e.otherSnapshot())
	pgAfter, _ := postgresCPU(e.pg.DataDir())
	if brokerUsage != nil {
		r.BrokerCPU, r.BrokerRSSKiB = brokerUsage()
	}
	stopErr := c.stop(40 * time.Second)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Wall = done.Sub(start)
	r.PGCPU = pgAfter - pgBefore
	r.CPU, r.RSSKiB = c.usage()
	st, serr := c.readStats()
	switch {
	case stopErr != nil:
		r.Err = fmt.Sprintf("relay exit: %v (see %s)", stopErr, e.logPath(name+".log"))
	case serr != nil:
		r.Err = serr.Error()
	case st.RunErr != "":
		r.Err = st.RunErr
	case st.Acked != int64(e.o.events):
		r.Err = fmt.Sprintf("relay acknowledged %d events, want %d", st.Acked, e.o.events)
	}
	if profile != "" {
		r.Profile = pprofTop(profile)
	}
	return r
}

// pprofTop renders the top of a CPU profile.
func pprofTop(profile string) string {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=30", profile).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof failed: %v\n%s", err, out)
	}
	return string(out)
}

// drainPoller measures the SKIP LOCKED poller on the backlog left in the
// table (the relays only read the WAL; the rows are all unprocessed).
func (e *env) drainPoller(ctx context.Context, shape string) drainResult {
	r := drainResult{Shape: shape, Consumer: cPoller, Events: e.o.events}
	// The index a poller needs, created now so the relays' drains ran on
	// WAL without it.
	if _, err := e.admin.Exec(ctx, `CREATE INDEX IF NOT EXISTS outbox_unprocessed ON outbox (created_at) WHERE processed_at IS NULL`); err != nil {
		r.Err = err.Error()
		return r
	}
	if _, err := e.admin.Exec(ctx, `VACUUM ANALYZE outbox`); err != nil {
		r.Err = err.Error()
		return r
	}
	b, err := e.startBroker(ctx)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer b.stop(10 * time.Second)
	brokerUsage := meter(b.cmd.Process.Pid)
	pgBefore, _ := postgresCPU(e.pg.DataDir())
	otherBefore := e.otherSnapshot()
	start := time.Now()
	c, err := e.startPoller("poller-"+shape, b.addr, false)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	done, err := e.waitProcessed(ctx, c, e.drainLimit())
	r.Load = loadAverage()
	r.Other = otherCPU(otherBefore, e.otherSnapshot())
	pgAfter, _ := postgresCPU(e.pg.DataDir())
	r.BrokerCPU, r.BrokerRSSKiB = brokerUsage()
	stopErr := c.stop(20 * time.Second)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Wall = done.Sub(start)
	r.PGCPU = pgAfter - pgBefore
	r.CPU, r.RSSKiB = c.usage()
	st, serr := c.readStats()
	switch {
	case stopErr != nil:
		r.Err = fmt.Sprintf("poller exit: %v", stopErr)
	case serr != nil:
		r.Err = serr.Error()
	case st.RunErr != "":
		r.Err = st.RunErr
	case st.Acked != int64(e.o.events):
		r.Err = fmt.Sprintf("poller published %d events, want %d", st.Acked, e.o.events)
	}
	return r
}

func (e *env) startPoller(name, brokers string, latency bool) (*child, error) {
	stats := e.logPath(name + ".stats.json")
	os.Remove(stats)
	args := []string{"poller", "-pg-url", e.url, "-brokers", brokers, "-stats", stats}
	if latency {
		args = append(args, "-latency")
	}
	c, err := startChild(name, nil, e.logPath(name+".log"), e.exe, args...)
	if err != nil {
		return nil, err
	}
	c.stats = stats
	return c, nil
}

// waitProcessed polls until no row is left unprocessed.
func (e *env) waitProcessed(ctx context.Context, c *child, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		var left bool
		if err := e.admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM outbox WHERE processed_at IS NULL)`).Scan(&left); err != nil {
			return time.Time{}, err
		}
		if !left {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("rows still unprocessed after %s", limit)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-c.done:
			return time.Time{}, fmt.Errorf("%s exited early: %v", c.name, c.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// liveConsumers maps the --live names to consumers, in run order.
var liveConsumers = []struct{ flag, consumer string }{
	{"raw", cRaw},
	{"relay", cKfake},
	{"apache", cApache},
	{"poller", cPoller},
	{"relay-eos", cKfakeEOS},
	{"apache-eos", cApacheEOS},
	{"debezium", cDebezium},
	{"wal-listener", cWalListener},
}

// live measures latency at a fixed write rate: the bare replication
// reader (the floor), the relay to kfake and to Apache Kafka, then the
// poller to kfake, each alone.
func (e *env) live(ctx context.Context) error {
	want := map[string]bool{}
	for _, f := range strings.Split(e.o.live, ",") {
		want[strings.TrimSpace(f)] = true
	}
	for _, lc := range liveConsumers {
		consumer := lc.consumer
		apacheOnly := consumer == cApache || consumer == cApacheEOS || consumer == cDebezium || consumer == cWalListener
		if !want[lc.flag] || consumer == cPoller && e.o.skipPoller || apacheOnly && e.ak == nil ||
			exactlyOnce(consumer) && !e.o.exactlyOnce || (consumer == cDebezium || consumer == cWalListener) && !slices.Contains(e.peers(), consumer) {
			continue
		}
		var r liveResult
		switch consumer {
		case cDebezium:
			r = e.liveDebezium(ctx)
		case cWalListener:
			r = liveResult{Consumer: consumer, TargetRate: e.o.rate}
			if _, err := walListener(ctx); err != nil {
				r.Err = err.Error()
			} else {
				r.Err = "wal-listener installed, but the bench does not configure it yet (bench/peers.go)"
			}
		default:
			r = e.liveRun(ctx, consumer)
		}
		switch {
		case r.Err != "":
			log.Printf("[live] %s: FAILED: %s", consumer, r.Err)
		case consumer == cRaw:
			log.Printf("[live] %-14s %d events at %.0f/s (read %s after the writers stopped): commit-to-received p50 %s p95 %s p99 %s max %s; load %s",
				consumer, r.Events, r.Achieved, r.Tail.Round(time.Millisecond), ms(r.CommitToReceive.P50), ms(r.CommitToReceive.P95), ms(r.CommitToReceive.P99), ms(r.CommitToReceive.Max), r.Load)
		default:
			log.Printf("[live] %-14s %d events at %.0f/s (delivered %s after the writers stopped): insert-to-ack p50 %s p95 %s p99 %s max %s; commit-to-ack p50 %s p99 %s; commit-to-received p50 %s p99 %s; received-to-ack p50 %s p99 %s (published-to-ack p50 %s p99 %s); cpu %s; broker cpu %s; other processes cpu %s; load %s",
				consumer, r.Events, r.Achieved, r.Tail.Round(time.Millisecond), ms(r.CreateToAck.P50), ms(r.CreateToAck.P95), ms(r.CreateToAck.P99), ms(r.CreateToAck.Max),
				ms(r.CommitToAck.P50), ms(r.CommitToAck.P99), ms(r.CommitToReceive.P50), ms(r.CommitToReceive.P99), ms(r.ReceiveToAck.P50), ms(r.ReceiveToAck.P99),
				ms(r.PublishToAck.P50), ms(r.PublishToAck.P99), r.CPU.Round(time.Millisecond), r.BrokerCPU.Round(time.Millisecond), r.Other.Round(10*time.Millisecond), r.Load)
		}
		e.res.Live = append(e.res.Live, r)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

func (e *env) liveRun(ctx context.Context, consumer string) liveResult {
	r := liveResult{Consumer: consumer, TargetRate: e.o.rate}
	if _, err := e.admin.Exec(ctx, `TRUNCATE outbox`); err != nil {
		r.Err = err.Error()
		return r
	}
	e.settle(ctx)
	const liveSlot = "bench_live"
	usesSlot := consumer != cPoller
	var c *child
	var err error
	if usesSlot {
		if _, err := slot.Ensure(ctx, e.admin, slot.Config{Slot: liveSlot, Publication: publication, Table: "public.outbox"}); err != nil {
			r.Err = err.Error()
			return r
		}
		defer e.admin.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, liveSlot)
	}
	brokers, brokerPid, kfake, err := e.brokerFor(ctx, consumer)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	if kfake != nil {
		defer kfake.stop(10 * time.Second)
	}
	relayName := "relay-live-" + fileTag(consumer)
	switch consumer {
	case cRaw:
		c, err = e.startRawReader("rawreader-live", liveSlot)
	case cKfake, cApache, cKfakeEOS, cApacheEOS:
		ro := relayOpts{brokers: brokers, latency: !exactlyOnce(consumer), exactlyOnce: exactlyOnce(consumer)}
		if e.o.liveProfile {
			ro.profile = e.logPath(relayName + ".pprof")
		}
		if e.o.liveTrace {
			ro.trace = e.logPath(relayName + ".trace")
		}
		c, err = e.startRelay(relayName, liveSlot, "kafka", ro)
	default:
		c, err = e.startPoller("poller-live", brokers, true)
	}
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer c.stop(40 * time.Second)
	// One warm-up event, delivered before the clock runs: the consumer is
	// connected, streaming (or polling) and has a producer with metadata.
	if _, err := e.admin.Exec(ctx, singleInsert, "order-0", `{"warm_up": true}`); err != nil {
		r.Err = err.Error()
		return r
	}
	caughtUp := func() error {
		if !usesSlot {
			_, err := e.waitProcessed(ctx, c, time.Minute)
			return err
		}
		end, err := e.walEnd(ctx)
		if err == nil {
			_, err = e.waitConfirmed(ctx, liveSlot, end, c, time.Minute)
		}
		return err
	}
	if err := caughtUp(); err != nil {
		r.Err = "warm-up: " + err.Error()
		return r
	}
	var brokerUsage func() (time.Duration, int64)
	if brokerPid != 0 {
		brokerUsage = meter(brokerPid)
	}
	// With --exactly-once, latency is insert to the record reaching a
	// read_committed consumer: visible, not just acknowledged.
	var lc *latencyConsumer
	if exactlyOnce(consumer) {
		if lc, err = startLatencyConsumer(brokers, benchTopic, "", true, time.Now()); err != nil {
			r.Err = err.Error()
			return r
		}
		defer lc.close()
	}
	pgBefore, _ := postgresCPU(e.pg.DataDir())
	otherBefore := e.otherSnapshot()
	var n int
	var took time.Duration
	if e.o.pgbench {
		n, took, r.WriterCPU, err = e.pgbenchAtRate(ctx, e.o.rate, e.o.writers, e.o.liveDuration)
	} else {
		n, took, err = e.writeAtRate(ctx, e.o.rate, e.o.writers, e.o.liveDuration)
	}
	r.Load = loadAverage()
	r.Other = otherCPU(otherBefore, e.otherSnapshot())
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Events, r.Achieved = n, float64(n)/took.Seconds()
	writersDone := time.Now()
	if err := caughtUp(); err != nil {
		r.Err = err.Error()
		return r
	}
	if lc != nil {
		if err := lc.wait(ctx, n, time.Minute); err != nil {
			r.Err = err.Error()
			return r
		}
	}
	r.Tail = time.Since(writersDone)
	pgAfter, _ := postgresCPU(e.pg.DataDir())
	r.PGCPU = pgAfter - pgBefore
	if brokerUsage != nil {
		r.BrokerCPU, r.BrokerRSSKiB = brokerUsage()
	}
	if err := c.stop(40 * time.Second); err != nil {
		r.Err = err.Error()
		return r
	}
	r.CPU, r.RSSKiB = c.usage()
	if (consumer == cKfake || consumer == cApache || exactlyOnce(consumer)) && e.o.liveProfile {
		r.Profile = pprofTop(e.logPath(relayName + ".pprof"))
	}
	st, err := c.readStats()
	if err != nil {
		r.Err = err.Error()
		return r
	}
	if st.RunErr != "" {
		r.Err = st.RunErr
		return r
	}
	if st.Acked != int64(n)+1 {
		r.Err = fmt.Sprintf("%d events acknowledged, %d written (and one warm-up)", st.Acked, n)
	}
	if lc != nil {
		r.CreateToAck = percentilesOf(lc.close())
		return r
	}
	// The first sample is the warm-up event's.
	r.CreateToAck = percentilesOf(dropFirst(st.CreateToAck))
	r.CommitToAck = percentilesOf(dropFirst(st.CommitToAck))
	r.CommitToReceive = percentilesOf(dropFirst(st.CommitToReceive))
	r.ReceiveToAck = percentilesOf(dropFirst(st.ReceiveToAck))
	r.PublishToAck = percentilesOf(dropFirst(st.PublishToAck))
	return r
}

// startRawReader starts the bare replication reader on slotName.
func (e *env) startRawReader(name, slotName string) (*child, error) {
	stats := e.logPath(name + ".stats.json")
	os.Remove(stats)
	c, err := startChildEnv(name, e.consumerEnv(), nil, e.logPath(name+".log"), e.exe, "rawreader", "-pg-url", e.url, "-slot", slotName, "-publication", publication, "-stats", stats)
	if err != nil {
		return nil, err
	}
	c.stats = stats
	return c, nil
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

func dropFirst(s []int64) []int64 {
	if len(s) == 0 {
		return s
	}
	return s[1:]
}

// settle lets the machine go quiet before a live run: a CHECKPOINT, then
// sync(2) and a wait (up to a minute) until the kernel has written back
// all but a few MiB of dirty pages. Without it a live run that follows
// the drains shares the disk with gigabytes of their writeback, and the
// fsync of every single-row commit waits behind it: the tail latency then
// measures the benchmark's previous phase.
func (e *env) settle(ctx context.Context) {
	start := time.Now()
	before := dirtyKiB()
	if _, err := e.admin.Exec(ctx, `CHECKPOINT`); err != nil {
		log.Printf("settle: checkpoint: %v", err)
	}
	syscall.Sync()
	deadline := start.Add(time.Minute)
	for dirtyKiB() > 8<<10 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	log.Printf("settle: checkpoint and writeback in %s (dirty + writeback %d MiB before, %d MiB after); load %s",
		time.Since(start).Round(time.Millisecond), before>>10, dirtyKiB()>>10, loadAverage())
}

// dirtyKiB is the kernel's dirty and under-writeback page cache, in KiB
// (/proc/meminfo), or 0 if unknown.
func dirtyKiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var total int64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "Dirty:" || f[0] == "Writeback:") {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			total += n
		}
	}
	return total
}
