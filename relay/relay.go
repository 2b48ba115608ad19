// Package relay runs the pipeline: WAL stream -> decoder -> publisher, with
// the checkpoint deciding what is confirmed to PostgreSQL. It owns the
// session lifecycle: set-up checks, reconnects with backoff, and the
// two-phase shutdown (stop reading, drain the publisher, send the final
// status update, close).
package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/replication"
	"github.com/outbox-relay/outbox-relay/slot"
)

// Publisher sends events to a broker. Publish blocks at the publisher's
// in-flight cap (and returns the cause once ctx ends); ack is called
// exactly once per published event, with nil once the broker acknowledged
// it or with the error that survived the publisher's retries. ack must not
// block. Close drains: it returns once every published event's ack was
// called.
//
// ev and the slices it points to (the payload in particular) stay valid
// and unmodified until ack is called, so a publisher may keep references
// instead of copies; after ack(nil) the pipeline reuses them for a later
// event.
//
// An error from Publish or ack that has a RecordRejected() bool method
// returning true is about that record alone (too large, an illegal topic):
// the relay dead-letters the event or stops at it. A Publish that returns
// such an error sent nothing, and the relay may go on publishing. Any
// other error ends the session, which resumes from the slot.
//
// A publisher may also have an Abort() method: a hard stop for one that
// cannot drain within the shutdown timeout, after which it sends nothing
// more and every outstanding ack has been called.
type Publisher interface {
	Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error
	Close() error
}

// NewPublisher connects a publisher. The relay calls it once per session,
// so a publisher that failed is never reused.
type NewPublisher func(ctx context.Context) (Publisher, error)

// Config is everything one relay needs.
type Config struct {
	// ConnString is the PostgreSQL URL or DSN.
	ConnString string
	// Slot names the slot, publication and table.
	Slot slot.Config
	// CreateSlot creates a missing publication and slot at start-up.
	CreateSlot bool
	// Decoder maps rows to events.
	Decoder decoder.Config
	// StatusInterval and ReceiveTimeout tune the replication connection.
	StatusInterval time.Duration
	ReceiveTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the backoff between sessions.
	// Defaults 500ms and 30s.
	ReconnectMin, ReconnectMax time.Duration
	// ShutdownTimeout bounds the drain on SIGTERM: finishing the open
	// transaction and waiting for broker acks. Default 30s.
	ShutdownTimeout time.Duration
	// Logger receives state changes. Default: discard.
	Logger *slog.Logger
	// Observer, if set, is told about progress for metrics and health.
	Observer Observer
	// ProgressInterval is how often a progress line (events/s, lag) is
	// logged at info level while streaming. Default 30s.
	ProgressInterval time.Duration
	// HeartbeatInterval is how often an idle relay writes a heartbeat
	// message so the slot advances even when only other tables or
	// databases are written. 0 disables heartbeats.
	HeartbeatInterval time.Duration
	// OnError says what happens to an event the broker rejects for good
	// (too large, invalid): OnErrorStop ends the session without confirming
	// past it; OnErrorDeadLetter sends it to DeadLetterTopic and goes on.
	// Errors that are not about one record (broker down) always stop.
	OnError string
	// DeadLetterTopic receives rejected events with OnErrorDeadLetter.
	DeadLetterTopic string
	// StandbyRetry is how often a standby relay tries to take the slot
	// over. Default 2s.
	StandbyRetry time.Duration
	// MaxInFlightBytes bounds the bytes of the events published and not
	// yet acknowledged, together with the publisher's cap on their number.
	// An event larger than the budget is published alone. Default
	// DefaultMaxInFlightBytes.
	MaxInFlightBytes int64
	// DeadLetterMaxBytes is the largest dead letter the relay builds: one
	// that would be larger is cut down (see HeaderTruncated). It should be
	// the broker's record limit. Default DefaultDeadLetterMaxBytes.
	DeadLetterMaxBytes int
	// ExactlyOnce publishes in broker transactions, each ending with a
	// checkpoint of how far the stream is published (exactlyonce.go); the
	// publisher must be a TransactionalPublisher. TxnMaxEvents,
	// TxnMaxBytes and TxnLinger bound a broker transaction: defaults
	// DefaultTxnMaxEvents, DefaultTxnMaxBytes (at most half of
	// MaxInFlightBytes) and DefaultTxnLinger.
	ExactlyOnce  bool
	TxnMaxEvents int
	TxnMaxBytes  int64
	TxnLinger    time.Duration
	// PruneAfter, if positive, makes the relay delete outbox rows older
	// than this (by the created_at column) once it has confirmed the
	// transactions that inserted them. 0 leaves the table alone.
	PruneAfter time.Duration
}

// What to do with an event the broker rejects for good.
const (
	OnErrorStop       = "stop"
	OnErrorDeadLetter = "dead-letter"
)

