// Package kafka is the Kafka sink: it publishes outbox events through
// sarama's idempotent producer and reports, once per record, when the
// broker has acknowledged it; with a transactional id it publishes them
// exactly once, in transactions that also carry the relay's checkpoint.
//
// The sink owns its producer and exactly one ack goroutine. Publish blocks
// at an in-flight cap, which is how a slow or absent broker stops the
// reading of WAL (backpressure) and keeps memory bounded.
package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/IBM/sarama"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/sink"
)

// ErrUnreachable is wrapped by New's error when no broker could be
// reached. The condition may be temporary: retry with backoff.
var ErrUnreachable = errors.New("no Kafka broker reachable")

// ErrClosed is returned by Publish once Close or Abort has been called.
var ErrClosed = errors.New("kafka sink closed")

// ErrAuth is wrapped by New's error when a broker rejected the SASL
// credentials or mechanism. Retrying cannot help.
var ErrAuth = errors.New("kafka SASL authentication failed")

// ErrTLS is wrapped by New's error when TLS with a broker failed for a
// reason retrying cannot fix: its certificate does not verify, it refused
// the client's certificate, or it does not speak TLS.
var ErrTLS = errors.New("kafka TLS handshake failed")

// RejectedError is New's error when a broker was reached but refused
// the connection's TLS or SASL setup. It wraps ErrAuth or ErrTLS and the
// underlying error; ConfigProblem reports true (the CLI exits with code 2
// instead of retrying). Its text never contains the password.
type RejectedError struct {
	// Broker is the broker's address, or the configured list when sarama
	// did not say which broker answered.
	Broker string
	// Kind is ErrAuth or ErrTLS.
	Kind error
	// Err is what the client saw.
	Err error
	msg string
}

func (e *RejectedError) Error() string { return e.msg }

// Unwrap returns Kind and Err.
func (e *RejectedError) Unwrap() []error { return []error{e.Kind, e.Err} }

// ConfigProblem reports true: a rejected configuration needs an operator,
// not a retry.
func (e *RejectedError) ConfigProblem() bool { return true }

// configError is New's error for a Config that Validate refuses:
// retrying cannot fix it.
type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }

func (e *configError) Unwrap() error { return e.err }

// ConfigProblem reports true: the CLI exits with code 2.
func (e *configError) ConfigProblem() bool { return true }

// Defaults for the zero values of Config.
const (
	DefaultClientID   = "outbox-relay"
	DefaultVersion    = "2.1.0"
	DefaultFlushBytes = 1 << 20
	// DefaultMaxMessageBytes is sarama's default Producer.MaxMessageBytes;
	// Kafka's default message.max.bytes (1048588) leaves room for the batch
	// framing around a record of that size.
	DefaultMaxMessageBytes = 1 << 20
	// DefaultFlushFrequency is short because a batch also grows while the
	// previous request to its broker is in flight (one at a time): under
	// load batches stay large, and at a few thousand events a second the
	// linger is most of the relay's own latency (a longer one costs
	// insert-to-ack latency and buys no drain rate: make bench).
	DefaultFlushFrequency = 250 * time.Microsecond
	// DefaultRetryMax keeps retrying a retriable error (leader moved,
	// broker down) for hours (2,000 retries, backoff capped at 5s: about
	// 2.8 hours) rather than giving up: giving up on one record while
	// later ones of its partition are in flight could let them land first
	// and break per-key order. Meanwhile the in-flight cap blocks the
	// pipeline (backpressure). sarama keeps per-partition retry state
	// sized by this number, so it must stay modest. Errors about the
	// record itself are not retried.
	DefaultRetryMax     = 2000
	DefaultRetryBackoff = 250 * time.Millisecond
	// DefaultMaxRetryBackoff caps the exponential backoff between retries.
	DefaultMaxRetryBackoff = 5 * time.Second
	// DefaultStallWarning is how long in-flight records may go without an
	// acknowledgement before the sink logs that Kafka is not answering.
	DefaultStallWarning = 10 * time.Second
	DefaultDialTimeout  = 10 * time.Second
)

// Config configures a Kafka sink. Zero values take the defaults above.
// The delivery settings no loss and per-key order rely on (idempotent
// producer, acks=all, one open request per broker) are fixed and not
// configurable.
type Config struct {
	// Brokers are the bootstrap addresses, host:port.
	Brokers []string
	// ClientID names the client to the brokers. Default "outbox-relay".
	ClientID string
	// Version is the Kafka protocol version to speak, e.g. "2.1.0"
	// (the default). It must be at least 0.11.0.0, which the idempotent
	// producer needs.
	Version string
	// MaxInFlight caps the records published and not yet acknowledged;
	// Publish blocks at the cap. Default 10000.
	MaxInFlight int
	// FlushMessages, FlushBytes and FlushFrequency batch records (linger):
	// a batch is sent when it reaches FlushMessages records or FlushBytes
	// bytes, or FlushFrequency after its first record, whichever is first;
	// a batch also grows while the previous request to its broker is in
	// flight. Defaults: no message count, 1 MiB, 250us.
	// FlushBytes is when to send, not a cap: a record larger than it is
	// sent at once, in a batch of its own.
	FlushMessages  int
	FlushBytes     int
	FlushFrequency time.Duration
	// MaxMessageBytes is the largest record the producer sends, counted as
	// sarama counts it (key, value, headers and the record's framing).
	// Publish refuses a larger one as a record error before sending
	// anything, and it caps a batch of one partition. Set it to the
	// topic's max.message.bytes (the brokers' message.max.bytes) or below:
	// above it, the broker refuses whole batches of smaller records.
	// Default 1 MiB.
	MaxMessageBytes int
	// Compression is none (default), gzip, snappy, lz4 or zstd (zstd needs
	// Version 2.1.0 or later).
	Compression string
	// RetryMax is the producer's retry budget for a record before its
	// error reaches the ack; default about 2.8 hours (see DefaultRetryMax).
	// RetryBackoff is the first backoff, doubling up to 5s; default 250ms.
	RetryMax     int
	RetryBackoff time.Duration
	// StallWarning is how long in-flight records may go unacknowledged
	// before a warning is logged (and again when acks resume). Default 10s.
	StallWarning time.Duration
	// DialTimeout bounds connecting to one broker, TLS handshake
	// included. Default 10s.
	DialTimeout time.Duration
	// TLS encrypts the connections; the zero value is plaintext.
	TLS TLS
	// SASL authenticates the client; the zero value is none.
	SASL SASL
	// Transaction, with an ID, makes the sink exactly-once: records are
	// published in Kafka transactions that Commit ends (txn.go).
	Transaction Transaction
	// Logger receives the sink's few log lines. Default: discard.
	Logger *slog.Logger
}

