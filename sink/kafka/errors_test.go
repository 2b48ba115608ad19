package kafka

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/IBM/sarama"
)

// TestClassifyCoversEverySaramaErrorCode walks every code a KError can
// hold: each one sarama has a message for must be classified explicitly,
// so a sarama upgrade that adds codes fails here until someone decides.
func TestClassifyCoversEverySaramaErrorCode(t *testing.T) {
	const unknownText = "Unknown error, how did this happen?"
	highest := sarama.KError(-1)
	for code := -1; code <= math.MaxInt16; code++ {
		ke := sarama.KError(code)
		if strings.HasPrefix(ke.Error(), unknownText) {
			continue
		}
		highest = ke
		if _, ok := kerrorClasses[ke]; !ok {
			t.Errorf("sarama error code %d (%v) has no class in kerrorClasses", code, ke)
		}
	}
	// Some codes sarama names have no message (ErrProducerFenced); the
	// table may list them, but nothing beyond what sarama knows.
	for ke := range kerrorClasses {
		if ke < -1 || ke > highest {
			t.Errorf("kerrorClasses lists code %d, outside sarama's -1..%d", ke, highest)
		}
	}
}

func TestClassify(t *testing.T) {
	blockedBy := func(err error) error {
		return &RecordError{EventID: "2", Topic: "t", Partition: 1,
			Err: &partitionBlockedError{&RecordError{EventID: "1", Topic: "t", Partition: 1, Err: err}}}
	}
	for _, tt := range []struct {
		name string
		err  error
		want ErrorClass
	}{
		// About the record: a dead-letter topic can take it.
		{"message too large", sarama.ErrMessageSizeTooLarge, ClassRecord},
		{"negative message size", sarama.ErrInvalidMessageSize, ClassRecord},
		{"corrupt message", sarama.ErrInvalidMessage, ClassRecord},
		{"invalid record", sarama.ErrInvalidRecord, ClassRecord},
		{"invalid timestamp", sarama.ErrInvalidTimestamp, ClassRecord},
		{"invalid topic", sarama.ErrInvalidTopic, ClassRecord},
		{"sarama's own size check", sarama.ConfigurationError("Attempt to produce message larger than configured Producer.MaxMessageBytes: 2000 > 1000"), ClassRecord},
		{"Publish's size check", fmt.Errorf("%w: 2000 bytes", ErrRecordTooLarge), ClassRecord},
		{"Publish's topic check", ErrInvalidTopicName, ClassRecord},
		{"in a RecordError", &RecordError{Err: sarama.ErrInvalidRecord}, ClassRecord},
		{"in a sarama ProducerError", sarama.ProducerError{Msg: &sarama.ProducerMessage{}, Err: sarama.ErrInvalidRecord}, ClassRecord},

		// About the way to the broker: pause and retry, never dead-letter.
		{"topic authorization", sarama.ErrTopicAuthorizationFailed, ClassInfra},
		{"cluster authorization", sarama.ErrClusterAuthorizationFailed, ClassInfra},
		{"unknown topic, auto-creation off", sarama.ErrUnknownTopicOrPartition, ClassInfra},
		{"not enough replicas", sarama.ErrNotEnoughReplicas, ClassInfra},
		{"not enough replicas after append", sarama.ErrNotEnoughReplicasAfterAppend, ClassInfra},
		{"leader moved", sarama.ErrNotLeaderForPartition, ClassInfra},
		{"no leader", sarama.ErrLeaderNotAvailable, ClassInfra},
		{"broker down", sarama.ErrBrokerNotAvailable, ClassInfra},
		{"request timed out", sarama.ErrRequestTimedOut, ClassInfra},
		{"storage error", sarama.ErrKafkaStorageError, ClassInfra},
		{"batch over segment.bytes", sarama.ErrMessageSetSizeTooLarge, ClassInfra},
		{"old message format", sarama.ErrUnsupportedForMessageFormat, ClassInfra},
		{"unknown server error", sarama.ErrUnknown, ClassInfra},
		{"a code sarama does not know", sarama.KError(9999), ClassInfra},
		{"other configuration error", sarama.ConfigurationError("Producing headers requires Kafka at least v0.11"), ClassInfra},
		{"request encoding", sarama.PacketEncodingError{Info: "invalid array length"}, ClassInfra},
		{"out of brokers", sarama.ErrOutOfBrokers, ClassInfra},
		{"closed client", sarama.ErrClosedClient, ClassInfra},
		{"not connected", sarama.ErrNotConnected, ClassInfra},
		{"producer shutting down", sarama.ErrShuttingDown, ClassInfra},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, ClassInfra},
		{"connection lost", io.ErrUnexpectedEOF, ClassInfra},
		{"anything else", errors.New("something new"), ClassInfra},
		{"nil", nil, ClassInfra},
		{"aborted", &RecordError{Err: ErrAborted}, ClassInfra},
		{"closed sink", ErrClosed, ClassInfra},
		// A record behind a rejected one was not rejected itself.
		{"blocked by a too large record", blockedBy(sarama.ErrMessageSizeTooLarge), ClassInfra},
		{"blocked by an invalid record", blockedBy(sarama.ErrInvalidRecord), ClassInfra},
		{"blocked by an authorization failure", blockedBy(sarama.ErrTopicAuthorizationFailed), ClassInfra},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Fatalf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
			if tt.err == nil {
				return
			}
			re := &RecordError{EventID: "e", Topic: "t", Partition: 0, Err: tt.err}
			if got := re.RecordRejected(); got != (tt.want == ClassRecord) {
				t.Fatalf("RecordRejected() = %v for %v", got, tt.err)
			}
		})
	}
}

