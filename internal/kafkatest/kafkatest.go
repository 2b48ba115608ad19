// Package kafkatest runs an in-process Kafka-protocol broker (kfake) for tests,
// or Apache Kafka itself (StartApache, in apache.go), and reads back what
// reached it, with clients independent of the relay's own producer: franz-go's
// kgo, and kcat when it is installed.
package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// NewCluster starts a one-broker kfake cluster that creates topics on first
// use with 4 partitions; opts are applied after those defaults and override
// them. The cluster is closed when the test ends.
func NewCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	base := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4)}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		t.Fatalf("kafkatest: starting kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Record is a consumed record, with its headers as a map (when a header key
// repeats, the last value wins).
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   map[string]string
	Timestamp time.Time
}

// ReadN reads the given topics from their start until n records were read or
// ctx ends; then it returns what it got and an error wrapping ctx.Err().
// Records of one partition come in offset order; partitions interleave.
// Topics that do not exist yet are picked up when they appear.
func ReadN(ctx context.Context, brokers []string, topics []string, n int) ([]Record, error) {
	return read(ctx, brokers, topics, false, n, 0)
}

// ReadNMatching is ReadN for every topic whose name matches one of the
// regular expressions (unanchored, as in regexp.MatchString: write
// `^outbox\.` for a prefix).
func ReadNMatching(ctx context.Context, brokers []string, patterns []string, n int) ([]Record, error) {
	return read(ctx, brokers, patterns, true, n, 0)
}

// ReadAll reads the given topics from their start until no new record has
// arrived for quiet, counted from the consumer's first fetch, or ctx ends
// (then it also returns an error).
//
// Use it only to assert that nothing more arrives (after ReadN got what was
// expected, say): a quiet period proves nothing about records still on their
// way, so waiting for expected records with it makes a flaky test.
func ReadAll(ctx context.Context, brokers []string, topics []string, quiet time.Duration) ([]Record, error) {
	return read(ctx, brokers, topics, false, -1, quiet)
}

// ReadAllMatching is ReadAll for topics matching the regular expressions,
// as in ReadNMatching.
func ReadAllMatching(ctx context.Context, brokers []string, patterns []string, quiet time.Duration) ([]Record, error) {
	return read(ctx, brokers, patterns, true, -1, quiet)
}

// read consumes until it has n records (n >= 0) or, with n < 0, until nothing
// arrived for quiet.
func read(ctx context.Context, brokers, topics []string, regex bool, n int, quiet time.Duration) ([]Record, error) {
	if len(topics) == 0 {
		return nil, errors.New("kafkatest: no topics to read")
	}
	started := &fetchStarted{ch: make(chan struct{})}
	opts := []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Notice topics created after the client (auto-created on first
		// produce) quickly rather than after the default 5 minutes.
		kgo.MetadataMinAge(50 * time.Millisecond),
		kgo.MetadataMaxAge(200 * time.Millisecond),
		kgo.FetchMaxWait(100 * time.Millisecond),
		kgo.WithHooks(started),
	}
	if regex {
		opts = append(opts, kgo.ConsumeRegex())
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafkatest: creating consumer: %w", err)
	}
	defer cl.Close()

	if n < 0 {
		// The quiet period counts from when the consumer reads: its
		// start-up (metadata, offsets, connections) takes seconds on a
		// busy machine.
		if err := started.wait(ctx, cl, topics, regex); err != nil {
			return nil, err
		}
	}
	var (
		got     []Record
		lastErr error
		last    = time.Now()
	)
	for n < 0 || len(got) < n {
		pollCtx := ctx
		var cancel context.CancelFunc = func() {}
		if n < 0 {
			pollCtx, cancel = context.WithDeadline(ctx, last.Add(quiet))
		}
		fetches := cl.PollFetches(pollCtx)
		cancel()

		fetches.EachError(func(topic string, partition int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				// Mostly transient (a topic not created yet); kgo retries.
				lastErr = fmt.Errorf("fetching %s[%d]: %w", topic, partition, err)
			}
		})
		before := len(got)
		fetches.EachRecord(func(r *kgo.Record) {
			if n < 0 || len(got) < n {
				got = append(got, convert(r))
			}
		})
		if len(got) > before {
			last = time.Now()
		}
		if ctx.Err() != nil {
			err := fmt.Errorf("kafkatest: read %d records: %w", len(got), ctx.Err())
			if n >= 0 {
				err = fmt.Errorf("kafkatest: read %d of %d records: %w", len(got), n, ctx.Err())
			}
			if lastErr != nil {
				err = fmt.Errorf("%w (last fetch error: %v)", err, lastErr)
			}
			return got, err
		}
		if n < 0 && time.Since(last) >= quiet {
			break
		}
	}
	return got, nil
}

// fetchStarted notices the consumer's first fetch response: it has its
// partitions and their offsets, and reads.
type fetchStarted struct {
	once sync.Once
	ch   chan struct{}
}

// OnBrokerRead implements kgo.HookBrokerRead.
func (f *fetchStarted) OnBrokerRead(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == int16(kmsg.Fetch) && err == nil {
		f.once.Do(func() { close(f.ch) })
	}
}

// startupLimit bounds the wait for the first fetch response.
const startupLimit = 30 * time.Second

// wait returns once the consumer has read a fetch response, or at once
// when none of the topics exists (there is nothing to fetch), or after
// startupLimit. It fails only when ctx ends.
func (f *fetchStarted) wait(ctx context.Context, cl *kgo.Client, topics []string, regex bool) error {
	if !anyExists(ctx, cl, topics, regex) {
		return ctx.Err()
	}
	limit := time.NewTimer(startupLimit)
	defer limit.Stop()
	select {
	case <-f.ch:
	case <-limit.C:
	case <-ctx.Done():
		return fmt.Errorf("kafkatest: waiting for the consumer to start: %w", ctx.Err())
	}
	return nil
}

// anyExists reports whether one of topics (or, with regex, a topic
// matching one of them) exists; true also when the brokers cannot be
// asked.
func anyExists(ctx context.Context, cl *kgo.Client, topics []string, regex bool) bool {
	resp, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl)
	if err != nil {
		return true
	}
	for _, t := range resp.Topics {
		if t.Topic == nil || t.ErrorCode != 0 {
			continue
		}
		for _, want := range topics {
			if matched, _ := regexp.MatchString(want, *t.Topic); regex && matched || !regex && want == *t.Topic {
				return true
			}
		}
	}
	return false
}

func convert(r *kgo.Record) Record {
	rec := Record{
		Topic:     r.Topic,
		Partition: r.Partition,
		Offset:    r.Offset,
		Key:       r.Key,
		Value:     r.Value,
		Headers:   make(map[string]string, len(r.Headers)),
		Timestamp: r.Timestamp,
	}
	for _, h := range r.Headers {
		rec.Headers[h.Key] = string(h.Value)
	}
	return rec
}
