package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// waitLimit bounds every wait in these tests; a healthy run takes far less.
const waitLimit = 20 * time.Second

// newCluster starts an in-process Kafka-protocol broker with the given
// topics, 4 partitions each.
func newCluster(t testing.TB, topics ...string) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, topics...))
	if err != nil {
		t.Fatalf("starting kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// newKafka connects a sink to c and closes it at cleanup.
func newKafka(t testing.TB, c *kfake.Cluster, cfg Config) *Sink {
	t.Helper()
	cfg.Brokers = c.ListenAddrs()
	k, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// acks collects ack results and checks each record is acked once.
type acks struct {
	mu      sync.Mutex
	results map[int]error
	dup     []int
	all     chan struct{} // closed when want results are in
	want    int
}

func newAcks(want int) *acks {
	return &acks{results: make(map[int]error, want), all: make(chan struct{}), want: want}
}

func (a *acks) fn(i int) func(error) {
	return func(err error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, ok := a.results[i]; ok {
			a.dup = append(a.dup, i)
			return
		}
		a.results[i] = err
		if len(a.results) == a.want {
			close(a.all)
		}
	}
}

func (a *acks) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.results)
}

// wait waits for every ack and fails on duplicates or, if wantNil, errors.
func (a *acks) wait(t *testing.T, wantNil bool) {
	t.Helper()
	select {
	case <-a.all:
	case <-time.After(waitLimit):
		t.Fatalf("%d of %d acks after %s", a.count(), a.want, waitLimit)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.dup) > 0 {
		t.Fatalf("records acked more than once: %v", a.dup)
	}
	if wantNil {
		for i, err := range a.results {
			if err != nil {
				t.Fatalf("record %d acked with error: %v", i, err)
			}
		}
	}
}

// consume reads n records from topic, from the start; opts add client
// settings (TLS, SASL).
func consume(t *testing.T, c *kfake.Cluster, topic string, n int, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	opts = append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatalf("kgo client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d records from %s: %v", len(out), n, topic, err)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Fatalf("fetching %s/%d: %v", topic, p, err) })
		out = append(out, fs.Records()...)
	}
	return out
}