var compressionCodecs = map[string]sarama.CompressionCodec{
	"":       sarama.CompressionNone,
	"none":   sarama.CompressionNone,
	"gzip":   sarama.CompressionGZIP,
	"snappy": sarama.CompressionSnappy,
	"lz4":    sarama.CompressionLZ4,
	"zstd":   sarama.CompressionZSTD,
}

// withDefaults returns c with every zero value replaced by its default.
func (c Config) withDefaults() Config {
	if c.ClientID == "" {
		c.ClientID = DefaultClientID
	}
	if c.Version == "" {
		c.Version = DefaultVersion
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = sink.DefaultMaxInFlight
	}
	if c.FlushBytes == 0 {
		c.FlushBytes = DefaultFlushBytes
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.FlushFrequency == 0 {
		c.FlushFrequency = DefaultFlushFrequency
	}
	if c.Compression == "" {
		c.Compression = "none"
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.StallWarning == 0 {
		c.StallWarning = DefaultStallWarning
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Transaction.Enabled() {
		c.Transaction = c.Transaction.withDefaults()
	}
	return c
}

// LogValue logs the settings that identify the connection, never the
// password.
func (c Config) LogValue() slog.Value {
	c = c.withDefaults()
	return slog.GroupValue(
		slog.String("brokers", strings.Join(c.Brokers, ",")),
		slog.String("client_id", c.ClientID),
		slog.String("version", c.Version),
		slog.String("compression", c.Compression),
		slog.Bool("tls", c.TLS.Enabled()),
		slog.Any("sasl", c.SASL),
	)
}

// Validate reports the first problem with c, after defaults. It reads the
// TLS files, and its errors name the file at fault.
func (c Config) Validate() error {
	_, err := c.withDefaults().sarama()
	return err
}

// sarama builds the producer configuration, validating c (with defaults
// applied) on the way.
func (c Config) sarama() (*sarama.Config, error) {
	if len(c.Brokers) == 0 {
		return nil, errors.New("no Kafka brokers configured; set at least one host:port")
	}
	for _, b := range c.Brokers {
		if strings.TrimSpace(b) == "" {
			return nil, errors.New("empty Kafka broker address")
		}
	}
	version, err := sarama.ParseKafkaVersion(c.Version)
	if err != nil {
		return nil, fmt.Errorf("kafka version %q is not a version like 2.1.0", c.Version)
	}
	if !version.IsAtLeast(sarama.V0_11_0_0) {
		return nil, fmt.Errorf("kafka version %s is below 0.11.0, which the idempotent producer needs", c.Version)
	}
	codec, ok := compressionCodecs[strings.ToLower(c.Compression)]
	if !ok {
		return nil, fmt.Errorf("kafka compression %q is not one of none, gzip, snappy, lz4, zstd", c.Compression)
	}
	if codec == sarama.CompressionZSTD && !version.IsAtLeast(sarama.V2_1_0_0) {
		return nil, fmt.Errorf("kafka compression zstd needs version 2.1.0 or later, not %s", c.Version)
	}
	switch {
	case c.MaxInFlight < 1:
		return nil, fmt.Errorf("kafka max in-flight records %d is below 1", c.MaxInFlight)
	case c.FlushMessages < 0:
		return nil, fmt.Errorf("kafka flush messages %d is negative", c.FlushMessages)
	case c.FlushBytes < 0:
		return nil, fmt.Errorf("kafka flush bytes %d is negative", c.FlushBytes)
	case c.MaxMessageBytes < 1:
		return nil, fmt.Errorf("kafka max message bytes %d is below 1", c.MaxMessageBytes)
	case c.MaxMessageBytes >= int(sarama.MaxRequestSize):
		// sarama ignores a larger value.
		return nil, fmt.Errorf("kafka max message bytes %d is not below the largest request the producer sends (%d)", c.MaxMessageBytes, sarama.MaxRequestSize)
	case c.FlushFrequency < 0:
		return nil, fmt.Errorf("kafka flush frequency %s is negative", c.FlushFrequency)
	case c.RetryMax < 0:
		return nil, fmt.Errorf("kafka retry max %d is negative", c.RetryMax)
	case c.RetryBackoff < 0:
		return nil, fmt.Errorf("kafka retry backoff %s is negative", c.RetryBackoff)
	case c.DialTimeout < 0:
		return nil, fmt.Errorf("kafka dial timeout %s is negative", c.DialTimeout)
	}

	sc := sarama.NewConfig()
	sc.ClientID = c.ClientID
	sc.Version = version
	sc.Net.DialTimeout = c.DialTimeout
	if c.SASL.Enabled() {
		if err := c.SASL.validate(); err != nil {
			return nil, err
		}
		if !version.IsAtLeast(sarama.V1_0_0_0) {
			return nil, fmt.Errorf("kafka SASL needs version 1.0.0 or later, not %s", c.Version)
		}
		if m, _ := c.SASL.mechanism(); m == SASLPlain && !c.TLS.Enabled() && !c.SASL.AllowPlaintext {
			return nil, errors.New("kafka SASL PLAIN without TLS would send the password in clear text: enable TLS, or allow plaintext SASL explicitly if the network is trusted")
		}
		c.SASL.apply(sc)
	}
	var tc *tls.Config
	if c.TLS.Enabled() {
		if tc, err = c.TLS.config(); err != nil {
			return nil, err
		}
	}
	// Our dialer does TLS itself and tells a rejected handshake or password
	// from an unreachable broker (New's errors), and it is how Abort
	// cuts the connections.
	d := newKafkaDialer(net.Dialer{Timeout: c.DialTimeout, KeepAlive: sc.Net.KeepAlive}, tc)
	sc.Net.Proxy.Enable = true
	sc.Net.Proxy.Dialer = d
	// Delivery guarantees: no loss, per-key order on retry.
	sc.Producer.Idempotent = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Net.MaxOpenRequests = 1
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	// Publish chooses the partition (partitionOf), so that it knows it
	// before sarama has the record.
	sc.Producer.Partitioner = sarama.NewManualPartitioner
	sc.Producer.MaxMessageBytes = c.MaxMessageBytes
	sc.Producer.Compression = codec
	sc.Producer.Flush.Messages = c.FlushMessages
	sc.Producer.Flush.Bytes = c.FlushBytes
	sc.Producer.Flush.Frequency = c.FlushFrequency
	sc.Producer.Retry.Max = c.RetryMax
	sc.Producer.Retry.Backoff = c.RetryBackoff
	first := c.RetryBackoff
	// After Abort nothing can succeed: no waiting between the failures
	// that let sarama's goroutines finish.
	sc.Producer.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		if d.aborted.Load() {
			return 0
		}
		return min(first<<min(retries, 8), DefaultMaxRetryBackoff)
	}
	// sarama fails a record whose partition has no known leader at once,
	// and sends the next one when a leader is back: with the broker down a
	// while, later records of an aggregate would overtake earlier ones.
	// Metadata lookups therefore retry for hours (the producer waits, the
	// pipeline is paused); New probes the brokers with the default
	// budget first, so an unreachable cluster still fails fast at start.
	metadataBackoff := sc.Metadata.Retry.Backoff
	sc.Metadata.Retry.Max = metadataRetryMax
	// After Abort a lookup must end at once, not retry without waiting:
	// every connection then fails at once, and sarama would go round its
	// seed brokers metadataRetryMax times per lookup, in a busy loop.
	// sarama skips the retries when the backoff would pass the lookup's
	// deadline, so the deadline is beyond the whole budget and the
	// backoff after Abort beyond the deadline.
	sc.Metadata.Timeout = metadataRetryMax * 2 * time.Second * 2
	sc.Metadata.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		if d.aborted.Load() {
			return 2 * sc.Metadata.Timeout
		}
		return min(metadataBackoff<<min(retries, 4), 2*time.Second)
	}
	if c.Transaction.Enabled() {
		if err := c.Transaction.validate(); err != nil {
			return nil, err
		}
		sc.Producer.Transaction.ID = c.Transaction.ID
		sc.Producer.Transaction.Timeout = c.Transaction.Timeout
		// The transaction's requests are retried from a few milliseconds
		// on: right after a commit the coordinator answers the next
		// transaction's first request with CONCURRENT_TRANSACTIONS until
		// it has written the commit's markers, which takes milliseconds;
		// sarama's 100ms would add that to every transaction.
		sc.Producer.Transaction.Retry.Max = 200
		sc.Producer.Transaction.Retry.BackoffFunc = func(retries, _ int) time.Duration {
			if d.aborted.Load() {
				return 0
			}
			return min(txnRetryBackoff<<min(retries, 8), time.Second)
		}
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("kafka producer configuration: %w", err)
	}
	return sc, nil
}

// txnRetryBackoff is the first backoff of a transaction request's retry.
const txnRetryBackoff = 2 * time.Millisecond

// abortWait bounds how long Abort waits for sarama to finish after the
// connections are cut: a retry backoff already sleeping (at most
// DefaultMaxRetryBackoff) cannot be woken.
const abortWait = DefaultMaxRetryBackoff + 5*time.Second

// Sink publishes events to Kafka through sarama's AsyncProducer.
//
// Goroutines: the callers' (Publish, Close, Abort), the ack goroutine
// (calls every ack), the stall watcher, a metadata lookup for the first
// record of each topic, and sarama's own. Close and Abort end them.
type Sink struct {
	client   sarama.Client
	conf     *sarama.Config // the client's, for the stall diagnosis
	producer sarama.AsyncProducer
	dialer   *kafkaDialer
	log      *slog.Logger
	brokers  string

	maxMessageBytes int
	version         sarama.KafkaVersion
	compressed      bool

	// slots is the in-flight cap: Publish fills a slot, the ack goroutine
	// empties it after calling the ack (in a transaction, Commit or the
	// abort, once the held records are acked; see txn.go).
	slots *sink.Slots
	// pending holds the records handed to the producer and not acked.
	pending pendingList
	// blocked holds the first failure of each partition that had one.
	blocked partitionBlocks
	// knownTopics holds the topics whose partitions sarama has cached, so
	// Publish looks them up without waiting on a broker.
	knownTopics sync.Map
	lookups     sync.WaitGroup
	// topicLimits holds the max.message.bytes of the topics where it is
	// below maxMessageBytes (readTopicLimit); room keeps the records in
	// flight to each of their partitions within it.
	topicLimits sync.Map // topic -> int
	room        partitionRoom

	// closing is slots.Closing(): closed by stop, which wakes the Publish
	// calls blocked at the cap.
	closing <-chan struct{}
	// mu guards closed against the send to producer.Input: Publish holds
	// it shared while sending, stop exclusively, so no record is sent
	// after AsyncClose (which would panic) and none is lost.
	mu       sync.RWMutex
	closed   bool
	stopOnce sync.Once

	ackDone chan struct{} // closed when sarama has returned every record
	// abortReq is closed by Abort; the ack goroutine then fails every
	// pending ack and closes abortedAcks.
	abortReq    chan struct{}
	abortedAcks chan struct{}
	abortOnce   sync.Once

	clientOnce sync.Once
	clientDone chan struct{} // closed once the client is closed
	closeOnce  sync.Once

	// lastProgress is when the broker last acknowledged a record, or when
	// a record was published with nothing in flight (unix nanoseconds).
	lastProgress atomic.Int64
	stallWarning time.Duration
	checking     atomic.Bool // a checkFrozen runs

	// txn is the open Kafka transaction; nil unless transactional.
	txn        *txnState
	txnConf    Transaction
	committing atomic.Bool // a Commit runs
	fencedSaid atomic.Bool // sayFenced logged
	// abortErr, if set, is the error Abort fails the pending acks with.
	abortErr atomic.Pointer[error]
}

var _ sink.Publisher = (*Sink)(nil)

// New connects to the brokers and starts the producer and its ack
// goroutine. If no broker is reachable it returns an error wrapping
// ErrUnreachable, naming the brokers; the caller retries with backoff. A
// configuration that Validate refuses, or that a broker rejects (TLS,
// SASL), is an error whose ConfigProblem method reports true.
func New(cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	sc, err := cfg.sarama()
	if err != nil {
		return nil, &configError{err}
	}
	dialer := sc.Net.Proxy.Dialer.(*kafkaDialer)
	brokers := strings.Join(cfg.Brokers, ",")
	if cfg.TLS.InsecureSkipVerify {
		cfg.Logger.Warn("Kafka TLS certificate verification is DISABLED (insecure skip verify): anyone on the network path can impersonate the brokers and read every event; give the brokers' CA file instead", "brokers", brokers)
	}
	if m, _ := cfg.SASL.mechanism(); m == SASLPlain && !cfg.TLS.Enabled() {
		cfg.Logger.Warn("Kafka SASL PLAIN without TLS sends the password in clear text (allowed explicitly for a trusted network); enable TLS", "brokers", brokers, "user", cfg.SASL.User)
	}
	// The producer runs on a client of our own, whose partition metadata
	// Publish reads to choose a record's partition as sarama would.
	err = probeBrokers(cfg.Brokers, sc)
	var client sarama.Client
	if err == nil {
		client, err = sarama.NewClient(cfg.Brokers, sc)
	}
	var p sarama.AsyncProducer
	if err == nil {
		if p, err = sarama.NewAsyncProducerFromClient(client); err != nil {
			_ = client.Close()
		}
	}
	if err != nil {
		dialer.abort() // nothing left open
		if rerr := rejected(cfg, sc, err); rerr != nil {
			return nil, rerr
		}
		if errors.Is(err, sarama.ErrOutOfBrokers) {
			return nil, fmt.Errorf("connecting to Kafka brokers %s: %w: %w", brokers, ErrUnreachable, err)
		}
		return nil, fmt.Errorf("starting Kafka producer for brokers %s: %w", brokers, err)
	}
	k := &Sink{
		client:          client,
		conf:            sc,
		producer:        p,
		dialer:          dialer,
		log:             cfg.Logger,
		brokers:         brokers,
		maxMessageBytes: cfg.MaxMessageBytes,
		version:         sc.Version,
		compressed:      sc.Producer.Compression != sarama.CompressionNone,
		slots:           sink.NewSlots(cfg.MaxInFlight),
		ackDone:         make(chan struct{}),
		abortReq:        make(chan struct{}),
		abortedAcks:     make(chan struct{}),
		clientDone:      make(chan struct{}),
		stallWarning:    cfg.StallWarning,
	}
	k.closing = k.slots.Closing()
	if cfg.Transaction.Enabled() {
		k.txn, k.txnConf = newTxnState(), cfg.Transaction
	}
	k.lastProgress.Store(time.Now().UnixNano())
	go k.acks()
	go k.watchStalls()
	if k.txn != nil {
		if err := k.ensureCheckpointTopic(); err != nil {
			k.Abort()
			return nil, err
		}
	}
	k.log.Info("connected to Kafka", "brokers", brokers, "client_id", cfg.ClientID, "version", cfg.Version, "max_in_flight", cfg.MaxInFlight,
		"max_message_bytes", cfg.MaxMessageBytes, "compression", cfg.Compression, "tls", cfg.TLS.Enabled(), "sasl", cfg.SASL)
	return k, nil
}

// metadataRetryMax is the producer client's metadata retry budget: with
// backoff capped at 2s, hours of a cluster without a leader.
const metadataRetryMax = 20000

// probeBrokers fetches the cluster's metadata once with sarama's default
// retry budget: the producer's own client retries for hours, and an
// unreachable cluster must still be reported at start.
func probeBrokers(brokers []string, sc *sarama.Config) error {
	probe := *sc
	probe.Metadata.Retry.Max = sarama.NewConfig().Metadata.Retry.Max
	c, err := sarama.NewClient(brokers, &probe)
	if err != nil {
		return err
	}
	return c.Close()
}

// rejected turns a producer start failure that retrying cannot fix (TLS
// verification, SASL credentials or mechanism) into a *RejectedError, or
// returns nil.
func rejected(cfg Config, sc *sarama.Config, err error) error {
	var r *brokerRejection
	if d, ok := sc.Net.Proxy.Dialer.(*kafkaDialer); ok {
		r = d.rejection()
	}
	var scram *scramError
	switch {
	case r != nil:
	case errors.Is(err, sarama.ErrSASLAuthenticationFailed), errors.As(err, &scram):
		r = &brokerRejection{strings.Join(cfg.Brokers, ","), ErrAuth, err}
	case errors.Is(err, sarama.ErrUnsupportedSASLMechanism), errors.Is(err, sarama.ErrIllegalSASLState):
		mech, _ := cfg.SASL.mechanism()
		return &RejectedError{Broker: strings.Join(cfg.Brokers, ","), Kind: ErrAuth, Err: err,
			msg: fmt.Sprintf("Kafka broker %s does not accept SASL mechanism %s (%v): use a mechanism the broker enables", strings.Join(cfg.Brokers, ","), mech, err)}
	default:
		return nil
	}
	e := &RejectedError{Broker: r.broker, Kind: r.kind, Err: r.err}
	if r.kind == ErrAuth {
		mech, _ := cfg.SASL.mechanism()
		e.msg = fmt.Sprintf("Kafka SASL authentication failed for user %q with mechanism %s at broker %s (%s): check the credentials",
			cfg.SASL.User, mech, r.broker, authCause(r.err))
		return e
	}
	e.msg = fmt.Sprintf("TLS with Kafka broker %s failed: %v: %s", r.broker, r.err, tlsHint(cfg.TLS, r.err))
	return e
}

// authCause describes how the broker refused the credentials.
func authCause(err error) string {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		return "the broker closed the connection in answer to the credentials"
	}
	return err.Error()
}

