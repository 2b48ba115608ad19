package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sink/kafka"
	"github.com/outbox-relay/outbox-relay/slot"
)

// relayStats is what the relay helper reports when it stops.
type relayStats struct {
	Acked    int64 `json:"acked"`
	FirstAck int64 `json:"first_ack_unix_nano"`
	LastAck  int64 `json:"last_ack_unix_nano"`
	VmHWMKiB int64 `json:"vm_hwm_kib"`
	RunErr   string
	// Latencies in microseconds, when --latency was given: broker ack
	// minus the transaction's commit time from the WAL, and minus the
	// row's created_at (now() of the inserting transaction).
	CommitToAck []int64 `json:"commit_to_ack_us,omitempty"`
	CreateToAck []int64 `json:"create_to_ack_us,omitempty"`
	// The split of CommitToAck at the moment the relay's replication
	// reader received the event's message: PostgreSQL's share (commit to
	// received) and the relay's (received to ack). The raw reader records
	// only CommitToReceive, for commit messages.
	CommitToReceive []int64 `json:"commit_to_receive_us,omitempty"`
	ReceiveToAck    []int64 `json:"receive_to_ack_us,omitempty"`
	// PublishToAck is the part of ReceiveToAck after the pipeline handed
	// the event to the sink: the producer and the broker.
	PublishToAck []int64 `json:"publish_to_ack_us,omitempty"`
}

// nullPublisher acknowledges every event at once: what is left is
// decoding, tracking and confirming.
type nullPublisher struct{}

func (nullPublisher) Publish(_ context.Context, _ *decoder.Event, ack func(error)) error {
	ack(nil)
	return nil
}

func (nullPublisher) Close() error { return nil }

// countingObserver counts acknowledged events through the relay's
// Observer (no per-event wrapper, so the drains measure the relay alone).
type countingObserver struct{ st *relayCounters }

func (o countingObserver) EventAcked(*decoder.Event) {
	now := time.Now().UnixNano()
	if o.st.acked.Add(1) == 1 {
		o.st.firstAck.Store(now)
	}
	o.st.lastAck.Store(now)
}

func (countingObserver) StateChanged(relay.State, string, error) {}
func (countingObserver) Session(func() relay.Progress)           {}
func (countingObserver) TransactionDecoded()                     {}
func (countingObserver) PublishFailed(string)                    {}
func (countingObserver) HeartbeatSent()                          {}
func (countingObserver) EventDeadLettered()                      {}
func (countingObserver) RowsPruned(int)                          {}
func (countingObserver) HeaderDropped(string, string)            {}

type relayCounters struct {
	acked    atomic.Int64
	firstAck atomic.Int64
	lastAck  atomic.Int64

	mu              sync.Mutex
	commitToAck     []int64
	createToAck     []int64
	commitToReceive []int64
	receiveToAck    []int64
	publishToAck    []int64
}

// latencyPublisher records each event's latencies when its ack comes.
type latencyPublisher struct {
	inner relay.Publisher
	st    *relayCounters
}

func (p *latencyPublisher) Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error {
	commit, created, received := ev.CommitTime, ev.CreatedAt, ev.ReceivedAt
	published := time.Now()
	return p.inner.Publish(ctx, ev, func(err error) {
		if err == nil {
			now := time.Now()
			p.st.mu.Lock()
			p.st.commitToAck = append(p.st.commitToAck, now.Sub(commit).Microseconds())
			p.st.createToAck = append(p.st.createToAck, now.Sub(created).Microseconds())
			p.st.commitToReceive = append(p.st.commitToReceive, received.Sub(commit).Microseconds())
			p.st.receiveToAck = append(p.st.receiveToAck, now.Sub(received).Microseconds())
			p.st.publishToAck = append(p.st.publishToAck, now.Sub(published).Microseconds())
			p.st.mu.Unlock()
		}
		ack(err)
	})
}

func (p *latencyPublisher) Close() error { return p.inner.Close() }

// Abort passes the relay's hard stop on, when the wrapped publisher has one.
func (p *latencyPublisher) Abort() {
	if a, ok := p.inner.(interface{ Abort() }); ok {
		a.Abort()
	}
}

