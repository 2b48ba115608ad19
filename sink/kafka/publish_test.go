package kafka

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// keyFor returns a key that partitionOf puts on partition p of n.
func keyFor(t testing.TB, p, n int32) string {
	t.Helper()
	for i := range 10000 {
		if key := fmt.Sprintf("agg-%d", i); partitionOf([]byte(key), n) == p {
			return key
		}
	}
	t.Fatalf("no key for partition %d", p)
	return ""
}

// produceLog counts, per topic partition, the record batches produce
// requests carried to the broker, and the produce requests.
type produceLog struct {
	mu       sync.Mutex
	batches  map[topicPartition]int
	requests int
}

// logProduce starts counting what reaches c. Register it before controls
// that answer or hold produce requests, so it sees each one as it comes.
func logProduce(c *kfake.Cluster) *produceLog {
	l := &produceLog{batches: map[topicPartition]int{}}
	c.ControlKey(int16(kmsg.Produce), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kr.(*kmsg.ProduceRequest)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.requests++
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				l.batches[topicPartition{rt.Topic, rp.Partition}]++
			}
		}
		return nil, nil, false // observe only
	})
	return l
}

func (l *produceLog) count(topic string, p int32) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.batches[topicPartition{topic, p}]
}

func (l *produceLog) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.requests
}