func TestKafkaRecordMapping(t *testing.T) {
	c := newCluster(t, "outbox.order")
	k := newKafka(t, c, Config{})
	created := time.Date(2025, 3, 4, 5, 6, 7, 8_000_000, time.UTC)
	events := []decoder.Event{
		{
			ID: "0b0e6f4e-1", AggregateType: "order", AggregateID: "order-1", EventType: "created",
			Topic: "outbox.order", Payload: []byte(`{"total":3}`), CreatedAt: created,
			Headers: []decoder.Header{{Key: "trace", Value: []byte("abc")}, {Key: "n", Value: []byte("1")}},
		},
		{
			ID: "0b0e6f4e-2", AggregateType: "order", AggregateID: "order-1", EventType: "deleted",
			Topic: "outbox.order", Payload: nil, CreatedAt: created.Add(time.Second),
		},
		{ // more headers than fit inline
			ID: "0b0e6f4e-3", AggregateType: "order", AggregateID: "order-2", EventType: "tagged",
			Topic: "outbox.order", Payload: []byte{}, CreatedAt: created.Add(2 * time.Second),
			Headers: func() []decoder.Header {
				var hs []decoder.Header
				for i := range 10 {
					hs = append(hs, decoder.Header{Key: fmt.Sprintf("h%d", i), Value: []byte(fmt.Sprint(i))})
				}
				return hs
			}(),
		},
	}
	a := newAcks(len(events))
	published := make([]decoder.Event, len(events))
	for i := range events {
		published[i] = events[i]
		published[i].Payload = bytes.Clone(events[i].Payload)
		if err := k.Publish(t.Context(), &published[i], a.fn(i)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	a.wait(t, true)
	if n := k.InFlight(); n != 0 {
		t.Fatalf("InFlight() = %d after every ack", n)
	}
	// After ack(nil) the caller may reuse the event and its payload.
	for i := range published {
		clear(published[i].Payload)
		published[i].ID, published[i].Topic = "scribbled", "scribbled"
	}

	recs := consume(t, c, "outbox.order", len(events))
	byID := map[string]*kgo.Record{}
	for _, r := range recs {
		if r.Headers[0].Key != "id" {
			t.Fatalf("first header is %q, want id", r.Headers[0].Key)
		}
		byID[string(r.Headers[0].Value)] = r
	}
	for _, ev := range events {
		r := byID[ev.ID]
		if r == nil {
			t.Fatalf("no record with id %s", ev.ID)
		}
		if r.Topic != ev.Topic || string(r.Key) != ev.AggregateID || !r.Timestamp.Equal(ev.CreatedAt) {
			t.Errorf("record %s: topic %q key %q timestamp %s, want %q %q %s", ev.ID, r.Topic, r.Key, r.Timestamp, ev.Topic, ev.AggregateID, ev.CreatedAt)
		}
		if (r.Value == nil) != (ev.Payload == nil) || string(r.Value) != string(ev.Payload) {
			t.Errorf("record %s: value %q (nil %v), want %q (nil %v)", ev.ID, r.Value, r.Value == nil, ev.Payload, ev.Payload == nil)
		}
		want := []string{"id=" + ev.ID, "event_type=" + ev.EventType, "aggregate_type=" + ev.AggregateType}
		for _, h := range ev.Headers {
			want = append(want, h.Key+"="+string(h.Value))
		}
		var got []string
		for _, h := range r.Headers {
			got = append(got, h.Key+"="+string(h.Value))
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("record %s headers:\n got %v\nwant %v", ev.ID, got, want)
		}
	}
}

// TestKafkaPerKeyOrder: records of one aggregate reach one partition, the
// one Java clients (and franz-go) pick, in publish order.
func TestKafkaPerKeyOrder(t *testing.T) {
	const topic, keys, total = "outbox.order", 50, 5000
	c := newCluster(t, topic)
	k := newKafka(t, c, Config{MaxInFlight: 500})
	a := newAcks(total)
	for i := range total {
		ev := decoder.Event{
			ID: fmt.Sprint(i), AggregateID: fmt.Sprintf("agg-%d", i%keys), Topic: topic,
			Payload: fmt.Appendf(nil, "%d", i/keys), CreatedAt: time.Now(),
		}
		if err := k.Publish(t.Context(), &ev, a.fn(i)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	a.wait(t, true)

	kp := kgo.StickyKeyPartitioner(nil).ForTopic(topic)
	next := map[string]int{}
	partition := map[string]int32{}
	for _, r := range consume(t, c, topic, total) {
		key := string(r.Key)
		if p, ok := partition[key]; ok && p != r.Partition {
			t.Fatalf("key %s on partitions %d and %d", key, p, r.Partition)
		}
		partition[key] = r.Partition
		if want := int32(kp.Partition(r, 4)); r.Partition != want {
			t.Fatalf("key %s on partition %d, franz-go's murmur2 picks %d", key, r.Partition, want)
		}
		var seq int
		fmt.Sscan(string(r.Value), &seq)
		if seq != next[key] {
			t.Fatalf("key %s: record %d arrived where %d was due", key, seq, next[key])
		}
		next[key]++
	}
	if len(next) != keys {
		t.Fatalf("%d keys arrived, want %d", len(next), keys)
	}
}

// TestMurmur2MatchesJavaClient compares the configured partitioner with
// franz-go's default (Kafka's own) for 1,000 keys and 12 partitions, and
// the hash with vectors from Kafka's UtilsTest.
func TestMurmur2MatchesJavaClient(t *testing.T) {
	for in, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		if got := int32(murmur2Sum([]byte(in))); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", in, got, want)
		}
	}

	// The partitioner before Publish chose partitions itself: sarama's hash
	// partitioner over murmur2, reference (Java) absolute value first.
	const n = 12
	before := sarama.NewCustomPartitioner(sarama.WithAbsFirst(), sarama.WithCustomHashFunction(newMurmur2Hash))("t")
	theirs := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	for i := range 1000 {
		key := fmt.Sprintf("aggregate-%d-%x", i, i*7919)
		got := partitionOf([]byte(key), n)
		if want := theirs.Partition(&kgo.Record{Key: []byte(key)}, n); int(got) != want {
			t.Fatalf("key %q: partition %d, franz-go picks %d", key, got, want)
		}
		if want, err := before.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, n); err != nil || got != want {
			t.Fatalf("key %q: partition %d, sarama's murmur2 hash partitioner picks %d (%v)", key, got, want, err)
		}
	}
}

// murmur2Hash is murmur2Sum as a hash.Hash32, for sarama's hash
// partitioner.
type murmur2Hash struct{ buf []byte }

func newMurmur2Hash() hash.Hash32 { return &murmur2Hash{} }

func (h *murmur2Hash) Write(p []byte) (int, error) { h.buf = append(h.buf, p...); return len(p), nil }
func (h *murmur2Hash) Sum(b []byte) []byte {
	s := h.Sum32()
	return append(b, byte(s>>24), byte(s>>16), byte(s>>8), byte(s))
}
func (h *murmur2Hash) Reset()         { h.buf = h.buf[:0] }
func (h *murmur2Hash) Size() int      { return 4 }
func (h *murmur2Hash) BlockSize() int { return 4 }
func (h *murmur2Hash) Sum32() uint32  { return murmur2Sum(h.buf) }

// stallProduce holds every produce request until release is closed. It
// signals sent when the first produce request reaches the broker.
func stallProduce(c *kfake.Cluster) (sent <-chan struct{}, release func()) {
	s, r := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		once.Do(func() { close(s) })
		c.SleepControl(func() { <-r })
		return nil, nil, false // then let the broker handle it
	})
	var relOnce sync.Once
	return s, func() { relOnce.Do(func() { close(r) }) }
}