// tlsHint says what to check for a TLS failure.
func tlsHint(t TLS, err error) string {
	var (
		hostname x509.HostnameError
		header   tls.RecordHeaderError
		op       *net.OpError
	)
	switch {
	case errors.As(err, &hostname):
		return "the broker's certificate is not for that name; check the broker address or set the TLS server name"
	case errors.As(err, &header):
		return "the broker does not speak TLS on that port; use its TLS listener or turn TLS off"
	case errors.As(err, &op) && op.Op == "remote error":
		if t.CertFile == "" {
			return "the broker refused the connection; it may require a client certificate (TLS cert and key)"
		}
		return "the broker refused the client certificate " + t.CertFile + "; check that the broker trusts its CA"
	default:
		return "the broker's certificate does not verify against " + t.caDescription() + "; check the CA file and the TLS server name"
	}
}

// Publish sends ev as one record: topic ev.Topic, key ev.AggregateID, value
// ev.Payload (nil is a null value), headers id, event_type, aggregate_type
// and then ev.Headers in order, timestamp ev.CreatedAt.
//
// The record points into ev rather than copying the payload: ev and the
// slices it points to (Payload, header values) must stay valid and
// unmodified until ack is called. After ack(nil) they may be reused; after
// an error ack, once Close or Abort has returned (a record failed by Abort
// may still be read by sarama until then). If Publish returns an error, the
// sink keeps nothing of ev.
//
// It blocks while MaxInFlight records are unacknowledged (backpressure),
// and for the first record of a topic while the producer fetches the
// topic's partitions and its max.message.bytes (logging why after a few
// seconds: a topic that does not exist, say). For a topic whose
// max.message.bytes is below MaxMessageBytes, it also blocks while the
// record would not fit in its partition's batch beside the records in
// flight there: the broker refuses a whole batch over the topic's limit,
// records that are not at fault included. It returns ctx.Err() if ctx has
// ended or ends while it waits, and ErrClosed once Close or Abort has
// begun.
//
// An error with RecordRejected() true (a *RecordError wrapping
// ErrInvalidTopicName, ErrRecordTooLarge or ErrRecordTooLargeForTopic)
// means this record was refused and nothing was sent; the caller decides
// (dead-letter or stop) and may go on publishing. A record of a partition
// that already had a failure is refused with an error wrapping
// ErrPartitionBlocked (infra class): from the moment a failure is
// reported, nothing more of its partition is handed to the producer, so
// later records cannot overtake the failed one; a fresh sink sends them
// again. (Records handed over before the failure was reported may still go
// out: sarama cannot give them back.)
//
// If Publish returns nil, ack is called exactly once, from the ack
// goroutine: with nil once the broker acknowledged the record (acks=all),
// or with a *RecordError (see Classify): the error that survived the
// producer's retries, ErrPartitionBlocked, or ErrAborted. If Publish
// returns an error, ack is never called. ack must not block, and must not
// call Close or Abort.
func (k *Sink) Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-k.closing:
		return ErrClosed
	default:
	}
	// Checked here, synchronously, so that nothing published later can
	// reach the broker ahead of a refused record.
	if !validTopic(ev.Topic) {
		return &RecordError{EventID: ev.ID, Topic: ev.Topic, Partition: -1, Err: ErrInvalidTopicName}
	}
	size := recordSize(ev)
	if size > k.maxMessageBytes {
		return &RecordError{EventID: ev.ID, Topic: ev.Topic, Partition: -1,
			Err: fmt.Errorf("%w: %d bytes (key, value, headers and record framing) over the limit of %d; nothing was sent", ErrRecordTooLarge, size, k.maxMessageBytes)}
	}
	r := newRecord(ev, ack)
	if err := k.choosePartition(ctx, r); err != nil {
		return err
	}
	limit := k.topicLimit(r.msg.Topic)
	// Compressed, a batch may fit where the sum of its records does not:
	// the broker decides, and a record over the limit goes alone (room).
	if limit > 0 && !k.compressed && size+recordBatchOverhead > limit {
		return &RecordError{EventID: ev.ID, Topic: ev.Topic, Partition: r.partition,
			Err: fmt.Errorf("%w: %d bytes (key, value, headers, record and batch framing) over the topic's limit of %d; nothing was sent", ErrRecordTooLargeForTopic, size+recordBatchOverhead, limit)}
	}

	if err := k.slots.Acquire(ctx); err != nil {
		if errors.Is(err, sink.ErrSinkClosed) {
			return ErrClosed
		}
		return err
	}
	if limit > 0 {
		if err := k.takeRoom(ctx, r, size, limit); err != nil {
			k.slots.Release()
			return err
		}
	}
	if first := k.blocked.get(r.msg.Topic, r.partition); first != nil {
		k.room.release(r)
		k.slots.Release()
		return &RecordError{EventID: ev.ID, Topic: ev.Topic, Partition: r.partition, Err: &partitionBlockedError{first}}
	}
	if k.slots.InFlight() == 1 {
		// Nothing else in flight: a stall is measured from now.
		k.lastProgress.Store(time.Now().UnixNano())
	}
	if k.txn != nil {
		if err := k.beginRecord(); err != nil {
			k.room.release(r)
			k.slots.Release()
			return err
		}
	}
	// Listed before the producer has it, so that its ack cannot come first.
	k.pending.add(r)
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return k.takeBack(r, ErrClosed)
	}
	select {
	case k.producer.Input() <- &r.msg:
		return nil
	case <-ctx.Done():
		return k.takeBack(r, ctx.Err())
	case <-k.closing:
		return k.takeBack(r, ErrClosed)
	}
}

