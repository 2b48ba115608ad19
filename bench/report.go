package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/kafkaserver"
	"github.com/outbox-relay/outbox-relay/sink/kafka"
)

type machine struct {
	CPUs      int
	Model     string
	MemoryGiB float64
	Kernel    string
	Postgres  string
	Go        string
}

func describeMachine(ctx context.Context, e *env) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if v, ok := strings.CutPrefix(s.Text(), "model name"); ok {
				m.Model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if v, ok := strings.CutPrefix(s.Text(), "MemTotal:"); ok {
				var kb float64
				fmt.Sscanf(strings.TrimSpace(v), "%f", &kb)
				m.MemoryGiB = kb / (1 << 20)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if conn, err := e.connect(ctx, false); err == nil {
		_ = conn.QueryRow(ctx, `SELECT version()`).Scan(&m.Postgres)
		conn.Close(ctx)
	}
	return m
}

// ratio is a measured ratio against a target.
type ratio struct {
	Target   string
	Measured string
	Verdict  string
}

func (e *env) drain(shape, consumer string) (drainResult, bool) {
	for _, d := range e.res.Drains {
		if d.Shape == shape && d.Consumer == consumer && d.Err == "" {
			return d, true
		}
	}
	return drainResult{}, false
}

func (e *env) liveOf(consumer string) (liveResult, bool) {
	for _, l := range e.res.Live {
		if l.Consumer == consumer && l.Err == "" {
			return l, true
		}
	}
	return liveResult{}, false
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// ratios evaluates the benchmark's targets.
func (e *env) ratios() []ratio {
	var out []ratio
	for _, shape := range []string{"batch", "message", "single"} {
		ceil, ok := e.drain(shape, cRecvlogical)
		if !ok {
			continue
		}
		if d, ok := e.drain(shape, cNull); ok {
			x := d.rate() / ceil.rate()
			target, v := ">= 0.9x", verdict(x >= 0.9)
			if shape == "message" {
				target, v = "(no target; for reference)", "-"
			}
			out = append(out, ratio{fmt.Sprintf("relay->null %s pg_recvlogical (%s)", target, shapeName(shape)),
				fmt.Sprintf("%.2fx (%.0f vs %.0f ev/s)", x, d.rate(), ceil.rate()), v})
		}
		// The targets for the relay to Kafka hold for either broker.
		for _, c := range []string{cKfake, cApache} {
			d, ok := e.drain(shape, c)
			if !ok {
				continue
			}
			x := d.rate() / ceil.rate()
			target := "(no target; for reference)"
			v := "-"
			if shape == "batch" {
				target = ">= 0.75x"
				v = verdict(x >= 0.75)
			}
			out = append(out, ratio{fmt.Sprintf("%s %s pg_recvlogical (%s)", c, target, shapeName(shape)),
				fmt.Sprintf("%.2fx (%.0f vs %.0f ev/s)", x, d.rate(), ceil.rate()), v})
		}
	}
	for _, c := range []string{cKfake, cApache} {
		l, ok := e.liveOf(c)
		if !ok {
			continue
		}
		out = append(out, ratio{fmt.Sprintf("%s: live p99 <= 25ms at %d ev/s", c, l.TargetRate),
			fmt.Sprintf("%s insert-to-ack, %s commit-to-ack (%.0f ev/s achieved)", ms(l.CreateToAck.P99), ms(l.CommitToAck.P99), l.Achieved),
			verdict(l.CreateToAck.P99 <= 25*time.Millisecond)})
		out = append(out, ratio{fmt.Sprintf("%s: live p50 <= 5ms", c),
			fmt.Sprintf("%s insert-to-ack, %s commit-to-ack", ms(l.CreateToAck.P50), ms(l.CommitToAck.P50)),
			verdict(l.CreateToAck.P50 <= 5*time.Millisecond)})
		if l.ReceiveToAck.N > 0 {
			out = append(out, ratio{fmt.Sprintf("(for reference) %s: the relay's own share, received-to-ack", c),
				fmt.Sprintf("p50 %s, p99 %s; commit-to-received p50 %s, p99 %s", ms(l.ReceiveToAck.P50), ms(l.ReceiveToAck.P99), ms(l.CommitToReceive.P50), ms(l.CommitToReceive.P99)), "-"})
		}
		// The poller ran against kfake: compared with the relay to kfake.
		if p, ok := e.liveOf(cPoller); ok && c == cKfake && l.CreateToAck.P99 > 0 {
			x := float64(p.CreateToAck.P99) / float64(l.CreateToAck.P99)
			out = append(out, ratio{"p99 >= 10x lower than the poller at equal rate (both to kfake)",
				fmt.Sprintf("%.1fx (poller %s vs relay %s)", x, ms(p.CreateToAck.P99), ms(l.CreateToAck.P99)), verdict(x >= 10)})
		}
	}
	if raw, ok := e.liveOf(cRaw); ok {
		out = append(out, ratio{"(for reference) the floor: a bare reader's commit-to-received at the same rate",
			fmt.Sprintf("p50 %s, p99 %s", ms(raw.CommitToReceive.P50), ms(raw.CommitToReceive.P99)), "-"})
	}
	maxRSS := int64(0)
	for _, d := range e.res.Drains {
		if strings.HasPrefix(d.Consumer, "relay") && d.Err == "" {
			maxRSS = max(maxRSS, d.RSSKiB)
		}
	}
	if maxRSS > 0 {
		out = append(out, ratio{fmt.Sprintf("relay peak RSS <= 100MB draining a %d-event backlog", e.o.events),
			fmt.Sprintf("%.1f MiB (highest relay drain)", float64(maxRSS)/1024), verdict(maxRSS <= 100*1024)})
	}
	out = append(out, e.peerRatios()...)
	if k, ok := e.drain("batch", cKfake); ok {
		if p, ok := e.drain("batch", cPoller); ok {
			out = append(out, ratio{"higher max throughput than the poller (1,000-row txns, both to kfake)",
				fmt.Sprintf("%.2fx (%.0f vs %.0f ev/s)", k.rate()/p.rate(), k.rate(), p.rate()), verdict(k.rate() > p.rate())})
		}
	}
	return out
}

func shapeName(s string) string {
	switch s {
	case "batch":
		return "1,000-row txns"
	case "single":
		return "single-row txns"
	case "message":
		return "1,000-message txns (message mode)"
	}
	return s
}

// shapes are the backlog shapes in report order.
var shapes = []string{"batch", "message", "single"}

func perMillion(d time.Duration, events int) string {
	if events == 0 || d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", d.Seconds()*1e6/float64(events))
}

func (e *env) writeResults() error {
	r := e.res
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# Benchmark results\n\n")
	w("Written by `make bench` (bench/); overwritten on every run. ")
	w("All figures come from one run on one machine: Postgres, the broker, the relay and the load generator share its cores, so compare ratios, not absolutes.\n\n")
	w("- command: `%s`\n", r.Command)
	w("- date: %s (took %s)\n", r.Started.Format(time.RFC3339), r.Finished.Sub(r.Started).Round(time.Second))
	w("- machine: %d CPUs (`nproc`), %s, %.1f GiB RAM, Linux %s\n", r.Machine.CPUs, r.Machine.Model, r.Machine.MemoryGiB, r.Machine.Kernel)
	w("- %s; %s\n", r.Machine.Postgres, r.Machine.Go)
	w("- load average (1/5/15 min) at start, during each measurement, at the end: %s\n", strings.Join(e.loadsSeen(), " | "))
	w("- %d events per shape, payload %.0f bytes of JSON on average (message mode: %.0f), %d aggregates; single-row writers: %d connections\n",
		e.o.events, r.Payload, r.MessagePayload, aggregates, e.o.writers)
	w("- brokers: %s\n", e.brokersLine())
	w("- inserts: ")
	for _, s := range shapes {
		if d, ok := r.Inserts[s]; ok {
			w("%s %s (%.0f ev/s); ", shapeName(s), d.Round(time.Millisecond), float64(e.o.events)/d.Seconds())
		}
	}
	w("\n\n")

	e.writeBrokers(w)

	w("## Draining a backlog\n\n")
	w("Every consumer has its own slot, created before the inserts, so each drains identical WAL. ")
	w("Wall time runs from starting the consumer process to its slot's `confirmed_flush_lsn` reaching the WAL end of the inserts (pg_recvlogical: to its exit at `--endpos`). ")
	w("CPU and peak RSS are the consumer process's own (getrusage of the child); Postgres CPU is every server process (utime+stime from /proc) over the same interval. ")
	w("**Broker CPU and peak RSS** are the broker process's over the same interval: utime+stime of /proc/<pid>/stat before and after (all its threads; for Apache Kafka's JVM the JIT and GC threads too), and VmHWM, set back to the current RSS (`clear_refs` 5) at the start. ")
	w("kfake is a fresh process for each row; Apache Kafka is one JVM for the whole run, so its RSS includes what earlier rows left in its heap.\n\n")
	w("| shape | consumer | events | wall s | events/s | x pg_recvlogical | consumer CPU s / 1M ev | peak RSS MiB | Postgres CPU s / 1M ev | broker CPU s / 1M ev | broker peak RSS MiB | other processes CPU s | load during |\n")
	w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, d := range r.Drains {
		if d.Err != "" {
			w("| %s | %s | %d | failed: %s | | | | | | | | | |\n", shapeName(d.Shape), d.Consumer, d.Events, strings.ReplaceAll(d.Err, "|", "/"))
			continue
		}
		x := "-"
		if c, ok := e.drain(d.Shape, cRecvlogical); ok && d.Consumer != cRecvlogical {
			x = fmt.Sprintf("%.2f", d.rate()/c.rate())
		} else if d.Consumer == cRecvlogical {
			x = "1.00"
		}
		w("| %s | %s | %d | %.2f | %.0f | %s | %s | %.1f | %s | %s | %s | %.2f | %s |\n", shapeName(d.Shape), d.Consumer, d.Events, d.Wall.Seconds(), d.rate(), x,
			perMillion(d.CPU, d.Events), float64(d.RSSKiB)/1024, perMillion(d.PGCPU, d.Events), perMillion(d.BrokerCPU, d.Events), mib(d.BrokerRSSKiB), d.Other.Seconds(), d.Load)
	}
	w("\nThe poller drains the 1,000-row-transaction backlog left in the table after the slots were drained (with its partial index `(created_at) WHERE processed_at IS NULL` created just before), ")
	w("in batches of 1,000 (`FOR UPDATE SKIP LOCKED`, marks rows processed, commits after the broker acknowledged the batch; sleeps %s after a batch that was not full).\n\n", pollInterval)

	e.writePeers(w)

	e.writeModes(w)

	w("## Live latency at a fixed write rate\n\n")
	writers := "the bench's Go writers (pgx, one connection each, on a fixed schedule; the benchmark process's own CPU)"
	if e.o.pgbench {
		writers = fmt.Sprintf("pgbench (`-c %d -j 2 -R %d -M prepared`: Poisson arrivals; its CPU is in the table)", e.o.writers, e.o.rate)
	}
	alsoApache := ""
	if r.Apache != nil {
		alsoApache = ", the relay also against the Apache Kafka node"
	}
	w("%d connections insert single-row transactions (synchronous_commit on) at %d/s in total for %s, from %s; each consumer runs alone (the relay and the poller against a fresh kfake broker%s), after a CHECKPOINT and the kernel's writeback; the live runs come before the backlog drains, on the freshly started server. ", e.o.writers, e.o.rate, e.o.liveDuration, writers, alsoApache)
	w("**insert-to-ack** = time the broker acknowledged the record (producer callback in the relay; return of `SendMessages` in the poller) minus the row's `created_at` (`now()` of the inserting transaction, a fraction of a millisecond before its commit). ")
	w("**commit-to-ack** (relay only) = ack time minus the commit timestamp carried in the WAL. Same clock: everything runs on one host. ")
	w("For the relay with --exactly-once and for Debezium, insert-to-ack is insert to the record reaching a consumer in the bench process (read_committed for exactly-once, so a record counts once its Kafka transaction committed): the relay's record carries `created_at` as its timestamp, in milliseconds (up to 1ms added), Debezium's in a header.\n\n")
	w("**tail** = how long after the writers stopped the consumer had delivered everything: near zero when it kept up with the rate; large means it fell behind and the percentiles measure a growing queue, not steady-state latency.\n\n")
	w("**broker CPU** and **broker peak RSS** as in the drain table, over the writers' run and the tail.\n\n")
	w("| consumer | target ev/s | achieved ev/s | events | insert-to-ack p50 | p95 | p99 | max | commit-to-ack p50 | p95 | p99 | tail s | consumer CPU s | Postgres CPU s | broker CPU s / 1M ev | broker peak RSS MiB | other processes CPU s | load during |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, l := range r.Live {
		if l.Consumer == cRaw && l.Err == "" {
			continue // in the split table below
		}
		if l.Err != "" {
			w("| %s | %d | failed: %s | | | | | | | | | | | | | | | |\n", l.Consumer, l.TargetRate, strings.ReplaceAll(l.Err, "|", "/"))
			continue
		}
		c := func(d time.Duration) string {
			if l.CommitToAck.N == 0 {
				return "-"
			}
			return ms(d)
		}
		w("| %s | %d | %.0f | %d | %s | %s | %s | %s | %s | %s | %s | %.2f | %.2f | %.2f | %s | %s | %.2f | %s |\n", l.Consumer, l.TargetRate, l.Achieved, l.Events,
			ms(l.CreateToAck.P50), ms(l.CreateToAck.P95), ms(l.CreateToAck.P99), ms(l.CreateToAck.Max),
			c(l.CommitToAck.P50), c(l.CommitToAck.P95), c(l.CommitToAck.P99), l.Tail.Seconds(), l.CPU.Seconds(), l.PGCPU.Seconds(),
			perMillion(l.BrokerCPU, l.Events), mib(l.BrokerRSSKiB), l.Other.Seconds(), l.Load)
	}

	e.writeSplit(w)

	w("\n## Targets\n\n| target | measured | verdict |\n|---|---|---|\n")
	for _, x := range e.ratios() {
		w("| %s | %s | %s |\n", x.Target, x.Measured, x.Verdict)
	}

	w("\n## Charts\n\n![Drain throughput per consumer and shape](%s)\n\n![Live latency percentiles per consumer](%s)\n\n", drainChart, latencyChart)
	w("Each bar is one consumer (colour, named left of the bar and in the legend), its value at its end; bars are grouped by transaction shape (drains) or by percentile (latency). An axis marked log scale has grid lines at powers of ten: there the bars' lengths compare orders of magnitude.\n")

	var profiles []string
	for _, l := range r.Live {
		if l.Profile != "" {
			profiles = append(profiles, fmt.Sprintf("### %s, live at %d ev/s\n\n```\n%s```\n", l.Consumer, l.TargetRate, trimProfile(l.Profile)))
		}
	}
	for _, d := range r.Drains {
		if d.Profile != "" {
			profiles = append(profiles, fmt.Sprintf("### %s, %s\n\n```\n%s```\n", d.Consumer, shapeName(d.Shape), trimProfile(d.Profile)))
		}
	}
	if len(profiles) > 0 {
		w("\n## CPU profiles of the relay process\n\n`go tool pprof -top` of the helper process, live and during the drains (profiles in %s/).\n\n", e.o.tmpDir)
		w("%s", strings.Join(profiles, "\n"))
	}
	if err := os.WriteFile(filepath.Join(e.o.outDir, "RESULTS.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	if err := writeCharts(e.o.outDir, e); err != nil {
		return err
	}
	// The one chart of earlier runs, now drain.png and latency.png.
	os.Remove(filepath.Join(e.o.outDir, "chart.png"))
	fmt.Printf("wrote %s, %s and %s\n", filepath.Join(e.o.outDir, "RESULTS.md"), filepath.Join(e.o.outDir, drainChart), filepath.Join(e.o.outDir, latencyChart))
	return nil
}

// writeModes writes the table mode vs message mode comparison: the same
// events as rows of the outbox table or as logical decoding messages.
func (e *env) writeModes(w func(string, ...any)) {
	r := e.res
	if _, ok := r.WALBytes["message"]; !ok {
		return
	}
	w("## Table mode vs message mode\n\n")
	w("The same %d events (same aggregates, payloads shaped alike) written as rows of the outbox table or, in message mode, as transactional logical decoding messages with the relay's envelope (`outbox.Emit`, prefix `%s`; pg_recvlogical with `-o messages=true`, the relay with the message prefix set). ", e.o.events, messagePrefix)
	w("**WAL bytes/event** = `pg_current_wal_insert_lsn()` after the inserts minus before, divided by the events (table mode includes the primary-key index; autovacuum, if it ran meanwhile, counts too). Events/s as in the drain table above.\n\n")
	w("| mode | transactions | WAL bytes / event | insert ev/s | pg_recvlogical ev/s | relay->null ev/s | relay->kfake ev/s | relay->Apache Kafka ev/s | relay->kfake x pg_recvlogical | relay->Apache Kafka x pg_recvlogical |\n")
	w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, m := range []struct{ shape, mode, txns string }{
		{"batch", "table", "1,000 rows"},
		{"message", "message", "1,000 messages"},
		{"single", "table", "1 row"},
	} {
		wal, ok := r.WALBytes[m.shape]
		if !ok {
			continue
		}
		rate := func(c string) string {
			if d, ok := e.drain(m.shape, c); ok {
				return fmt.Sprintf("%.0f", d.rate())
			}
			return "-"
		}
		x := func(c string) string {
			if k, ok := e.drain(m.shape, c); ok {
				if ceil, ok := e.drain(m.shape, cRecvlogical); ok {
					return fmt.Sprintf("%.2f", k.rate()/ceil.rate())
				}
			}
			return "-"
		}
		w("| %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s |\n", m.mode, m.txns, float64(wal)/float64(e.o.events),
			float64(e.o.events)/r.Inserts[m.shape].Seconds(), rate(cRecvlogical), rate(cNull), rate(cKfake), rate(cApache), x(cKfake), x(cApache))
	}
	w("\n")
}

// writeSplit writes where the live latency goes: PostgreSQL's share
// (commit to received by the replication reader) and the relay's
// (received to the broker's ack).
func (e *env) writeSplit(w func(string, ...any)) {
	var rows []liveResult
	for _, l := range e.res.Live {
		if l.Err == "" && l.CommitToReceive.N > 0 {
			rows = append(rows, l)
		}
	}
	if len(rows) == 0 {
		return
	}
	w("\n### Where the live latency goes\n\n")
	w("**commit-to-received** = the time the consumer's replication reader read the message minus the commit timestamp in the WAL: PostgreSQL's share (walsender wake-up and decoding, the socket, scheduling on a busy machine). ")
	w("The **raw reader** is a bare pglogrepl consumer (what pg_recvlogical does: read, confirm what was received; no decoding, no broker) that timestamps each Commit message, at the same write rate: the floor. ")
	w("For the relay it is measured at the event's Insert message, read in the same burst as its Commit. **received-to-ack** = broker ack minus that read: the relay's own share (hand-off, decoding, tracking, producer batching and the produce round trip); **published-to-ack** is its part after the pipeline handed the event to the Kafka sink (sarama's linger, its goroutines, the broker process). ")
	w("**other processes CPU** = CPU time of processes outside the benchmark (anything else running on the machine) while the writers ran: non-zero values mean the run was perturbed.\n\n")
	w("| consumer | events | commit-to-received p50 | p95 | p99 | max | received-to-ack p50 | p95 | p99 | max | of which published-to-ack p50 | p99 | consumer CPU us / event | other processes CPU s |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, l := range rows {
		ra := func(p percentiles, d time.Duration) string {
			if p.N == 0 {
				return "-"
			}
			return ms(d)
		}
		cpu := "-"
		if l.Events > 0 {
			cpu = fmt.Sprintf("%.0f", l.CPU.Seconds()*1e6/float64(l.Events))
		}
		w("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f |\n", l.Consumer, l.CommitToReceive.N,
			ms(l.CommitToReceive.P50), ms(l.CommitToReceive.P95), ms(l.CommitToReceive.P99), ms(l.CommitToReceive.Max),
			ra(l.ReceiveToAck, l.ReceiveToAck.P50), ra(l.ReceiveToAck, l.ReceiveToAck.P95), ra(l.ReceiveToAck, l.ReceiveToAck.P99), ra(l.ReceiveToAck, l.ReceiveToAck.Max),
			ra(l.PublishToAck, l.PublishToAck.P50), ra(l.PublishToAck, l.PublishToAck.P99), cpu, l.Other.Seconds())
	}
	raw, okRaw := e.liveOf(cRaw)
	rel, okRel := e.liveOf(cKfake)
	if !okRaw || !okRel {
		return
	}
	cores := func(l liveResult) float64 { return l.PGCPU.Seconds() / e.o.liveDuration.Seconds() }
	w("\nDuring the run of the relay to kfake PostgreSQL used %.2f cores (its %d backends, the walsender) and the relay %.2f of the %d; ", cores(rel), e.o.writers, rel.CPU.Seconds()/e.o.liveDuration.Seconds(), e.res.Machine.CPUs)
	w("the walsender writes each pgoutput message with a send of its own, and a consumer blocked on the socket is woken for each, which on a machine this busy preempts the walsender. ")
	if raw.CommitToReceive.P99 > 25*time.Millisecond {
		w("The raw reader's commit-to-received p99 alone (%s) is above the 25ms target: at this load PostgreSQL's delivery, not the relay, bounds the p99 on this machine. ", ms(raw.CommitToReceive.P99))
	}
	w("The relay's commit-to-received (p99 %s) can be lower than the raw reader's because it lets messages gather in the socket while the stream is busy (SO_RCVLOWAT, at most 1ms), which spares the walsender most of those wake-ups.\n", ms(rel.CommitToReceive.P99))
}

func (e *env) loadsSeen() []string {
	out := []string{e.loads[0]}
	for _, d := range e.res.Drains {
		out = append(out, d.Load)
	}
	for _, l := range e.res.Live {
		out = append(out, l.Load)
	}
	return append(out, e.loads[len(e.loads)-1])
}

// trimProfile keeps the header and the first 25 lines of a pprof -top.
func trimProfile(p string) string {
	lines := strings.Split(p, "\n")
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") {
			continue
		}
		out = append(out, l)
		if len(out) >= 30 {
			break
		}
	}
	return strings.Join(out, "\n") + "\n"
}

// mib renders KiB as MiB, "-" for none.
func mib(kib int64) string {
	if kib == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(kib)/1024)
}