func TestKafkaBackpressure(t *testing.T) {
	const topic, limit = "outbox.order", 10
	c := newCluster(t, topic)
	k := newKafka(t, c, Config{MaxInFlight: limit})
	sent, release := stallProduce(c)
	t.Cleanup(release)

	a := newAcks(limit + 1)
	ev := decoder.Event{ID: "1", AggregateID: "a", Topic: topic, Payload: []byte("x")}
	for i := range limit {
		if err := k.Publish(t.Context(), &ev, a.fn(i)); err != nil {
			t.Fatalf("Publish %d below the cap: %v", i, err)
		}
	}
	select {
	case <-sent:
	case <-time.After(waitLimit):
		t.Fatal("no produce request reached the broker")
	}
	if n := k.InFlight(); n != limit {
		t.Fatalf("InFlight() = %d, want %d", n, limit)
	}

	// At the cap, Publish blocks: it can only end through its context.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := k.Publish(ctx, &ev, a.fn(-1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish at the cap returned %v, want it blocked until its deadline", err)
	}

	// A Publish blocked at the cap proceeds once the broker answers.
	done := make(chan error, 1)
	go func() { done <- k.Publish(t.Context(), &ev, a.fn(limit)) }()
	release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Publish after release: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Publish still blocked after the broker was released")
	}
	a.wait(t, true)
	if _, ok := a.results[-1]; ok {
		t.Fatal("the ack of a Publish that failed was called")
	}
}

func TestKafkaCloseWakesBlockedPublish(t *testing.T) {
	const topic = "outbox.order"
	c := newCluster(t, topic)
	k := newKafka(t, c, Config{MaxInFlight: 1})
	sent, release := stallProduce(c)
	t.Cleanup(release)
	a := newAcks(1)
	ev := decoder.Event{ID: "1", AggregateID: "a", Topic: topic}
	if err := k.Publish(t.Context(), &ev, a.fn(0)); err != nil {
		t.Fatal(err)
	}
	<-sent
	blocked := make(chan error, 1)
	go func() { blocked <- k.Publish(t.Context(), &ev, a.fn(1)) }()
	closed := make(chan error, 1)
	go func() { closed <- k.Close() }()
	select {
	case err := <-blocked:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Publish returned %v at Close, want ErrClosed", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Close did not wake the blocked Publish")
	}
	release()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Close did not return after the broker was released")
	}
	a.wait(t, true)
}

// failProduce answers every produce request with code for every partition
// and counts the requests.
func failProduce(c *kfake.Cluster, code int16) *atomic.Int64 {
	var requests atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		requests.Add(1)
		req := kr.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	return &requests
}

