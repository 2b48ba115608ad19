package sink

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/outbox-relay/outbox-relay/decoder"
)

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