// moduleVersion returns the version of module path in this binary's build
// info, "?" if it is not there.
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				return m.Version
			}
		}
	}
	return "?"
}

// brokersLine names the brokers in the header.
func (e *env) brokersLine() string {
	s := fmt.Sprintf("kfake %s (a fresh process per row)", moduleVersion("github.com/twmb/franz-go/pkg/kfake"))
	if a := e.res.Apache; a != nil {
		s += fmt.Sprintf("; Apache Kafka %s (one KRaft node for the whole run, %s)", kafkaserver.KafkaVersion, a.Java)
	} else {
		s += "; no Apache Kafka (--no-apache)"
	}
	return s
}

// writeBrokers describes the two brokers and the relay's producer.
func (e *env) writeBrokers(w func(string, ...any)) {
	w("## The brokers\n\n")
	w("- **kfake** (`github.com/twmb/franz-go/pkg/kfake` %s): an in-memory Kafka-protocol broker in Go, one node, a fresh process (`bench broker`) for every kfake row, with the topic `%s` seeded with %d partitions. It keeps records in memory and writes nothing to disk.\n",
		moduleVersion("github.com/twmb/franz-go/pkg/kfake"), benchTopic, benchPartitions)
	a := e.res.Apache
	if a == nil {
		w("- **Apache Kafka**: left out (`--no-apache`).\n")
	} else {
		w("- **Apache Kafka %s** (internal/kafkaserver, the jars `bash kafka/fetch.sh` caches): one KRaft node, broker and controller in one JVM (%s), started once and shared by every Apache Kafka row.\n", kafkaserver.KafkaVersion, a.Java)
		w("  - JVM flags, in order (a later flag wins): `%s`. The first ones are internal/kafkaserver's defaults for tests; the bench's (`--apache-jvm-flags`, from `-Xms1g`) override them with the heap and G1 settings of Kafka's own bin/kafka-server-start.sh and the full tiered JIT (C1 and C2).\n", strings.Join(a.JVMFlags, " "))
		w("  - broker settings (server.properties): %s; besides them node.id, listeners (PLAINTEXT and CONTROLLER on 127.0.0.1), controller.quorum.voters, and log.dirs in a temporary directory under %s.\n", a.settingsList(), os.TempDir())
		w("  - startup: %s from starting the storage format to serving metadata; the node served metadata %s after its JVM started.\n", a.Start.Round(time.Millisecond), a.NodeStartup.Round(time.Millisecond))
		w("  - topic `%s` created up front with %d partitions (as kfake's) and replication factor 1 (a CreateTopics request).\n", benchTopic, benchPartitions)
		w("  - warm-up before the first measurement, through the relay's own producer to a topic of its own: %d records as fast as it took them, then %s at %d records/s; it took %s and %.1f s of broker CPU, mostly the C2 JIT compiling. ",
			a.WarmupRecords, a.WarmupPaced, e.o.rate, a.Warmup.Round(time.Millisecond), a.WarmupCPU.Seconds())
		w("The rows so measure a broker whose JIT has compiled its produce path, as a production broker's has; without it the JIT took about a core in the first measurements (10s of paced records were not enough, 30s were).\n")
		w("  - acks=all with one replica is the leader's append to its log; Kafka by default leaves flushing the log to disk to the operating system (no fsync per request), as kfake writes nothing at all. ")
		w("The broker's CPU from the warm-up's end to the end of the run, idle time between its rows included: %.1f s.\n", e.res.ApacheCPU.Seconds())
	}
	linger := kafka.DefaultFlushFrequency
	if e.o.linger > 0 {
		linger = e.o.linger
	}
	w("- **The relay's producer** (sink/kafka/kafka.go, `github.com/IBM/sarama` %s), the same for both brokers: idempotent, acks=all, one request in flight per broker connection, linger %s, protocol version %s. The poller's producer (bench/poller.go) is idempotent with acks=all too; it runs against kfake only.\n\n",
		moduleVersion("github.com/IBM/sarama"), linger, kafka.DefaultVersion)
}

