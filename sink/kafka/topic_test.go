package kafka

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// TestKafkaTopicLimitBelowTheProducersBoundsBatches: a topic whose
// max.message.bytes is below the producer's max message bytes. A record
// over the topic's limit is refused by Publish, nothing sent; the records
// of its partition around it share batches that stay within the limit, so
// the broker refuses none of them (it judges a whole batch, and would
// refuse the records with the one at fault).
func TestKafkaTopicLimitBelowTheProducersBoundsBatches(t *testing.T) {
	const topic, limit, n, big = "outbox.order", 4096, 60, 30
	c := newCluster(t)
	createTopic(t, c, topic, map[string]string{"max.message.bytes": fmt.Sprint(limit)})
	// A long linger: without a bound, every record would go in one batch.
	k := newKafka(t, c, Config{FlushFrequency: 50 * time.Millisecond})
	a := newAcks(n - 1)
	for i := range n {
		ev := decoder.Event{ID: fmt.Sprintf("ev-%d", i), AggregateID: "order-1", Topic: topic, Payload: make([]byte, 400)}
		if i == big {
			ev.Payload = make([]byte, limit)
			err := k.Publish(t.Context(), &ev, func(err error) { t.Errorf("ack of the refused record: %v", err) })
			var re *RecordError
			if !errors.As(err, &re) || !errors.Is(err, ErrRecordTooLargeForTopic) || !re.RecordRejected() || !re.RecordTooLarge() {
				t.Fatalf("Publish of a record over the topic's limit: %v, want a record error wrapping ErrRecordTooLargeForTopic", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprint(limit)) {
				t.Errorf("error %q does not name the topic's limit", err)
			}
			continue
		}
		j := i
		if i > big {
			j--
		}
		if err := k.Publish(t.Context(), &ev, a.fn(j)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	a.wait(t, true)
	recs := consume(t, c, topic, n-1)
	for i, r := range recs {
		want := i
		if i >= big {
			want++
		}
		if got := string(r.Headers[0].Value); got != fmt.Sprintf("ev-%d", want) {
			t.Fatalf("record %d is %s, want ev-%d", i, got, want)
		}
	}
}

// TestKafkaMissingTopicIsNamedWhilePublishWaits: with topic creation off,
// Publish waits for a topic that does not exist (it sends nothing, so
// nothing past it can be confirmed); after a few seconds the log names the
// topic and what to do, and once the topic exists the record goes.
func TestKafkaMissingTopicIsNamedWhilePublishWaits(t *testing.T) {
	const topic = "outbox.missing"
	c := newCluster(t, "outbox.order")
	var logs lockedBuffer
	k := newKafka(t, c, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	a := newAcks(1)
	published := make(chan error, 1)
	go func() {
		ev := decoder.Event{ID: "ev-1", AggregateID: "a", Topic: topic}
		published <- k.Publish(t.Context(), &ev, a.fn(0))
	}()
	deadline := time.Now().Add(waitLimit)
	for !strings.Contains(logs.String(), "create topic "+topic+" or enable auto.create.topics.enable") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line names the missing topic after %s:\n%s", waitLimit, logs.String())
		}
		select {
		case err := <-published:
			t.Fatalf("Publish returned %v before the topic existed", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if line := lastLine(logs.String()); !strings.Contains(line, "level=WARN") || !strings.Contains(line, "event_id=ev-1") {
		t.Errorf("the line is not a warning naming the event: %s", line)
	}

	createTopic(t, c, topic, nil)
	select {
	case err := <-published:
		if err != nil {
			t.Fatalf("Publish once the topic exists: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatalf("Publish still waiting %s after the topic was created", waitLimit)
	}
	a.wait(t, true)
	if !strings.Contains(logs.String(), "publishing goes on") {
		t.Errorf("no line says publishing goes on:\n%s", logs.String())
	}
}

// createTopic creates topic on c with 4 partitions and configs.
func createTopic(t *testing.T, c *kfake.Cluster, topic string, configs map[string]string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, 4, 1
	for k, v := range configs {
		rc := kmsg.NewCreateTopicsRequestTopicConfig()
		rc.Name, rc.Value = k, kmsg.StringPtr(v)
		rt.Configs = append(rt.Configs, rc)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(t.Context(), cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("creating %s: %v", topic, err)
	}
}

// lockedBuffer is a log sink safe for the sink's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndex(s, "\n")+1:]
}
