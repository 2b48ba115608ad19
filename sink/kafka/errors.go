package kafka

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/IBM/sarama"
)

// ErrorClass says what a failed record needs: a dead-letter topic, or a
// pause and a retry.
type ErrorClass int

const (
	// ClassInfra is a failure of the way to the broker, not of the record:
	// broker down, leader moved, not enough replicas, missing permission or
	// topic, timeouts, a closed producer, and anything not known to be
	// about the record. Pause and retry; never dead-letter.
	ClassInfra ErrorClass = iota
	// ClassRecord is a failure of this one record (too large, invalid,
	// a bad timestamp or topic name): retrying cannot help, a dead-letter
	// topic can.
	ClassRecord
)

func (c ErrorClass) String() string {
	if c == ClassRecord {
		return "record"
	}
	return "infra"
}

// Errors of the Kafka sink's own making; Classify knows each.
var (
	// ErrRecordTooLarge is wrapped by Publish's error for a record larger
	// than Config.MaxMessageBytes. Record class.
	ErrRecordTooLarge = errors.New("record larger than the producer's max message bytes")
	// ErrRecordTooLargeForTopic is wrapped by Publish's error for a
	// record that, in a batch of its own, would be larger than its
	// topic's max.message.bytes, when that is below the producer's max
	// message bytes. Record class.
	ErrRecordTooLargeForTopic = errors.New("record larger than its topic's max.message.bytes")
	// ErrInvalidTopicName is wrapped by Publish's error for a topic Kafka
	// does not accept as a name. Record class.
	ErrInvalidTopicName = errors.New("not a legal Kafka topic name (1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'; not \".\" or \"..\")")
	// ErrPartitionBlocked is wrapped by the error of a record refused (or
	// failed) because an earlier record of its topic partition failed: the
	// producer sends nothing more to that partition, so no later record
	// can land before the failed one is dealt with. Infra class: a new
	// session sends it again.
	ErrPartitionBlocked = errors.New("not sent: an earlier record of this partition failed and the partition takes nothing more from this producer")
	// ErrAborted is the error every unacknowledged record's ack gets from
	// Abort. Infra class.
	ErrAborted = errors.New("kafka producer aborted before the broker acknowledged the record")
)

// Classify returns the class of an error from the Kafka sink: an ack's
// error or Publish's. Every error code sarama knows is classified
// explicitly (kerrorClasses); anything else is ClassInfra, as is nil.
func Classify(err error) ErrorClass {
	switch {
	case err == nil:
		return ClassInfra
	// Checked first: these wrap the error of another record, which may be
	// record class.
	case errors.Is(err, ErrPartitionBlocked), errors.Is(err, ErrAborted), errors.Is(err, ErrClosed),
		errors.Is(err, ErrTxnAborted), errors.Is(err, ErrFenced):
		return ClassInfra
	case errors.Is(err, ErrRecordTooLarge), errors.Is(err, ErrRecordTooLargeForTopic), errors.Is(err, ErrInvalidTopicName):
		return ClassRecord
	}
	var ce sarama.ConfigurationError
	if errors.As(err, &ce) && strings.Contains(string(ce), "MaxMessageBytes") {
		// sarama's own size check, before sending.
		return ClassRecord
	}
	var ke sarama.KError
	if errors.As(err, &ke) {
		return kerrorClasses[ke] // a code sarama does not know: ClassInfra
	}
	return ClassInfra
}

