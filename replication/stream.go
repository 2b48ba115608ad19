// Package replication speaks PostgreSQL's streaming replication protocol for
// one logical slot: it connects with replication=database, starts pgoutput,
// answers keepalives, and reports back the position the rest of the relay
// says is safe. It is the only code that touches the replication connection.
package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

// Config says where to stream from.
type Config struct {
	// ConnString is the PostgreSQL URL or DSN. replication=database is
	// added; the session settings that change text output are pinned.
	ConnString string
	// Slot is the logical replication slot (pgoutput) to stream from.
	Slot string
	// Publication is the publication the slot decodes.
	Publication string
	// StatusInterval is how often a standby status update is sent, also
	// while the pipeline is blocked. Default 10s. Connect shortens it to a
	// third of the server's wal_sender_timeout when it is longer, since the
	// server ends a walsender that hears nothing for that long.
	StatusInterval time.Duration
	// ReceiveTimeout is how long the server may stay silent, while the
	// stream is being read, before the connection is considered dead. Time
	// spent waiting for the pipeline (a slow broker) is not silence: the
	// server cannot be heard while it is not read. The relay asks the
	// server for a reply when it has heard nothing for a StatusInterval, so
	// a live server is never silent that long. Default 30s.
	ReceiveTimeout time.Duration
	// Coalesce is how long the reader lets messages gather in the socket
	// before it reads them, while the stream is busy (hand-offs less than
	// two Coalesce apart): it then wakes once per Coalesce, or per 4 KiB,
	// instead of once per message, which at thousands of small transactions
	// a second is most of the relay's CPU time. It adds at most Coalesce to
	// the latency, and nothing to an idle stream's. Default 1ms; negative
	// turns it off. Linux, TCP connections only.
	Coalesce time.Duration
	// Logger receives state changes. Default: discard.
	Logger *slog.Logger
}

