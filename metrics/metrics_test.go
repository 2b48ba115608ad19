package metrics

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/slot"
)

func newTestMetrics(t *testing.T, opts Options) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := New(reg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// exercise touches every metric, so the linter sees every series.
func exercise(m *Metrics) {
	m.Session(func() relay.Progress {
		return relay.Progress{Confirmed: 1000, Received: 1500, ServerWALEnd: 1600, InFlight: 3, Lag: 1500 * time.Millisecond}
	})
	m.StateChanged(relay.StateStreaming, "", nil)
	m.EventAcked(&decoder.Event{Topic: "outbox.order", Payload: []byte(`{"a":1}`), CommitTime: time.Now().Add(-20 * time.Millisecond)})
	m.PublishFailed(relay.ReasonRejected)
	m.TransactionDecoded()
	m.EventDeadLettered()
	m.HeartbeatSent()
	m.RowsPruned(3)
	m.HeaderDropped("public.outbox", "id")
	m.StateChanged(relay.StateReconnecting, relay.CauseSink, errors.New("broker gone"))
	size := int64(1 << 30)
	m.ObserveSlot(slot.Info{Name: "s", WALStatus: "reserved", RetainedBytes: 4096, SafeWALSize: &size}, true)
	m.SlotPollFailed()
}

// The metric names follow Prometheus's conventions, as promtool check
// metrics would enforce them, including the runtime collectors next to
// ours.
func TestMetricNamesPassTheLinter(t *testing.T) {
	m, reg := newTestMetrics(t, Options{Version: "test"})
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exercise(m)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	// The same through CollectAndLint on our collectors alone.
	for _, c := range []prometheus.Collector{m.eventsVec, m.bytesVec, m.latency, m.walStatus, newProgressCollector(m)} {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n < 30 {
		t.Fatalf("gathered %d series; want ours plus the Go and process collectors", n)
	}
}

func TestEveryMetricIsNamespacedAndExistsBeforeUse(t *testing.T) {
	_, reg := newTestMetrics(t, Options{Version: "v1.2.3"})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "outbox_relay_") {
			t.Errorf("metric %s is not under outbox_relay_", f.GetName())
		}
		names[f.GetName()] = true
	}
	// Alerts need these series at 0 before anything happens.
	for _, want := range []string{
		"outbox_relay_events_dead_lettered_total", "outbox_relay_heartbeats_sent_total",
		"outbox_relay_publish_errors_total", "outbox_relay_reconnects_total",
		"outbox_relay_transactions_decoded_total", "outbox_relay_lag_bytes",
		"outbox_relay_replication_lag_seconds", "outbox_relay_events_in_flight",
		"outbox_relay_streaming", "outbox_relay_standby", "outbox_relay_build_info",
		"outbox_relay_end_to_end_latency_seconds", "outbox_relay_rows_pruned_total",
		"outbox_relay_headers_dropped_total",
	} {
		if !names[want] {
			t.Errorf("metric %s missing before first use", want)
		}
	}
	want := `
# HELP outbox_relay_build_info Always 1; the labels say which build runs.
# TYPE outbox_relay_build_info gauge
outbox_relay_build_info{goversion="` + goVersion() + `",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "outbox_relay_build_info"); err != nil {
		t.Fatal(err)
	}
}

func goVersion() string { return runtime.Version() }

func TestAckedEventsAreCountedPerTopicWithBytesAndLatency(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	commit := time.Now().Add(-50 * time.Millisecond)
	for range 3 {
		m.EventAcked(&decoder.Event{Topic: "outbox.order", Payload: make([]byte, 10), CommitTime: commit})
	}
	m.EventAcked(&decoder.Event{Topic: "outbox.customer", Payload: make([]byte, 7), CommitTime: commit})

	if got := testutil.ToFloat64(m.eventsVec.WithLabelValues("outbox.order")); got != 3 {
		t.Errorf("events for outbox.order = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.eventsVec.WithLabelValues("outbox.customer")); got != 1 {
		t.Errorf("events for outbox.customer = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.bytesVec.WithLabelValues("outbox.order")); got != 30 {
		t.Errorf("bytes for outbox.order = %v, want 30", got)
	}
	ch := make(chan prometheus.Metric, 1)
	m.latency.Collect(ch)
	var pb dto.Metric
	if err := (<-ch).Write(&pb); err != nil {
		t.Fatal(err)
	}
	count := pb.GetHistogram().GetSampleCount()
	if count != 4 {
		t.Fatalf("latency observations = %d, want 4", count)
	}
	if sum := pb.GetHistogram().GetSampleSum(); sum < 4*0.05 || sum > 4*5 {
		t.Fatalf("latency sum = %vs, want about 4 x 50ms", sum)
	}
}

// The per-event path allocates nothing once a topic is known.
func TestEventAckedDoesNotAllocate(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	ev := &decoder.Event{Topic: "outbox.order", Payload: []byte("x"), CommitTime: time.Now()}
	m.EventAcked(ev)
	if n := testing.AllocsPerRun(1000, func() { m.EventAcked(ev) }); n != 0 {
		t.Fatalf("EventAcked allocates %v times per event, want 0", n)
	}
}

func TestTopicCacheIsSafeForConcurrentAcks(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	topics := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				m.EventAcked(&decoder.Event{Topic: topics[(g+i)%len(topics)]})
			}
		}()
	}
	wg.Wait()
	total := 0.0
	for _, tp := range topics {
		total += testutil.ToFloat64(m.eventsVec.WithLabelValues(tp))
	}
	if total != 8000 {
		t.Fatalf("counted %v events, want 8000", total)
	}
	if n := len(*m.topics.Load()); n != len(topics) {
		t.Fatalf("topic cache holds %d entries, want %d", n, len(topics))
	}
}

// Every dropped header is counted, with no label: the keys come from user
// data and the relation is known to the operator.
func TestDroppedHeadersAreCounted(t *testing.T) {
	m, reg := newTestMetrics(t, Options{})
	m.HeaderDropped("public.outbox", "id")
	m.HeaderDropped("public.outbox", "id")
	m.HeaderDropped("message prefix outbox", "")
	want := `
# HELP outbox_relay_headers_dropped_total Keys of a headers JSON object left out of an event: id, event_type, aggregate_type (headers every record already carries) or an empty name.
# TYPE outbox_relay_headers_dropped_total counter
outbox_relay_headers_dropped_total 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "outbox_relay_headers_dropped_total"); err != nil {
		t.Fatal(err)
	}
}