// writePeers writes the side-by-side table of the relay, its exactly-once
// mode and the peers, with their settings, and the drop-in check.
func (e *env) writePeers(w func(string, ...any)) {
	r := e.res
	var rows []string
	for _, shape := range []string{"batch", "single"} {
		for _, c := range []string{cRecvlogical, cKfake, cKfakeEOS, cApache, cApacheEOS, cDebezium, cWalListener} {
			for _, d := range r.Drains {
				if d.Shape == shape && d.Consumer == c {
					rows = append(rows, e.peerRow(d))
				}
			}
		}
	}
	if len(rows) == 0 {
		return
	}
	w("## Side by side: the relay, exactly-once, Debezium and wal-listener\n\n")
	w("The same backlogs as above (each consumer on its own slot, created before the inserts), all publishing to the same Apache Kafka node (the relay also to kfake). ")
	w("**x pg_recvlogical** and **x relay** are events/s ratios to pg_recvlogical and to the relay (at-least-once) to Apache Kafka on the same shape. ")
	w("For the peers, **start-up** is from starting the process to its walsender streaming from the slot (`pg_replication_slots.active`), and the drain's wall time, events/s and CPU run from then until the last record is in its topic (the sum of the partitions' end offsets); peak RSS is the whole run's. ")
	w("The relay's start-up is in its wall time (tens of milliseconds). ")
	w("**Live** is at %d ev/s as in the live table; for the relay with --exactly-once and for Debezium it is insert to the record reaching a consumer (read_committed for exactly-once), not the producer's ack.\n\n", e.o.rate)
	w("| shape | consumer | events | events/s | x pg_recvlogical | x relay | CPU s / 1M ev | peak RSS MiB | start-up s (CPU s) | live p50 | live p95 | live p99 |\n")
	w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range rows {
		w("%s", row)
	}
	w("\n")
	e.writePeerSettings(w)
	if c := r.Compat; c != nil {
		w("## Drop-in for Debezium's outbox router\n\n")
		w("`make compat-debezium` (and the end of `make bench`): Debezium's connector with the outbox EventRouter at its defaults, and the relay with `--compat debezium`, read the same rows of a table laid out as Debezium documents it (`id uuid, aggregatetype, aggregateid, type, payload jsonb`; %s), ", compatTable)
		w("%d rows: most in one transaction, and %d one per transaction whose payloads probe the encodings (text outside ASCII, numbers jsonb rewrites, nesting, escapes, an empty object, a bare array and string, and NULL). ", c.Rows, len(compatSpecials))
		w("Debezium publishes to the Apache Kafka node, the relay to a kfake broker; every record is read back and paired with the other's by its `id` header.\n\n")
		w("%s\n", c.summary())
		w("What differs and why it stays:\n\n")
		w("- **timestamp**: the EventRouter stamps a record with the time its connector processed the change (the envelope's `ts_ms`) unless `table.field.event.timestamp` names a column; the relay stamps the row's `created_at` or, in Debezium's table, which has none, the transaction's commit time. A processing time is not in the WAL, so no relay can reproduce it; both are within the same second of the commit in a live stream, minutes apart in a backlog.\n")
		w("- **header names** (not part of the required fields): Debezium 3 adds `__debezium.context.*` headers naming its connector, task and run; the relay adds `event_type` and `aggregate_type`. Consumers written for Debezium read `id` and ignore the rest.\n")
		w("- **partition** (not part of the required fields): the same when the topic has the same number of partitions: Kafka's Java producer, which Connect uses, and the relay's sink both take murmur2 of the key (TestMurmur2MatchesJavaClient in sink/kafka).\n\n")
	}
}