// Validate reports a config the stream cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Slot == "":
		return errors.New("replication slot name is empty")
	case c.Publication == "":
		return errors.New("publication name is empty")
	case c.StatusInterval < 0 || c.ReceiveTimeout < 0:
		return errors.New("status interval and receive timeout must not be negative")
	case c.ReceiveTimeout != 0 && c.StatusInterval != 0 && c.ReceiveTimeout <= c.StatusInterval:
		return fmt.Errorf("receive timeout %s must be longer than the status interval %s", c.ReceiveTimeout, c.StatusInterval)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.StatusInterval == 0 {
		c.StatusInterval = 10 * time.Second
	}
	if c.ReceiveTimeout == 0 {
		c.ReceiveTimeout = 3 * c.StatusInterval
		if c.ReceiveTimeout < 30*time.Second {
			c.ReceiveTimeout = 30 * time.Second
		}
	}
	if c.Coalesce == 0 {
		c.Coalesce = time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// pinnedSettings make the text output of values independent of the role's
// or database's settings, so identical rows give identical bytes.
var pinnedSettings = map[string]string{
	"DateStyle":          "ISO, MDY",
	"TimeZone":           "UTC",
	"IntervalStyle":      "postgres",
	"bytea_output":       "hex",
	"extra_float_digits": "3",
	"client_encoding":    "UTF8",
}

// maxBatch bounds the messages handed to the pipeline at once.
const maxBatch = 256

// maxBatchBytes bounds the WAL data of one batch: with 16 batches waiting
// for a blocked pipeline, large rows must not make them hundreds of MB.
// A batch is handed off once it reaches this size, so one may exceed it by
// one message.
const maxBatchBytes = 1 << 20

// batchPool recycles the arrays behind the batches Run hands off. At low
// write rates a batch is one transaction (three messages), and a fresh
// 256-message array per hand-off was ~10 KB of garbage per transaction:
// most of the relay's GC and scavenger (madvise) time.
var batchPool = sync.Pool{New: func() any { return new([maxBatch]Message) }}

func newBatch() []Message { return batchPool.Get().(*[maxBatch]Message)[:0] }

// Release gives a batch received from Run back for reuse once the receiver
// is done with it: neither the batch nor its messages' Data may be used
// afterwards. Releasing is optional (an unreleased batch is garbage
// collected) and releasing anything but a batch from Run is a no-op.
func Release(batch []Message) {
	if cap(batch) != maxBatch {
		return
	}
	arr := (*[maxBatch]Message)(batch[:maxBatch])
	clear(arr[:len(batch)]) // drop the Data references
	batchPool.Put(arr)
}

// Message is one item of the WAL stream, in stream order.
type Message struct {
	// WALStart is the WAL position of an XLogData message.
	WALStart pglogrepl.LSN
	// ServerWALEnd is the server's WAL end as the message reports it.
	ServerWALEnd pglogrepl.LSN
	// Data is the pgoutput message, owned by the receiver. Nil for a
	// keepalive: then ServerWALEnd may be confirmed if nothing is in flight.
	Data []byte
	// ReceivedAt is when the reader received the message.
	ReceivedAt time.Time
}

// Stream is a replication connection streaming one slot.
type Stream struct {
	cfg    Config
	conn   *pgconn.PgConn
	system pglogrepl.IdentifySystemResult
	log    *slog.Logger
	// senderTimeout is the server's wal_sender_timeout (0: none).
	senderTimeout time.Duration

	// lastSent is written by the Run goroutine and read by metrics.
	lastSent atomic.Uint64
	// received and walEnd are written by the Run goroutine and read by
	// metrics: the end of the newest XLogData, and the newest WAL end the
	// server reported.
	received atomic.Uint64
	walEnd   atomic.Uint64
}

// Connect opens the replication connection and identifies the system.
func Connect(ctx context.Context, cfg Config) (*Stream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	pgcfg, err := pgconn.ParseConfig(cfg.ConnString)
	if err != nil {
		// ParseConfig's errors can quote the connection string: never
		// pass them on, they may hold the password.
		return nil, errors.New("parsing the PostgreSQL connection string: invalid URL or DSN")
	}
	pgcfg.RuntimeParams["replication"] = "database"
	if pgcfg.ConnectTimeout == 0 {
		// A blackholed network must not hang a reconnect forever.
		pgcfg.ConnectTimeout = 15 * time.Second
	}
	if pgcfg.RuntimeParams["application_name"] == "" {
		// DBAs see who holds the slot in pg_stat_replication.
		pgcfg.RuntimeParams["application_name"] = cfg.Slot
	}
	for k, v := range pinnedSettings {
		pgcfg.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, pgcfg)
	if err != nil {
		return nil, fmt.Errorf("opening replication connection: %w", err)
	}
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("identifying system: %w", err)
	}
	st := &Stream{cfg: cfg, conn: conn, system: sys, log: cfg.Logger}
	st.walEnd.Store(uint64(sys.XLogPos))
	if err := st.fitSenderTimeout(ctx); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return st, nil
}

// fitSenderTimeout reads the server's wal_sender_timeout and shortens the
// status interval to a third of it when it is longer: the walsender ends a
// connection it has heard nothing from for that long, and while the
// pipeline is blocked the status updates are all it hears. A third leaves
// room for one late or lost update.
func (s *Stream) fitSenderTimeout(ctx context.Context) error {
	res, err := s.conn.Exec(ctx, "SHOW wal_sender_timeout").ReadAll()
	if err != nil {
		return fmt.Errorf("reading wal_sender_timeout: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return errors.New("reading wal_sender_timeout: unexpected reply to SHOW")
	}
	raw := string(res[0].Rows[0][0])
	d, err := ParsePGDuration(raw)
	if err != nil {
		return fmt.Errorf("reading wal_sender_timeout %q: %w", raw, err)
	}
	s.senderTimeout = d
	if d <= 0 {
		return nil // the server never times the walsender out
	}
	limit := d / 3
	if s.cfg.StatusInterval > limit {
		s.log.Warn("status interval is longer than a third of the server's wal_sender_timeout; sending status updates more often so a stalled broker cannot end the replication connection",
			"slot", s.cfg.Slot, "status_interval", s.cfg.StatusInterval, "wal_sender_timeout", d, "using", limit)
		s.cfg.StatusInterval = max(limit, time.Millisecond)
	}
	return nil
}

// StatusInterval is the interval the stream sends status updates at: the
// configured one, or a third of the server's wal_sender_timeout if shorter.
func (s *Stream) StatusInterval() time.Duration { return s.cfg.StatusInterval }

// SenderTimeout is the server's wal_sender_timeout; 0 means none.
func (s *Stream) SenderTimeout() time.Duration { return s.senderTimeout }

// ParsePGDuration parses a time setting as SHOW prints it ("60s", "500ms",
// "2min", "1h", "0"); a bare number is milliseconds, the unit of
// wal_sender_timeout.
func ParsePGDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	units := []struct {
		suffix string
		unit   time.Duration
	}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"min", time.Minute}, {"s", time.Second}, {"h", time.Hour}, {"d", 24 * time.Hour}}
	unit := time.Millisecond
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			v, unit = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.unit
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("not a PostgreSQL time setting")
	}
	return time.Duration(n) * unit, nil
}

