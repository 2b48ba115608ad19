package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/replication"
)

// ErrIncompleteStop is wrapped by Run's error when a stop ran out of time
// (Config.ShutdownTimeout) with events published but not confirmed to
// PostgreSQL: they are sent again when the relay starts next.
var ErrIncompleteStop = errors.New("stopped with events not confirmed")

// session runs one replication session, one step after the other: check
// the server and find where to resume (prepare), take the slot, start the
// reader and the publisher, build the pipeline between them, stream; then
// drain the publisher, stop the reader (which confirms what is safe) and
// close. Taking the slot comes before the publisher, so a standby that
// finds the slot held never builds a producer.
func (r *Relay) session(ctx context.Context) error {
	setupCtx, cancelSetup := context.WithTimeout(ctx, 3*setupTimeout)
	defer cancelSetup()
	start, skips, err := r.prepare(setupCtx)
	if err != nil {
		return withCause(CausePostgres, err)
	}
	stream, err := r.takeSlot(setupCtx, start)
	if err != nil {
		return err
	}
	defer stream.Close()

	// The reader starts at once: while the publisher connects it keeps
	// sending status updates, and its hand-offs wait (backpressure).
	tracker := checkpoint.New(start)
	rd := startReader(stream, tracker.Safe)
	pub, err := r.startPublisher(ctx)
	if err != nil {
		if rerr := rd.stop(r.cfg.ShutdownTimeout); rerr != nil {
			r.log.Warn("replication stream", "slot", r.cfg.Slot.Slot, "err", rerr)
		}
		return err
	}

	clock := newStopClock(ctx, r.cfg.ShutdownTimeout)
	defer clock.close()
	p, err := r.newPipeline(stream, pub, tracker, skips)
	if err == nil && r.cfg.ExactlyOnce {
		err = r.startTransactions(ctx, p, stream, start)
	}
	if err != nil {
		r.drain(pub, time.Now())
		rd.stop(r.cfg.ShutdownTimeout)
		return err
	}
	runErr := r.stream(ctx, p, rd, clock)
	if p.eos != nil {
		runErr = r.endTransactions(p, clock, runErr)
	}
	runErr = r.stopStreaming(ctx, pub, rd, p, clock, runErr)
	return r.sessionStopped(ctx, p, stream.Confirmed(), runErr)
}

// stopStreaming is a stop's phase two, once the pipeline returned: drain
// the publisher (abort it if it cannot drain in time), then stop the
// reader, which sends the final status update. The reader's error becomes
// the session's when nothing else ended it, and is logged otherwise.
func (r *Relay) stopStreaming(ctx context.Context, pub Publisher, rd *reader, p *pipeline, clock *stopClock, runErr error) error {
	deadline := clock.drainDeadline()
	if ctx.Err() == nil {
		deadline = time.Now().Add(r.cfg.ShutdownTimeout)
	}
	r.drain(pub, deadline)
	readerErr := rd.stop(max(time.Until(clock.deadline()), finalStatusWait))
	if readerErr != nil && !p.readerFailed {
		if runErr == nil {
			return withCause(CauseReplication, readerErr)
		}
		r.log.Warn("replication stream", "slot", r.cfg.Slot.Slot, "err", readerErr)
	}
	return runErr
}

// sessionStopped records and logs the position the session confirmed. A
// stop (ctx ended) that leaves published events unconfirmed ends Run with
// ErrIncompleteStop, saying how many will be sent again.
func (r *Relay) sessionStopped(ctx context.Context, p *pipeline, confirmed pglogrepl.LSN, runErr error) error {
	r.primary.sessionEnded(confirmed)
	r.log.Info("session stopped", "slot", r.cfg.Slot.Slot, "confirmed", confirmed)
	if ctx.Err() != nil {
		if n := p.unconfirmed.after(confirmed); n > 0 {
			r.log.Warn("stopping with events published but not confirmed to PostgreSQL; they will be sent again at the next start",
				"slot", r.cfg.Slot.Slot, "events", n, "confirmed", confirmed, "shutdown_timeout", r.cfg.ShutdownTimeout, "err", runErr)
			return fatal(fmt.Errorf("%w: %d events after %s will be sent again at the next start (the broker did not acknowledge them within --shutdown-timeout %s)",
				ErrIncompleteStop, n, confirmed, r.cfg.ShutdownTimeout))
		}
	}
	return runErr
}

// finalStatusWait is the least time the reader gets to send the final
// status update, even when the stop's deadline has passed.
const finalStatusWait = 2 * time.Second

