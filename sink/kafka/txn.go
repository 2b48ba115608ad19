package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
)

// Exactly-once publishing.
//
// With Config.Transaction.ID set, the sink's producer is transactional:
// the records of a Publish go into the open Kafka transaction (begun by the
// first Publish after a commit), and Commit ends it with one more record, a
// checkpoint, on a compacted topic. A record's ack is called only once its
// transaction is committed (nil), or failed (an error): what the caller
// confirms from its acks is then committed, and a consumer reading
// committed data sees the records and the checkpoint together or not at
// all. ReadCheckpoint returns the newest committed checkpoint, so that a
// restarted relay skips what is committed already.
//
// The transactional id fences: a producer started with the same id
// aborts the open transaction of any earlier one, whose later commits fail
// with ErrFenced.

// DefaultCheckpointTopic is the compacted topic the checkpoints go to.
const DefaultCheckpointTopic = "outbox-relay.checkpoints"

// DefaultTransactionTimeout is the longest a transaction may stay open
// before the broker aborts it (transaction.timeout.ms).
const DefaultTransactionTimeout = time.Minute

// ErrFenced is wrapped by Commit's error, and the acks' errors, when
// another producer with the same transactional id has started: this one's
// writes can never become visible, and it must stop. Its Fenced method
// reports true, for callers that do not import this package.
var ErrFenced error = fencedError{}

type fencedError struct{}

func (fencedError) Error() string {
	return "fenced: another producer with the same transactional id took over"
}

// Fenced reports true.
func (fencedError) Fenced() bool { return true }

// ErrTxnAborted is wrapped by the ack error of every record of a Kafka
// transaction that was aborted or could not be committed (infra class: the
// records are not visible to consumers reading committed data, and a new
// session publishes them again).
var ErrTxnAborted = errors.New("kafka transaction aborted")

// Transaction turns exactly-once publishing on.
type Transaction struct {
	// ID is the producer's transactional.id; empty: not transactional.
	ID string
	// CheckpointTopic is the compacted topic of the checkpoints; created
	// (one partition, cleanup.policy=compact) when missing. Default
	// DefaultCheckpointTopic.
	CheckpointTopic string
	// CheckpointKey is the checkpoint records' key: the slot's name.
	CheckpointKey string
	// Timeout is transaction.timeout.ms. Default DefaultTransactionTimeout.
	Timeout time.Duration
}

// Enabled reports whether the sink is transactional.
func (t Transaction) Enabled() bool { return t.ID != "" }

func (t Transaction) withDefaults() Transaction {
	if t.CheckpointTopic == "" {
		t.CheckpointTopic = DefaultCheckpointTopic
	}
	if t.Timeout == 0 {
		t.Timeout = DefaultTransactionTimeout
	}
	return t
}

func (t Transaction) validate() error {
	switch {
	case !t.Enabled():
		return nil
	case t.CheckpointKey == "":
		return errors.New("kafka transactions need a checkpoint key (the slot's name)")
	case !validTopic(t.CheckpointTopic):
		return fmt.Errorf("kafka checkpoint topic %q is not a valid topic name", t.CheckpointTopic)
	case t.Timeout < time.Second:
		return fmt.Errorf("kafka transaction timeout %s is below 1s", t.Timeout)
	}
	return nil
}

// txnState is the open Kafka transaction: the records handed to the
// producer in it, and those sarama has returned, whose acks wait for the
// commit.
type txnState struct {
	mu       sync.Mutex
	open     bool
	sent     int
	returned int
	held     []*record
	failed   error // the first record error in the transaction
	changed  chan struct{}
}

func newTxnState() *txnState { return &txnState{changed: make(chan struct{})} }

// returnedRecord holds r, returned by sarama with err, until the commit.
func (t *txnState) returnedRecord(r *record, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r.txnErr = err
	if err != nil && t.failed == nil {
		t.failed = err
	}
	t.held = append(t.held, r)
	t.returned++
	close(t.changed)
	t.changed = make(chan struct{})
}

// firstFailure is the first record error of the transaction, or nil.
func (t *txnState) firstFailure() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// take ends the transaction's bookkeeping and returns its held records.
func (t *txnState) take() []*record {
	t.mu.Lock()
	defer t.mu.Unlock()
	held := t.held
	t.held, t.open, t.sent, t.returned, t.failed = nil, false, 0, 0, nil
	return held
}