func TestProgressIsReadAtScrapeTime(t *testing.T) {
	m, reg := newTestMetrics(t, Options{})
	// Before any session: zeros, not absent series.
	want := func(confirmed, lagBytes, inFlight, lagSeconds string) string {
		return `
# HELP outbox_relay_confirmed_lsn Last WAL position confirmed to PostgreSQL as flushed (the slot's confirmed_flush_lsn), as a byte offset.
# TYPE outbox_relay_confirmed_lsn gauge
outbox_relay_confirmed_lsn ` + confirmed + `
# HELP outbox_relay_lag_bytes Server WAL end minus the confirmed position.
# TYPE outbox_relay_lag_bytes gauge
outbox_relay_lag_bytes ` + lagBytes + `
# HELP outbox_relay_events_in_flight Events handed to the broker and not yet acknowledged.
# TYPE outbox_relay_events_in_flight gauge
outbox_relay_events_in_flight ` + inFlight + `
# HELP outbox_relay_replication_lag_seconds Now minus the commit time of the oldest transaction received and not yet fully acknowledged by the broker; 0 when caught up.
# TYPE outbox_relay_replication_lag_seconds gauge
outbox_relay_replication_lag_seconds ` + lagSeconds + `
`
	}
	names := []string{"outbox_relay_confirmed_lsn", "outbox_relay_lag_bytes", "outbox_relay_events_in_flight", "outbox_relay_replication_lag_seconds"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want("0", "0", "0", "0")), names...); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	p := relay.Progress{Confirmed: 1000, ServerWALEnd: 1600, InFlight: 7, Lag: 2 * time.Second}
	m.Session(func() relay.Progress { mu.Lock(); defer mu.Unlock(); return p })
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want("1000", "600", "7", "2")), names...); err != nil {
		t.Fatal(err)
	}
	// Confirmed past the reported WAL end (a transaction's end LSN): lag
	// is 0, never negative.
	mu.Lock()
	p = relay.Progress{Confirmed: 1700, ServerWALEnd: 1600}
	mu.Unlock()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want("1700", "0", "0", "0")), names...); err != nil {
		t.Fatal(err)
	}
}

func TestSlotPollSetsRetainedWALAndOneWALStatus(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	m.ObserveSlot(slot.Info{Name: "s", WALStatus: "extended", RetainedBytes: 5 << 20}, true)
	if got := testutil.ToFloat64(m.retained); got != 5<<20 {
		t.Errorf("retained = %v, want %v", got, 5<<20)
	}
	if got := testutil.ToFloat64(m.safeWAL); !math.IsInf(got, 1) {
		t.Errorf("safe_wal_size with no max_slot_wal_keep_size = %v, want +Inf", got)
	}
	for _, s := range WALStatuses {
		want := 0.0
		if s == "extended" {
			want = 1
		}
		if got := testutil.ToFloat64(m.walStatus.WithLabelValues(s)); got != want {
			t.Errorf("wal_status{status=%q} = %v, want %v", s, got, want)
		}
	}
	m.ObserveSlot(slot.Info{}, false)
	if got := testutil.ToFloat64(m.walStatus.WithLabelValues("missing")); got != 1 {
		t.Errorf("wal_status{status=missing} = %v after the slot vanished, want 1", got)
	}
	if got := testutil.ToFloat64(m.walStatus.WithLabelValues("extended")); got != 0 {
		t.Errorf("wal_status{status=extended} = %v after the slot vanished, want 0", got)
	}
}