// takeBack undoes the publishing of r, which the producer never got, and
// returns err. If Abort failed r meanwhile, its ack has been called: the
// publish then counts as done and takeBack returns nil.
func (k *Sink) takeBack(r *record, err error) error {
	if !k.pending.remove(r) {
		return nil
	}
	if k.txn != nil {
		k.unsent()
	}
	k.room.release(r)
	k.slots.Release()
	return err
}

// takeRoom waits until r, of size bytes, fits in its partition's batch
// beside the records in flight there, within the topic's limit, and
// reserves its room. A record alone always fits: sarama batches only
// records in flight, so one over the limit goes in a batch of its own.
func (k *Sink) takeRoom(ctx context.Context, r *record, size, limit int) error {
	tp := topicPartition{r.msg.Topic, r.partition}
	for {
		freed := k.room.take(tp, size, limit-recordBatchOverhead)
		if freed == nil {
			r.room = size
			return nil
		}
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		case <-k.closing:
			return ErrClosed
		}
	}
}

// choosePartition sets the partition r goes to, exactly as sarama's hash
// partitioner with Java-compatible murmur2 would (WithAbsFirst), over the
// partitions in the client's metadata, which sarama's partition step reads
// too.
func (k *Sink) choosePartition(ctx context.Context, r *record) error {
	parts, err := k.partitions(ctx, r.msg.Topic, r.id)
	if err != nil {
		if err == ctx.Err() || err == ErrClosed {
			return err
		}
		return &RecordError{EventID: r.id, Topic: r.msg.Topic, Partition: -1, Err: err}
	}
	choice := partitionOf(r.buf[:r.keyLen], int32(len(parts)))
	// sarama maps the manual choice through the same sorted list.
	r.msg.Partition = choice
	r.partition = parts[choice]
	return nil
}