// Validate reports a config the relay cannot run with.
func (c Config) Validate() error {
	if err := c.Slot.Validate(); err != nil {
		return err
	}
	if err := c.Decoder.Validate(); err != nil {
		return err
	}
	if c.ReconnectMin < 0 || c.ReconnectMax < 0 || c.ShutdownTimeout < 0 || c.ProgressInterval < 0 {
		return errors.New("reconnect backoff, shutdown timeout and progress interval must not be negative")
	}
	if c.HeartbeatInterval < 0 || c.StandbyRetry < 0 {
		return errors.New("heartbeat interval and standby retry must not be negative")
	}
	if c.MaxInFlightBytes < 0 || c.DeadLetterMaxBytes < 0 {
		return errors.New("max in-flight bytes and dead-letter max bytes must not be negative")
	}
	if c.TxnMaxEvents < 0 || c.TxnMaxBytes < 0 || c.TxnLinger < 0 {
		return errors.New("transaction max events, max bytes and linger must not be negative")
	}
	if c.MaxInFlightBytes > 0 && c.TxnMaxBytes > c.MaxInFlightBytes/2 {
		return fmt.Errorf("transaction max bytes %d is above half the in-flight byte budget (%d): a transaction's events stay in flight until it commits", c.TxnMaxBytes, c.MaxInFlightBytes)
	}
	if c.PruneAfter < 0 {
		return fmt.Errorf("prune-after %s is negative (0 turns pruning off)", c.PruneAfter)
	}
	switch c.OnError {
	case "", OnErrorStop:
	case OnErrorDeadLetter:
		if c.DeadLetterTopic == "" {
			return errors.New("--on-error dead-letter needs a dead-letter topic")
		}
	default:
		return fmt.Errorf("on-error %q: want %s or %s", c.OnError, OnErrorDeadLetter, OnErrorStop)
	}
	if c.ReconnectMin > 0 && c.ReconnectMax > 0 && c.ReconnectMin > c.ReconnectMax {
		return fmt.Errorf("minimum reconnect backoff %s is above the maximum %s", c.ReconnectMin, c.ReconnectMax)
	}
	return c.replicationConfig().Validate()
}

func (c Config) replicationConfig() replication.Config {
	return replication.Config{
		ConnString:     c.ConnString,
		Slot:           c.Slot.Slot,
		Publication:    c.Slot.Publication,
		StatusInterval: c.StatusInterval,
		ReceiveTimeout: c.ReceiveTimeout,
		Logger:         c.Logger,
	}
}

// Relay streams one slot to one publisher.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	obs     Observer
	publish NewPublisher

	// progressed is set once this process has seen the slot, so a slot
	// that disappears later is an error, never silently recreated.
	progressed bool
	// standby is set while another process holds the slot, so the retries
	// log quietly.
	standby bool
	// primary remembers the server and position of the last session, to
	// check the slot after a failover (failover.go).
	primary primaryWatch
	// prevPublisher, if set, closes when the previous session's publisher
	// has finished closing; the next session publishes only after that.
	prevPublisher <-chan struct{}
	// deadLettered outlives sessions: see its type.
	deadLettered deadLettered
	// poisoned outlives sessions: see its type.
	poisoned knownPoison
}

