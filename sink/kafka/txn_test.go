package kafka

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// txnReturned is how many records of the open transaction the producer
// has returned.
func (k *Sink) txnReturned() int {
	k.txn.mu.Lock()
	defer k.txn.mu.Unlock()
	return k.txn.returned
}

func txnConfig(id string) Config {
	return Config{Transaction: Transaction{ID: id, CheckpointKey: "slot_a"}}
}

func txnEvent(i int) *decoder.Event {
	return &decoder.Event{ID: fmt.Sprintf("ev-%d", i), Topic: "outbox.order", AggregateID: fmt.Sprintf("agg-%d", i%3), Payload: []byte(fmt.Sprint(i))}
}

// publishN publishes n events and returns their acks.
func publishTxn(t *testing.T, k *Sink, n int) *acks {
	t.Helper()
	a := newAcks(n)
	for i := range n {
		if err := k.Publish(t.Context(), txnEvent(i), a.fn(i)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	return a
}

// readCommitted counts the records in topic a consumer reading committed
// data sees, and a read-uncommitted one, once both reached the end.
func readCounts(t *testing.T, c *kfake.Cluster, topic string) (committed, uncommitted int) {
	t.Helper()
	count := func(level kgo.IsolationLevel) int {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(level))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		// The end, as the isolation level sees it: each partition's last
		// stable offset (read committed) or high watermark.
		ends := map[int32]int64{}
		req := kmsg.NewPtrListOffsetsRequest()
		req.IsolationLevel = 0
		if level == kgo.ReadCommitted() {
			req.IsolationLevel = 1
		}
		rt := kmsg.NewListOffsetsRequestTopic()
		rt.Topic = topic
		for p := range int32(4) {
			rp := kmsg.NewListOffsetsRequestTopicPartition()
			rp.Partition, rp.Timestamp = p, -1
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(t.Context(), cl)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range resp.Topics[0].Partitions {
			ends[p.Partition] = p.Offset
		}
		ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
		defer cancel()
		n := 0
		pos := map[int32]int64{}
		done := func() bool {
			for p, end := range ends {
				if pos[p] < end {
					return false
				}
			}
			return true
		}
		for !done() {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil {
				t.Fatalf("reading %s: positions %v, ends %v", topic, pos, ends)
			}
			fs.EachPartition(func(p kgo.FetchTopicPartition) {
				n += len(p.Records)
				if p.HighWatermark > 0 {
					// Control records and aborted ones are skipped: the
					// fetch's end offsets tell how far the read got.
					pos[p.Partition] = max(pos[p.Partition], min(p.LastStableOffset, p.HighWatermark))
					if level != kgo.ReadCommitted() {
						pos[p.Partition] = max(pos[p.Partition], p.HighWatermark)
					}
				}
			})
		}
		return n
	}
	return count(kgo.ReadCommitted()), count(kgo.ReadUncommitted())
}

// Records are acknowledged only by Commit, and a consumer reading
// committed data sees them then, with the checkpoint, which ReadCheckpoint
// returns.
func TestKafkaTxnCommitAcksAndCheckpoint(t *testing.T) {
	c := newCluster(t, "outbox.order")
	k := newKafka(t, c, txnConfig("relay-a"))
	if cp, err := k.ReadCheckpoint(t.Context()); err != nil || cp != nil {
		t.Fatalf("ReadCheckpoint on a new topic = %q, %v; want none", cp, err)
	}
	a := publishTxn(t, k, 50)
	// Every record is with the broker, and none is acknowledged yet.
	deadline := time.Now().Add(waitLimit)
	for k.txnReturned() < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 50 records returned by the producer", k.txnReturned())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := a.count(); n != 0 {
		t.Fatalf("%d acks before the commit; want 0", n)
	}
	if err := k.Commit(t.Context(), []byte("cp-1")); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	a.wait(t, true)
	if got, _ := readCounts(t, c, "outbox.order"); got != 50 {
		t.Fatalf("read committed: %d records, want 50", got)
	}
	cp, err := k.ReadCheckpoint(t.Context())
	if err != nil || string(cp) != "cp-1" {
		t.Fatalf("ReadCheckpoint = %q, %v; want cp-1", cp, err)
	}
	// Nothing published: Commit does nothing, and the checkpoint stays.
	if err := k.Commit(t.Context(), []byte("cp-empty")); err != nil {
		t.Fatalf("empty Commit: %v", err)
	}
	b := newAcks(1)
	if err := k.Publish(t.Context(), txnEvent(99), b.fn(0)); err != nil {
		t.Fatal(err)
	}
	if err := k.Commit(t.Context(), []byte("cp-2")); err != nil {
		t.Fatal(err)
	}
	b.wait(t, true)
	if cp, err := k.ReadCheckpoint(t.Context()); err != nil || string(cp) != "cp-2" {
		t.Fatalf("ReadCheckpoint = %q, %v; want cp-2", cp, err)
	}
}

// An aborted transaction (the sink closed before its commit) fails every
// ack, its records are invisible to a read-committed consumer, and its
// checkpoint does not count.
func TestKafkaTxnCloseAbortsTheOpenTransaction(t *testing.T) {
	c := newCluster(t, "outbox.order")
	k := newKafka(t, c, txnConfig("relay-a"))
	first := publishTxn(t, k, 5)
	if err := k.Commit(t.Context(), []byte("cp-1")); err != nil {
		t.Fatal(err)
	}
	first.wait(t, true)
	a := publishTxn(t, k, 7)
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	a.wait(t, false)
	for i, err := range a.results {
		if !errors.Is(err, ErrTxnAborted) || Classify(err) != ClassInfra {
			t.Fatalf("ack %d after Close = %v; want ErrTxnAborted, infra class", i, err)
		}
	}
	committed, uncommitted := readCounts(t, c, "outbox.order")
	if committed != 5 || uncommitted != 12 {
		t.Fatalf("read committed %d, read uncommitted %d; want 5 and 12", committed, uncommitted)
	}
	k2 := newKafka(t, c, txnConfig("relay-a"))
	if cp, err := k2.ReadCheckpoint(t.Context()); err != nil || string(cp) != "cp-1" {
		t.Fatalf("ReadCheckpoint after an aborted transaction = %q, %v; want cp-1", cp, err)
	}
}

// A second producer with the same transactional id fences the first: the
// first's commit fails with ErrFenced, and nothing it wrote is visible.
func TestKafkaTxnFencing(t *testing.T) {
	c := newCluster(t, "outbox.order")
	old := newKafka(t, c, txnConfig("relay-a"))
	a := publishTxn(t, old, 4)
	// The new producer aborts the old one's open transaction.
	k := newKafka(t, c, txnConfig("relay-a"))
	err := old.Commit(t.Context(), []byte("zombie"))
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("the fenced producer's Commit = %v; want ErrFenced", err)
	}
	a.wait(t, false)
	for i, err := range a.results {
		if err == nil {
			t.Fatalf("ack %d of the fenced producer is nil", i)
		}
	}
	b := publishTxn(t, k, 3)
	if err := k.Commit(t.Context(), []byte("cp-new")); err != nil {
		t.Fatal(err)
	}
	b.wait(t, true)
	if committed, _ := readCounts(t, c, "outbox.order"); committed != 3 {
		t.Fatalf("read committed: %d records, want the new producer's 3", committed)
	}
	if cp, err := k.ReadCheckpoint(t.Context()); err != nil || string(cp) != "cp-new" {
		t.Fatalf("ReadCheckpoint = %q, %v; want cp-new", cp, err)
	}
}

// The checkpoint topic is created compacted.
func TestKafkaTxnCreatesACompactedCheckpointTopic(t *testing.T) {
	c := newCluster(t, "outbox.order")
	k := newKafka(t, c, txnConfig("relay-a"))
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrDescribeConfigsRequest()
	res := kmsg.NewDescribeConfigsRequestResource()
	res.ResourceType, res.ResourceName = kmsg.ConfigResourceTypeTopic, DefaultCheckpointTopic
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(t.Context(), cl)
	if err != nil {
		t.Fatal(err)
	}
	policy := ""
	for _, r := range resp.Resources {
		for _, c := range r.Configs {
			if c.Name == "cleanup.policy" && c.Value != nil {
				policy = *c.Value
			}
		}
	}
	if policy != "compact" {
		t.Fatalf("checkpoint topic cleanup.policy = %q, want compact", policy)
	}
	_ = k
}
