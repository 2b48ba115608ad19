package kafka

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// BenchmarkKafkaPublish publishes 100-byte events over 100 keys into kfake
// (which stores nothing: the broker's bookkeeping is not what is measured)
// and waits for every ack.
func BenchmarkKafkaPublish(b *testing.B) {
	for _, cfg := range []struct {
		name string
		Config
	}{
		{"defaults", Config{}},
		{"linger=0", Config{FlushFrequency: time.Nanosecond, FlushBytes: 1}},
		{"linger=5ms", Config{FlushFrequency: 5 * time.Millisecond}},
		{"lz4", Config{Compression: "lz4"}},
	} {
		b.Run(cfg.name, func(b *testing.B) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "bench"), kfake.BlackholeProduce())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			k := newKafka(b, c, cfg.Config)
			events := make([]decoder.Event, 100)
			for i := range events {
				events[i] = decoder.Event{
					ID: fmt.Sprintf("0195f3b2-7c1e-7000-8000-%012d", i), AggregateType: "order",
					AggregateID: fmt.Sprintf("order-%d", i), EventType: "created", Topic: "bench",
					Payload: make([]byte, 100), CreatedAt: time.Now(),
					Headers: []decoder.Header{{Key: "trace", Value: []byte("00-abc-def-01")}},
				}
			}
			var acked, failed atomic.Int64
			ack := func(err error) {
				if err != nil {
					failed.Add(1)
				}
				acked.Add(1)
			}
			b.ReportAllocs()
			b.ResetTimer()
			n := b.N
			for i := range n {
				if err := k.Publish(b.Context(), &events[i%len(events)], ack); err != nil {
					b.Fatal(err)
				}
			}
			// The last acks are part of the work measured.
			for k.InFlight() > 0 {
				time.Sleep(50 * time.Microsecond)
			}
			b.StopTimer()
			if failed.Load() != 0 || acked.Load() != int64(n) {
				b.Fatalf("%d acks, %d failed, of %d", acked.Load(), failed.Load(), n)
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkKafkaPublishLargePayload publishes 900 KB payloads one at a time
// into kfake and waits for each ack: B/op is everything allocated per
// record on the way, the sink's, sarama's and kfake's.
func BenchmarkKafkaPublishLargePayload(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "bench"), kfake.BlackholeProduce())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	k := newKafka(b, c, Config{})
	ev := decoder.Event{ID: "0195f3b2-7c1e-7000-8000-000000000001", AggregateType: "order", AggregateID: "order-1",
		EventType: "created", Topic: "bench", Payload: make([]byte, 900<<10), CreatedAt: time.Now()}
	var failed atomic.Int64
	ack := func(err error) {
		if err != nil {
			failed.Add(1)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := k.Publish(b.Context(), &ev, ack); err != nil {
			b.Fatal(err)
		}
		for k.InFlight() > 0 {
			time.Sleep(20 * time.Microsecond)
		}
	}
	if n := failed.Load(); n != 0 {
		b.Fatalf("%d records failed", n)
	}
}
