package sink

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// countProduce counts the produce requests that reach c. Register it
// before controls that answer produce requests.
func countProduce(c *kfake.Cluster) *atomic.Int64 {
	var n atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		n.Add(1)
		return nil, nil, false // observe only
	})
	return &n
}

// TestKafkaPublishRefusesWhatTheBrokerWould: a record with a topic Kafka
// cannot have, or larger than the max message bytes, is refused by
// Publish itself: a record error, no ack, nothing sent, and publishing
// goes on.
func TestKafkaPublishRefusesWhatTheBrokerWould(t *testing.T) {
	const topic, limit = "outbox.order", 1000
	c := newCluster(t, topic)
	produced := countProduce(c)
	k := newKafka(t, c, KafkaConfig{MaxMessageBytes: limit})

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
	if n := produced.Load(); n > 2 {
		t.Fatalf("%d produce requests reached the broker, want the two records' at most", n)
	}
}

// TestKafkaTopicAuthorizationIsNotARecordRejection: an ACL problem pauses
// and retries; it never dead-letters events, and the error says what to
// grant.
func TestKafkaTopicAuthorizationIsNotARecordRejection(t *testing.T) {
	const topic = "outbox.order"
	c := newCluster(t, topic)
	failProduce(c, kerr.TopicAuthorizationFailed.Code)
	k := newKafka(t, c, KafkaConfig{})
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
	k := newKafka(t, c, KafkaConfig{MaxInFlight: n})
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