func TestRecordTooLarge(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("%w: 2000 bytes", ErrRecordTooLarge), true},
		{sarama.ErrMessageSizeTooLarge, true},
		{sarama.ConfigurationError("Attempt to produce message larger than configured Producer.MaxMessageBytes: 2000 > 1000"), true},
		{sarama.ErrInvalidRecord, false},
		{ErrInvalidTopicName, false},
		{&partitionBlockedError{&RecordError{Err: sarama.ErrMessageSizeTooLarge}}, false},
	} {
		if got := (&RecordError{Err: tt.err}).RecordTooLarge(); got != tt.want {
			t.Errorf("RecordTooLarge() = %v for %v, want %v", got, tt.err, tt.want)
		}
	}
}

// TestRecordErrorSaysHowToFix: an infrastructure error names the event,
// topic and partition, and what to do about it.
func TestRecordErrorSaysHowToFix(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{sarama.ErrTopicAuthorizationFailed, "grant WRITE on topic outbox.order to the relay's principal"},
		{sarama.ErrClusterAuthorizationFailed, "grant IDEMPOTENT_WRITE on the cluster"},
		{sarama.ErrUnknownTopicOrPartition, "create topic outbox.order or enable auto.create.topics.enable"},
		{sarama.ErrNotEnoughReplicas, "fewer in-sync replicas than min.insync.replicas for topic outbox.order"},
		{sarama.ErrNotEnoughReplicasAfterAppend, "fewer in-sync replicas than min.insync.replicas"},
		{sarama.ErrNotLeaderForPartition, "no leader"},
		{sarama.ErrMessageSizeTooLarge, "max.message.bytes"},
		{sarama.ErrOutOfBrokers, "no broker could be reached"},
	} {
		e := &RecordError{EventID: "0195-ev", Topic: "outbox.order", Partition: 2, Err: tt.err}
		msg := e.Error()
		if !strings.HasPrefix(msg, "producing event 0195-ev to topic outbox.order partition 2: ") || !strings.Contains(msg, tt.want) {
			t.Errorf("%v: error %q, want the event, topic, partition and %q", tt.err, msg, tt.want)
		}
	}
	// A blocked record names the failure it is blocked by, with its hint.
	first := &RecordError{EventID: "ev-1", Topic: "outbox.order", Partition: 2, Err: sarama.ErrTopicAuthorizationFailed}
	blocked := &RecordError{EventID: "ev-2", Topic: "outbox.order", Partition: 2, Err: &partitionBlockedError{first}}
	if msg := blocked.Error(); !strings.Contains(msg, "ev-2") || !strings.Contains(msg, "event ev-1") || !strings.Contains(msg, "authoriz") {
		t.Errorf("blocked record error %q should name itself and the first failure", msg)
	}
	if !errors.Is(blocked, ErrPartitionBlocked) || !errors.Is(blocked, sarama.ErrTopicAuthorizationFailed) {
		t.Errorf("blocked record error %q: errors.Is finds neither ErrPartitionBlocked nor its cause", blocked)
	}
}

func TestValidTopic(t *testing.T) {
	for topic, want := range map[string]bool{
		"outbox.order":            true,
		"Outbox_order-2":          true,
		strings.Repeat("t", 249):  true,
		"":                        false,
		".":                       false,
		"..":                      false,
		"...":                     true,
		strings.Repeat("t", 250):  false,
		"outbox order":            false,
		"outbox/order":            false,
		"outbox.ordre-\u00e9":     false,
		"outbox.order\n":          false,
		"outbox.{aggregate_type}": false,
	} {
		if got := validTopic(topic); got != want {
			t.Errorf("validTopic(%q) = %v, want %v", topic, got, want)
		}
	}
}
