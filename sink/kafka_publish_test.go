package sink

import (
	"errors"
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