// New checks cfg and returns a relay ready to Run.
func New(cfg Config, publish NewPublisher) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ReconnectMin == 0 {
		cfg.ReconnectMin = 500 * time.Millisecond
	}
	if cfg.ReconnectMax == 0 {
		cfg.ReconnectMax = 30 * time.Second
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	if cfg.ProgressInterval == 0 {
		cfg.ProgressInterval = 30 * time.Second
	}
	if cfg.StandbyRetry == 0 {
		cfg.StandbyRetry = 2 * time.Second
	}
	if cfg.MaxInFlightBytes == 0 {
		cfg.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if cfg.DeadLetterMaxBytes == 0 {
		cfg.DeadLetterMaxBytes = DefaultDeadLetterMaxBytes
	}
	if cfg.TxnMaxEvents == 0 {
		cfg.TxnMaxEvents = DefaultTxnMaxEvents
	}
	if cfg.TxnMaxBytes == 0 {
		cfg.TxnMaxBytes = min(DefaultTxnMaxBytes, cfg.MaxInFlightBytes/2)
	}
	if cfg.TxnLinger == 0 {
		cfg.TxnLinger = DefaultTxnLinger
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	obs := cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	return &Relay{cfg: cfg, log: cfg.Logger, obs: obs, publish: publish}, nil
}

// fatalError ends Run: retrying cannot help.
type fatalError struct{ err error }

func (e fatalError) Error() string { return e.err.Error() }
func (e fatalError) Unwrap() error { return e.err }

func fatal(err error) error { return fatalError{err} }

// causeError says which part ended a session: one of the Cause constants,
// or causeStandby.
type causeError struct {
	cause string
	err   error
}

func (e causeError) Error() string { return e.err.Error() }
func (e causeError) Unwrap() error { return e.err }

// causeStandby marks a session that found the slot held by another process.
const causeStandby = "standby"

func withCause(cause string, err error) error {
	if err == nil {
		return nil
	}
	return causeError{cause: cause, err: err}
}

// causeOf returns the cause err was marked with, CausePostgres by default.
func causeOf(err error) string {
	var ce causeError
	if errors.As(err, &ce) {
		return ce.cause
	}
	return CausePostgres
}

// Run streams until ctx ends (then it drains, confirms and returns nil) or
// a fatal error: a configuration problem, a lost slot, a row that cannot
// be decoded. Anything else (connection loss, broker errors) ends the
// session, and a new one resumes from the slot after a backoff.
func (r *Relay) Run(ctx context.Context) error {
	defer r.obs.StateChanged(StateStopped, "", nil)
	r.obs.StateChanged(StateConnecting, "", nil)
	backoff := r.cfg.ReconnectMin
	for {
		started := time.Now()
		err := r.session(ctx)
		if ctx.Err() != nil {
			var fe fatalError
			if err != nil && errors.As(err, &fe) {
				return err
			}
			return nil
		}
		if err == nil {
			err = errors.New("session ended without an error")
		}
		var fe fatalError
		if errors.As(err, &fe) {
			return fe.err
		}
		if time.Since(started) > 2*r.cfg.ReconnectMax {
			backoff = r.cfg.ReconnectMin // it ran fine for a while
		}
		// Full jitter keeps a fleet of relays from reconnecting in step.
		wait := backoff/2 + rand.N(backoff/2+1)
		cause := causeOf(err)
		if cause == causeStandby {
			// A standby must take over within seconds when the holder dies.
			wait = r.cfg.StandbyRetry/2 + rand.N(r.cfg.StandbyRetry/2+1)
		}
		switch {
		case cause == causeStandby && r.standby:
			r.log.Debug("standby: slot still in use by another process", "slot", r.cfg.Slot.Slot, "retry_in", wait.Round(time.Millisecond))
		case cause == causeStandby:
			r.standby = true
			r.obs.StateChanged(StateStandby, "", err)
			r.log.Info("standby: slot is in use by another process; waiting for it to be released", "slot", r.cfg.Slot.Slot, "retry_in", wait.Round(time.Millisecond))
		default:
			r.standby = false
			r.obs.StateChanged(StateReconnecting, cause, err)
			r.log.Warn("session ended; reconnecting", "slot", r.cfg.Slot.Slot, "cause", cause, "err", err, "backoff", wait.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if cause != causeStandby {
			backoff = min(2*backoff, r.cfg.ReconnectMax)
		}
	}
}

// prepare checks the server, creates what is missing if asked, and returns
// the slot's confirmed position (where this session resumes) and the
// events `outbox-relay slot skip` recorded.
func (r *Relay) prepare(ctx context.Context) (pglogrepl.LSN, *skipList, error) {
	start, err := r.checkServer(ctx)
	if err != nil {
		return 0, nil, err
	}
	conn, err := connectAdmin(ctx, r.cfg.ConnString)
	if err != nil {
		return 0, nil, classifyConnect(err)
	}
	defer conn.Close(context.Background())
	recorded, err := slot.Skips(ctx, conn, r.cfg.Slot)
	if err != nil {
		return 0, nil, err
	}
	if len(recorded) == 0 {
		return start, nil, nil
	}
	skips := &skipList{ids: map[string]bool{}, lsns: map[pglogrepl.LSN]bool{}}
	for _, s := range recorded {
		if s.EventID != "" {
			skips.ids[s.EventID] = true
		} else {
			skips.lsns[s.LSN] = true
		}
	}
	return start, skips, nil
}

// checkServer is prepare's checks and slot creation.
func (r *Relay) checkServer(ctx context.Context) (pglogrepl.LSN, error) {
	conn, err := connectAdmin(ctx, r.cfg.ConnString)
	if err != nil {
		return 0, classifyConnect(err)
	}
	defer conn.Close(context.Background())

	if err := r.checkTable(ctx, conn); err != nil {
		return 0, err
	}
	info, ok, err := slot.Get(ctx, conn, r.cfg.Slot.Slot)
	if err != nil {
		return 0, err
	}
	// A slot gone, or one on a promoted standby, after progress (failover.go).
	if err := r.checkFollowed(ctx, conn, info, ok); err != nil {
		return 0, err
	}
	if info, err = r.ensureSlot(ctx, conn, info, ok); err != nil {
		return 0, err
	}
	if info.WALStatus == "lost" {
		return 0, fatal(slot.LostError(r.cfg.Slot.Slot, info.InvalidationReason))
	}
	if info.ConfirmedFlush == 0 {
		return 0, fmt.Errorf("replication slot %s has no confirmed position yet", r.cfg.Slot.Slot)
	}
	return info.ConfirmedFlush, nil
}

// checkTable checks the server's settings and the outbox table for what
// the flags need; what the operator must fix is fatal.
func (r *Relay) checkTable(ctx context.Context, conn *pgx.Conn) error {
	if err := slot.Preflight(ctx, conn, r.cfg.Slot); err != nil {
		return fatal(err)
	}
	// A column the flags need and the table lacks would stop the stream at
	// the first row; say so now, with the flag that fixes it.
	if err := slot.CheckColumns(ctx, conn, r.cfg.Slot, r.cfg.Decoder.NeededColumns()); err != nil {
		var problem *slot.Problem
		if errors.As(err, &problem) {
			return fatal(err)
		}
		return err
	}
	if r.cfg.PruneAfter > 0 {
		if err := checkPrune(ctx, conn, r.cfg); err != nil {
			var problem *slot.Problem
			if errors.As(err, &problem) {
				return fatal(err)
			}
			return err
		}
	}
	return nil
}

// ensureSlot creates the publication and slot with CreateSlot, and
// returns the slot as it is then; info and ok are the slot as found. A
// missing slot without CreateSlot is fatal.
func (r *Relay) ensureSlot(ctx context.Context, conn *pgx.Conn, info slot.Info, ok bool) (slot.Info, error) {
	if !ok {
		if err := r.checkNewSlot(ctx, conn); err != nil {
			return info, err
		}
		if !r.cfg.CreateSlot {
			return info, fatal(&slot.Problem{
				What: fmt.Sprintf("replication slot %s does not exist", r.cfg.Slot.Slot),
				Fix:  "create it with `outbox-relay slot create` or run with --create-slot",
			})
		}
	}
	if !r.cfg.CreateSlot {
		return info, nil
	}
	created, err := slot.Ensure(ctx, conn, r.cfg.Slot)
	if err != nil {
		return info, fatal(err)
	}
	if created {
		r.log.Info("created publication and slot", "slot", r.cfg.Slot.Slot, "publication", r.cfg.Slot.Publication, "table", r.cfg.Slot.Table)
	}
	info, ok, err = slot.Get(ctx, conn, r.cfg.Slot.Slot)
	if err != nil {
		return info, err
	}
	if !ok {
		return info, fmt.Errorf("replication slot %s missing right after creating it", r.cfg.Slot.Slot)
	}
	return info, nil
}

func connectAdmin(ctx context.Context, connString string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, errors.New("parsing the PostgreSQL connection string: invalid URL or DSN")
	}
	if cfg.ConnectTimeout == 0 {
		// A blackholed network must not hang a reconnect forever.
		cfg.ConnectTimeout = setupTimeout
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// rootCause is the innermost error of a chain, without the wrappers that
// may repeat connection details.
func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// setupTimeout bounds each set-up step of a session (connecting, checks,
// starting replication), so a silent network cannot hang a reconnect.
const setupTimeout = 15 * time.Second

// classifyConnect makes authentication and privilege failures fatal
// configuration problems: retrying a wrong password only fills the
// server's log.
func classifyConnect(err error) error {
	var (
		unknownCA x509.UnknownAuthorityError
		badHost   x509.HostnameError
		badCert   x509.CertificateInvalidError
		tlsVerify *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &badHost) || errors.As(err, &badCert) || errors.As(err, &tlsVerify) {
		// A certificate that does not verify will not verify next time.
		return fatal(&slot.Problem{
			What: fmt.Sprintf("PostgreSQL's TLS certificate did not verify: %v", rootCause(err)),
			Fix:  "check sslrootcert (the CA that signed the server certificate), sslmode and that the host name in --pg-url is in the certificate",
		})
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			return fatal(&slot.Problem{
				What: fmt.Sprintf("PostgreSQL rejected the login (SQLSTATE %s: %s)", pgErr.Code, pgErr.Message),
				Fix:  "check the user and password in --pg-url (or PGUSER/PGPASSWORD) and pg_hba.conf",
			})
		case "42501": // insufficient_privilege
			return fatal(&slot.Problem{
				What: fmt.Sprintf("PostgreSQL refused the connection: %s", pgErr.Message),
				Fix:  "the relay's role needs LOGIN and REPLICATION: ALTER ROLE <role> LOGIN REPLICATION",
			})
		case "3D000": // invalid_catalog_name
			return fatal(&slot.Problem{
				What: fmt.Sprintf("PostgreSQL: %s", pgErr.Message),
				Fix:  "check the database name in --pg-url",
			})
		}
	}
	return ConnectError(err)
}