// begin opens a transaction if none is, and counts one more record in it.
func (k *Sink) beginRecord() error {
	t := k.txn
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.open {
		if err := k.producer.BeginTxn(); err != nil {
			return k.txnError("beginning a Kafka transaction", err)
		}
		t.open = true
	}
	t.sent++
	return nil
}

// unsent uncounts a record beginRecord counted that never reached the
// producer.
func (k *Sink) unsent() {
	k.txn.mu.Lock()
	k.txn.sent--
	k.txn.mu.Unlock()
}

// Commit ends the open Kafka transaction with a checkpoint record (value
// checkpoint, key the configured checkpoint key) and commits it; then it
// calls the ack of every record of the transaction with nil and returns
// nil. With no transaction open (nothing published since the last
// commit) it does nothing.
//
// If the transaction cannot be committed (a record failed, the broker
// refused the commit, or ctx ended first), it is aborted, every record's
// ack is called with an error (the record's own *RecordError for the
// failed one, ErrTxnAborted for the others), and Commit returns an error;
// the sink is no longer usable. An error wrapping ErrFenced means another
// producer with the same transactional id took over.
//
// Commit, BeginTxn and Publish are called from one goroutine.
func (k *Sink) Commit(ctx context.Context, checkpoint []byte) error {
	t := k.txn
	if t == nil {
		return errors.New("kafka sink: Commit without a transactional id")
	}
	t.mu.Lock()
	open := t.open
	t.mu.Unlock()
	if !open {
		return nil
	}
	if err := k.sendCheckpoint(ctx, checkpoint); err != nil {
		k.abortTxn(err)
		return err
	}
	k.committing.Store(true)
	defer k.committing.Store(false)
	committed := make(chan error, 1)
	go func() { committed <- k.producer.CommitTxn() }()
	var (
		err   error
		watch txnErrorWatch
	)
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
wait:
	for {
		select {
		case err = <-committed:
			break wait
		case <-poll.C:
			if watch.stuck(k) {
				// Fenced, most likely: sarama would go on retrying the
				// records for hours. Cut the connections; the commit then
				// returns the error.
				k.abortWith(k.txnError("committing the Kafka transaction", <-k.fatalErr(committed)))
				return k.abortCause()
			}
		case <-ctx.Done():
			// A broker that does not answer: cut the connections so that
			// the commit returns, and fail what it holds.
			err = fmt.Errorf("committing the Kafka transaction: %w", context.Cause(ctx))
			k.abortWith(err)
			<-committed
			return err
		}
	}
	// Also after an error: the failed record's error says what happened.
	if rerr := k.waitReturned(); err == nil {
		err = rerr
	}
	if err != nil {
		if failed := t.firstFailure(); failed != nil {
			err = failed // what put the transaction in error
		}
		err = k.txnError("committing the Kafka transaction", err)
		k.abortTxn(err)
		return err
	}
	held := t.take()
	var failed error
	for _, r := range held {
		if r.txnErr != nil && failed == nil {
			failed = r.txnErr
		}
	}
	if failed != nil {
		// sarama refuses to commit a transaction with a failed record;
		// never acknowledge one.
		k.failHeld(held, failed)
		return fmt.Errorf("committing the Kafka transaction: %w", failed)
	}
	for _, r := range held {
		r.done(nil)
		if !r.noSlot {
			k.slots.Release()
		}
	}
	return nil
}

// waitReturned waits until sarama has returned every record of the
// transaction: CommitTxn returns once the producer has none in flight, a
// moment before the ack goroutine has handed the last ones over.
func (k *Sink) waitReturned() error {
	t := k.txn
	for {
		t.mu.Lock()
		done, changed := t.returned >= t.sent, t.changed
		t.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-k.abortReq:
			return ErrAborted
		}
	}
}