// ServerWALEnd is the newest WAL end the server reported (in XLogData or a
// keepalive), or its WAL position when the connection was made. Safe to
// call from any goroutine.
func (s *Stream) ServerWALEnd() pglogrepl.LSN { return pglogrepl.LSN(s.walEnd.Load()) }

// Received is the end of the newest WAL data received, or the start
// position before any arrived. Safe to call from any goroutine.
func (s *Stream) Received() pglogrepl.LSN { return pglogrepl.LSN(s.received.Load()) }

// raise stores lsn in v if it is further; only the Run goroutine writes.
func raise(v *atomic.Uint64, lsn pglogrepl.LSN) {
	if uint64(lsn) > v.Load() {
		v.Store(uint64(lsn))
	}
}

// System identifies the database a stream's positions belong to.
type System struct {
	// SystemID is the database cluster's system identifier.
	SystemID string
	// Timeline is the server's current timeline.
	Timeline int32
}

// System is what IDENTIFY_SYSTEM said when the stream connected.
func (s *Stream) System() System {
	return System{SystemID: s.system.SystemID, Timeline: s.system.Timeline}
}

// PID is the walsender's process id, as pg_stat_replication shows it.
func (s *Stream) PID() uint32 { return s.conn.PID() }

// Start begins streaming from the slot at start (its confirmed position).
// The server resumes with the first transaction that commits after it.
func (s *Stream) Start(ctx context.Context, start pglogrepl.LSN) error {
	// Protocol version 1 on every server (10 to 18 accept it): versions 2
	// and later exist to stream transactions in progress (the streaming
	// option) and two-phase commits, which would hand the relay changes
	// before their commit or abort. Left at 1 (streaming off), a
	// transaction larger than logical_decoding_work_mem spills on the
	// server and arrives whole after its commit, the only form the decoder
	// and the checkpoint need; `make test-pg-matrix` runs the huge
	// transaction test on each version.
	args := []string{
		"proto_version '1'",
		"publication_names '" + strings.ReplaceAll(s.cfg.Publication, "'", "''") + "'",
		"messages 'true'",
	}
	err := pglogrepl.StartReplication(ctx, s.conn, pgname.Quote(s.cfg.Slot), start,
		pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		return fmt.Errorf("starting replication on slot %s at %s: %w", s.cfg.Slot, start, err)
	}
	s.lastSent.Store(uint64(start))
	s.received.Store(uint64(start))
	return nil
}

// confirmSoon is how soon after WAL data was handed to the pipeline Run
// looks whether the safe position moved, and confirms it if it did: a
// crash then repeats about a second of events rather than a status
// interval's. It looks again every confirmSoon while anything received is
// unconfirmed, and not at all when everything is: an idle stream costs
// nothing more.
const confirmSoon = time.Second

// holdMax bounds how long Run holds a batch that is not worth a hand-off
// yet: a transaction whose commit has not arrived, or keepalives alone.
const holdMax = time.Millisecond