func TestKafkaErrorReachesAck(t *testing.T) {
	for _, tt := range []struct {
		name        string
		err         *kerr.Error
		want        error
		minRequests int64
	}{
		{"not retriable", kerr.MessageTooLarge, sarama.ErrMessageSizeTooLarge, 1},
		{"retriable, retries exhausted", kerr.NotEnoughReplicas, sarama.ErrNotEnoughReplicas, 3}, // first try + RetryMax
	} {
		t.Run(tt.name, func(t *testing.T) {
			const topic, n = "outbox.order", 20
			c := newCluster(t, topic)
			k := newKafka(t, c, Config{RetryMax: 2, RetryBackoff: 10 * time.Millisecond})
			requests := failProduce(c, tt.err.Code)
			a := newAcks(n)
			for i := range n {
				ev := decoder.Event{ID: fmt.Sprint(i), AggregateID: fmt.Sprint(i), Topic: topic}
				if err := k.Publish(t.Context(), &ev, a.fn(i)); err != nil {
					// Its partition already failed an earlier record: the
					// record is refused at once with that failure.
					a.fn(i)(err)
				}
			}
			a.wait(t, false)
			if got := requests.Load(); got < tt.minRequests {
				t.Fatalf("%d produce requests, want at least %d", got, tt.minRequests)
			}
			for i, err := range a.results {
				if !errors.Is(err, tt.want) {
					t.Fatalf("record %d acked with %v, want %v", i, err, tt.want)
				}
				if !strings.Contains(err.Error(), topic) {
					t.Fatalf("ack error %q does not name topic %s", err, topic)
				}
			}
			closed := make(chan error, 1)
			go func() { closed <- k.Close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Fatalf("Close: %v", err)
				}
			case <-time.After(waitLimit):
				t.Fatal("Close hung after produce errors")
			}
		})
	}
}

func TestNewKafkaUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now

	start := time.Now()
	k, err := New(Config{Brokers: []string{addr}, DialTimeout: time.Second})
	if err == nil {
		k.Close()
		t.Fatal("New against a closed port succeeded")
	}
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("New error %q does not wrap ErrUnreachable", err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Fatalf("New error %q does not name the broker %s", err, addr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("New took %s to give up", d)
	}
}

func TestKafkaCloseDrains(t *testing.T) {
	const topic, n = "outbox.order", 2000
	c := newCluster(t, topic)
	// A long linger keeps records buffered in the producer when Close starts.
	k := newKafka(t, c, Config{FlushFrequency: time.Second, FlushBytes: 64 << 20})
	var acked, failed atomic.Int64
	for i := range n {
		ev := decoder.Event{ID: fmt.Sprint(i), AggregateID: fmt.Sprint(i % 7), Topic: topic, Payload: []byte("v")}
		err := k.Publish(t.Context(), &ev, func(err error) {
			if err != nil {
				failed.Add(1)
			}
			acked.Add(1)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := k.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := acked.Load(); got != n {
		t.Fatalf("%d of %d acks called when Close returned", got, n)
	}
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d records failed", f)
	}
	if err := k.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ev := decoder.Event{ID: "late", Topic: topic}
	if err := k.Publish(t.Context(), &ev, func(error) { t.Error("ack of a record published after Close") }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close returned %v, want ErrClosed", err)
	}
	if got := len(consume(t, c, topic, n)); got != n {
		t.Fatalf("consumed %d records, want %d", got, n)
	}
}

func TestKafkaConfigValidate(t *testing.T) {
	ok := Config{Brokers: []string{"localhost:9092"}}
	for _, tt := range []struct {
		name    string
		edit    func(*Config)
		wantErr string // empty: valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"every codec", func(c *Config) { c.Compression = "ZSTD" }, ""},
		{"no brokers", func(c *Config) { c.Brokers = nil }, "no Kafka brokers"},
		{"blank broker", func(c *Config) { c.Brokers = []string{" "} }, "empty Kafka broker"},
		{"bad compression", func(c *Config) { c.Compression = "brotli" }, `compression "brotli"`},
		{"bad version", func(c *Config) { c.Version = "two" }, `version "two"`},
		{"version too old for idempotence", func(c *Config) { c.Version = "0.10.2.0" }, "idempotent"},
		{"zstd on an old version", func(c *Config) { c.Version, c.Compression = "1.1.0", "zstd" }, "zstd"},
		{"cap below 1", func(c *Config) { c.MaxInFlight = -1 }, "in-flight"},
		{"negative retries", func(c *Config) { c.RetryMax = -1 }, "retry max"},
		{"negative linger", func(c *Config) { c.FlushFrequency = -time.Second }, "flush frequency"},
		{"max message bytes below 1", func(c *Config) { c.MaxMessageBytes = -1 }, "max message bytes -1 is below 1"},
		{"max message bytes sarama would ignore", func(c *Config) { c.MaxMessageBytes = 100 << 20 }, "max message bytes 104857600 is not below"},
		{"max message bytes above the batch bytes", func(c *Config) { c.MaxMessageBytes, c.FlushBytes = 8<<20, 64<<10 }, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate = %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}