// sendCheckpoint hands the checkpoint record to the producer, in the open
// transaction.
func (k *Sink) sendCheckpoint(ctx context.Context, value []byte) error {
	key := k.txnConf.CheckpointKey
	r := &record{id: "checkpoint", noSlot: true, partition: -1, value: value, buf: []byte(key), keyLen: len(key)}
	r.msg = sarama.ProducerMessage{
		Topic:     k.txnConf.CheckpointTopic,
		Key:       (*recordKey)(r),
		Value:     (*recordValue)(r),
		Timestamp: time.Now(),
		Metadata:  r,
	}
	if err := k.choosePartition(ctx, r); err != nil {
		return err
	}
	if err := k.beginRecord(); err != nil {
		return err
	}
	k.pending.add(r)
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		k.unsent()
		return k.takeBackUnslotted(r, ErrClosed)
	}
	select {
	case k.producer.Input() <- &r.msg:
		return nil
	case <-ctx.Done():
		k.unsent()
		return k.takeBackUnslotted(r, ctx.Err())
	}
}

// takeBackUnslotted is takeBack for a record that holds no slot.
func (k *Sink) takeBackUnslotted(r *record, err error) error {
	k.pending.remove(r)
	return err
}

// txnErrorGrace is how long an abortable error state of sarama's
// transaction manager may last before the transaction counts as stuck.
// The records of the failed batch come back at once; what is still in
// flight after that never does.
const txnErrorGrace = time.Second

// txnErrorWatch tells when the open transaction can no longer end by
// itself. Fatal (fenced, or refused by the broker for good): at once. In
// an abortable error state, sarama sends no batch any more and retries
// those it still holds as if a connection had failed, for as long as the
// producer's retry budget lasts (hours), while a commit or abort waits for
// them: once that state has lasted txnErrorGrace.
type txnErrorWatch struct {
	since time.Time // when the error state was first seen; zero if not in one
}

// stuck looks at the transaction manager's state now.
func (w *txnErrorWatch) stuck(k *Sink) bool {
	if k.txn == nil {
		return false
	}
	s := k.producer.TxnStatus()
	switch {
	case s&sarama.ProducerTxnFlagFatalError != 0:
		return true
	case s&sarama.ProducerTxnFlagInError == 0:
		w.since = time.Time{}
		return false
	case w.since.IsZero():
		w.since = time.Now()
	}
	return time.Since(w.since) >= txnErrorGrace
}

// fatalErr returns a channel with the error that put sarama's transaction
// in error: the commit's, once the connections are cut so that it returns.
func (k *Sink) fatalErr(committed <-chan error) <-chan error {
	out := make(chan error, 1)
	k.dialer.abort()
	go func() {
		err := <-committed
		if err == nil {
			err = errors.New("the transaction manager is in an error state")
		}
		out <- err
	}()
	return out
}

// txnOpen reports whether a transaction is open.
func (k *Sink) txnOpen() bool {
	k.txn.mu.Lock()
	defer k.txn.mu.Unlock()
	return k.txn.open
}

// abortTxn aborts the open transaction after cause, and fails the acks of
// its records.
func (k *Sink) abortTxn(cause error) {
	defer func() {
		_ = k.waitReturned()
		k.failHeld(k.txn.take(), cause)
	}()
	if failed := k.txn.firstFailure(); isFenced(failed) {
		// The broker refused a record for a newer producer: the abort
		// below may wait for sarama's retries and never hear it again.
		k.sayFenced(failed)
	}
	if k.producer.TxnStatus()&sarama.ProducerTxnFlagFatalError == 0 {
		done := make(chan error, 1)
		go func() { done <- k.producer.AbortTxn() }()
		select {
		case err := <-done:
			switch {
			case isFenced(err):
				k.sayFenced(err)
			case err != nil:
				k.log.Info("aborting the Kafka transaction", "err", err)
			}
		case <-time.After(abortWait):
			k.Abort()
		}
	}
}

// sayFenced logs, once, that a newer producer took over.
func (k *Sink) sayFenced(err error) {
	if k.fencedSaid.CompareAndSwap(false, true) {
		k.log.Warn("fenced: another producer with this transactional id took over; nothing of this producer's open transaction becomes visible",
			"transactional_id", k.txnConf.ID, "err", err)
	}
}