// Run reads the stream until ctx ends or the connection fails. Every
// XLogData and keepalive goes to out, in order, in batches (a batch of
// keepalives alone only when out has room). safe returns the position to
// confirm; it is sent on a timer, whenever the server asks, and once more
// when ctx ends, so a blocked pipeline never makes the walsender time out.
// Run returns nil when ctx ended and the final status update was sent.
func (s *Stream) Run(ctx context.Context, out chan<- []Message, safe func() pglogrepl.LSN) error {
	rd := s.newReading(ctx, out, safe)
	defer rd.ticker.Stop()

	// The read deadline is set on the connection, not through a context
	// per message (a context.AfterFunc and a channel per read); it is
	// changed only when the next status update, the hold or the coalescing
	// period moves it.
	defer rd.nc.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { rd.nc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	defer rd.co.off()

	for {
		err := rd.step()
		if errors.Is(err, errStopping) {
			return s.finish(safe())
		}
		if err != nil {
			return err
		}
	}
}

// errStopping tells Run that ctx ended with the connection intact: it
// sends the final status update and returns nil. It never leaves Run.
var errStopping = errors.New("replication: stopping")

// reading is the state of one Run, used only by its goroutine: the batch
// gathered for the pipeline, the times of the next status update and
// confirmation, and the read deadline.
//
// Messages go to the pipeline in batches: one hand-off (and one wake-up
// of the pipeline goroutine) per burst the server sent, not per message.
// A batch is handed off once the connection's read buffer is empty, so
// nothing already received waits for the network, and it ends a
// transaction. The walsender writes every message (begin, each change,
// commit, the keepalive it sends before it waits for WAL) with a send of
// its own, so at low rates they arrive one by one: handing off each
// would wake the pipeline four times per transaction. A transaction
// still open, or keepalives alone, are held for at most holdMax.
type reading struct {
	s        *Stream
	ctx      context.Context
	out      chan<- []Message
	safe     func() pglogrepl.LSN
	interval time.Duration // between status updates
	ticker   *time.Ticker  // status updates while a hand-off waits
	soon     time.Duration // confirmSoon, at most interval
	co       *coalescer
	nc       net.Conn
	// buffered is how many bytes the connection has read and not yet
	// parsed: zero means nothing received waits behind the batch.
	buffered func() int

	now        time.Time // when the last read returned
	lastHeard  time.Time
	nextStatus time.Time
	deadline   time.Time // the read deadline set on nc

	batch      []Message
	holdUntil  time.Time     // when the held batch is handed off anyway
	inTxn      bool          // the last XLogData was inside a transaction
	hasData    bool          // batch holds XLogData, not only keepalives
	batchBytes int           // WAL data in batch
	confirmAt  time.Time     // when to look at the safe position; zero: not armed
	lastEnd    pglogrepl.LSN // end LSN of the newest commit received
}

func (s *Stream) newReading(ctx context.Context, out chan<- []Message, safe func() pglogrepl.LSN) *reading {
	interval := s.cfg.StatusInterval
	now := time.Now()
	return &reading{
		s: s, ctx: ctx, out: out, safe: safe,
		interval:   interval,
		ticker:     time.NewTicker(interval),
		soon:       min(confirmSoon, interval),
		co:         newCoalescer(s.conn.Conn(), s.cfg.Coalesce),
		nc:         s.conn.Conn(),
		buffered:   s.conn.Frontend().ReadBufferLen,
		now:        now,
		lastHeard:  now,
		nextStatus: now.Add(interval),
		batch:      newBatch(),
	}
}

// step is one turn of Run: the status update and confirmation that are
// due, then either the hand-off of a batch held long enough or one message
// read and taken in. errStopping means ctx ended.
func (r *reading) step() error {
	if r.ctx.Err() != nil {
		return errStopping
	}
	if err := r.sendDueStatus(); err != nil {
		return err
	}
	if err := r.confirmIfMoved(); err != nil {
		return err
	}
	if err := r.checkSilence(); err != nil {
		return err
	}
	if len(r.batch) > 0 && !r.now.Before(r.holdUntil) {
		if err := r.flush(); err != nil {
			return err
		}
		r.now = time.Now() // handOff may have waited for the pipeline
		return nil
	}
	if err := r.setReadDeadline(); err != nil {
		return err
	}
	raw, err := r.receive()
	if err != nil || raw == nil {
		return err
	}
	return r.take(raw)
}

// sendDueStatus sends the status update the interval makes due. It asks
// for a reply when the server has been quiet, so silence means a dead
// connection rather than an idle database.
func (r *reading) sendDueStatus() error {
	if r.now.Before(r.nextStatus) {
		return nil
	}
	quiet := r.now.Sub(r.lastHeard) >= r.interval
	if err := r.s.sendStatus(r.safe(), quiet); err != nil {
		return err
	}
	r.nextStatus = r.now.Add(r.interval)
	return nil
}

// confirmIfMoved, once confirmAt has come, confirms the safe position if
// it moved past what was sent, and looks again soon while a commit
// received is not safe yet.
func (r *reading) confirmIfMoved() error {
	if r.confirmAt.IsZero() || r.now.Before(r.confirmAt) {
		return nil
	}
	lsn := r.safe()
	if lsn > pglogrepl.LSN(r.s.lastSent.Load()) {
		if err := r.s.sendStatus(lsn, false); err != nil {
			return err
		}
	}
	r.confirmAt = time.Time{}
	if lsn < r.lastEnd {
		r.confirmAt = r.now.Add(r.soon) // more to confirm: look again
	}
	return nil
}

// checkSilence ends a connection the server has not been heard on for
// longer than the receive timeout.
func (r *reading) checkSilence() error {
	if silent := r.now.Sub(r.lastHeard); silent > r.s.cfg.ReceiveTimeout {
		return fmt.Errorf("no message from the server for %s (receive timeout %s): connection presumed dead", silent.Round(time.Second), r.s.cfg.ReceiveTimeout)
	}
	return nil
}

// setReadDeadline moves the read deadline to nextDeadline, if it changed.
func (r *reading) setReadDeadline() error {
	r.co.tick(r.now)
	next := r.nextDeadline()
	if next.Equal(r.deadline) {
		return nil
	}
	r.deadline = next
	r.nc.SetReadDeadline(next)
	if r.ctx.Err() != nil {
		// ctx ended before the deadline was set: the AfterFunc's
		// interruption may have been overwritten.
		return errStopping
	}
	return nil
}

// nextDeadline is when a read must return without a message: at the next
// status update, the end of the coalescing period, the next look at the
// safe position or the end of the hold, whichever comes first.
func (r *reading) nextDeadline() time.Time {
	next := r.co.deadline(r.nextStatus)
	if !r.confirmAt.IsZero() && r.confirmAt.Before(next) {
		next = r.confirmAt
	}
	if len(r.batch) > 0 && r.holdUntil.Before(next) {
		next = r.holdUntil
	}
	return next
}

// receive reads one message. It returns nil and no error when the read
// deadline passed first: what it was set for is done by the next step.
func (r *reading) receive() (pgproto3.BackendMessage, error) {
	raw, err := r.s.conn.ReceiveMessage(context.Background())
	r.now = time.Now()
	if err != nil {
		if r.ctx.Err() != nil && !r.s.conn.IsClosed() {
			// Told to stop: the read was interrupted, the connection is
			// intact, so confirm what is safe before closing.
			return nil, errStopping
		}
		if pgconn.Timeout(err) && !r.s.conn.IsClosed() {
			return nil, nil // status timer, hold, coalescing or ctx: all handled by the next step
		}
		return nil, fmt.Errorf("receiving from slot %s: %w", r.s.cfg.Slot, err)
	}
	r.lastHeard = r.now
	r.co.heard = true
	return raw, nil
}

// take handles one message from the server.
func (r *reading) take(raw pgproto3.BackendMessage) error {
	switch msg := raw.(type) {
	case *pgproto3.CopyData:
		if len(msg.Data) == 0 {
			return nil
		}
		switch msg.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			return r.onKeepalive(msg.Data[1:])
		case pglogrepl.XLogDataByteID:
			return r.onXLogData(msg.Data[1:])
		}
	case *pgproto3.ErrorResponse:
		return fmt.Errorf("slot %s: %w", r.s.cfg.Slot, pgconn.ErrorResponseToPgError(msg))
	case *pgproto3.CopyDone:
		return fmt.Errorf("server ended replication on slot %s", r.s.cfg.Slot)
	default:
		// NoticeResponse, ParameterStatus: nothing to do.
	}
	return nil
}