// kerrorClasses classifies every error code sarama defines (the test walks
// them all). A produce response can carry only some of them; the rest are
// listed so that a new code is a decision, not a default.
var kerrorClasses = map[sarama.KError]ErrorClass{
	sarama.ErrUnknown:                            ClassInfra,
	sarama.ErrNoError:                            ClassInfra,
	sarama.ErrOffsetOutOfRange:                   ClassInfra,
	sarama.ErrInvalidMessage:                     ClassRecord, // CORRUPT_MESSAGE: after sarama's retries, it is the record
	sarama.ErrUnknownTopicOrPartition:            ClassInfra,  // missing topic, auto-creation off
	sarama.ErrInvalidMessageSize:                 ClassRecord,
	sarama.ErrLeaderNotAvailable:                 ClassInfra,
	sarama.ErrNotLeaderForPartition:              ClassInfra,
	sarama.ErrRequestTimedOut:                    ClassInfra,
	sarama.ErrBrokerNotAvailable:                 ClassInfra,
	sarama.ErrReplicaNotAvailable:                ClassInfra,
	sarama.ErrMessageSizeTooLarge:                ClassRecord,
	sarama.ErrStaleControllerEpochCode:           ClassInfra,
	sarama.ErrOffsetMetadataTooLarge:             ClassInfra,
	sarama.ErrNetworkException:                   ClassInfra,
	sarama.ErrOffsetsLoadInProgress:              ClassInfra,
	sarama.ErrConsumerCoordinatorNotAvailable:    ClassInfra,
	sarama.ErrNotCoordinatorForConsumer:          ClassInfra,
	sarama.ErrInvalidTopic:                       ClassRecord,
	sarama.ErrMessageSetSizeTooLarge:             ClassInfra, // the batch against segment.bytes: the batch settings, not one record
	sarama.ErrNotEnoughReplicas:                  ClassInfra,
	sarama.ErrNotEnoughReplicasAfterAppend:       ClassInfra,
	sarama.ErrInvalidRequiredAcks:                ClassInfra,
	sarama.ErrIllegalGeneration:                  ClassInfra,
	sarama.ErrInconsistentGroupProtocol:          ClassInfra,
	sarama.ErrInvalidGroupId:                     ClassInfra,
	sarama.ErrUnknownMemberId:                    ClassInfra,
	sarama.ErrInvalidSessionTimeout:              ClassInfra,
	sarama.ErrRebalanceInProgress:                ClassInfra,
	sarama.ErrInvalidCommitOffsetSize:            ClassInfra,
	sarama.ErrTopicAuthorizationFailed:           ClassInfra, // an ACL problem: never dead-letter
	sarama.ErrGroupAuthorizationFailed:           ClassInfra,
	sarama.ErrClusterAuthorizationFailed:         ClassInfra,
	sarama.ErrInvalidTimestamp:                   ClassRecord,
	sarama.ErrUnsupportedSASLMechanism:           ClassInfra,
	sarama.ErrIllegalSASLState:                   ClassInfra,
	sarama.ErrUnsupportedVersion:                 ClassInfra,
	sarama.ErrTopicAlreadyExists:                 ClassInfra,
	sarama.ErrInvalidPartitions:                  ClassInfra,
	sarama.ErrInvalidReplicationFactor:           ClassInfra,
	sarama.ErrInvalidReplicaAssignment:           ClassInfra,
	sarama.ErrInvalidConfig:                      ClassInfra,
	sarama.ErrNotController:                      ClassInfra,
	sarama.ErrInvalidRequest:                     ClassInfra,
	sarama.ErrUnsupportedForMessageFormat:        ClassInfra, // the topic's message format, for every record
	sarama.ErrPolicyViolation:                    ClassInfra,
	sarama.ErrOutOfOrderSequenceNumber:           ClassInfra,
	sarama.ErrDuplicateSequenceNumber:            ClassInfra,
	sarama.ErrInvalidProducerEpoch:               ClassInfra,
	sarama.ErrInvalidTxnState:                    ClassInfra,
	sarama.ErrInvalidProducerIDMapping:           ClassInfra,
	sarama.ErrInvalidTransactionTimeout:          ClassInfra,
	sarama.ErrConcurrentTransactions:             ClassInfra,
	sarama.ErrTransactionCoordinatorFenced:       ClassInfra,
	sarama.ErrTransactionalIDAuthorizationFailed: ClassInfra,
	sarama.ErrSecurityDisabled:                   ClassInfra,
	sarama.ErrOperationNotAttempted:              ClassInfra,
	sarama.ErrKafkaStorageError:                  ClassInfra,
	sarama.ErrLogDirNotFound:                     ClassInfra,
	sarama.ErrSASLAuthenticationFailed:           ClassInfra,
	sarama.ErrUnknownProducerID:                  ClassInfra,
	sarama.ErrReassignmentInProgress:             ClassInfra,
	sarama.ErrDelegationTokenAuthDisabled:        ClassInfra,
	sarama.ErrDelegationTokenNotFound:            ClassInfra,
	sarama.ErrDelegationTokenOwnerMismatch:       ClassInfra,
	sarama.ErrDelegationTokenRequestNotAllowed:   ClassInfra,
	sarama.ErrDelegationTokenAuthorizationFailed: ClassInfra,
	sarama.ErrDelegationTokenExpired:             ClassInfra,
	sarama.ErrInvalidPrincipalType:               ClassInfra,
	sarama.ErrNonEmptyGroup:                      ClassInfra,
	sarama.ErrGroupIDNotFound:                    ClassInfra,
	sarama.ErrFetchSessionIDNotFound:             ClassInfra,
	sarama.ErrInvalidFetchSessionEpoch:           ClassInfra,
	sarama.ErrListenerNotFound:                   ClassInfra,
	sarama.ErrTopicDeletionDisabled:              ClassInfra,
	sarama.ErrFencedLeaderEpoch:                  ClassInfra,
	sarama.ErrUnknownLeaderEpoch:                 ClassInfra,
	sarama.ErrUnsupportedCompressionType:         ClassInfra, // the compression setting, for every record
	sarama.ErrStaleBrokerEpoch:                   ClassInfra,
	sarama.ErrOffsetNotAvailable:                 ClassInfra,
	sarama.ErrMemberIdRequired:                   ClassInfra,
	sarama.ErrPreferredLeaderNotAvailable:        ClassInfra,
	sarama.ErrGroupMaxSizeReached:                ClassInfra,
	sarama.ErrFencedInstancedId:                  ClassInfra,
	sarama.ErrEligibleLeadersNotAvailable:        ClassInfra,
	sarama.ErrElectionNotNeeded:                  ClassInfra,
	sarama.ErrNoReassignmentInProgress:           ClassInfra,
	sarama.ErrGroupSubscribedToTopic:             ClassInfra,
	sarama.ErrInvalidRecord:                      ClassRecord, // a record-level validation failure
	sarama.ErrUnstableOffsetCommit:               ClassInfra,
	sarama.ErrThrottlingQuotaExceeded:            ClassInfra,
	sarama.ErrProducerFenced:                     ClassInfra,
	sarama.ErrInvalidUpdateVersion:               ClassInfra,
}