// partitionOf is the partition of key among n: Kafka's default
// partitioner for keyed records.
func partitionOf(key []byte, n int32) int32 {
	return int32(murmur2Sum(key)&0x7fffffff) % n
}

// partitions returns the topic's partitions from the client's metadata.
// The first lookup of a topic may wait on a broker (for hours, if the
// topic does not exist and the brokers do not create topics: the metadata
// retries wait for it); it runs apart so that Publish can stop waiting when
// ctx ends or the sink closes, and it also reads the topic's
// max.message.bytes. A wait of more than a few seconds is logged, with its
// cause (eventID is the record waiting).
func (k *Sink) partitions(ctx context.Context, topic, eventID string) ([]int32, error) {
	if _, ok := k.knownTopics.Load(topic); ok {
		return checkPartitions(k.client.Partitions(topic))
	}
	type lookup struct {
		parts []int32
		err   error
	}
	done := make(chan lookup, 1)
	if !k.goLookup(func() {
		parts, err := checkPartitions(k.client.Partitions(topic))
		if err == nil {
			k.readTopicLimit(topic)
		}
		done <- lookup{parts, err}
	}) {
		return nil, ErrClosed
	}
	began := time.Now()
	warn := time.NewTimer(topicWaitWarning)
	defer warn.Stop()
	warned := false
	for {
		select {
		case l := <-done:
			if l.err == nil {
				k.knownTopics.Store(topic, struct{}{})
				if warned {
					k.log.Info("the topic's partitions are known now; publishing goes on", "topic", topic, "waited", time.Since(began).Round(time.Millisecond))
				}
			}
			return l.parts, l.err
		case <-warn.C:
			warned = true
			waited := time.Since(began)
			k.goLookup(func() { k.explainTopicWait(topic, eventID, waited) })
			warn.Reset(topicWaitRepeat)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-k.closing:
			return nil, ErrClosed
		}
	}
}