// relayMain runs the relay on one slot until SIGTERM, then writes its
// stats as JSON.
func relayMain(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ExitOnError)
	pgURL := fs.String("pg-url", "", "PostgreSQL URL")
	slotName := fs.String("slot", "", "replication slot")
	publication := fs.String("publication", "", "publication")
	sinkName := fs.String("sink", "null", "null or kafka")
	brokers := fs.String("brokers", "", "Kafka brokers for --sink kafka")
	statsFile := fs.String("stats", "", "write stats JSON here on exit")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile here")
	traceFile := fs.String("trace", "", "write a runtime/trace execution trace here")
	messagePrefix := fs.String("message-prefix", "", "decode transactional logical messages with this prefix as events (message mode)")
	latency := fs.Bool("latency", false, "record per-event latencies (not with --exactly-once: the orchestrator measures those with a read_committed consumer)")
	exactlyOnce := fs.Bool("exactly-once", false, "publish in Kafka transactions (the relay's --exactly-once, at its default transaction bounds)")
	linger := fs.Duration("kafka-linger", 0, "the Kafka sink's FlushFrequency (0: the sink's default)")
	statusInterval := fs.Duration("status-interval", 100*time.Millisecond, "status update interval")
	verbose := fs.Bool("v", false, "log at info level to stderr")
	fs.Parse(args)

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			return err
		}
		if err := trace.Start(f); err != nil {
			return err
		}
		defer func() {
			trace.Stop()
			f.Close()
		}()
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	counters := &relayCounters{}
	var newPub relay.NewPublisher
	switch *sinkName {
	case "null":
		newPub = func(context.Context) (relay.Publisher, error) {
			if *latency {
				return &latencyPublisher{inner: nullPublisher{}, st: counters}, nil
			}
			return nullPublisher{}, nil
		}
	case "kafka":
		kcfg := kafka.Config{Brokers: strings.Split(*brokers, ","), ClientID: "outbox-relay-bench", FlushFrequency: *linger, Logger: logger}
		if *exactlyOnce {
			// As the command sets it up (cmd/outbox-relay/kafka_flags.go).
			kcfg.Transaction = kafka.Transaction{ID: "outbox-relay-" + *slotName, CheckpointKey: *slotName}
		}
		newPub = func(context.Context) (relay.Publisher, error) {
			k, err := kafka.New(kcfg)
			if err != nil {
				return nil, err
			}
			if *latency && !*exactlyOnce {
				return &latencyPublisher{inner: k, st: counters}, nil
			}
			return k, nil
		}
	default:
		return fmt.Errorf("unknown sink %q", *sinkName)
	}
	cfg := relay.Config{
		ConnString: *pgURL,
		Slot:       slot.Config{Slot: *slotName, Publication: *publication, Table: "public.outbox"},
		Decoder:    decoder.Config{Table: "public.outbox", Columns: decoder.DefaultColumns(), Topic: decoder.DefaultTopic, MessagePrefix: *messagePrefix},
		// A short status interval only makes the confirmed LSN, which the
		// orchestrator watches to stop the clock, follow the acks closely.
		StatusInterval: *statusInterval,
		ReceiveTimeout: 30 * time.Second,
		Logger:         logger,
		Observer:       countingObserver{counters},
		ExactlyOnce:    *exactlyOnce,
	}
	if *exactlyOnce && *sinkName != "kafka" {
		return fmt.Errorf("--exactly-once needs --sink kafka")
	}
	r, err := relay.New(cfg, newPub)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	runErr := r.Run(ctx)

	st := relayStats{
		Acked:    counters.acked.Load(),
		FirstAck: counters.firstAck.Load(),
		LastAck:  counters.lastAck.Load(),
	}
	counters.mu.Lock()
	st.CommitToAck, st.CreateToAck = counters.commitToAck, counters.createToAck
	st.CommitToReceive, st.ReceiveToAck, st.PublishToAck = counters.commitToReceive, counters.receiveToAck, counters.publishToAck
	counters.mu.Unlock()
	return st.finish(*statsFile, runErr)
}

// finish records the process's peak RSS and runErr in st, writes st as
// JSON to path (if set) for the orchestrator, and returns runErr.
func (st relayStats) finish(path string, runErr error) error {
	st.VmHWMKiB = vmHWM(os.Getpid())
	if runErr != nil {
		st.RunErr = runErr.Error()
	}
	if path == "" {
		return runErr
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	return runErr
}