// RecordError is the error of one record: from Publish when the record
// was refused before anything was sent, or from its ack when the broker
// or the producer failed it.
type RecordError struct {
	// EventID is the event's id.
	EventID string
	// Topic is the record's topic.
	Topic string
	// Partition is the record's partition, or -1 when it was refused
	// before one was chosen.
	Partition int32
	// Err is what went wrong; Classify(Err) is the record's class.
	Err error
}

func (e *RecordError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "producing event %s to topic %s", e.EventID, printableTopic(e.Topic))
	if e.Partition >= 0 {
		fmt.Fprintf(&b, " partition %d", e.Partition)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	if h := hint(e.Err, e.Topic); h != "" {
		b.WriteString(": ")
		b.WriteString(h)
	}
	return b.String()
}

// Unwrap returns Err.
func (e *RecordError) Unwrap() error { return e.Err }

// Class returns Classify(e.Err).
func (e *RecordError) Class() ErrorClass { return Classify(e.Err) }

// RecordRejected reports whether the record itself was refused, by the
// broker or by Publish's checks (Classify says ClassRecord): retrying it
// cannot help, a dead-letter topic can.
func (e *RecordError) RecordRejected() bool { return e.Class() == ClassRecord }

// RecordTooLarge reports whether the record was refused for its size.
func (e *RecordError) RecordTooLarge() bool {
	if !e.RecordRejected() {
		return false
	}
	var ce sarama.ConfigurationError
	return errors.Is(e.Err, ErrRecordTooLarge) || errors.Is(e.Err, ErrRecordTooLargeForTopic) || errors.Is(e.Err, sarama.ErrMessageSizeTooLarge) ||
		errors.Is(e.Err, sarama.ErrInvalidMessageSize) || errors.As(e.Err, &ce)
}