func TestStatesDriveGaugesReconnectsAndReadiness(t *testing.T) {
	m, reg := newTestMetrics(t, Options{Secrets: []string{"s3cret"}})
	srv := httptest.NewServer(m.Handler(reg))
	defer srv.Close()

	ready := func() (int, Health) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h Health
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatalf("readyz body: %v", err)
		}
		return resp.StatusCode, h
	}

	if code, h := ready(); code != 503 || h.State != "connecting" || h.Ready {
		t.Fatalf("before streaming: %d %+v, want 503 connecting", code, h)
	}
	m.StateChanged(relay.StateStreaming, "", nil)
	if code, h := ready(); code != 200 || !h.Ready || h.State != "streaming" || h.Reason != "" {
		t.Fatalf("streaming: %d %+v, want 200 ready", code, h)
	}
	if testutil.ToFloat64(m.streaming) != 1 || testutil.ToFloat64(m.standby) != 0 {
		t.Fatal("streaming gauge not 1 while streaming")
	}

	m.StateChanged(relay.StateReconnecting, relay.CauseReplication, errors.New("receiving from slot s: connection to postgres://u:s3cret@db/x reset"))
	code, h := ready()
	if code != 503 || h.State != "reconnecting" || !strings.Contains(h.Reason, "connection") {
		t.Fatalf("reconnecting: %d %+v, want 503 with the cause", code, h)
	}
	if strings.Contains(h.Reason, "s3cret") {
		t.Fatalf("readyz body shows the password: %q", h.Reason)
	}
	if got := testutil.ToFloat64(m.reconnects.WithLabelValues(relay.CauseReplication)); got != 1 {
		t.Fatalf("reconnects{cause=replication} = %v, want 1", got)
	}
	if testutil.ToFloat64(m.streaming) != 0 {
		t.Fatal("streaming gauge still 1 while reconnecting")
	}

	m.StateChanged(relay.StateStandby, "", errors.New("slot s is in use by another process"))
	if code, h := ready(); code != 503 || h.State != "standby" {
		t.Fatalf("standby: %d %+v, want 503 standby", code, h)
	}
	if testutil.ToFloat64(m.standby) != 1 {
		t.Fatal("standby gauge not 1 while standby")
	}
	if got := testutil.ToFloat64(m.reconnects.WithLabelValues(relay.CauseReplication)); got != 1 {
		t.Fatalf("standby counted as a reconnect: %v", got)
	}

	m.StateChanged(relay.StateStopped, "", nil)
	if code, h := ready(); code != 503 || h.State != "stopped" {
		t.Fatalf("stopped: %d %+v, want 503 stopped", code, h)
	}

	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz = %d, want 200 whatever the relay's state", resp.StatusCode)
	}
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("metrics = %d", resp.StatusCode)
	}
}

func BenchmarkEventAcked(b *testing.B) {
	reg := prometheus.NewRegistry()
	m, err := New(reg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	ev := &decoder.Event{Topic: "outbox.order", Payload: make([]byte, 100), CommitTime: time.Now()}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.EventAcked(ev)
		}
	})
}

// Committed Kafka transactions are observed: their commit latency and
// size. The relay finds the method through relay.TxnObserver.
func TestKafkaTransactionsAreObserved(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	var _ relay.TxnObserver = m
	m.TransactionCommitted(20*time.Millisecond, 100)
	m.TransactionCommitted(40*time.Millisecond, 300)
	for _, c := range []struct {
		h         prometheus.Histogram
		name      string
		sum       float64
		tolerance float64
	}{{m.txnCommit, "commit seconds", 0.06, 1e-9}, {m.txnSize, "events", 400, 0}} {
		ch := make(chan prometheus.Metric, 1)
		c.h.Collect(ch)
		var pb dto.Metric
		if err := (<-ch).Write(&pb); err != nil {
			t.Fatal(err)
		}
		if n, sum := pb.GetHistogram().GetSampleCount(), pb.GetHistogram().GetSampleSum(); n != 2 || sum < c.sum-c.tolerance || sum > c.sum+c.tolerance {
			t.Errorf("%s: %d observations summing to %v, want 2 summing to %v", c.name, n, sum, c.sum)
		}
	}
}
