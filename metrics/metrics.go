// Package metrics exposes what the relay does as Prometheus metrics and
// health checks. [Metrics] implements relay.Observer; it registers on the
// prometheus.Registerer it is given, never on the global one.
//
// The per-event path (EventAcked) is a few atomic adds: the counters of
// each topic are resolved once and kept in a copy-on-write map that is read
// without a lock. Positions, in-flight events and lag are read from the
// relay when Prometheus scrapes, not pushed per event.
package metrics

import (
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/slot"
)

// namespace prefixes every metric name.
const namespace = "outbox_relay"

// WALStatuses are the values of the status label of
// outbox_relay_slot_wal_status: pg_replication_slots.wal_status, plus
// "missing" when the slot does not exist.
var WALStatuses = []string{"reserved", "extended", "unreserved", "lost", "missing"}

// LatencyBuckets are the end-to-end latency histogram's buckets, in
// seconds: from a millisecond to two minutes.
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// maxReason bounds the length of the reason in a health body.
const maxReason = 300

// Options configure New.
type Options struct {
	// Version is reported by outbox_relay_build_info.
	Version string
	// Secrets are strings that must never appear in a health body (the
	// PostgreSQL password, for one); they are replaced by "xxxxx".
	Secrets []string
}

// Metrics holds the relay's metrics and its health state.
type Metrics struct {
	secrets []string

	eventsVec, bytesVec *prometheus.CounterVec
	publishErrors       *prometheus.CounterVec
	deadLettered        prometheus.Counter
	transactions        prometheus.Counter
	heartbeats          prometheus.Counter
	rowsPruned          prometheus.Counter
	headersDropped      prometheus.Counter
	reconnects          *prometheus.CounterVec
	latency             prometheus.Histogram
	txnCommit, txnSize  prometheus.Histogram
	streaming, standby  prometheus.Gauge
	retained, safeWAL   prometheus.Gauge
	walStatus           *prometheus.GaugeVec
	slotPollErrors      prometheus.Counter

	// topics maps a topic to its resolved counters; it is replaced, never
	// changed, so EventAcked reads it without a lock. topicsMu serialises
	// the writers.
	topics   atomic.Pointer[map[string]*topicMetrics]
	topicsMu sync.Mutex

	rejected, publishFailed prometheus.Counter

	// progress is the current session's progress function.
	progress atomic.Pointer[func() relay.Progress]

	mu     sync.Mutex
	health Health
}

// topicMetrics are one topic's counters.
type topicMetrics struct {
	events, bytes prometheus.Counter
}

// Health is the relay's state as /readyz reports it.
type Health struct {
	// Ready is true while streaming.
	Ready bool `json:"ready"`
	// State is the session state: connecting, standby, streaming,
	// reconnecting or stopped.
	State string `json:"state"`
	// Reason says why the relay is not ready, when it is not.
	Reason string `json:"reason,omitempty"`
	// Since is when the state began.
	Since time.Time `json:"since"`
}

