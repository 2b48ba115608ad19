package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.yaml.in/yaml/v3"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/metrics"
	"github.com/outbox-relay/outbox-relay/slot"
)

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// samples is one scrape of /metrics: value by series ("name" or
// `name{label="v",...}` as exposed).
type samples map[string]float64

// sum adds every series of the metric name, whatever its labels.
func (s samples) sum(name string) float64 {
	total := 0.0
	for series, v := range s {
		if series == name || strings.HasPrefix(series, name+"{") {
			total += v
		}
	}
	return total
}

func scrape(addr string) (samples, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := samples{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

func mustScrape(t *testing.T, addr string) samples {
	t.Helper()
	s, err := scrape(addr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type readiness struct {
	code   int
	Ready  bool   `json:"ready"`
	State  string `json:"state"`
	Reason string `json:"reason"`
}

func readyz(addr string) (readiness, error) {
	var r readiness
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	r.code = resp.StatusCode
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

func waitReady(t *testing.T, addr, state string, code int) readiness {
	t.Helper()
	var last readiness
	waitFor(t, 60*time.Second, fmt.Sprintf("/readyz %d %s on %s", code, state, addr), func() (bool, error) {
		r, err := readyz(addr)
		last = r
		return err == nil && r.code == code && r.State == state, err
	})
	return last
}

// waitMetric polls /metrics until cond holds for the metric's sum.
func waitMetric(t *testing.T, addr, name, what string, cond func(float64) bool) float64 {
	t.Helper()
	var v float64
	waitFor(t, 60*time.Second, name+" "+what, func() (bool, error) {
		s, err := scrape(addr)
		if err != nil {
			return false, err
		}
		v = s.sum(name)
		return cond(v), fmt.Errorf("%s = %v", name, v)
	})
	return v
}

// statusRow is the part of `outbox-relay status --json` the tests read.
type statusRow struct {
	Slot          string  `json:"slot_name"`
	Active        bool    `json:"active"`
	LagBytes      int64   `json:"lag_bytes"`
	RetainedBytes int64   `json:"retained_bytes"`
	WALStatus     string  `json:"wal_status"`
	LastActivity  *string `json:"last_activity"`
	OK            bool    `json:"ok"`
	Problem       string  `json:"problem"`
}

// runStatus runs `outbox-relay status` and returns stdout, stderr and the
// exit code.
func runStatus(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := relayCmd(context.Background(), append([]string{"status"}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = env
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	case err != nil:
		t.Fatalf("running status: %v", err)
	}
	return stdout.String(), stderr.String(), 0
}

func slotStatusJSON(t *testing.T, db *pgtest.DB, slotName string) statusRow {
	t.Helper()
	out, errOut, code := runStatus(t, relayEnv(), "--pg-url", db.URL, "--slot", slotName, "--json")
	if code != 0 {
		t.Fatalf("status --json exit %d: %s", code, errOut)
	}
	var rows []statusRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("status --json output does not parse: %v\n%s", err, out)
	}
	if len(rows) != 1 || rows[0].Slot != slotName {
		t.Fatalf("status --json: %s, want one row for %s", out, slotName)
	}
	return rows[0]
}

// The metrics follow a run: the published counter equals what the broker
// holds, lag and in-flight return to 0 when caught up, the latency
// histogram counts every event; /readyz says streaming, and standby for a
// second relay on the same slot.
func TestMetricsFollowTheStreamAndReadinessTheState(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	cluster := kafkatest.NewCluster(t, kfake.DefaultNumPartitions(4))
	brokers := strings.Join(cluster.ListenAddrs(), ",")
	args := []string{"--pg-url", db.URL, "--kafka-brokers", brokers, "--slot", "obs", "--publication", "obs", "--slot-poll-interval", "300ms"}

	addr := freeAddr(t)
	relay := startRelay(t, append(args, "--metrics-addr", addr)...)
	waitReady(t, addr, "streaming", http.StatusOK)
	before := mustScrape(t, addr)
	if before["outbox_relay_streaming"] != 1 || before["outbox_relay_standby"] != 0 {
		t.Fatalf("streaming/standby gauges %v/%v while streaming", before["outbox_relay_streaming"], before["outbox_relay_standby"])
	}

	// Scrape while the writers run: counters only ever go up.
	const total = 3000
	writeErr := make(chan error, 1)
	go func() { writeErr <- sc.writeConcurrently(ctx, 3, total, 20, nil) }()
	var scrapes int
	last := 0.0
	for done := false; !done; {
		select {
		case err := <-writeErr:
			if err != nil {
				t.Fatalf("writing: %v", err)
			}
			done = true
		case <-time.After(100 * time.Millisecond):
			s := mustScrape(t, addr)
			n := s.sum("outbox_relay_events_published_total")
			if n < last {
				t.Fatalf("events_published_total went down: %v after %v", n, last)
			}
			last = n
			scrapes++
		}
	}
	readCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	recs, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), []string{"outbox.order", "outbox.customer"}, total)
	if err != nil {
		t.Fatalf("reading: %v", err)
	}
	res := sc.check(t, recs)
	if len(res.duplicates) != 0 {
		t.Fatalf("clean run delivered %d duplicates", len(res.duplicates))
	}
	perTopic := map[string]int{}
	for _, r := range recs {
		perTopic[r.Topic]++
	}

	waitMetric(t, addr, "outbox_relay_events_published_total", fmt.Sprintf("= %d delivered", len(recs)), func(v float64) bool { return v == float64(len(recs)) })
	waitMetric(t, addr, "outbox_relay_events_in_flight", "back to 0", func(v float64) bool { return v == 0 })
	waitMetric(t, addr, "outbox_relay_lag_bytes", "back to 0 when caught up", func(v float64) bool { return v == 0 })
	waitMetric(t, addr, "outbox_relay_replication_lag_seconds", "back to 0 when caught up", func(v float64) bool { return v == 0 })
	s := mustScrape(t, addr)
	for topic, n := range perTopic {
		if got := s[`outbox_relay_events_published_total{topic="`+topic+`"}`]; got != float64(n) {
			t.Errorf("events_published_total{topic=%q} = %v, the broker holds %d", topic, got, n)
		}
	}
	if got := s["outbox_relay_end_to_end_latency_seconds_count"]; got != float64(total) {
		t.Errorf("latency histogram counted %v events, want %d", got, total)
	}
	if got, want := s.sum("outbox_relay_transactions_decoded_total"), float64(len(sc.txs)); got < want {
		t.Errorf("transactions_decoded_total = %v, want at least the %v written", got, want)
	}
	if got := s.sum("outbox_relay_published_bytes_total"); got <= 0 {
		t.Errorf("published_bytes_total = %v, want > 0", got)
	}
	if got := s.sum("outbox_relay_publish_errors_total") + s.sum("outbox_relay_reconnects_total"); got != 0 {
		t.Errorf("publish errors + reconnects = %v in a clean run, want 0", got)
	}
	if s["outbox_relay_confirmed_lsn"] == 0 || s["outbox_relay_confirmed_lsn"] < s["outbox_relay_server_wal_end_lsn"] {
		t.Errorf("confirmed_lsn %v, server_wal_end_lsn %v: want confirmed at the WAL end", s["outbox_relay_confirmed_lsn"], s["outbox_relay_server_wal_end_lsn"])
	}
	if s[`outbox_relay_slot_wal_status{status="reserved"}`] != 1 {
		t.Errorf("slot_wal_status{status=reserved} = %v, want 1", s[`outbox_relay_slot_wal_status{status="reserved"}`])
	}
	if s["outbox_relay_slot_retained_wal_bytes"] <= 0 {
		t.Errorf("slot_retained_wal_bytes = %v, want > 0", s["outbox_relay_slot_retained_wal_bytes"])
	}
	var lines []string
	for series, v := range s {
		if strings.HasPrefix(series, "outbox_relay_") && !strings.Contains(series, "_bucket") {
			lines = append(lines, fmt.Sprintf("%s %v", series, v))
		}
	}
	sort.Strings(lines)
	t.Logf("scrape after the run:\n%s", strings.Join(lines, "\n"))
	t.Logf("%d scrapes during the run; after it: published %v, lag %v B, retained %v B, latency sum %.3fs over %v events",
		scrapes, s.sum("outbox_relay_events_published_total"), s["outbox_relay_lag_bytes"], s["outbox_relay_slot_retained_wal_bytes"],
		s["outbox_relay_end_to_end_latency_seconds_sum"], s["outbox_relay_end_to_end_latency_seconds_count"])

	// A second relay on the same slot waits as standby and says so.
	addr2 := freeAddr(t)
	second := startRelay(t, append(args, "--metrics-addr", addr2)...)
	r := waitReady(t, addr2, "standby", http.StatusServiceUnavailable)
	if r.Ready || !strings.Contains(r.Reason, "in use") {
		t.Fatalf("standby readyz body %+v: want ready false and the reason", r)
	}
	if strings.Contains(r.Reason, db.URL) {
		t.Fatalf("readyz body shows the connection URL: %q", r.Reason)
	}
	if s := mustScrape(t, addr2); s["outbox_relay_standby"] != 1 || s["outbox_relay_streaming"] != 0 {
		t.Fatalf("standby relay: standby %v streaming %v, want 1 and 0", s["outbox_relay_standby"], s["outbox_relay_streaming"])
	}
	if r, err := readyz(addr); err != nil || r.code != http.StatusOK {
		t.Fatalf("the streaming relay's readyz = %+v, %v while the other waits; want 200", r, err)
	}
	if code := second.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("standby relay exit code %d after SIGTERM, want 0", code)
	}

	// Losing the replication connection is a reconnect with its cause, and
	// the relay is ready again once it streams.
	db.Exec(t, `select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'obs' and active`)
	waitMetric(t, addr, `outbox_relay_reconnects_total{cause="replication"}`, "counts the lost connection", func(v float64) bool { return v == 1 })
	waitReady(t, addr, "streaming", http.StatusOK)

	if code := relay.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM, want 0", code)
	}
}

// While the relay is stopped the slot retains WAL and lags; `status`
// reports it (exit 1 past --max-lag), and after a restart the relay
// catches up and the retained WAL shrinks.
func TestRetainedWALGrowsWhileStoppedAndShrinksAfterRestart(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	cluster := kafkatest.NewCluster(t)
	brokers := strings.Join(cluster.ListenAddrs(), ",")
	addr := freeAddr(t)
	args := []string{"--pg-url", db.URL, "--kafka-brokers", brokers, "--slot", "ret", "--publication", "ret",
		"--metrics-addr", addr, "--slot-poll-interval", "300ms"}

	relay := startRelay(t, args...)
	waitReady(t, addr, "streaming", http.StatusOK)
	if err := sc.writeConcurrently(ctx, 2, 200, 10, nil); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, addr, "outbox_relay_lag_bytes", "back to 0", func(v float64) bool { return v == 0 })
	if code := relay.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("relay exit code %d, want 0", code)
	}
	waitFor(t, 30*time.Second, "slot released", func() (bool, error) {
		return !slotStatusJSON(t, db, "ret").Active, nil
	})
	stopped := slotStatusJSON(t, db, "ret")

	// Written while nobody streams: WAL piles up behind the slot.
	if err := sc.writeConcurrently(ctx, 2, 2000, 10, nil); err != nil {
		t.Fatal(err)
	}
	behind := slotStatusJSON(t, db, "ret")
	if behind.RetainedBytes <= stopped.RetainedBytes || behind.LagBytes <= 0 {
		t.Fatalf("while stopped: retained %d -> %d, lag %d; want retained growing and lag > 0", stopped.RetainedBytes, behind.RetainedBytes, behind.LagBytes)
	}
	if !behind.OK || behind.WALStatus != "reserved" {
		t.Fatalf("status row %+v: want ok, reserved", behind)
	}

	// status as a probe: 0 within --max-lag, 1 beyond it, 2 without --pg-url.
	out, errOut, code := runStatus(t, relayEnv(), "--pg-url", db.URL, "--slot", "ret", "--max-lag", "1GiB")
	if code != 0 {
		t.Fatalf("status --max-lag 1GiB exit %d, want 0: %s%s", code, out, errOut)
	}
	if !strings.Contains(out, "SLOT") || !strings.Contains(out, "ret") || !strings.Contains(out, "reserved") {
		t.Fatalf("status table:\n%s", out)
	}
	t.Logf("status while stopped:\n%s", out)
	_, errOut, code = runStatus(t, relayEnv(), "--pg-url", db.URL, "--slot", "ret", "--max-lag", "1")
	if code != 1 || !strings.Contains(errOut, "--max-lag") {
		t.Fatalf("status --max-lag 1 exit %d (%s), want 1 naming the limit", code, errOut)
	}
	out, _, code = runStatus(t, relayEnv(), "--pg-url", db.URL, "--slot", "ret", "--max-lag", "1", "--json")
	var rows []statusRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil || code != 1 || len(rows) != 1 || rows[0].OK || rows[0].Problem == "" {
		t.Fatalf("status --json --max-lag 1: exit %d, rows %+v (%v), want 1 and a problem", code, rows, err)
	}
	if _, _, code := runStatus(t, relayEnv(), "--pg-url", db.URL, "--slot", "no_such_slot"); code != 1 {
		t.Fatalf("status of a missing slot exit %d, want 1", code)
	}
	var noPG []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "OUTBOX_RELAY_") {
			noPG = append(noPG, kv)
		}
	}
	if _, errOut, code := runStatus(t, noPG); code != 2 || !strings.Contains(errOut, "--pg-url") {
		t.Fatalf("status without --pg-url exit %d (%s), want 2", code, errOut)
	}

	// Restarted, the relay catches up; the slot lets go of the WAL.
	relay = startRelay(t, args...)
	waitReady(t, addr, "streaming", http.StatusOK)
	waitMetric(t, addr, "outbox_relay_events_published_total", "= the 2000 written while stopped", func(v float64) bool { return v == 2000 })
	waitMetric(t, addr, "outbox_relay_lag_bytes", "back to 0", func(v float64) bool { return v == 0 })
	waitFor(t, 60*time.Second, "retained WAL below what it was while stopped", func() (bool, error) {
		// A checkpoint logs the running transactions, which lets the slot's
		// restart_lsn move past the WAL now confirmed.
		conn, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "checkpoint"); err != nil {
			return false, err
		}
		row := slotStatusJSON(t, db, "ret")
		return row.RetainedBytes < behind.RetainedBytes && row.LagBytes == 0, fmt.Errorf("retained %d lag %d", row.RetainedBytes, row.LagBytes)
	})
	waitMetric(t, addr, "outbox_relay_slot_retained_wal_bytes", "below the stopped peak", func(v float64) bool { return v > 0 && v < float64(behind.RetainedBytes) })
	if row := slotStatusJSON(t, db, "ret"); row.LastActivity == nil {
		t.Errorf("active slot has no last activity: %+v", row)
	}
	recs, err := kafkatest.ReadAll(ctx, cluster.ListenAddrs(), []string{"outbox.order", "outbox.customer"}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sc.check(t, recs)
	if code := relay.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("relay exit code %d, want 0", code)
	}
}