// How long Publish waits for a new topic's partitions before it logs why,
// and then between two such lines.
const (
	topicWaitWarning = 5 * time.Second
	topicWaitRepeat  = time.Minute
)

// goLookup runs fn, a request to a broker, on a goroutine that closeClient
// waits for; it reports false, and does not run fn, once the sink is
// closing.
func (k *Sink) goLookup(fn func()) bool {
	// Counted under mu, so that no lookup starts once stop has run and
	// closeClient may be waiting for them.
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return false
	}
	k.lookups.Add(1)
	go func() {
		defer k.lookups.Done()
		fn()
	}()
	return true
}

// explainTopicWait logs that Publish is waiting for topic's partitions,
// and why, as far as one metadata request tells.
func (k *Sink) explainTopicWait(topic, eventID string, waited time.Duration) {
	attrs := []any{"topic", topic, "event_id", eventID, "waited", waited.Round(time.Second)}
	if cause := k.topicProblem(topic); cause != nil {
		attrs = append(attrs, "cause", cause)
		if h := hint(cause, topic); h != "" {
			attrs = append(attrs, "fix", h)
		}
	}
	k.log.Warn("waiting for the topic's partitions: publishing is paused, and nothing from this event on is confirmed, until the brokers list them", attrs...)
}

// topicProblem asks one broker about topic, without creating it: the
// error of the topic or of one of its partitions, or nil.
func (k *Sink) topicProblem(topic string) error {
	b := k.client.LeastLoadedBroker()
	if b == nil {
		return sarama.ErrOutOfBrokers
	}
	req := sarama.NewMetadataRequest(k.version, []string{topic})
	req.AllowAutoTopicCreation = false
	resp, err := b.GetMetadata(req)
	if err != nil {
		return err
	}
	for _, tm := range resp.Topics {
		if tm.Name != topic {
			continue
		}
		if tm.Err != sarama.ErrNoError {
			return tm.Err
		}
		if len(tm.Partitions) == 0 {
			return sarama.ErrLeaderNotAvailable
		}
		for _, pm := range tm.Partitions {
			if pm.Err == sarama.ErrLeaderNotAvailable || pm.Leader < 0 {
				return sarama.ErrLeaderNotAvailable
			}
		}
	}
	return nil
}

// recordBatchOverhead is the header of a record batch (message format 2):
// the broker holds a batch, header included, to the topic's
// max.message.bytes.
const recordBatchOverhead = 61

// readTopicLimit reads topic's max.message.bytes and, when it is below the
// producer's max message bytes, keeps it for Publish (topicLimit). Reading
// it needs DESCRIBE_CONFIGS on the topic; without it, the producer's max
// message bytes is the only bound, as the flag's documentation says. It
// waits topicLimitWait at most: a broker that does not answer must not
// hold the topic's first record longer (the answer, when it comes, counts
// for the records after it).
func (k *Sink) readTopicLimit(topic string) {
	done := make(chan struct{})
	if !k.goLookup(func() {
		defer close(done)
		limit, err := k.describeMaxMessageBytes(topic)
		switch {
		case err != nil:
			k.log.Info("could not read the topic's max.message.bytes (grant DESCRIBE_CONFIGS on it to the relay's principal): the producer's max message bytes must not be above it",
				"topic", topic, "max_message_bytes", k.maxMessageBytes, "err", err)
		case limit < k.maxMessageBytes:
			k.topicLimits.Store(topic, limit)
			k.log.Info("the topic's max.message.bytes is below the producer's max message bytes: larger records are refused as too large for the topic, and its batches kept within its limit",
				"topic", topic, "topic_max_message_bytes", limit, "max_message_bytes", k.maxMessageBytes)
		}
	}) {
		return
	}
	timer := time.NewTimer(topicLimitWait)
	defer timer.Stop()
	select {
	case <-done:
	case <-k.closing:
	case <-timer.C:
		k.log.Info("no answer yet about the topic's max.message.bytes; publishing to it goes on meanwhile",
			"topic", topic, "waited", topicLimitWait)
	}
}

// topicLimitWait bounds how long the first record of a topic waits for the
// topic's max.message.bytes.
const topicLimitWait = 3 * time.Second

// topicLimit returns the max.message.bytes readTopicLimit kept for topic,
// or 0.
func (k *Sink) topicLimit(topic string) int {
	if v, ok := k.topicLimits.Load(topic); ok {
		return v.(int)
	}
	return 0
}

// describeMaxMessageBytes asks one broker for topic's max.message.bytes
// (the topic's own, or the brokers' message.max.bytes it inherits).
func (k *Sink) describeMaxMessageBytes(topic string) (int, error) {
	b := k.client.LeastLoadedBroker()
	if b == nil {
		return 0, sarama.ErrOutOfBrokers
	}
	req := &sarama.DescribeConfigsRequest{Resources: []*sarama.ConfigResource{
		{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"max.message.bytes"}},
	}}
	switch {
	case k.version.IsAtLeast(sarama.V2_0_0_0):
		req.Version = 2
	case k.version.IsAtLeast(sarama.V1_1_0_0):
		req.Version = 1
	}
	resp, err := b.DescribeConfigs(req)
	if err != nil {
		return 0, err
	}
	for _, r := range resp.Resources {
		if r.ErrorCode != 0 {
			return 0, fmt.Errorf("%w: %s", sarama.KError(r.ErrorCode), r.ErrorMsg)
		}
		for _, c := range r.Configs {
			if c.Name == "max.message.bytes" {
				return strconv.Atoi(c.Value)
			}
		}
	}
	return 0, errors.New("the broker's answer has no max.message.bytes")
}

