// Package sinktest holds what the tests of the sink packages (sink/nats,
// sink/redis...) share: test events, an ack collector, order checks, the
// brokers they start and a benchmark driver. It is for this repository's
// tests only.
package sinktest

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/brokerserver"
	"github.com/outbox-relay/outbox-relay/sink"
)

// Event returns event n of aggregate agg, with a JSON payload holding n.
func Event(agg, n int) *decoder.Event {
	return &decoder.Event{
		ID:            fmt.Sprintf("00000000-0000-0000-%04d-%012d", agg, n),
		AggregateType: "order",
		AggregateID:   fmt.Sprintf("agg-%d", agg),
		EventType:     "updated",
		Topic:         "outbox.order",
		Payload:       fmt.Appendf(nil, `{"seq":%d}`, n),
		Headers:       []decoder.Header{{Key: "source", Value: []byte("test")}},
		CreatedAt:     time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

// AckLog collects ack results and lets a test wait for all of them.
type AckLog struct {
	mu   sync.Mutex
	errs map[string]error
	n    int
	all  chan struct{}
}

// NewAckLog returns a log expecting n acks.
func NewAckLog(n int) *AckLog {
	return &AckLog{errs: map[string]error{}, n: n, all: make(chan struct{})}
}

// Ack returns the ack of event id; it panics if called twice.
func (a *AckLog) Ack(id string) func(error) {
	return func(err error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, dup := a.errs[id]; dup {
			panic("ack called twice for " + id)
		}
		a.errs[id] = err
		if len(a.errs) == a.n {
			close(a.all)
		}
	}
}

// Wait waits for every ack, failing t after within, and returns them by
// event id.
func (a *AckLog) Wait(t *testing.T, within time.Duration) map[string]error {
	t.Helper()
	select {
	case <-a.all:
	case <-time.After(within):
		a.mu.Lock()
		defer a.mu.Unlock()
		t.Fatalf("only %d of %d ackLog within %s", len(a.errs), a.n, within)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.errs
}

// SeqOf reads the seq of a test payload.
func SeqOf(t *testing.T, b []byte) int {
	t.Helper()
	var p struct{ Seq int }
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("payload %q: %v", b, err)
	}
	return p.Seq
}

// CheckOrder asserts got (aggregate id and seq per delivered record, in
// delivery order) holds every seq 1..perAgg of each aggregate in order.
func CheckOrder(t *testing.T, got [][2]string, aggs, perAgg int) {
	t.Helper()
	last := map[string]int{}
	for _, g := range got {
		var seq int
		fmt.Sscan(g[1], &seq)
		if seq != last[g[0]]+1 {
			t.Fatalf("aggregate %s: seq %d after %d", g[0], seq, last[g[0]])
		}
		last[g[0]] = seq
	}
	for a := range aggs {
		if k := fmt.Sprintf("agg-%d", a); last[k] != perAgg {
			t.Fatalf("aggregate %s: last seq %d, want %d", k, last[k], perAgg)
		}
	}
}

// UniqueName returns a name no other test run uses.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, time.Now().UnixNano())
}

// The brokers of the sink tests: private servers, each started on first
// use and shared by a package's tests, or existing ones named by
// OUTBOX_RELAY_TEST_{REDIS,NATS,RABBITMQ}_URL.
var (
	NATS     = &brokerserver.Shared{Env: brokerserver.EnvNATSURL, Start: brokerserver.StartNATS}
	Redis    = &brokerserver.Shared{Env: brokerserver.EnvRedisURL, Start: brokerserver.StartRedis}
	RabbitMQ = &brokerserver.Shared{Env: brokerserver.EnvRabbitMQURL, Start: brokerserver.StartRabbitMQ}
)

// Main runs a package's tests (from its TestMain) and then stops the
// brokers they started, and exits.
func Main(m *testing.M) {
	code := m.Run()
	if err := brokerserver.CloseAll(NATS, Redis, RabbitMQ); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the test brokers:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// URL returns the URL of a shared broker, starting it on first use.
func URL(t testing.TB, sh *brokerserver.Shared) string {
	t.Helper()
	u, err := sh.URL()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Bench publishes b.N events over 100 aggregates and waits for every ack;
// it reports events/s.
func Bench(b *testing.B, p sink.Publisher) {
	var failed atomic.Int64
	ack := func(err error) {
		if err != nil {
			failed.Add(1)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		if err := p.Publish(b.Context(), Event(i%100, i/100+1), ack); err != nil {
			b.Fatal(err)
		}
	}
	p.Close()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if failed.Load() != 0 {
		b.Fatalf("%d acks failed", failed.Load())
	}
}