// TestKafkaPublishRefusesWhatTheBrokerWould: a record with a topic Kafka
// cannot have, or larger than the max message bytes, is refused by
// Publish itself: a record error, no ack, nothing sent, and publishing
// goes on.
func TestKafkaPublishRefusesWhatTheBrokerWould(t *testing.T) {
	const topic, limit = "outbox.order", 1000
	c := newCluster(t, topic)
	produced := logProduce(c)
	k := newKafka(t, c, Config{MaxMessageBytes: limit})

	// A payload that makes the record exactly limit bytes as sarama counts.
	sized := func(id string, size int) decoder.Event {
		ev := decoder.Event{ID: id, AggregateID: "order-1", Topic: topic, Payload: []byte{}}
		ev.Payload = make([]byte, size-recordSize(&ev))
		return ev
	}
	noAck := func(err error) { t.Errorf("ack called for a refused record: %v", err) }
	for _, tt := range []struct {
		name     string
		ev       decoder.Event
		tooLarge bool
		want     []string
	}{
		{"empty topic", decoder.Event{ID: "ev-empty", Topic: ""}, false, []string{"ev-empty", `topic ""`, "legal Kafka topic name"}},
		{"dot", decoder.Event{ID: "ev-dot", Topic: "."}, false, []string{"ev-dot", `"."`}},
		{"dot dot", decoder.Event{ID: "ev-dotdot", Topic: ".."}, false, []string{"ev-dotdot", `".."`}},
		{"space", decoder.Event{ID: "ev-space", Topic: "outbox.my order"}, false, []string{"ev-space", `"outbox.my order"`}},
		{"slash", decoder.Event{ID: "ev-slash", Topic: "outbox/order"}, false, []string{`"outbox/order"`}},
		{"250 characters", decoder.Event{ID: "ev-long", Topic: strings.Repeat("t", 250)}, false, []string{"ev-long"}},
		{"one byte over", sized("ev-big", limit+1), true, []string{"ev-big", topic, "1001 bytes", "limit of 1000"}},
		{"far over", sized("ev-huge", 900<<10), true, []string{"ev-huge", fmt.Sprint(900 << 10), "limit of 1000"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := k.Publish(t.Context(), &tt.ev, noAck)
			var re *RecordError
			if !errors.As(err, &re) {
				t.Fatalf("Publish returned %v, want a *RecordError", err)
			}
			if !re.RecordRejected() || Classify(err) != ClassRecord {
				t.Errorf("error %q: RecordRejected() = false, want a record error", err)
			}
			if re.RecordTooLarge() != tt.tooLarge {
				t.Errorf("error %q: RecordTooLarge() = %v, want %v", err, re.RecordTooLarge(), tt.tooLarge)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if n := k.InFlight(); n != 0 {
				t.Errorf("InFlight() = %d after a refused record", n)
			}
		})
	}

	// Publishing goes on; a record of exactly the limit is sent.
	a := newAcks(2)
	atLimit := sized("ev-at-limit", limit)
	small := decoder.Event{ID: "ev-small", AggregateID: "order-1", Topic: topic, Payload: []byte("{}")}
	for i, ev := range []*decoder.Event{&atLimit, &small} {
		if err := k.Publish(t.Context(), ev, a.fn(i)); err != nil {
			t.Fatalf("Publish %s: %v", ev.ID, err)
		}
	}
	a.wait(t, true)
	var ids []string
	for _, r := range consume(t, c, topic, 2) {
		ids = append(ids, string(r.Headers[0].Value))
	}
	if strings.Join(ids, ",") != "ev-at-limit,ev-small" {
		t.Fatalf("the broker has %v, want only ev-at-limit,ev-small", ids)
	}
	if n := produced.count(topic, partitionOf([]byte("order-1"), 4)); n > 2 {
		t.Fatalf("%d batches reached the broker, want the two records' at most", n)
	}
}

// TestKafkaFailedPartitionTakesNothingMore: after a record failed for
// good, sarama would send the partition's later records with a new
// producer epoch, and they would land ahead of the failed one when a new
// session sends it again. The sink sends nothing more to that partition;
// the other partitions keep flowing.
func TestKafkaFailedPartitionTakesNothingMore(t *testing.T) {
	for _, tt := range []struct {
		name  string
		err   *kerr.Error
		class ErrorClass
		want  error
	}{
		{"record rejected", kerr.InvalidRecord, ClassRecord, sarama.ErrInvalidRecord},
		{"not authorized", kerr.TopicAuthorizationFailed, ClassInfra, sarama.ErrTopicAuthorizationFailed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const topic, parts, failing = "outbox.order", 4, 2
			c := newCluster(t, topic)
			produced := logProduce(c)
			// The broker fails one produce of the partition, then would
			// take the rest.
			c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Partitions: []int32{failing}, Err: tt.err})
			k := newKafka(t, c, Config{})

			first := newAcks(1)
			ev := decoder.Event{ID: "ev-first", AggregateID: keyFor(t, failing, parts), Topic: topic}
			if err := k.Publish(t.Context(), &ev, first.fn(0)); err != nil {
				t.Fatal(err)
			}
			first.wait(t, false)
			firstErr := first.results[0]
			if !errors.Is(firstErr, tt.want) || Classify(firstErr) != tt.class {
				t.Fatalf("first record acked with %v (class %v), want %v (class %v)", firstErr, Classify(firstErr), tt.want, tt.class)
			}

			// Later records: refused for the failed partition, sent for
			// the others.
			const each = 5
			a := newAcks(each * (parts - 1))
			n := 0
			for i := range each {
				for p := range int32(parts) {
					ev := decoder.Event{ID: fmt.Sprintf("ev-%d-%d", p, i), AggregateID: keyFor(t, p, parts), Topic: topic}
					if p != failing {
						if err := k.Publish(t.Context(), &ev, a.fn(n)); err != nil {
							t.Fatalf("Publish to partition %d: %v", p, err)
						}
						n++
						continue
					}
					err := k.Publish(t.Context(), &ev, func(err error) { t.Errorf("ack of a refused record: %v", err) })
					var re *RecordError
					if !errors.Is(err, ErrPartitionBlocked) || !errors.As(err, &re) || Classify(err) != ClassInfra || re.RecordRejected() {
						t.Errorf("Publish to the failed partition returned %v, want an infra error wrapping ErrPartitionBlocked", err)
						continue
					}
					if re.Partition != failing || !strings.Contains(err.Error(), "ev-first") {
						t.Errorf("error %q should name partition %d and the event that failed first", err, failing)
					}
				}
			}
			a.wait(t, true)
			if got := produced.count(topic, failing); got != 1 {
				t.Errorf("%d batches of partition %d reached the broker, want only the failed one", got, failing)
			}
			if got := len(consume(t, c, topic, n)); got != n {
				t.Fatalf("consumed %d records, want %d", got, n)
			}
		})
	}
}