// onKeepalive takes in a primary keepalive message (without its type
// byte): it joins the batch, and is answered at once if the server asks.
func (r *reading) onKeepalive(data []byte) error {
	ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data)
	if err != nil {
		return fmt.Errorf("parsing keepalive on slot %s: %w", r.s.cfg.Slot, err)
	}
	raise(&r.s.walEnd, ka.ServerWALEnd)
	r.addKeepalive(Message{ServerWALEnd: ka.ServerWALEnd, ReceivedAt: r.now})
	if len(r.batch) >= maxBatch || r.hasData && !r.inTxn && r.buffered() == 0 {
		if err := r.flush(); err != nil {
			return err
		}
	}
	if ka.ReplyRequested {
		if err := r.s.sendStatus(r.safe(), false); err != nil {
			return err
		}
		r.nextStatus = time.Now().Add(r.interval)
	}
	return nil
}

// addKeepalive puts a keepalive in the batch, after what came before it:
// if nothing is in flight the pipeline may move the safe position to its
// WAL end. A newer keepalive replaces an older one.
func (r *reading) addKeepalive(ka Message) {
	switch {
	case len(r.batch) == 0:
		r.batch = append(r.batch, ka)
		r.holdUntil = r.now.Add(holdMax)
	case r.batch[len(r.batch)-1].Data == nil:
		r.batch[len(r.batch)-1] = ka
	default:
		r.batch = append(r.batch, ka)
	}
}