// peerRow is one row of the side-by-side table.
func (e *env) peerRow(d drainResult) string {
	if d.Err != "" {
		return fmt.Sprintf("| %s | %s | %d | not measured: %s | | | | | | | | |\n", shapeName(d.Shape), d.Consumer, d.Events, strings.ReplaceAll(d.Err, "|", "/"))
	}
	xr, xa := "-", "-"
	if c, ok := e.drain(d.Shape, cRecvlogical); ok {
		xr = fmt.Sprintf("%.2f", d.rate()/c.rate())
	}
	if a, ok := e.drain(d.Shape, cApache); ok {
		xa = fmt.Sprintf("%.2f", d.rate()/a.rate())
	}
	startup := "-"
	if d.Startup > 0 {
		startup = fmt.Sprintf("%.1f (%.1f)", d.Startup.Seconds(), d.StartupCPU.Seconds())
	}
	p50, p95, p99 := "-", "-", "-"
	if d.Shape == "single" {
		// The live runs are single-row transactions.
		if l, ok := e.liveOf(d.Consumer); ok {
			p50, p95, p99 = ms(l.CreateToAck.P50), ms(l.CreateToAck.P95), ms(l.CreateToAck.P99)
		}
	}
	events := fmt.Sprint(d.Events)
	if d.Partial != "" {
		events += " (" + d.Partial + ")"
	}
	return fmt.Sprintf("| %s | %s | %s | %.0f | %s | %s | %s | %.1f | %s | %s | %s | %s |\n", shapeName(d.Shape), d.Consumer, events, d.rate(), xr, xa,
		perMillion(d.CPU, d.Events), float64(d.RSSKiB)/1024, startup, p50, p95, p99)
}