// partitionBlockedError is the error of a record of a partition that an
// earlier record's failure blocked.
type partitionBlockedError struct {
	first *RecordError
}

func (e *partitionBlockedError) Error() string {
	return fmt.Sprintf("%v; first failure: event %s: %v", ErrPartitionBlocked, e.first.EventID, e.first.Err)
}

// Is makes errors.Is(err, ErrPartitionBlocked) true.
func (e *partitionBlockedError) Is(target error) bool { return target == ErrPartitionBlocked }

// Unwrap returns the first failure, so errors.Is finds its cause too.
func (e *partitionBlockedError) Unwrap() error { return e.first }

// printableTopic quotes a topic that is not a legal name (it came from
// the data) and shortens a very long one.
func printableTopic(t string) string {
	if validTopic(t) {
		return t
	}
	if len(t) > 300 {
		return fmt.Sprintf("%q...", t[:300])
	}
	return fmt.Sprintf("%q", t)
}

// hint says how to fix an infrastructure failure, or "" when there is
// nothing specific to say.
func hint(err error, topic string) string {
	if errors.Is(err, ErrPartitionBlocked) {
		return "" // the first failure's text carries its own
	}
	var ke sarama.KError
	if errors.As(err, &ke) {
		switch ke {
		case sarama.ErrTopicAuthorizationFailed:
			return fmt.Sprintf("grant WRITE on topic %s to the relay's principal", topic)
		case sarama.ErrClusterAuthorizationFailed:
			return "grant IDEMPOTENT_WRITE on the cluster to the relay's principal (the idempotent producer needs it on brokers before Kafka 2.8)"
		case sarama.ErrUnknownTopicOrPartition:
			return fmt.Sprintf("create topic %s or enable auto.create.topics.enable on the brokers", topic)
		case sarama.ErrNotEnoughReplicas, sarama.ErrNotEnoughReplicasAfterAppend:
			return fmt.Sprintf("fewer in-sync replicas than min.insync.replicas for topic %s; bring the replicas' brokers back or lower min.insync.replicas", topic)
		case sarama.ErrLeaderNotAvailable, sarama.ErrNotLeaderForPartition, sarama.ErrBrokerNotAvailable, sarama.ErrReplicaNotAvailable:
			return "the partition has no leader the producer can reach; check that its brokers are up"
		case sarama.ErrRequestTimedOut, sarama.ErrNetworkException:
			return "the broker did not answer in time; check the brokers and the network"
		case sarama.ErrKafkaStorageError:
			return "a log directory of the partition's leader failed; check that broker's disks"
		case sarama.ErrMessageSizeTooLarge:
			return fmt.Sprintf("topic %s's max.message.bytes (or the brokers' message.max.bytes) is below the producer's max message bytes; set the producer's to the topic's limit", topic)
		case sarama.ErrMessageSetSizeTooLarge:
			return fmt.Sprintf("a batch is larger than topic %s's segment.bytes; lower the batch bytes or the max message bytes", topic)
		case sarama.ErrUnsupportedForMessageFormat:
			return fmt.Sprintf("topic %s stores a message format older than 0.11, which has no record headers; raise its message.format.version", topic)
		case sarama.ErrUnsupportedCompressionType:
			return "the broker does not support the configured compression; choose another codec or check the Kafka version setting"
		case sarama.ErrInvalidRequiredAcks, sarama.ErrUnsupportedVersion:
			return "the broker does not accept the producer's settings; check the Kafka version setting against the brokers"
		}
		return ""
	}
	var op *net.OpError
	switch {
	case errors.Is(err, sarama.ErrOutOfBrokers), errors.Is(err, sarama.ErrNotConnected), errors.As(err, &op):
		return "no broker could be reached; check that the brokers are up and reachable"
	}
	return ""
}

// validTopic reports whether Kafka accepts t as a topic name.
func validTopic(t string) bool {
	if len(t) == 0 || len(t) > 249 || t == "." || t == ".." {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