// checkPartitions turns an empty partition list into the error sarama's
// partition step would give.
func checkPartitions(parts []int32, err error) ([]int32, error) {
	if err == nil && len(parts) == 0 {
		return nil, sarama.ErrLeaderNotAvailable
	}
	return parts, err
}

// InFlight returns how many published records have not had their ack
// called yet.
func (k *Sink) InFlight() int { return k.slots.InFlight() }

// Close stops accepting records, waits until every published record's ack
// has been called (drain: records still buffered are sent and retried
// within the retry budget), then closes the producer and its connections.
// It returns nil. An Abort, before or during Close, fails the acks still
// pending and Close returns then. Close and Abort are safe to call in any
// order, concurrently and more than once.
func (k *Sink) Close() error {
	if k.txn != nil && k.txnOpen() {
		// Never committed: the caller commits before it closes.
		k.abortTxn(errors.New("the sink closed before the transaction was committed"))
	}
	k.stop()
	select {
	case <-k.ackDone:
	case <-k.abortedAcks:
		return nil // Abort owns the rest of the teardown
	}
	select {
	case <-k.closeClient():
	case <-k.abortReq:
		return nil
	}
	k.closeOnce.Do(func() { k.log.Info("Kafka producer closed", "brokers", k.brokers) })
	return nil
}

// Abort stops the producer now, for one that cannot drain (a broker that
// does not answer): it closes every connection to the brokers and refuses
// new ones, so nothing more is sent, not even a retry; it calls the ack
// of every record not yet acknowledged with a *RecordError wrapping
// ErrAborted (a record the broker has stored may be among them: sent
// again, it is a duplicate, never a loss); and it waits for the producer's
// goroutines to finish and the client to close. That wait is bounded (by
// abortWait, about ten seconds, for a retry backoff already sleeping); if
// it runs out, Abort logs a warning and returns, and the guarantees above
// hold all the same. After Abort returns, nothing of this producer reaches
// a broker, and a Close in progress has returned or is returning.
//
// Abort after a completed Close only makes sure of that. Concurrent and
// later calls return once the first has.
func (k *Sink) Abort() {
	k.abortOnce.Do(k.abort)
}

// abortWith is Abort, with cause as the error the pending acks get
// (wrapped in a *RecordError) if this is the first Abort.
func (k *Sink) abortWith(cause error) {
	k.abortErr.CompareAndSwap(nil, &cause)
	k.Abort()
}

// abortCause is the error Abort gives the pending acks.
func (k *Sink) abortCause() error {
	if p := k.abortErr.Load(); p != nil {
		return *p
	}
	return ErrAborted
}

func (k *Sink) abort() {
	k.stop()
	// The acks first: a result sarama returns once the connections are cut
	// (a retry's leader lookup failing) would otherwise reach its ack with
	// that error rather than ErrAborted.
	close(k.abortReq)
	select {
	case <-k.abortedAcks:
	case <-k.ackDone: // nothing was pending
	}
	k.dialer.abort()
	clientDone := k.closeClient()
	timeout := time.NewTimer(abortWait)
	defer timeout.Stop()
	for _, done := range []<-chan struct{}{k.ackDone, clientDone} {
		select {
		case <-done:
		case <-timeout.C:
			k.log.Warn("the aborted Kafka producer did not finish in time; its connections are closed and it sends nothing more",
				"brokers", k.brokers, "waited", abortWait)
			return
		}
	}
	k.log.Info("Kafka producer aborted", "brokers", k.brokers)
}

// stop makes Publish refuse records and starts the producer's shutdown,
// once.
func (k *Sink) stop() {
	k.stopOnce.Do(func() {
		k.slots.Close()
		k.mu.Lock()
		k.closed = true
		k.mu.Unlock()
		k.producer.AsyncClose()
	})
}

// closeClient closes the client once (the producer does not close a
// client it was given) and returns a channel closed when that is done and
// no partition lookup is left.
func (k *Sink) closeClient() <-chan struct{} {
	k.clientOnce.Do(func() {
		go func() {
			defer close(k.clientDone)
			_ = k.client.Close()
			k.lookups.Wait()
		}()
	})
	return k.clientDone
}

// acks is the ack goroutine: it hands every result to its record's ack and
// frees its slot, until the producer has closed both result channels. On
// Abort it fails every pending record at once; their results, when sarama
// returns them, are dropped.
func (k *Sink) acks() {
	defer close(k.ackDone)
	if k.txn != nil {
		// Records of a transaction that never ended wait for no one now:
		// fail them, so every ack is called (the sink may be closed by an
		// abort that finds this goroutine already done).
		defer func() { k.failHeld(k.txn.take(), k.abortCause()) }()
	}
	successes, errs := k.producer.Successes(), k.producer.Errors()
	abort := k.abortReq
	for successes != nil || errs != nil {
		select {
		case <-abort:
			// Ahead of any result ready at the same time.
			abort = nil
			k.failPending()
			continue
		default:
		}
		select {
		case <-abort:
			abort = nil
			k.failPending()
		case msg, ok := <-successes:
			if !ok {
				successes = nil
				continue
			}
			k.lastProgress.Store(time.Now().UnixNano())
			if r := msg.Metadata.(*record); k.pending.remove(r) {
				k.room.release(r)
				if k.txn != nil {
					k.txn.returnedRecord(r, nil) // acked by Commit
					continue
				}
				r.done(nil)
				k.slots.Release()
			}
		case pe, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if r := pe.Msg.Metadata.(*record); k.pending.remove(r) {
				// The partition is blocked before its room is freed: no
				// record waiting for the room can pass the failure.
				err := k.failure(r, pe.Err)
				k.room.release(r)
				if k.txn != nil {
					k.txn.returnedRecord(r, err) // fails the commit
					continue
				}
				r.done(err)
				k.slots.Release()
			}
		}
	}
}

// failPending calls the ack of every pending record with ErrAborted, for
// Abort.
func (k *Sink) failPending() {
	rs := k.pending.takeAll()
	if k.txn != nil {
		// Returned records of the open transaction: never committed now.
		rs = append(k.txn.take(), rs...)
	}
	for _, r := range rs {
		k.room.release(r)
		var err error = &RecordError{EventID: r.id, Topic: r.msg.Topic, Partition: r.partition, Err: k.abortCause()}
		if r.txnErr != nil {
			err = r.txnErr // returned failed: its own error tells what to do with it
		}
		r.done(err)
		if !r.noSlot {
			k.slots.Release()
		}
	}
	close(k.abortedAcks)
}