// writePeerSettings lists every setting the bench changes for the peers.
func (e *env) writePeerSettings(w func(string, ...any)) {
	w("**Debezium** %s (`debezium-connector-postgres`, its EventRouter from `debezium-connect-plugins`) on Kafka Connect %s in standalone mode, jars from bench/debezium/fetch.sh. ", debeziumVersion, connectVersion)
	w("Connect %s, not the broker's %s: Debezium %s is built against Kafka %s, and under Connect 4.4.0 its task dies loading `org.apache.kafka.common.utils.Sanitizer`, which kafka-clients 4.4.0 no longer has. ", connectVersion, "4.4.0", debeziumVersion, connectVersion)
	w("JVM as Kafka's connect-standalone.sh starts it: `%s`. Settings changed from the defaults, all of them:\n\n", strings.Join(connectJVMFlags, " "))
	w("- worker: %s\n", settingsTable(debeziumWorker))
	w("- connector, for throughput: %s\n", settingsTable(debeziumConnector))
	w("- connector, to read the bench's table: `plugin.name=pgoutput`, `slot.name` and `publication.name` (the bench's, created before the writes), `publication.autocreate.mode=disabled`, `table.include.list=public.outbox`, `snapshot.mode=no_data`, `tombstones.on.delete=false`, `topic.prefix=bench`\n")
	w("- EventRouter: %s (the bench's column names), `route.topic.replacement` set to one topic per run; in the live run also `table.fields.additional.placement=created_at:header:created_at`, which carries the insert time to the latency consumer\n\n", settingsTable(debeziumRouter))
	w("**wal-listener**: `go install %s/cmd/wal-listener@%s` into ~/.cache/outbox-relay/wal-listener/. ", walListenerModule, walListenerVersion)
	if d, ok := e.anyDrain(cWalListener); ok && d.Err != "" {
		w("It could not be measured here: %s\n\n", strings.ReplaceAll(d.Err, "|", "/"))
	} else {
		w("\n\n")
	}
	w("**The relay with --exactly-once**: the bench's relay helper with the command's transaction settings (transactional id `outbox-relay-<slot>`, checkpoint topic %s, at most 5,000 events or 16 MiB per Kafka transaction, 10ms linger). ", "`outbox-relay.checkpoints`")
	w("The relay creates the checkpoint topic itself. The bench has the Apache Kafka node start its group and transaction coordinators first: on a fresh broker that creates no topic on request and has no `__consumer_offsets` yet, sarama's transactional producer asks for that topic's leader in a loop and never starts (a production cluster has the topic once any consumer group has committed).\n\n")
}

