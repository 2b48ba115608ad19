package relay

import (
	"sync"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// Observer is told what the relay does, for metrics and health checks.
// Implementations must be cheap and must not block: they are called on
// the pipeline's hot path, and EventAcked from the publisher's ack
// goroutine. Every method may be called from any goroutine.
type Observer interface {
	// StateChanged reports a new session state. For StateReconnecting,
	// cause is one of the Cause constants and err says what ended the
	// session; for StateStandby err says why; otherwise both are empty.
	StateChanged(state State, cause string, err error)
	// Session is called when a session starts streaming, before
	// StateChanged(StateStreaming). progress may be called from any
	// goroutine at any time, also after the session ended (it then reports
	// the session's final values).
	Session(progress func() Progress)
	// TransactionDecoded is called once per decoded commit.
	TransactionDecoded()
	// EventAcked is called once per event the broker acknowledged. ev
	// must not be kept.
	EventAcked(ev *decoder.Event)
	// PublishFailed is called once per event that could not be published;
	// reason is one of the Reason constants.
	PublishFailed(reason string)
	// HeartbeatSent is called after each heartbeat message.
	HeartbeatSent()
	// EventDeadLettered is called when a rejected event was delivered to
	// the dead-letter topic.
	EventDeadLettered()
	// RowsPruned is called with the number of confirmed outbox rows each
	// pruning statement deleted.
	RowsPruned(n int)
	// HeaderDropped is called once per header key the decoder left out of
	// an event (a name the relay sets itself, or an empty one; see
	// decoder.Config.DroppedHeader). relation is "schema.table" or
	// "message prefix P"; key comes from user data, so it must not become
	// a metric label.
	HeaderDropped(relation, key string)
}

// State is where the relay's session lifecycle stands.
type State uint8

// Session states, in the order a healthy relay goes through them.
const (
	// StateConnecting: checking the server and opening the connections.
	StateConnecting State = iota
	// StateStandby: another process streams from the slot; this relay
	// retries until the slot is released.
	StateStandby
	// StateStreaming: events flow from the slot to the publisher.
	StateStreaming
	// StateReconnecting: a session ended with an error; the next one
	// starts after a backoff.
	StateReconnecting
	// StateStopped: Run returned.
	StateStopped
)

var stateNames = [...]string{"connecting", "standby", "streaming", "reconnecting", "stopped"}

// String returns the state's name as health checks and logs show it.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// Causes of a reconnect, for StateChanged.
const (
	// CausePostgres: connecting to PostgreSQL or starting replication failed.
	CausePostgres = "postgres"
	// CauseReplication: the replication stream failed while streaming.
	CauseReplication = "replication"
	// CauseSink: the publisher could not connect or a publish failed.
	CauseSink = "sink"
)

// Reasons a publish failed, for PublishFailed.
const (
	// ReasonRejected: the broker's error survived the publisher's retries.
	ReasonRejected = "rejected"
	// ReasonPublish: the publisher refused the event (closed, or failed).
	ReasonPublish = "publish"
)

// Progress is a snapshot of a streaming session, for metrics.
type Progress struct {
	// Confirmed is the last position sent to PostgreSQL as flushed.
	Confirmed pglogrepl.LSN
	// Received is the end of the newest WAL data received.
	Received pglogrepl.LSN
	// ServerWALEnd is the newest WAL end the server reported.
	ServerWALEnd pglogrepl.LSN
	// InFlight counts events published and not yet acknowledged.
	InFlight int
	// Lag is how far the confirmed position trails the source in time:
	// now minus the commit time of the oldest transaction received and not
	// yet confirmed (which, under steady load, is the transaction after the
	// newest confirmed one). Zero when nothing is waiting. Using the oldest
	// unconfirmed commit rather than the newest confirmed one keeps the
	// first transaction after an idle hour from reporting an hour of lag.
	Lag time.Duration
}

// LagBytes is how far Confirmed trails ServerWALEnd, never negative (the
// end of a confirmed transaction can pass the WAL end the server reported).
func (p Progress) LagBytes() uint64 {
	if p.ServerWALEnd <= p.Confirmed {
		return 0
	}
	return uint64(p.ServerWALEnd - p.Confirmed)
}

// nopObserver is used when Config.Observer is nil.
type nopObserver struct{}

func (nopObserver) StateChanged(State, string, error) {}
func (nopObserver) Session(func() Progress)           {}
func (nopObserver) TransactionDecoded()               {}
func (nopObserver) EventAcked(*decoder.Event)         {}
func (nopObserver) PublishFailed(string)              {}
func (nopObserver) HeartbeatSent()                    {}
func (nopObserver) EventDeadLettered()                {}
func (nopObserver) RowsPruned(int)                    {}
func (nopObserver) HeaderDropped(string, string)      {}

// maxCommits bounds the commit log: beyond it, new transactions are merged
// into the newest entry, which keeps its older commit time, so the lag is
// overstated a little rather than understated.
const maxCommits = 4096

// commit is one transaction's commit LSN and time.
type commit struct {
	lsn  pglogrepl.LSN
	time time.Time
}

// commitLog remembers the commit times of transactions not yet confirmed,
// to report the replication lag in seconds. The pipeline adds one entry
// per transaction (at Begin, which carries the commit LSN and time, so an
// open large transaction counts too); lag drops the confirmed ones.
type commitLog struct {
	mu      sync.Mutex
	pending []commit // in commit order; pending[head] is the oldest
	head    int
}

func (c *commitLog) add(lsn pglogrepl.LSN, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.pending) - c.head; n >= maxCommits {
		c.pending[len(c.pending)-1].lsn = lsn
		return
	}
	if c.head > 0 && len(c.pending) == cap(c.pending) {
		n := copy(c.pending, c.pending[c.head:])
		c.pending = c.pending[:n]
		c.head = 0
	}
	c.pending = append(c.pending, commit{lsn: lsn, time: t})
}

// lag drops the transactions whose commit LSN is below safe (safe is
// always a transaction's end LSN or an idle WAL end, so a commit record
// that starts below it is confirmed) and returns now minus the oldest
// remaining commit time, or zero when none remains.
func (c *commitLog) lag(safe pglogrepl.LSN, now time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.head < len(c.pending) && c.pending[c.head].lsn < safe {
		c.head++
	}
	if c.head == len(c.pending) {
		c.pending = c.pending[:0]
		c.head = 0
		return 0
	}
	return max(0, now.Sub(c.pending[c.head].time))
}
