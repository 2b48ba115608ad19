package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
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

// ratios evaluates the targets of issue 6.
func (e *env) ratios() []ratio {
	var out []ratio
	for _, shape := range []string{"batch", "single"} {
		ceil, ok := e.drain(shape, "pg_recvlogical")
		if !ok {
			continue
		}
		if d, ok := e.drain(shape, "relay->null"); ok {
			x := d.rate() / ceil.rate()
			out = append(out, ratio{fmt.Sprintf("relay->null >= 0.9x pg_recvlogical (%s)", shapeName(shape)),
				fmt.Sprintf("%.2fx (%.0f vs %.0f ev/s)", x, d.rate(), ceil.rate()), verdict(x >= 0.9)})
		}
		if d, ok := e.drain(shape, "relay->kafka"); ok {
			x := d.rate() / ceil.rate()
			target := "(no target; for reference)"
			v := "-"
			if shape == "batch" {
				target = ">= 0.75x"
				v = verdict(x >= 0.75)
			}
			out = append(out, ratio{fmt.Sprintf("relay->kafka %s pg_recvlogical (%s)", target, shapeName(shape)),
				fmt.Sprintf("%.2fx (%.0f vs %.0f ev/s)", x, d.rate(), ceil.rate()), v})
		}
	}
	if l, ok := e.liveOf("relay->kafka"); ok {
		out = append(out, ratio{fmt.Sprintf("live p99 <= 25ms at %d ev/s", l.TargetRate),
			fmt.Sprintf("%s insert-to-ack, %s commit-to-ack (%.0f ev/s achieved)", ms(l.CreateToAck.P99), ms(l.CommitToAck.P99), l.Achieved),
			verdict(l.CreateToAck.P99 <= 25*time.Millisecond)})
		out = append(out, ratio{"live p50 <= 5ms",
			fmt.Sprintf("%s insert-to-ack, %s commit-to-ack", ms(l.CreateToAck.P50), ms(l.CommitToAck.P50)),
			verdict(l.CreateToAck.P50 <= 5*time.Millisecond)})
		if p, ok := e.liveOf("poller->kafka"); ok && l.CreateToAck.P99 > 0 {
			x := float64(p.CreateToAck.P99) / float64(l.CreateToAck.P99)
			out = append(out, ratio{"p99 >= 10x lower than the poller at equal rate",
				fmt.Sprintf("%.1fx (poller %s vs relay %s)", x, ms(p.CreateToAck.P99), ms(l.CreateToAck.P99)), verdict(x >= 10)})
		}
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
	if k, ok := e.drain("batch", "relay->kafka"); ok {
		if p, ok := e.drain("batch", "poller->kafka"); ok {
			out = append(out, ratio{"higher max throughput than the poller (1,000-row txns)",
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
	}
	return s
}

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
	w("Written by `make bench` (bench/, issue 6); overwritten on every run. ")
	w("All figures come from one run on one machine: Postgres, the broker, the relay and the load generator share its cores, so compare ratios, not absolutes.\n\n")
	w("- command: `%s`\n", r.Command)
	w("- date: %s (took %s)\n", r.Started.Format(time.RFC3339), r.Finished.Sub(r.Started).Round(time.Second))
	w("- machine: %d CPUs (`nproc`), %s, %.1f GiB RAM, Linux %s\n", r.Machine.CPUs, r.Machine.Model, r.Machine.MemoryGiB, r.Machine.Kernel)
	w("- %s; %s\n", r.Machine.Postgres, r.Machine.Go)
	w("- load average (1/5/15 min) at start, during each measurement, at the end: %s\n", strings.Join(e.loadsSeen(), " | "))
	w("- %d events per shape, payload %.0f bytes of JSON on average, %d aggregates; single-row writers: %d connections\n",
		e.o.events, r.Payload, aggregates, e.o.writers)
	w("- inserts: ")
	for _, s := range []string{"batch", "single"} {
		if d, ok := r.Inserts[s]; ok {
			w("%s %s (%.0f ev/s); ", shapeName(s), d.Round(time.Millisecond), float64(e.o.events)/d.Seconds())
		}
	}
	w("\n\n")

	w("## Draining a backlog\n\n")
	w("Every consumer has its own slot, created before the inserts, so each drains identical WAL. ")
	w("Wall time runs from starting the consumer process to its slot's `confirmed_flush_lsn` reaching the WAL end of the inserts (pg_recvlogical: to its exit at `--endpos`). ")
	w("CPU and peak RSS are the consumer process's own (getrusage of the child); Postgres CPU is every server process (utime+stime from /proc) over the same interval.\n\n")
	w("| shape | consumer | events | wall s | events/s | x pg_recvlogical | consumer CPU s / 1M ev | peak RSS MiB | Postgres CPU s / 1M ev | load during |\n")
	w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, d := range r.Drains {
		if d.Err != "" {
			w("| %s | %s | %d | failed: %s | | | | | | |\n", shapeName(d.Shape), d.Consumer, d.Events, strings.ReplaceAll(d.Err, "|", "/"))
			continue
		}
		x := "-"
		if c, ok := e.drain(d.Shape, "pg_recvlogical"); ok && d.Consumer != "pg_recvlogical" {
			x = fmt.Sprintf("%.2f", d.rate()/c.rate())
		} else if d.Consumer == "pg_recvlogical" {
			x = "1.00"
		}
		w("| %s | %s | %d | %.2f | %.0f | %s | %s | %.1f | %s | %s |\n", shapeName(d.Shape), d.Consumer, d.Events, d.Wall.Seconds(), d.rate(), x,
			perMillion(d.CPU, d.Events), float64(d.RSSKiB)/1024, perMillion(d.PGCPU, d.Events), d.Load)
	}
	w("\nThe poller drains the 1,000-row-transaction backlog left in the table after the slots were drained (with its partial index `(created_at) WHERE processed_at IS NULL` created just before), ")
	w("in batches of 1,000 (`FOR UPDATE SKIP LOCKED`, marks rows processed, commits after the broker acknowledged the batch; sleeps %s after a batch that was not full).\n\n", pollInterval)

	w("## Live latency at a fixed write rate\n\n")
	w("%d writers insert single-row transactions (synchronous_commit on) on a fixed schedule for %s; each consumer runs alone against a fresh broker. ", e.o.writers, e.o.liveDuration)
	w("**insert-to-ack** = time the broker acknowledged the record (producer callback in the relay; return of `SendMessages` in the poller) minus the row's `created_at` (`now()` of the inserting transaction, a fraction of a millisecond before its commit). ")
	w("**commit-to-ack** (relay only) = ack time minus the commit timestamp carried in the WAL. Same clock: everything runs on one host.\n\n")
	w("**tail** = how long after the writers stopped the consumer had delivered everything: near zero when it kept up with the rate; large means it fell behind and the percentiles measure a growing queue, not steady-state latency.\n\n")
	w("| consumer | target ev/s | achieved ev/s | events | insert-to-ack p50 | p95 | p99 | max | commit-to-ack p50 | p95 | p99 | tail s | consumer CPU s | Postgres CPU s | load during |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, l := range r.Live {
		if l.Err != "" {
			w("| %s | %d | failed: %s | | | | | | | | | | | | |\n", l.Consumer, l.TargetRate, strings.ReplaceAll(l.Err, "|", "/"))
			continue
		}
		c := func(d time.Duration) string {
			if l.CommitToAck.N == 0 {
				return "-"
			}
			return ms(d)
		}
		w("| %s | %d | %.0f | %d | %s | %s | %s | %s | %s | %s | %s | %.2f | %.2f | %.2f | %s |\n", l.Consumer, l.TargetRate, l.Achieved, l.Events,
			ms(l.CreateToAck.P50), ms(l.CreateToAck.P95), ms(l.CreateToAck.P99), ms(l.CreateToAck.Max),
			c(l.CommitToAck.P50), c(l.CommitToAck.P95), c(l.CommitToAck.P99), l.Tail.Seconds(), l.CPU.Seconds(), l.PGCPU.Seconds(), l.Load)
	}

	w("\n## Targets (issue 6)\n\n| target | measured | verdict |\n|---|---|---|\n")
	for _, x := range e.ratios() {
		w("| %s | %s | %s |\n", x.Target, x.Measured, x.Verdict)
	}

	w("\n## Chart\n\n![throughput and latency](chart.png)\n\n")
	w("Left: events/s draining the backlog, one group per shape; bars in order pg_recvlogical (grey), relay->null (blue), relay->kafka (green), poller->kafka (orange). ")
	w("Right: live insert-to-ack latency in ms, p50 / p95 / p99 for the relay (green) and the poller (orange). The number above each bar is its value.\n")

	var profiles []string
	for _, d := range r.Drains {
		if d.Profile != "" {
			profiles = append(profiles, fmt.Sprintf("### %s, %s\n\n```\n%s```\n", d.Consumer, shapeName(d.Shape), trimProfile(d.Profile)))
		}
	}
	if len(profiles) > 0 {
		w("\n## CPU profiles of the relay process during the drains\n\n`go tool pprof -top` of the helper process (profiles in %s/).\n\n", e.o.tmpDir)
		w("%s", strings.Join(profiles, "\n"))
	}
	if err := os.WriteFile(filepath.Join(e.o.outDir, "RESULTS.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	if err := writeChart(filepath.Join(e.o.outDir, "chart.png"), e); err != nil {
		return err
	}
	fmt.Printf("wrote %s and %s\n", filepath.Join(e.o.outDir, "RESULTS.md"), filepath.Join(e.o.outDir, "chart.png"))
	return nil
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