// anyDrain returns consumer's first drain row, failed or not.
func (e *env) anyDrain(consumer string) (drainResult, bool) {
	for _, d := range e.res.Drains {
		if d.Consumer == consumer {
			return d, true
		}
	}
	return drainResult{}, false
}

// peerRatios are the targets against the peers and for exactly-once.
func (e *env) peerRatios() []ratio {
	var out []ratio
	a, aok := e.drain("batch", cApache)
	if d, ok := e.drain("batch", cDebezium); ok && aok {
		x := a.rate() / d.rate()
		out = append(out, ratio{"relay->Apache Kafka >= 3x Debezium's drain events/s (1,000-row txns)",
			fmt.Sprintf("%.2fx (%.0f vs %.0f ev/s; Debezium's start-up of %s not counted)", x, a.rate(), d.rate(), d.Startup.Round(100*time.Millisecond)), verdict(x >= 3)})
		out = append(out, ratio{"relay->Apache Kafka peak RSS <= 1/5 of Debezium's (1,000-row txns)",
			fmt.Sprintf("1/%.1f (%.1f vs %.1f MiB)", float64(d.RSSKiB)/float64(max(a.RSSKiB, 1)), float64(a.RSSKiB)/1024, float64(d.RSSKiB)/1024), verdict(a.RSSKiB*5 <= d.RSSKiB)})
	}
	if l, ok := e.liveOf(cApache); ok {
		if d, ok := e.liveOf(cDebezium); ok {
			out = append(out, ratio{"relay->Apache Kafka live p99 <= Debezium's",
				fmt.Sprintf("%s (insert to ack) vs %s (insert to consumer)", ms(l.CreateToAck.P99), ms(d.CreateToAck.P99)), verdict(l.CreateToAck.P99 <= d.CreateToAck.P99)})
		}
	}
	if aok {
		if wl, ok := e.drain("batch", cWalListener); ok {
			out = append(out, ratio{"relay >= 10x wal-listener's drain events/s (1,000-row txns)",
				fmt.Sprintf("%.1fx", a.rate()/wl.rate()), verdict(a.rate() >= 10*wl.rate())})
		} else if d, ok := e.anyDrain(cWalListener); ok {
			out = append(out, ratio{"relay >= 10x wal-listener's drain events/s (1,000-row txns)", "not measured: " + strings.ReplaceAll(d.Err, "|", "/"), "-"})
		}
	}
	for _, pair := range [][2]string{{cApacheEOS, cApache}, {cKfakeEOS, cKfake}} {
		for _, shape := range []string{"batch", "single"} {
			eos, ok1 := e.drain(shape, pair[0])
			alo, ok2 := e.drain(shape, pair[1])
			if !ok1 || !ok2 {
				continue
			}
			x := eos.rate() / alo.rate()
			target, v := ">= 0.8x", verdict(x >= 0.8)
			if shape != "batch" {
				target, v = "(no target; for reference)", "-"
			}
			out = append(out, ratio{fmt.Sprintf("%s %s at-least-once (%s)", pair[0], target, shapeName(shape)),
				fmt.Sprintf("%.2fx (%.0f vs %.0f ev/s)", x, eos.rate(), alo.rate()), v})
		}
	}
	return out
}