// onXLogData takes in WAL data (without its type byte): it joins the
// batch, which is handed off when full, or when a transaction ended and
// nothing more has arrived.
func (r *reading) onXLogData(data []byte) error {
	xld, err := pglogrepl.ParseXLogData(data)
	if err != nil {
		return fmt.Errorf("parsing XLogData on slot %s: %w", r.s.cfg.Slot, err)
	}
	raise(&r.s.received, xld.WALStart+pglogrepl.LSN(len(xld.WALData)))
	raise(&r.s.walEnd, xld.ServerWALEnd)
	r.noteTxn(xld.WALData)
	// The receive buffer is reused by the next read: copy.
	full := r.addData(Message{
		WALStart:     xld.WALStart,
		ServerWALEnd: xld.ServerWALEnd,
		Data:         append([]byte(nil), xld.WALData...),
		ReceivedAt:   r.now,
	})
	if full || !r.inTxn && r.buffered() == 0 {
		if err := r.flush(); err != nil {
			return err
		}
	}
	if r.ctx.Err() != nil {
		return errStopping
	}
	return nil
}

// noteTxn follows pgoutput's Begin and Commit: only the batching needs to
// know where a transaction ends, and confirmIfMoved where the newest
// commit ends.
func (r *reading) noteTxn(wal []byte) {
	if len(wal) == 0 {
		return
	}
	switch wal[0] {
	case 'B':
		r.inTxn = true
	case 'C':
		r.inTxn = false
		// Commit: flags, commit LSN, end LSN, timestamp.
		if len(wal) >= 18 {
			r.lastEnd = pglogrepl.LSN(binary.BigEndian.Uint64(wal[10:18]))
		}
	}
}

// addData appends WAL data to the batch, to be held for at most holdMax if
// it starts the batch, and reports whether the batch is full.
func (r *reading) addData(m Message) (full bool) {
	if len(r.batch) == 0 {
		r.holdUntil = r.now.Add(holdMax)
	}
	r.batch, r.hasData = append(r.batch, m), true
	r.batchBytes += len(m.Data)
	return len(r.batch) >= maxBatch || r.batchBytes >= maxBatchBytes
}

// flush hands the batch to the pipeline and starts a new one. A batch with
// WAL data waits for room (handOff) and arms the look at the safe
// position.
func (r *reading) flush() error {
	if len(r.batch) == 0 {
		return nil
	}
	if r.hasData {
		waited, err := r.s.handOff(r.ctx, r.out, r.batch, r.ticker.C, r.safe)
		if err != nil {
			return err
		}
		if waited {
			// The server was not read while the pipeline was blocked:
			// that silence was ours, and says nothing about the
			// connection. Measure it again from now.
			r.lastHeard = time.Now()
		}
		r.co.handedOff(r.now)
		if r.confirmAt.IsZero() {
			r.confirmAt = r.now.Add(r.soon)
		}
	} else {
		// Keepalives are only offered: a busy pipeline does not need
		// them, and the next one supersedes them.
		select {
		case r.out <- r.batch:
		default:
			r.batch = r.batch[:0]
			return nil
		}
	}
	r.batch, r.hasData, r.batchBytes = newBatch(), false, 0
	return nil
}

// coalesceBytes is the socket's receive low-water mark while coalescing:
// a read wakes up once this much has arrived, or when the period ends.
const coalesceBytes = 4096