// TestKafkaRecordsBehindAFailedOneAreNotRejected: a broker refusing a
// batch fails every record in it alike. Only the first carries the
// broker's error; the others, like anything later of the partition, are
// infra errors a new session retries, so they are not dead-lettered with
// it.
func TestKafkaRecordsBehindAFailedOneAreNotRejected(t *testing.T) {
	const topic, parts, failing, n = "outbox.order", 4, 1, 5
	c := newCluster(t, topic)
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Partitions: []int32{failing}, Err: kerr.MessageTooLarge})
	// A long linger puts the records in one batch.
	k := newKafka(t, c, Config{FlushFrequency: 200 * time.Millisecond})
	a := newAcks(n + 1)
	key := keyFor(t, failing, parts)
	for i := range n {
		ev := decoder.Event{ID: fmt.Sprintf("ev-%d", i), AggregateID: key, Topic: topic}
		if err := k.Publish(t.Context(), &ev, a.fn(i)); err != nil {
			t.Fatal(err)
		}
	}
	other := decoder.Event{ID: "ev-other", AggregateID: keyFor(t, failing+1, parts), Topic: topic}
	if err := k.Publish(t.Context(), &other, a.fn(n)); err != nil {
		t.Fatal(err)
	}
	a.wait(t, false)
	if err := a.results[n]; err != nil {
		t.Fatalf("the record of another partition failed: %v", err)
	}
	if err := a.results[0]; !errors.Is(err, sarama.ErrMessageSizeTooLarge) || Classify(err) != ClassRecord {
		t.Fatalf("first record acked with %v, want the broker's record error", err)
	}
	for i := 1; i < n; i++ {
		err := a.results[i]
		var re *RecordError
		if !errors.As(err, &re) || !errors.Is(err, ErrPartitionBlocked) || re.RecordRejected() || re.RecordTooLarge() {
			t.Fatalf("record %d acked with %v, want ErrPartitionBlocked, not a record rejection", i, err)
		}
	}
}

// TestKafkaTopicAuthorizationIsNotARecordRejection: an ACL problem pauses
// and retries; it never dead-letters events, and the error says what to
// grant.
func TestKafkaTopicAuthorizationIsNotARecordRejection(t *testing.T) {
	const topic = "outbox.order"
	c := newCluster(t, topic)
	failProduce(c, kerr.TopicAuthorizationFailed.Code)
	k := newKafka(t, c, Config{})
	a := newAcks(1)
	ev := decoder.Event{ID: "ev-1", AggregateID: "a", Topic: topic}
	if err := k.Publish(t.Context(), &ev, a.fn(0)); err != nil {
		t.Fatal(err)
	}
	a.wait(t, false)
	err := a.results[0]
	var re *RecordError
	if !errors.As(err, &re) || re.RecordRejected() || Classify(err) != ClassInfra {
		t.Fatalf("ack error %v is a record rejection; an authorization failure must never be dead-lettered", err)
	}
	if !strings.Contains(err.Error(), "grant WRITE on topic outbox.order") {
		t.Fatalf("ack error %q does not say what to grant", err)
	}
}

// TestKafkaInFlightPayloadIsHeldOnce: while the broker holds them, 900 KB
// records cost the sink little beyond the events' own payloads, which it
// points to rather than copies.
func TestKafkaInFlightPayloadIsHeldOnce(t *testing.T) {
	const topic, n, size = "outbox.order", 50, 900 << 10
	c := newCluster(t, topic)
	k := newKafka(t, c, Config{MaxInFlight: n})
	sent, release := stallProduce(c)
	t.Cleanup(release)
	events := make([]decoder.Event, n)
	for i := range events {
		events[i] = decoder.Event{ID: fmt.Sprint(i), AggregateID: "order-1", Topic: topic, Payload: make([]byte, size)}
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	a := newAcks(n)
	for i := range events {
		if err := k.Publish(t.Context(), &events[i], a.fn(i)); err != nil {
			t.Fatal(err)
		}
	}
	<-sent
	runtime.GC()
	runtime.ReadMemStats(&ms)
	held := (int64(ms.HeapAlloc) - int64(before)) / n
	t.Logf("heap held per in-flight record of %d bytes: %d bytes", size, held)
	if held > size/2 {
		t.Errorf("each in-flight record holds %d bytes besides its event: the payload is copied", held)
	}
	release()
	a.wait(t, true)
	runtime.KeepAlive(events)
}
