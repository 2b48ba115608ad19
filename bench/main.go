// Command bench measures the relay against the physical limit of logical
// decoding (pg_recvlogical) and against the polling alternative, on one
// machine, side by side. `make bench` runs it.
//
// It starts a private PostgreSQL (internal/pgserver), for every kfake run a
// fresh Kafka-protocol broker (kfake) in a separate process, and once a
// one-node Apache Kafka (internal/kafkaserver) that every Apache Kafka run
// shares. The relay runs in a separate process too, so its CPU time and peak
// RSS are its own.
// Both helpers are this same binary re-executed with a sub-command:
//
//	bench broker   kfake on a loopback port; prints its address
//	bench relay    the relay draining one slot to a null sink or the broker
//	bench poller   a SKIP LOCKED poller publishing to the broker
//
// Results go to bench/results/RESULTS.md, drain.png and latency.png.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// options are the orchestrator's flags.
type options struct {
	quick        bool
	events       int
	writers      int
	rate         int
	liveDuration time.Duration
	outDir       string
	tmpDir       string
	profile      bool
	shapes       string
	skipPoller   bool
	live         string
	liveProfile  bool
	liveTrace    bool
	procs        int
	pgbench      bool
	linger       time.Duration
	noApache     bool
	apacheJVM    string
	exactlyOnce  bool
	peers        string
	consumers    string
	compat       bool
	peerLimit    time.Duration
	compatOnly   bool
}

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "broker":
			if err := brokerMain(os.Args[2:]); err != nil {
				log.Fatalf("broker: %v", err)
			}
			return
		case "relay":
			if err := relayMain(os.Args[2:]); err != nil {
				log.Fatalf("relay: %v", err)
			}
			return
		case "rawreader":
			if err := rawReaderMain(os.Args[2:]); err != nil {
				log.Fatalf("rawreader: %v", err)
			}
			return
		case "poller":
			if err := pollerMain(os.Args[2:]); err != nil {
				log.Fatalf("poller: %v", err)
			}
			return
		}
	}
	var o options
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.BoolVar(&o.quick, "quick", false, "a ~2 minute look: 50,000 events, 5s live runs, a 10s paced warm-up of Apache Kafka")
	fs.IntVar(&o.events, "events", 0, "events per shape (default 1,000,000; 50,000 with --quick)")
	fs.IntVar(&o.writers, "writers", 8, "concurrent writers for single-row transactions")
	fs.IntVar(&o.rate, "rate", 5000, "events/s for the live latency runs")
	fs.DurationVar(&o.liveDuration, "live-duration", 0, "length of each live latency run (default 20s; 5s with --quick)")
	fs.StringVar(&o.outDir, "out", "bench/results", "directory for RESULTS.md, drain.png and latency.png (overwritten)")
	fs.StringVar(&o.tmpDir, "tmp", "bench/tmp", "directory for CPU profiles and logs (not committed)")
	fs.BoolVar(&o.profile, "profile", true, "write a CPU profile of the relay process in each drain")
	fs.StringVar(&o.shapes, "shapes", "batch,message,single", "backlog shapes to drain: batch (1,000-row transactions), message (1,000 logical messages per transaction, message mode), single (single-row transactions); empty for none")
	fs.BoolVar(&o.skipPoller, "skip-poller", false, "skip the SKIP LOCKED poller runs")
	fs.StringVar(&o.live, "live", "raw,relay,apache,poller,relay-eos,apache-eos,debezium,wal-listener", "live latency runs: raw (a bare replication reader: the latency floor), relay (to kfake), apache (the relay to Apache Kafka), poller (to kfake), relay-eos and apache-eos (the relay with --exactly-once, to kfake and Apache Kafka), debezium and wal-listener (the peers, to Apache Kafka); empty for none")
	fs.BoolVar(&o.noApache, "no-apache", false, "leave out the Apache Kafka rows (drains and live run); without it the bench needs Java and the jars that bash kafka/fetch.sh caches")
	fs.StringVar(&o.apacheJVM, "apache-jvm-flags", apacheJVMFlags, "JVM flags of the Apache Kafka node, after internal/kafkaserver's defaults (a later flag wins)")
	fs.BoolVar(&o.exactlyOnce, "exactly-once", true, "add the relay with --exactly-once (Kafka transactions) to the batch and single drains and the live runs, on kfake and Apache Kafka")
	fs.StringVar(&o.peers, "peers", "debezium,wal-listener", "the peers measured on Apache Kafka: debezium (Kafka Connect and the jars of make debezium-jars), wal-listener (go install); empty for none")
	fs.StringVar(&o.consumers, "consumers", "", "only these drain consumers, by tag (pg_recvlogical, null, kfake, apache, kfake-eos, apache-eos, debezium, wal-listener); empty for all")
	fs.DurationVar(&o.peerLimit, "peer-limit", 5*time.Minute, "longest a peer's drain runs after its start-up; a slower peer's row is the events it drained by then, the number stated")
	fs.BoolVar(&o.compat, "compat", true, "run the drop-in check against Debezium's outbox router (needs Apache Kafka and the jars of make debezium-jars)")
	fs.BoolVar(&o.compatOnly, "compat-only", false, "run only the drop-in check (make compat-debezium); exits 1 if it fails or records are missing")
	fs.BoolVar(&o.liveProfile, "live-profile", true, "write a CPU profile of the relay in the live run")
	fs.BoolVar(&o.pgbench, "pgbench", false, "drive the live runs with pgbench instead of the built-in Go writers")
	fs.DurationVar(&o.linger, "kafka-linger", 0, "the relay's Kafka FlushFrequency (0: the sink's default)")
	fs.IntVar(&o.procs, "consumer-gomaxprocs", 0, "GOMAXPROCS of the relay and raw reader processes (0: Go's default, the number of CPUs)")
	fs.BoolVar(&o.liveTrace, "live-trace", false, "write a runtime/trace of the relay in the live run to the tmp directory (go tool trace)")
	fs.Parse(os.Args[1:])
	if o.events == 0 {
		o.events = 1_000_000
		if o.quick {
			o.events = 50_000
		}
	}
	if o.liveDuration == 0 {
		o.liveDuration = 20 * time.Second
		if o.quick {
			o.liveDuration = 5 * time.Second
		}
	}
	if o.events%1000 != 0 {
		log.Fatalf("--events must be a multiple of 1,000 (the batch transaction size)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