// coalescer lets the replication socket collect messages while the stream
// is busy, with the socket's receive low-water mark (SO_RCVLOWAT): the
// kernel then wakes the reader only once coalesceBytes have arrived, and
// the read deadline ends each period of at most max. Nothing waits longer
// than max, and an idle stream is read as before, on the first byte:
// coalescing starts when two hand-offs come less than 2*max apart and
// stops after a period in which nothing arrived. Fewer wake-ups of the
// reader are also fewer for the walsender, whose every send would
// otherwise make the waiting reader runnable.
type coalescer struct {
	sock     lowWater // nil: not available, coalescing is off
	max      time.Duration
	on       bool
	until    time.Time // end of the current period
	heard    bool      // something arrived in the current period
	lastHand time.Time // the previous hand-off
}

func newCoalescer(c net.Conn, max time.Duration) *coalescer {
	co := &coalescer{max: max}
	if max > 0 {
		co.sock = newLowWater(c)
	}
	return co
}

// handedOff notes a hand-off of data at now; two close together start
// coalescing.
func (c *coalescer) handedOff(now time.Time) {
	if c.sock != nil && !c.on && now.Sub(c.lastHand) < 2*c.max {
		if err := c.sock.set(coalesceBytes); err != nil {
			c.sock = nil // not supported here: never try again
		} else {
			c.on, c.until, c.heard = true, now.Add(c.max), false
		}
	}
	c.lastHand = now
}

// tick ends a period that is over: another one follows if something
// arrived in it, else coalescing stops and the next byte wakes the reader.
func (c *coalescer) tick(now time.Time) {
	if !c.on || now.Before(c.until) {
		return
	}
	if c.heard {
		c.until, c.heard = now.Add(c.max), false
		return
	}
	c.off()
}

// off stops coalescing. Lowering the low-water mark wakes the reader if
// data is waiting.
func (c *coalescer) off() {
	if !c.on {
		return
	}
	c.on = false
	if err := c.sock.set(1); err != nil {
		c.sock = nil
	}
}

// deadline returns the read deadline: next, or the end of the period.
func (c *coalescer) deadline(next time.Time) time.Time {
	if c.on && c.until.Before(next) {
		return c.until
	}
	return next
}

// handOff sends a batch to the pipeline. While the pipeline is blocked (a slow or
// absent broker) it keeps sending status updates so the server does not
// drop the connection; it stops reading WAL, which is the backpressure.
//
// It reports whether it had to wait. Status updates go out on the ticker,
// not in answer to the server's keepalive requests: those are not read
// while the reader waits here.
func (s *Stream) handOff(ctx context.Context, out chan<- []Message, batch []Message, tick <-chan time.Time, safe func() pglogrepl.LSN) (waited bool, err error) {
	select {
	case out <- batch:
		return false, nil
	default:
	}
	for {
		select {
		case out <- batch:
			return true, nil
		case <-ctx.Done():
			return true, nil
		case <-tick:
			if err := s.sendStatus(safe(), false); err != nil {
				return true, err
			}
		}
	}
}

func (s *Stream) sendStatus(lsn pglogrepl.LSN, replyRequested bool) error {
	if lsn == 0 {
		// A zero position would confirm nothing and pglogrepl would fill
		// it in: never send one.
		lsn = pglogrepl.LSN(s.lastSent.Load())
	}
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn,
		WALFlushPosition: lsn,
		WALApplyPosition: lsn,
		ReplyRequested:   replyRequested,
	})
	if err != nil {
		return fmt.Errorf("sending standby status at LSN %s on slot %s: %w", lsn, s.cfg.Slot, err)
	}
	s.lastSent.Store(uint64(lsn))
	return nil
}

func (s *Stream) finish(lsn pglogrepl.LSN) error {
	if err := s.sendStatus(lsn, false); err != nil {
		return fmt.Errorf("sending the final status update: %w", err)
	}
	s.log.Info("final status update sent", "slot", s.cfg.Slot, "lsn", lsn)
	return nil
}

// Confirmed is the last position sent to the server.
func (s *Stream) Confirmed() pglogrepl.LSN { return pglogrepl.LSN(s.lastSent.Load()) }

// Close closes the connection. The server keeps the slot and its
// confirmed position.
func (s *Stream) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.conn.Close(ctx)
}