// takeSlot opens the replication connection and starts streaming from the
// slot at start. A slot held by another process makes this relay a
// standby (causeStandby).
func (r *Relay) takeSlot(ctx context.Context, start pglogrepl.LSN) (*replication.Stream, error) {
	stream, err := replication.Connect(ctx, r.cfg.replicationConfig())
	if err != nil {
		return nil, withCause(CausePostgres, classifyConnect(err))
	}
	level := slog.LevelInfo
	if r.standby {
		level = slog.LevelDebug // retrying as standby: said once already
	}
	r.log.Log(ctx, level, "connected", "slot", r.cfg.Slot.Slot, "pid", stream.PID(), "server_wal_end", stream.ServerWALEnd(),
		"status_interval", stream.StatusInterval(), "wal_sender_timeout", stream.SenderTimeout())
	if err := stream.Start(ctx, start); err != nil {
		stream.Close()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			// object_in_use: another relay holds the slot.
			return nil, withCause(causeStandby, fmt.Errorf("slot %s is in use by another process (standby: waiting for it to be released): %w", r.cfg.Slot.Slot, err))
		}
		return nil, withCause(CausePostgres, err)
	}
	r.progressed = true
	r.standby = false
	r.log.Info("streaming", "slot", r.cfg.Slot.Slot, "lsn", start, "pid", stream.PID())
	return stream, nil
}

