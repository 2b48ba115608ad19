package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// testEvent returns event n of aggregate agg, with a JSON payload holding n.
func testEvent(agg, n int) *decoder.Event {
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

// ackLog collects ack results and lets a test wait for all of them.
type ackLog struct {
	mu   sync.Mutex
	errs map[string]error
	n    int
	all  chan struct{}
}

func newAckLog(n int) *ackLog {
	return &ackLog{errs: map[string]error{}, n: n, all: make(chan struct{})}
}

func (a *ackLog) ack(id string) func(error) {
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

func (a *ackLog) wait(t *testing.T, within time.Duration) map[string]error {
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

// seqOf reads the seq of a test payload.
func seqOf(t *testing.T, b []byte) int {
	t.Helper()
	var p struct{ Seq int }
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("payload %q: %v", b, err)
	}
	return p.Seq
}

// checkOrder asserts got (aggregate id and seq per delivered record, in
// delivery order) holds every seq 1..perAgg of each aggregate in order.
func checkOrder(t *testing.T, got [][2]string, aggs, perAgg int) {
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

// benchPublisher is what the sink benchmarks drive.
type benchPublisher interface {
	Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error
	Close() error
}

// benchSink publishes b.N events over 100 aggregates and waits for every
// ack; it reports events/s.
func benchSink(b *testing.B, p benchPublisher) {
	var failed atomic.Int64
	ack := func(err error) {
		if err != nil {
			failed.Add(1)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		if err := p.Publish(b.Context(), testEvent(i%100, i/100+1), ack); err != nil {
			b.Fatal(err)
		}
	}
	p.Close()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if failed.Load() != 0 {
		b.Fatalf("%d acks failed", failed.Load())
	}
}

func BenchmarkSinks(b *testing.B) {
	b.Run("stdout", func(b *testing.B) {
		s, err := NewStdout(StdoutConfig{Writer: io.Discard})
		if err != nil {
			b.Fatal(err)
		}
		benchSink(b, s)
	})
	b.Run("nats", func(b *testing.B) {
		name := uniqueName("bench")
		n, err := NewNATS(b.Context(), NATSConfig{URL: natsURL(b), Subject: name + ".{aggregate_id}", CreateStream: true, Stream: name})
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			nc, _ := nats.Connect(natsURL(b))
			js, _ := jetstream.New(nc)
			_ = js.DeleteStream(context.Background(), name)
			nc.Close()
		}()
		benchSink(b, n)
	})
	b.Run("redis", func(b *testing.B) {
		name := uniqueName("bench")
		r, err := NewRedis(b.Context(), RedisConfig{URL: redisURL(b), Stream: name})
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			opts, _ := redis.ParseURL(redisURL(b))
			c := redis.NewClient(opts)
			c.Del(context.Background(), name)
			c.Close()
		}()
		benchSink(b, r)
	})
	b.Run("rabbitmq", func(b *testing.B) {
		r, err := NewRabbitMQ(b.Context(), RabbitMQConfig{URL: rabbitURL(b), Exchange: "amq.topic"})
		if err != nil {
			b.Fatal(err)
		}
		benchSink(b, r)
	})
	b.Run("webhook", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }))
		defer srv.Close()
		w, err := NewWebhook(WebhookConfig{URL: srv.URL + "/{aggregate_type}", Secret: "s"})
		if err != nil {
			b.Fatal(err)
		}
		benchSink(b, w)
	})
}