// failure is the ack error of r, failed with cause. It blocks r's
// partition for the rest of this producer's life: in idempotent mode
// sarama fails the batch, bumps the producer epoch and lets the partition's
// next batches go, which would land after the failed record. A record of a
// partition that an earlier record blocked gets that record's failure
// (ErrPartitionBlocked, infra class), since a broker refusing a batch
// fails every record in it alike and only one of them need be at fault.
func (k *Sink) failure(r *record, cause error) error {
	e := &RecordError{EventID: r.id, Topic: r.msg.Topic, Partition: r.partition, Err: cause}
	if first := k.blocked.block(e); first != e {
		e.Err = &partitionBlockedError{first}
	}
	return e
}

// watchStalls logs once when in-flight records have gone unacknowledged
// for StallWarning (the broker is down or unreachable: the producer keeps
// retrying and the pipeline is paused), with what a look at the brokers
// tells, and once when acks resume. Meanwhile it looks for frozen brokers
// (checkFrozen) whenever the oldest record in flight has waited
// frozenCheckAfter.
func (k *Sink) watchStalls() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var (
		stalled, told bool
		oldest        *record
		oldestSince   time.Time
		lastCheck     time.Time
		txnWatch      txnErrorWatch
	)
	for {
		select {
		case <-k.ackDone:
			return
		case <-k.abortReq:
			return
		case <-tick.C:
		}
		if !k.committing.Load() && txnWatch.stuck(k) {
			// Fenced, most likely, while publishing: sarama would retry for
			// hours and the pipeline wait at the in-flight cap. (A commit
			// in progress sees it too, and says why.)
			failed := k.txn.firstFailure()
			if failed == nil {
				failed = errors.New("the transaction manager is in an error state")
			}
			cause := k.txnError("publishing in a Kafka transaction", failed)
			k.log.Warn("the Kafka transaction cannot go on; aborting the producer", "err", cause)
			go k.abortWith(cause)
			return
		}
		inFlight := k.slots.InFlight()
		since := time.Since(time.Unix(0, k.lastProgress.Load()))
		switch {
		case !stalled && inFlight > 0 && since >= k.stallWarning:
			stalled = true
			k.log.Warn("Kafka has acknowledged nothing; the producer keeps retrying and reading WAL is paused until it does",
				"brokers", k.brokers, "in_flight", inFlight, "for", since.Round(time.Second))
		case stalled && since < k.stallWarning:
			stalled, told = false, false
			k.log.Info("Kafka is acknowledging again", "brokers", k.brokers)
		}
		if head := k.pending.first(); head != oldest {
			oldest, oldestSince = head, time.Now()
		}
		stuck := oldest != nil && time.Since(oldestSince) >= frozenCheckAfter
		if (stuck || stalled && !told) && time.Since(lastCheck) >= frozenCheckAfter && k.checking.CompareAndSwap(false, true) {
			lastCheck = time.Now()
			tell := stalled && !told
			told = told || tell
			// The look takes seconds when brokers are frozen: the watch
			// goes on meanwhile.
			go func() {
				defer k.checking.Store(false)
				d := k.checkFrozen()
				if tell {
					k.log.Warn("Kafka stall: "+d.String(), "brokers", k.brokers)
				}
			}()
		}
	}
}

// pendingList is the records handed to the producer and not acked yet, in
// publish order, so that Abort can fail them all.
type pendingList struct {
	mu         sync.Mutex
	head, tail *record
}

func (l *pendingList) add(r *record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.pending = true
	r.prev, r.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = r
	} else {
		l.head = r
	}
	l.tail = r
}

// remove takes r off the list; false if it was not on it (Abort took it).
func (l *pendingList) remove(r *record) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !r.pending {
		return false
	}
	r.pending = false
	if r.prev != nil {
		r.prev.next = r.next
	} else {
		l.head = r.next
	}
	if r.next != nil {
		r.next.prev = r.prev
	} else {
		l.tail = r.prev
	}
	r.prev, r.next = nil, nil
	return true
}

// takeAll empties the list and returns its records, oldest first.
func (l *pendingList) takeAll() []*record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var rs []*record
	for r := l.head; r != nil; {
		next := r.next
		r.pending, r.prev, r.next = false, nil, nil
		rs = append(rs, r)
		r = next
	}
	l.head, l.tail = nil, nil
	return rs
}

// partitionBlocks holds the first failure of each topic partition.
type partitionBlocks struct {
	any atomic.Bool // spares Publish the lock while nothing failed
	mu  sync.Mutex
	m   map[topicPartition]*RecordError
}

type topicPartition struct {
	topic     string
	partition int32
}

// block records e as its partition's failure unless one is recorded
// already, and returns the partition's first failure.
func (b *partitionBlocks) block(e *RecordError) *RecordError {
	b.mu.Lock()
	defer b.mu.Unlock()
	tp := topicPartition{e.Topic, e.Partition}
	if first, ok := b.m[tp]; ok {
		return first
	}
	if b.m == nil {
		b.m = make(map[topicPartition]*RecordError)
	}
	b.m[tp] = e
	b.any.Store(true)
	return e
}

// get returns the partition's first failure, or nil.
func (b *partitionBlocks) get(topic string, partition int32) *RecordError {
	if !b.any.Load() {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.m[topicPartition{topic, partition}]
}

// partitionRoom counts the bytes in flight to each partition of the topics
// with a limit (topicLimit). sarama batches only records in flight, so a
// partition's batch is never larger than what is in flight there.
type partitionRoom struct {
	mu    sync.Mutex
	used  map[topicPartition]int
	freed chan struct{} // closed, and replaced, when bytes are released
}

// take reserves n bytes of tp's room of max bytes and returns nil; or, if
// they do not fit, returns a channel closed once some room is freed. An
// empty room takes any n.
func (p *partitionRoom) take(tp topicPartition, n, max int) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if used := p.used[tp]; used == 0 || used+n <= max {
		if p.used == nil {
			p.used = make(map[topicPartition]int)
		}
		p.used[tp] = used + n
		return nil
	}
	if p.freed == nil {
		p.freed = make(chan struct{})
	}
	return p.freed
}

// release frees the room r holds, if any.
func (p *partitionRoom) release(r *record) {
	if r.room == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	tp := topicPartition{r.msg.Topic, r.partition}
	if p.used[tp] -= r.room; p.used[tp] <= 0 {
		delete(p.used, tp)
	}
	r.room = 0
	if p.freed != nil {
		close(p.freed)
		p.freed = nil
	}
}
