package kafka

import (
	"context"
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

// The relay finds Abort through this interface.
var _ interface{ Abort() } = (*Sink)(nil)

// abortLimit is how long Abort may take against a broker that does not
// answer; it has nothing to wait for but the connections it cuts.
const abortLimit = 5 * time.Second

// saramaGoroutines counts the goroutines running sarama code.
func saramaGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/IBM/sarama") {
			n++
		}
	}
	return n
}

// abortWithin calls Abort and fails the test if it takes longer than
// abortLimit.
func abortWithin(t *testing.T, k *Sink) {
	t.Helper()
	done := make(chan struct{})
	start := time.Now()
	go func() { k.Abort(); close(done) }()
	select {
	case <-done:
		t.Logf("Abort returned after %s", time.Since(start).Round(time.Millisecond))
	case <-time.After(abortLimit):
		t.Fatalf("Abort still running after %s", abortLimit)
	}
}

// publishN publishes n records over a few keys and returns their acks.
func publishN(t *testing.T, k *Sink, topic string, n int) *acks {
	t.Helper()
	a := newAcks(n)
	for i := range n {
		ev := decoder.Event{ID: fmt.Sprint(i), AggregateID: fmt.Sprint(i % 7), Topic: topic, Payload: []byte("v")}
		if err := k.Publish(t.Context(), &ev, a.fn(i)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	return a
}

// wantAborted checks every ack came with ErrAborted, as an infra error.
func (a *acks) wantAborted(t *testing.T) {
	t.Helper()
	a.wait(t, false)
	for i, err := range a.results {
		var re *RecordError
		if !errors.Is(err, ErrAborted) || !errors.As(err, &re) || Classify(err) != ClassInfra {
			t.Fatalf("record %d acked with %v, want a *RecordError wrapping ErrAborted", i, err)
		}
	}
}

// TestKafkaAbortWithAFrozenBroker: a producer that cannot drain stops at
// once: every ack fails with ErrAborted, Close returns, sarama's
// goroutines end, and once the broker answers again nothing more of this
// producer reaches it.
func TestKafkaAbortWithAFrozenBroker(t *testing.T) {
	const topic, n = "outbox.order", 200
	c := newCluster(t, topic)
	produced := logProduce(c)
	baseline := saramaGoroutines()
	k := newKafka(t, c, Config{})
	sent, release := stallProduce(c)
	t.Cleanup(release)

	a := publishN(t, k, topic, n)
	select {
	case <-sent:
	case <-time.After(waitLimit):
		t.Fatal("no produce request reached the broker")
	}
	closed := make(chan error, 1)
	go func() { closed <- k.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while the broker held the records", err)
	case <-time.After(200 * time.Millisecond):
	}

	abortWithin(t, k)
	afterAbort := produced.total()
	a.wantAborted(t)
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Close still waiting after Abort")
	}
	ev := decoder.Event{ID: "late", AggregateID: "a", Topic: topic}
	if err := k.Publish(t.Context(), &ev, func(error) { t.Error("ack of a record published after Abort") }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Abort returned %v, want ErrClosed", err)
	}

	deadline := time.Now().Add(3 * time.Second)
	for saramaGoroutines() > baseline && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := saramaGoroutines(); got > baseline {
		t.Errorf("%d goroutines run sarama code after Abort, %d before the producer started", got, baseline)
	}

	// The broker answers again: longer than the producer's first retry
	// backoffs, and nothing comes.
	release()
	time.Sleep(time.Second)
	if got := produced.total(); got != afterAbort {
		t.Fatalf("%d produce requests reached the broker after Abort returned", got-afterAbort)
	}
	abortWithin(t, k) // again
}

// TestKafkaAbortStopsRetries: records the producer keeps retrying (a
// retriable error) are not retried once Abort has returned.
func TestKafkaAbortStopsRetries(t *testing.T) {
	const topic, n = "outbox.order", 50
	c := newCluster(t, topic)
	requests := failProduce(c, kerr.NotEnoughReplicas.Code)
	k := newKafka(t, c, Config{RetryBackoff: 5 * time.Millisecond})
	a := publishN(t, k, topic, n)
	for deadline := time.Now().Add(waitLimit); requests.Load() < 5; {
		if time.Now().After(deadline) {
			t.Fatalf("%d produce requests: the producer is not retrying", requests.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	abortWithin(t, k)
	afterAbort := requests.Load()
	// sarama may have given up on a few records already (a leader lookup
	// that failed between retries); the rest fail with ErrAborted.
	a.wait(t, false)
	for i, err := range a.results {
		if !errors.Is(err, ErrAborted) && !errors.Is(err, sarama.ErrNotEnoughReplicas) || Classify(err) != ClassInfra {
			t.Fatalf("record %d acked with %v, want ErrAborted or the broker's infra error", i, err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if got := requests.Load(); got != afterAbort {
		t.Fatalf("%d produce requests (retries) reached the broker after Abort returned", got-afterAbort)
	}
}

// TestKafkaCloseAndAbortInAnyOrder: both may be called in any order, more
// than once and concurrently; every ack is called exactly once.
func TestKafkaCloseAndAbortInAnyOrder(t *testing.T) {
	const topic = "outbox.order"
	c := newCluster(t, topic)

	t.Run("abort an idle sink, then close", func(t *testing.T) {
		k := newKafka(t, c, Config{})
		abortWithin(t, k)
		if err := k.Close(); err != nil {
			t.Fatalf("Close after Abort: %v", err)
		}
	})
	t.Run("close, then abort", func(t *testing.T) {
		k := newKafka(t, c, Config{})
		a := publishN(t, k, topic, 100)
		if err := k.Close(); err != nil {
			t.Fatal(err)
		}
		a.wait(t, true) // Close drained: nothing left to abort
		abortWithin(t, k)
	})
	t.Run("concurrently, with records held by the broker", func(t *testing.T) {
		c := newCluster(t, topic)
		k := newKafka(t, c, Config{})
		sent, release := stallProduce(c)
		t.Cleanup(release)
		a := publishN(t, k, topic, 100)
		<-sent
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Go(func() {
				if i%2 == 0 {
					errs <- k.Close()
				} else {
					k.Abort()
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(abortLimit + time.Second):
			t.Fatal("Close and Abort called together did not all return")
		}
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("Close or Abort: %v", err)
			}
		}
		a.wantAborted(t)
	})
}

// TestKafkaFirstRecordOfATopicStopsWaitingWithItsContext: the first record
// of a topic waits for the topic's metadata; a broker that does not answer
// holds it only as long as its context, and Abort ends the lookup.
func TestKafkaFirstRecordOfATopicStopsWaitingWithItsContext(t *testing.T) {
	c := newCluster(t, "outbox.order")
	k := newKafka(t, c, Config{})
	release := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	c.ControlKey(int16(kmsg.Metadata), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	ev := decoder.Event{ID: "1", AggregateID: "a", Topic: "outbox.invoice"}
	start := time.Now()
	err := k.Publish(ctx, &ev, func(error) { t.Error("ack of a record whose Publish failed") })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish returned %v, want its context's deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Publish took %s to notice its context ended", d)
	}
	abortWithin(t, k)
}

// TestKafkaAbortOverTLS: Abort cuts TLS connections as fast, without
// waiting to tell a broker that does not read that it is closing.
func TestKafkaAbortOverTLS(t *testing.T) {
	const topic = "outbox.order"
	p := newPKI(t)
	c := newSecureCluster(t, topic, kfake.TLS(p.serverTLS(false)))
	produced := logProduce(c)
	k := newKafka(t, c, Config{TLS: TLS{CAFile: p.caFile}})
	sent, release := stallProduce(c)
	t.Cleanup(release)
	// Large records, so the connection has much to write.
	a := newAcks(20)
	for i := range 20 {
		ev := decoder.Event{ID: fmt.Sprint(i), AggregateID: fmt.Sprint(i % 3), Topic: topic, Payload: make([]byte, 512<<10)}
		if err := k.Publish(t.Context(), &ev, a.fn(i)); err != nil {
			t.Fatal(err)
		}
	}
	<-sent
	abortWithin(t, k)
	afterAbort := produced.total()
	a.wantAborted(t)
	release()
	time.Sleep(500 * time.Millisecond)
	if got := produced.total(); got != afterAbort {
		t.Fatalf("%d produce requests reached the broker after Abort returned", got-afterAbort)
	}
}

// After Abort, what sarama still retries fails at once, and its metadata
// lookups end at once too: none goes round the seed brokers for its whole
// retry budget in a busy loop.
func TestKafkaAbortLeavesNoBusyLoop(t *testing.T) {
	c := newCluster(t, "outbox.order")
	k := newKafka(t, c, Config{})
	sent, release := stallProduce(c)
	t.Cleanup(release)
	a := newAcks(10)
	for i := range 10 {
		ev := decoder.Event{ID: fmt.Sprint(i), AggregateID: fmt.Sprint(i), Topic: "outbox.order", Payload: []byte("x")}
		if err := k.Publish(t.Context(), &ev, a.fn(i)); err != nil {
			t.Fatal(err)
		}
	}
	<-sent
	k.Abort()
	a.wait(t, false)
	if n := k.dialer.refused.Load(); n > 20 {
		t.Fatalf("%d connections attempted after Abort: sarama spins", n)
	}
}