// startPublisher connects this session's publisher, once the previous
// session's is gone: nothing an old producer still retries may land after
// the new one's records.
func (r *Relay) startPublisher(ctx context.Context) (Publisher, error) {
	if prev := r.prevPublisher; prev != nil {
		select {
		case <-prev:
		default:
			r.log.Warn("waiting for the previous session's publisher to close before publishing again", "slot", r.cfg.Slot.Slot)
			select {
			case <-prev:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		r.prevPublisher = nil
	}
	pub, err := r.publish(ctx)
	if err != nil {
		err = fmt.Errorf("connecting the publisher: %w", err)
		var cp interface{ ConfigProblem() bool }
		if errors.As(err, &cp) && cp.ConfigProblem() {
			// Rejected credentials or certificates: retrying cannot help.
			return nil, fatal(err)
		}
		return nil, withCause(CauseSink, err)
	}
	return pub, nil
}

// newPipeline builds the session's pipeline over stream and pub.
func (r *Relay) newPipeline(stream *replication.Stream, pub Publisher, tracker *checkpoint.Tracker, skips *skipList) (*pipeline, error) {
	decCfg := r.cfg.Decoder
	decCfg.DroppedHeader = newDroppedHeaders(r.log, r.obs, r.cfg.Slot.Slot).report
	dec, err := decoder.New(decCfg)
	if err != nil {
		return nil, fatal(err)
	}
	commits := &commitLog{}
	progress := func() Progress {
		return Progress{
			Confirmed:    stream.Confirmed(),
			Received:     stream.Received(),
			ServerWALEnd: stream.ServerWALEnd(),
			InFlight:     tracker.InFlight(),
			Lag:          commits.lag(tracker.Safe(), time.Now()),
		}
	}
	budget := newByteBudget(r.cfg.MaxInFlightBytes)
	p := &pipeline{
		log:           r.log,
		slot:          r.cfg.Slot.Slot,
		dec:           dec,
		pub:           pub,
		tracker:       tracker,
		obs:           r.obs,
		commits:       commits,
		budget:        budget,
		skips:         skips,
		progress:      progress,
		progressEvery: r.cfg.ProgressInterval,
	}
	p.newPubCtx()
	if r.cfg.OnError == OnErrorDeadLetter {
		p.deadLetters = &deadLetters{
			pub: pub, topic: r.cfg.DeadLetterTopic, limit: r.cfg.DeadLetterMaxBytes, slot: r.cfg.Slot.Slot,
			tracker: tracker, obs: r.obs, log: r.log, release: budget.release, sent: &r.deadLettered,
			signal: make(chan struct{}, 1),
		}
	}
	r.obs.Session(progress)
	return p, nil
}

// stream runs the pipeline, with the session's background tasks (dead
// letters, heartbeats, pruning), until it ends; it returns why.
func (r *Relay) stream(ctx context.Context, p *pipeline, rd *reader, clock *stopClock) error {
	r.obs.StateChanged(StateStreaming, "", nil)
	stopBackground := r.startBackground(p)
	defer stopBackground()
	err := p.run(ctx, rd.msgs, rd.finished, clock.expired)
	if p.readerFailed {
		if rd.err == nil {
			return withCause(CauseReplication, errors.New("replication stream ended"))
		}
		return withCause(CauseReplication, rd.err)
	}
	return withCause(CauseSink, err)
}

// startBackground starts the tasks that run beside p: the dead-letter
// queue (with OnErrorDeadLetter), heartbeats, and pruning (with
// PruneAfter). They outlive the session's ctx, as the pipeline does, until
// stop, which waits for them to end.
func (r *Relay) startBackground(p *pipeline) (stop func()) {
	var bg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	if p.deadLetters != nil {
		bg.Go(func() { p.deadLetters.run(ctx, p.fail) })
	}
	hb := r.newHeartbeat(p.idleSince)
	bg.Go(func() { hb.run(ctx) })
	if r.cfg.PruneAfter > 0 {
		pr := r.newPruner(p.tracker.Safe)
		bg.Go(func() { pr.run(ctx) })
	}
	return func() {
		cancel()
		bg.Wait()
	}
}

// newHeartbeat is the session's heartbeat; idle says whether the pipeline
// published nothing since it last asked.
func (r *Relay) newHeartbeat(idle func() bool) *heartbeat {
	return &heartbeat{
		connString: r.cfg.ConnString,
		interval:   r.cfg.HeartbeatInterval,
		prefix:     r.cfg.Decoder.HeartbeatPrefix,
		log:        r.log,
		idle:       idle,
		sent:       r.obs.HeartbeatSent,
	}
}

// newPruner is the session's pruner; confirmed is the checkpoint's safe
// position.
func (r *Relay) newPruner(confirmed func() pglogrepl.LSN) *pruner {
	return &pruner{
		connString: r.cfg.ConnString,
		table:      tableIdent(r.cfg.Slot),
		idColumn:   columnsOf(r.cfg.Decoder).ID,
		ageColumn:  columnsOf(r.cfg.Decoder).CreatedAt,
		after:      r.cfg.PruneAfter,
		interval:   pruneInterval(r.cfg.PruneAfter),
		confirmed:  confirmed,
		log:        r.log,
		pruned:     r.obs.RowsPruned,
	}
}

// drain closes pub, waiting for every ack until deadline; a publisher
// that cannot drain by then is aborted (its unacknowledged events are
// then re-sent by a later session). A Close that outlives even that is
// waited for before the next session publishes.
func (r *Relay) drain(pub Publisher, deadline time.Time) {
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		if err := pub.Close(); err != nil {
			r.log.Warn("closing the publisher", "slot", r.cfg.Slot.Slot, "err", err)
		}
	}()
	timer := time.NewTimer(max(time.Until(deadline), 0))
	defer timer.Stop()
	select {
	case <-closed:
		return
	case <-timer.C:
	}
	if a, ok := pub.(interface{ Abort() }); ok {
		r.log.Warn("the publisher did not drain in time; aborting it: what it has not had acknowledged is not confirmed and will be sent again",
			"slot", r.cfg.Slot.Slot)
		a.Abort()
	} else {
		r.log.Warn("the publisher did not drain in time; confirming only what was acknowledged", "slot", r.cfg.Slot.Slot)
	}
	select {
	case <-closed:
	default:
		r.prevPublisher = closed
	}
}

// reader runs the replication stream's Run on a goroutine of its own.
type reader struct {
	msgs     chan []replication.Message
	finished chan struct{} // closed when Run returned; err is set then
	err      error
	cancel   context.CancelFunc
}

// startReader starts reading stream. The reader outlives the session's
// ctx: it keeps confirming while the publisher drains, and sends the final
// status update when stopped.
func startReader(stream *replication.Stream, safe func() pglogrepl.LSN) *reader {
	ctx, cancel := context.WithCancel(context.Background())
	// Batches of up to 256 messages (and about 1 MiB): at most 16 wait,
	// bounding memory.
	rd := &reader{msgs: make(chan []replication.Message, 16), finished: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(rd.finished)
		rd.err = stream.Run(ctx, rd.msgs, safe)
	}()
	return rd
}

// stop tells the reader to send the final status update and waits for it
// at most wait: a read the network never interrupts must not hang the
// stop (what it has not confirmed is sent again next time).
func (rd *reader) stop(wait time.Duration) error {
	rd.cancel()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-rd.finished:
		return rd.err
	case <-t.C:
		return fmt.Errorf("the replication reader did not stop within %s; the final status update may be missing", wait)
	}
}

// stopClock is the deadline of a graceful stop: Config.ShutdownTimeout
// from the moment ctx ends. expired closes a little before it, so the
// final status update still fits in.
type stopClock struct {
	expired chan struct{}
	total   time.Duration
	reserve time.Duration

	mu      sync.Mutex
	stopAt  time.Time
	timer   *time.Timer
	cleanup func() bool
}

func newStopClock(ctx context.Context, total time.Duration) *stopClock {
	c := &stopClock{expired: make(chan struct{}), total: total, reserve: min(time.Second, total/5)}
	c.cleanup = context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.stopAt = time.Now()
		c.timer = time.AfterFunc(total-c.reserve, func() { close(c.expired) })
	})
	return c
}

// drainDeadline is when the pipeline and the drain must be done: the
// stop's deadline less the reserve for the final status update.
func (c *stopClock) drainDeadline() time.Time {
	return c.deadline().Add(-c.reserve)
}

// deadline is when the stop must be complete; far away while not stopping.
func (c *stopClock) deadline() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopAt.IsZero() {
		return time.Now().Add(c.total)
	}
	return c.stopAt.Add(c.total)
}

// close releases the clock's timer.
func (c *stopClock) close() {
	c.cleanup()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
	}
}