// The alert rules and the dashboard parse, and every metric they name is
// one the relay exports, so a rename cannot silently blind them.
func TestAlertRulesAndDashboardNameExistingMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, metrics.Options{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// Labelled families appear once they have a series.
	m.EventAcked(&decoder.Event{Topic: "t", CommitTime: time.Now()})
	m.PublishFailed("rejected")
	m.ObserveSlot(slot.Info{WALStatus: "reserved"}, true)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				exported[f.GetName()+s] = true
			}
		}
	}
	metricName := regexp.MustCompile(`\boutbox_relay_[a-z0-9_]+`)
	checkExpr := func(where, expr string) {
		t.Helper()
		names := metricName.FindAllString(expr, -1)
		if len(names) == 0 && !strings.Contains(expr, "up{") {
			t.Errorf("%s: expression %q names no relay metric", where, expr)
		}
		for _, n := range names {
			if !exported[n] {
				t.Errorf("%s: expression %q names %s, which the relay does not export", where, expr, n)
			}
		}
	}

	raw, err := os.ReadFile("../docker/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("prometheus-alerts.yml: %v", err)
	}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v: want alert, expr, a severity label and a summary", r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("rule %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			alerts[r.Alert] = true
			checkExpr("alert "+r.Alert, r.Expr)
		}
	}
	for _, want := range []string{"OutboxRelayDown", "OutboxRelayLagGrowing", "OutboxRelaySlotWALNotReserved", "OutboxRelayPublishErrors", "OutboxRelayDeadLetters"} {
		if !alerts[want] {
			t.Errorf("alert %s missing", want)
		}
	}

	raw, err = os.ReadFile("../docker/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard has no uid, title or panels")
	}
	shown := map[string]bool{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			checkExpr("panel "+p.Title, tg.Expr)
			for _, n := range metricName.FindAllString(tg.Expr, -1) {
				shown[n] = true
			}
		}
	}
	for _, want := range []string{"outbox_relay_events_published_total", "outbox_relay_lag_bytes", "outbox_relay_replication_lag_seconds",
		"outbox_relay_end_to_end_latency_seconds_bucket", "outbox_relay_events_in_flight", "outbox_relay_slot_retained_wal_bytes",
		"outbox_relay_publish_errors_total"} {
		if !shown[want] {
			t.Errorf("dashboard does not chart %s", want)
		}
	}
}