// New creates the metrics and registers them on reg.
func New(reg prometheus.Registerer, opts Options) (*Metrics, error) {
	m := &Metrics{
		health: Health{State: relay.StateConnecting.String(), Reason: "starting", Since: time.Now()},
	}
	for _, s := range opts.Secrets {
		if s != "" {
			m.secrets = append(m.secrets, s)
		}
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	}
	m.eventsVec = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "events_published_total",
		Help: "Events the broker acknowledged, by topic."}, []string{"topic"})
	m.bytesVec = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "published_bytes_total",
		Help: "Payload bytes of the events the broker acknowledged, by topic."}, []string{"topic"})
	m.publishErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "publish_errors_total",
		Help: "Events that could not be published, by reason: rejected (the broker's error survived the retries) or publish (the publisher refused the event). Each one ends the session."},
		[]string{"reason"})
	m.rejected = m.publishErrors.WithLabelValues(relay.ReasonRejected)
	m.publishFailed = m.publishErrors.WithLabelValues(relay.ReasonPublish)
	m.deadLettered = counter("events_dead_lettered_total", "Events sent to the dead-letter destination instead of their topic.")
	m.transactions = counter("transactions_decoded_total", "Transactions decoded from the WAL (commits).")
	m.heartbeats = counter("heartbeats_sent_total", "Heartbeat messages written to the WAL to move an idle slot.")
	m.rowsPruned = counter("rows_pruned_total", "Confirmed outbox rows deleted by --prune-after.")
	// No key label: keys come from user data, and the log names them.
	m.headersDropped = counter("headers_dropped_total", "Keys of a headers JSON object left out of an event: id, event_type, aggregate_type (headers every record already carries) or an empty name.")
	m.reconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "reconnects_total",
		Help: "Sessions that ended with an error and were restarted, by cause: postgres, replication or sink."},
		[]string{"cause"})
	for _, c := range []string{relay.CausePostgres, relay.CauseReplication, relay.CauseSink} {
		m.reconnects.WithLabelValues(c)
	}
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "end_to_end_latency_seconds",
		Help:    "Time from the transaction's commit in PostgreSQL to the broker's acknowledgement of each event.",
		Buckets: LatencyBuckets})
	m.txnCommit = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "kafka_transaction_commit_seconds",
		Help:    "With --exactly-once: how long committing each Kafka transaction took (the checkpoint record, the producer's flush and the commit).",
		Buckets: LatencyBuckets})
	m.txnSize = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "kafka_transaction_events",
		Help:    "With --exactly-once: events (dead letters included) per committed Kafka transaction.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 9)})
	m.streaming = gauge("streaming", "1 while the relay streams from its slot, else 0.")
	m.standby = gauge("standby", "1 while the relay waits because another process holds its slot, else 0.")
	m.retained = gauge("slot_retained_wal_bytes", "WAL the slot keeps on the server (current WAL position - restart_lsn), polled from pg_replication_slots.")
	m.safeWAL = gauge("slot_safe_wal_size_bytes", "WAL that may still be written before the slot risks invalidation (safe_wal_size); +Inf when max_slot_wal_keep_size is unlimited.")
	m.walStatus = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "slot_wal_status",
		Help: "1 for the slot's current wal_status (reserved, extended, unreserved, lost; missing when the slot does not exist), 0 for the others."},
		[]string{"status"})
	m.slotPollErrors = counter("slot_poll_errors_total", "Failed polls of pg_replication_slots.")
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "build_info",
		Help:        "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": opts.Version, "goversion": runtime.Version()}})
	buildInfo.Set(1)
	empty := map[string]*topicMetrics{}
	m.topics.Store(&empty)

	for _, c := range []prometheus.Collector{
		m.eventsVec, m.bytesVec, m.publishErrors, m.deadLettered, m.transactions, m.heartbeats, m.rowsPruned, m.headersDropped,
		m.reconnects, m.latency, m.txnCommit, m.txnSize, m.streaming, m.standby, m.retained, m.safeWAL, m.walStatus,
		m.slotPollErrors, buildInfo, newProgressCollector(m),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// topic returns the counters of topic, resolving them on first use.
func (m *Metrics) topic(name string) *topicMetrics {
	if t, ok := (*m.topics.Load())[name]; ok {
		return t
	}
	m.topicsMu.Lock()
	defer m.topicsMu.Unlock()
	old := *m.topics.Load()
	if t, ok := old[name]; ok {
		return t
	}
	t := &topicMetrics{events: m.eventsVec.WithLabelValues(name), bytes: m.bytesVec.WithLabelValues(name)}
	next := make(map[string]*topicMetrics, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[name] = t
	m.topics.Store(&next)
	return t
}

// EventAcked counts one acknowledged event and observes its end-to-end
// latency. It implements relay.Observer.
func (m *Metrics) EventAcked(ev *decoder.Event) {
	t := m.topic(ev.Topic)
	t.events.Inc()
	t.bytes.Add(float64(len(ev.Payload)))
	if !ev.CommitTime.IsZero() {
		m.latency.Observe(max(0, time.Since(ev.CommitTime).Seconds()))
	}
}

// PublishFailed counts one event that could not be published. It
// implements relay.Observer.
func (m *Metrics) PublishFailed(reason string) {
	switch reason {
	case relay.ReasonRejected:
		m.rejected.Inc()
	case relay.ReasonPublish:
		m.publishFailed.Inc()
	default:
		m.publishErrors.WithLabelValues(reason).Inc()
	}
}

// TransactionDecoded counts one commit. It implements relay.Observer.
func (m *Metrics) TransactionDecoded() { m.transactions.Inc() }

// EventDeadLettered counts one event sent to the dead-letter destination.
func (m *Metrics) EventDeadLettered() { m.deadLettered.Inc() }

// RowsPruned counts confirmed outbox rows deleted by pruning.
func (m *Metrics) RowsPruned(n int) { m.rowsPruned.Add(float64(n)) }

// HeaderDropped counts one header key left out of an event. It implements
// relay.Observer.
func (m *Metrics) HeaderDropped(string, string) { m.headersDropped.Inc() }

// TransactionCommitted observes a committed Kafka transaction
// (relay.TxnObserver).
func (m *Metrics) TransactionCommitted(latency time.Duration, events int) {
	m.txnCommit.Observe(latency.Seconds())
	m.txnSize.Observe(float64(events))
}

// HeartbeatSent counts one heartbeat written to the WAL.
func (m *Metrics) HeartbeatSent() { m.heartbeats.Inc() }

// Session makes the scrapes read progress, the new session's positions.
// It implements relay.Observer.
func (m *Metrics) Session(progress func() relay.Progress) {
	m.progress.Store(&progress)
}

// StateChanged records the relay's state for /readyz and the streaming
// and standby gauges, and counts reconnects. It implements relay.Observer.
func (m *Metrics) StateChanged(state relay.State, cause string, err error) {
	m.streaming.Set(b2f(state == relay.StateStreaming))
	m.standby.Set(b2f(state == relay.StateStandby))
	if state == relay.StateReconnecting && cause != "" {
		m.reconnects.WithLabelValues(cause).Inc()
	}
	h := Health{Ready: state == relay.StateStreaming, State: state.String(), Since: time.Now()}
	switch {
	case err != nil:
		h.Reason = m.redact(err.Error())
	case state == relay.StateConnecting:
		h.Reason = "connecting to PostgreSQL and the broker"
	case state == relay.StateStopped:
		h.Reason = "the relay has stopped"
	}
	m.mu.Lock()
	m.health = h
	m.mu.Unlock()
}

// Health returns the relay's current state.
func (m *Metrics) Health() Health {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.health
}

// ObserveSlot records a poll of pg_replication_slots: info when found,
// else the slot is missing.
func (m *Metrics) ObserveSlot(info slot.Info, found bool) {
	status := "missing"
	if found {
		status = info.WALStatus
		m.retained.Set(float64(info.RetainedBytes))
		if info.SafeWALSize != nil {
			m.safeWAL.Set(float64(*info.SafeWALSize))
		} else {
			m.safeWAL.Set(math.Inf(1))
		}
	} else {
		m.retained.Set(0)
		m.safeWAL.Set(0)
	}
	for _, s := range WALStatuses {
		m.walStatus.WithLabelValues(s).Set(b2f(s == status))
	}
}

// SlotPollFailed counts a failed poll of pg_replication_slots.
func (m *Metrics) SlotPollFailed() { m.slotPollErrors.Inc() }

func (m *Metrics) redact(s string) string {
	for _, secret := range m.secrets {
		s = strings.ReplaceAll(s, secret, "xxxxx")
	}
	if len(s) > maxReason {
		s = s[:maxReason] + "..."
	}
	return s
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// progressCollector reads the session's progress once per scrape.
type progressCollector struct {
	m                                                 *Metrics
	inFlight, confirmed, received, walEnd, lagB, lagS *prometheus.Desc
}

func newProgressCollector(m *Metrics) *progressCollector {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(namespace+"_"+name, help, nil, nil)
	}
	return &progressCollector{
		m:         m,
		inFlight:  desc("events_in_flight", "Events handed to the broker and not yet acknowledged."),
		confirmed: desc("confirmed_lsn", "Last WAL position confirmed to PostgreSQL as flushed (the slot's confirmed_flush_lsn), as a byte offset."),
		received:  desc("received_lsn", "End of the newest WAL data received from the slot, as a byte offset."),
		walEnd:    desc("server_wal_end_lsn", "Newest WAL end the server reported on the replication connection, as a byte offset."),
		lagB:      desc("lag_bytes", "Server WAL end minus the confirmed position."),
		lagS:      desc("replication_lag_seconds", "Now minus the commit time of the oldest transaction received and not yet fully acknowledged by the broker; 0 when caught up."),
	}
}

// Describe implements prometheus.Collector.
func (c *progressCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.inFlight, c.confirmed, c.received, c.walEnd, c.lagB, c.lagS} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Before the first session every
// value is 0; after a session ended they are its final values.
func (c *progressCollector) Collect(ch chan<- prometheus.Metric) {
	var p relay.Progress
	if f := c.m.progress.Load(); f != nil {
		p = (*f)()
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(c.inFlight, float64(p.InFlight))
	gauge(c.confirmed, float64(p.Confirmed))
	gauge(c.received, float64(p.Received))
	gauge(c.walEnd, float64(p.ServerWALEnd))
	gauge(c.lagB, float64(p.LagBytes()))
	gauge(c.lagS, p.Lag.Seconds())
}