// failHeld calls the acks of held records with their own error, or
// ErrTxnAborted because of cause.
func (k *Sink) failHeld(held []*record, cause error) {
	for _, r := range held {
		err := r.txnErr
		if err == nil {
			err = &RecordError{EventID: r.id, Topic: r.msg.Topic, Partition: r.partition, Err: fmt.Errorf("%w: %w", ErrTxnAborted, cause)}
		}
		r.done(err)
		if !r.noSlot {
			k.slots.Release()
		}
	}
}

// txnError wraps a transaction failure, telling a fenced producer apart.
func (k *Sink) txnError(what string, err error) error {
	if isFenced(err) {
		return fmt.Errorf("%s: %w (transactional id %q): %w", what, ErrFenced, k.txnConf.ID, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isFenced reports whether err says that a newer producer with the same
// transactional id exists. INVALID_TXN_STATE counts: the relay's own use
// of the protocol is in order, and a coordinator that aborted this
// producer's transaction for a newer one may answer its records so.
// (Taken for fenced wrongly, it costs one session: the relay goes to
// standby and takes the slot again if it is free.)
func isFenced(err error) bool {
	return errors.Is(err, sarama.ErrProducerFenced) || errors.Is(err, sarama.ErrInvalidProducerEpoch) ||
		errors.Is(err, sarama.ErrInvalidTxnState)
}

// ReadCheckpoint returns the value of the newest committed checkpoint
// record of the configured key, or nil if there is none. It reads the
// checkpoint topic's partition of the key from its start to its last
// stable offset, as a consumer reading committed data would: records of
// aborted transactions are ignored, and those of open ones are waited
// for. Call it after New, whose producer has already aborted any
// transaction an earlier producer with the same id left open.
func (k *Sink) ReadCheckpoint(ctx context.Context) ([]byte, error) {
	if k.txn == nil {
		return nil, errors.New("kafka sink: ReadCheckpoint without a transactional id")
	}
	topic, key := k.txnConf.CheckpointTopic, k.txnConf.CheckpointKey
	parts, err := k.partitions(ctx, topic, "checkpoint")
	if err != nil {
		return nil, fmt.Errorf("reading the checkpoint topic %s: %w", topic, err)
	}
	part := parts[partitionOf([]byte(key), int32(len(parts)))]
	offset, err := k.client.GetOffset(topic, part, sarama.OffsetOldest)
	if err != nil {
		return nil, fmt.Errorf("reading the checkpoint topic %s: %w", topic, err)
	}
	var (
		latest  []byte
		found   bool
		pending = map[int64][]byte{} // producer id -> newest value in its open transaction
	)
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("reading the checkpoint topic %s: %w", topic, err)
		}
		b, err := k.client.Leader(topic, part)
		if err != nil {
			return nil, fmt.Errorf("reading the checkpoint topic %s: %w", topic, err)
		}
		req := &sarama.FetchRequest{Version: 4, Isolation: sarama.ReadCommitted, MaxWaitTime: 100, MinBytes: 1, MaxBytes: 16 << 20}
		req.AddBlock(topic, part, offset, 16<<20, -1)
		resp, err := b.Fetch(req)
		if err != nil {
			return nil, fmt.Errorf("reading the checkpoint topic %s: %w", topic, err)
		}
		blk := resp.GetBlock(topic, part)
		if blk == nil {
			return nil, fmt.Errorf("reading the checkpoint topic %s: no answer for partition %d", topic, part)
		}
		if blk.Err != sarama.ErrNoError {
			if blk.Err == sarama.ErrNotLeaderForPartition || blk.Err == sarama.ErrLeaderNotAvailable {
				_ = k.client.RefreshMetadata(topic)
				continue
			}
			return nil, fmt.Errorf("reading the checkpoint topic %s: %w", topic, blk.Err)
		}
		end := blk.LastStableOffset
		if end < 0 {
			end = blk.HighWaterMarkOffset
		}
		for _, rs := range blk.RecordsSet {
			rb := rs.RecordBatch
			if rb == nil || rb.PartialTrailingRecord {
				break // fetched again from offset
			}
			if rb.LastOffset() < offset {
				continue
			}
			switch {
			case rb.Control:
				if len(rb.Records) > 0 && controlType(rb.Records[0].Key) == sarama.ControlRecordCommit {
					if v, ok := pending[rb.ProducerID]; ok {
						latest, found = v, true
					}
				}
				delete(pending, rb.ProducerID)
			default:
				for _, rec := range rb.Records {
					if string(rec.Key) != key || rb.FirstOffset+rec.OffsetDelta < offset {
						continue
					}
					if rb.IsTransactional {
						pending[rb.ProducerID] = rec.Value
					} else {
						latest, found = rec.Value, true
					}
				}
			}
			offset = rb.LastOffset() + 1
		}
		if offset >= end {
			break
		}
	}
	if !found || latest == nil {
		return nil, nil // none, or a tombstone
	}
	return latest, nil
}

// controlType is the type of a control record, from its key.
func controlType(key []byte) sarama.ControlRecordType {
	if len(key) < 4 {
		return sarama.ControlRecordUnknown
	}
	switch binary.BigEndian.Uint16(key[2:4]) {
	case 0:
		return sarama.ControlRecordAbort
	case 1:
		return sarama.ControlRecordCommit
	}
	return sarama.ControlRecordUnknown
}

// ensureCheckpointTopic creates the checkpoint topic when it does not exist
// (one partition, cleanup.policy=compact, replicated like the brokers'
// defaults allow), and warns when it exists without compaction.
func (k *Sink) ensureCheckpointTopic() error {
	topic := k.txnConf.CheckpointTopic
	switch err := k.topicProblem(topic); {
	case err == nil:
		k.checkCompacted(topic)
		return nil
	case errors.Is(err, sarama.ErrUnknownTopicOrPartition):
	default:
		return fmt.Errorf("looking up the checkpoint topic %s: %w", topic, err)
	}
	b, err := k.client.Controller()
	if err != nil {
		return fmt.Errorf("creating the checkpoint topic %s: %w", topic, err)
	}
	rf := int16(min(3, len(k.client.Brokers())))
	compact := "compact"
	// Kafka 4 no longer answers CreateTopics versions 0 and 1.
	version := int16(1)
	switch {
	case k.version.IsAtLeast(sarama.V2_0_0_0):
		version = 3
	case k.version.IsAtLeast(sarama.V1_0_0_0):
		version = 2
	}
	req := &sarama.CreateTopicsRequest{
		Version: version,
		TopicDetails: map[string]*sarama.TopicDetail{topic: {
			NumPartitions: 1, ReplicationFactor: rf,
			ConfigEntries: map[string]*string{"cleanup.policy": &compact},
		}},
		Timeout: 10 * time.Second,
	}
	resp, err := b.CreateTopics(req)
	if err != nil {
		return fmt.Errorf("creating the checkpoint topic %s: %w", topic, err)
	}
	if te := resp.TopicErrors[topic]; te != nil && te.Err != sarama.ErrNoError && te.Err != sarama.ErrTopicAlreadyExists {
		msg := ""
		if te.ErrMsg != nil {
			msg = ": " + *te.ErrMsg
		}
		return fmt.Errorf("creating the checkpoint topic %s (cleanup.policy=compact, replication factor %d): %w%s; create it yourself, or grant CREATE to the relay's principal", topic, rf, te.Err, msg)
	}
	k.log.Info("created the checkpoint topic", "topic", topic, "replication_factor", rf)
	return nil
}

// checkCompacted warns when the checkpoint topic deletes old records by
// time: the newest checkpoint of a slot that was idle for longer would be
// gone, and the next start would repeat what followed its slot position.
func (k *Sink) checkCompacted(topic string) {
	b := k.client.LeastLoadedBroker()
	if b == nil {
		return
	}
	req := &sarama.DescribeConfigsRequest{Version: 1, Resources: []*sarama.ConfigResource{
		{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"cleanup.policy"}},
	}}
	resp, err := b.DescribeConfigs(req)
	if err != nil {
		return
	}
	for _, r := range resp.Resources {
		for _, c := range r.Configs {
			if c.Name == "cleanup.policy" && !strings.Contains(c.Value, "compact") {
				k.log.Warn("the checkpoint topic is not compacted: old checkpoints expire with its retention, and a relay idle for longer would repeat events after a crash; set cleanup.policy=compact on it",
					"topic", topic, "cleanup_policy", c.Value)
			}
		}
	}
}
