package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testSlot creates table t, a publication and a slot in a fresh database,
// and returns the database and the slot's start position.
func testSlot(t *testing.T) (*pgtest.DB, pglogrepl.LSN) {
	t.Helper()
	return slotIn(t, pgtest.New(t))
}

// testSlotOn is testSlot on a server of its own with the given settings.
func testSlotOn(t *testing.T, settings map[string]string) (*pgtest.DB, pglogrepl.LSN) {
	t.Helper()
	return slotIn(t, pgtest.OnServer(t, pgtest.NewServer(t, settings)))
}

func slotIn(t *testing.T, db *pgtest.DB) (*pgtest.DB, pglogrepl.LSN) {
	t.Helper()
	db.Exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)`)
	db.Exec(t, `CREATE PUBLICATION p FOR TABLE t`)
	var lsn string
	if err := db.Conn(t).QueryRow(t.Context(), `SELECT lsn::text FROM pg_create_logical_replication_slot('s', 'pgoutput')`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	start, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		t.Fatal(err)
	}
	return db, start
}

// startStream connects, starts streaming at start and runs the stream
// until the test ends. safe is what it confirms. It returns the batches
// and Run's result.
func startStream(t *testing.T, db *pgtest.DB, start pglogrepl.LSN, cfg Config, safe func() pglogrepl.LSN) (stop context.CancelFunc, out <-chan []Message, done <-chan error) {
	t.Helper()
	cfg.ConnString, cfg.Slot, cfg.Publication = db.URL, "s", "p"
	s, err := Connect(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Start(t.Context(), start); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	batches := make(chan []Message, 16)
	errc := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		errc <- s.Run(ctx, batches, safe)
	}()
	t.Cleanup(func() {
		cancel()
		for {
			select {
			case <-finished:
				return
			case b := <-batches: // never leave Run blocked on a hand-off
				Release(b)
			}
		}
	})
	return cancel, batches, errc
}

// commitEnd returns the end LSN of a pgoutput Commit message.
func commitEnd(data []byte) pglogrepl.LSN {
	return pglogrepl.LSN(binary.BigEndian.Uint64(data[10:18]))
}

// nextCommit reads batches until a Commit arrives and returns its end LSN.
func nextCommit(t *testing.T, out <-chan []Message, done <-chan error) pglogrepl.LSN {
	t.Helper()
	for {
		select {
		case batch := <-out:
			var end pglogrepl.LSN
			for _, m := range batch {
				if m.Data != nil && m.Data[0] == 'C' {
					end = commitEnd(m.Data)
				}
			}
			Release(batch)
			if end != 0 {
				return end
			}
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("the row's commit not received")
		}
	}
}

// The reader's batching, hold and coalescing never lose, reorder or delay
// a message past its bound: every transaction arrives whole and in commit
// order, through single-row transactions fast enough to coalesce, a
// transaction larger than a batch, and a lone row after the burst.
func TestStreamDeliversEveryTransactionInOrder(t *testing.T) {
	db, start := testSlot(t)
	var safe atomic.Uint64
	safe.Store(uint64(start))
	// A long status interval: a lone message waiting for the next status
	// update instead of its bound would take 10s.
	_, out, done := startStream(t, db, start, Config{StatusInterval: 10 * time.Second}, func() pglogrepl.LSN { return pglogrepl.LSN(safe.Load()) })

	const singles, big = 400, 20000
	werr := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(context.Background(), db.URL)
		if err != nil {
			werr <- err
			return
		}
		defer conn.Close(context.Background())
		for i := range singles {
			if _, err := conn.Exec(context.Background(), `INSERT INTO t VALUES ($1, 'x')`, i); err != nil {
				werr <- err
				return
			}
		}
		_, err = conn.Exec(context.Background(), `INSERT INTO t SELECT g, repeat('y', 200) FROM generate_series($1::int, $2::int) g`, singles, singles+big-1)
		werr <- err
	}()

	inserts, txns, inTxn, lastStart := 0, 0, false, pglogrepl.LSN(0)
	check := func(batch []Message) error {
		defer Release(batch)
		for _, m := range batch {
			if m.Data == nil {
				continue // keepalive
			}
			if m.WALStart != 0 && m.WALStart < lastStart {
				return fmt.Errorf("message %q at %s after one at %s", m.Data[0], m.WALStart, lastStart)
			}
			lastStart = max(lastStart, m.WALStart)
			switch m.Data[0] {
			case 'B':
				if inTxn {
					return errors.New("begin inside a transaction")
				}
				inTxn = true
			case 'I':
				if !inTxn {
					return errors.New("insert outside a transaction")
				}
				inserts++
			case 'C':
				if !inTxn {
					return errors.New("commit outside a transaction")
				}
				inTxn = false
				txns++
				safe.Store(uint64(commitEnd(m.Data)))
			}
		}
		return nil
	}
	timeout := time.After(2 * time.Minute)
	for inserts < singles+big {
		select {
		case batch := <-out:
			if err := check(batch); err != nil {
				t.Fatal(err)
			}
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		case <-timeout:
			t.Fatalf("%d of %d rows after 2 minutes", inserts, singles+big)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if txns != singles+1 {
		t.Fatalf("%d transactions, want %d", txns, singles+1)
	}

	// A lone row after the burst, smaller than the low-water mark: it must
	// not wait for more data or for the status interval.
	db.Exec(t, `INSERT INTO t VALUES (-1, 'z')`)
	written := time.Now()
	for inserts < singles+big+1 {
		select {
		case batch := <-out:
			if err := check(batch); err != nil {
				t.Fatal(err)
			}
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		case <-time.After(5 * time.Second):
			t.Fatalf("a lone row after a burst not delivered after %s", time.Since(written).Round(time.Millisecond))
		}
	}
}

// Stopping interrupts a read that waits for the next status update, and
// sends the final one with the safe position.
func TestStreamStopsPromptlyAndConfirmsWhatIsSafe(t *testing.T) {
	db, start := testSlot(t)
	var safe atomic.Uint64
	safe.Store(uint64(start))
	stop, out, done := startStream(t, db, start, Config{StatusInterval: 10 * time.Second}, func() pglogrepl.LSN { return pglogrepl.LSN(safe.Load()) })

	db.Exec(t, `INSERT INTO t VALUES (1, 'x')`)
	end := nextCommit(t, out, done)
	safe.Store(uint64(end))
	stopped := time.Now()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after stop = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still reading 5s after it was told to stop (status interval 10s)")
	}
	if took := time.Since(stopped); took > 2*time.Second {
		t.Errorf("stopping took %s", took)
	}
	// The walsender applies the status update on its own time: poll.
	conn := db.Conn(t)
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	deadline := time.After(10 * time.Second)
	for {
		var s string
		if err := conn.QueryRow(t.Context(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		got, _ := pglogrepl.ParseLSN(s)
		if got == end {
			return
		}
		if got > end {
			t.Fatalf("slot confirmed %s, past the safe position %s", got, end)
		}
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatalf("slot confirmed %s, want the safe position %s", got, end)
		}
	}
}

// fakeLowWater records the low-water marks set.
type fakeLowWater struct {
	mu   sync.Mutex
	sets []int
	err  error
}

func (f *fakeLowWater) set(n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets = append(f.sets, n)
	return f.err
}

func TestCoalescingStartsOnlyWhenBusyAndStopsWhenQuiet(t *testing.T) {
	sock := &fakeLowWater{}
	c := &coalescer{sock: sock, max: time.Millisecond}
	t0 := time.Unix(1000, 0)
	next := t0.Add(10 * time.Second)

	c.handedOff(t0)
	if c.on || len(sock.sets) != 0 {
		t.Fatal("a first hand-off started coalescing")
	}
	c.handedOff(t0.Add(5 * time.Millisecond))
	if c.on {
		t.Fatal("hand-offs 5ms apart (slower than 2 periods) started coalescing")
	}
	c.handedOff(t0.Add(6 * time.Millisecond))
	if !c.on || len(sock.sets) != 1 || sock.sets[0] != coalesceBytes {
		t.Fatalf("hand-offs 1ms apart: on=%v, marks set %v", c.on, sock.sets)
	}
	if got, want := c.deadline(next), t0.Add(7*time.Millisecond); !got.Equal(want) {
		t.Fatalf("deadline while coalescing = %s, want the end of the period %s", got, want)
	}

	c.heard = true
	c.tick(t0.Add(7 * time.Millisecond))
	if !c.on || !c.until.Equal(t0.Add(8*time.Millisecond)) {
		t.Fatalf("a period with data did not start another: on=%v until=%s", c.on, c.until)
	}
	c.tick(t0.Add(8 * time.Millisecond)) // nothing arrived in it
	if c.on || len(sock.sets) != 2 || sock.sets[1] != 1 {
		t.Fatalf("a quiet period did not end coalescing: on=%v, marks set %v", c.on, sock.sets)
	}
	if got := c.deadline(next); !got.Equal(next) {
		t.Fatalf("deadline when not coalescing = %s, want %s", got, next)
	}

	sock.err = errors.New("not supported")
	c.handedOff(t0.Add(20 * time.Millisecond))
	c.handedOff(t0.Add(20*time.Millisecond + time.Microsecond))
	if c.on || c.sock != nil {
		t.Fatal("a failed low-water mark left coalescing on or enabled")
	}
	c.handedOff(t0.Add(21 * time.Millisecond))
	if len(sock.sets) != 3 {
		t.Fatalf("tried again after a failure: %v", sock.sets)
	}
}

func TestReleaseTakesOnlyRunsBatches(t *testing.T) {
	Release(nil)
	Release(make([]Message, 3))
	Release([]Message{{Data: []byte("x")}})
	b := append(newBatch(), Message{Data: []byte("x")})
	Release(b)
	if got := newBatch(); len(got) != 0 || cap(got) != maxBatch {
		t.Fatalf("a batch from the pool has len %d cap %d", len(got), cap(got))
	}
}

func activePID(t *testing.T, db *pgtest.DB) int {
	t.Helper()
	var pid *int
	if err := db.Conn(t).QueryRow(t.Context(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's'`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if pid == nil {
		t.Fatal("slot s has no active walsender")
	}
	return *pid
}

// A pipeline blocked for longer than the receive timeout and many
// wal_sender_timeouts ends neither side of a healthy connection: the
// reader does not count the silence it caused by not reading, and status
// updates go out often enough for the server's timeout, whatever the
// configured interval, without waiting for the server to ask.
func TestBlockedPipelineEndsNoHealthySession(t *testing.T) {
	db, start := testSlotOn(t, map[string]string{"wal_sender_timeout": "600ms"})
	var safe atomic.Uint64
	safe.Store(uint64(start))
	// An interval longer than wal_sender_timeout, a receive timeout far
	// shorter than the stall.
	cfg := Config{ConnString: db.URL, Slot: "s", Publication: "p", StatusInterval: time.Second, ReceiveTimeout: 1500 * time.Millisecond}
	s, err := Connect(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if got := s.StatusInterval(); got != 200*time.Millisecond {
		t.Fatalf("status interval %s with wal_sender_timeout 600ms, want 200ms", got)
	}
	if err := s.Start(t.Context(), start); err != nil {
		t.Fatal(err)
	}
	pid := activePID(t, db)
	out := make(chan []Message) // unbuffered: the pipeline is "blocked" until read
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- s.Run(ctx, out, func() pglogrepl.LSN { return pglogrepl.LSN(safe.Load()) })
	}()
	t.Cleanup(func() {
		cancel()
		for {
			select {
			case <-finished:
				return
			case b := <-out:
				Release(b)
			}
		}
	})

	const rows = 50
	for i := range rows {
		db.Exec(t, `INSERT INTO t VALUES ($1, 'x')`, i)
	}
	// The stall: nothing reads out for 4s, over twice the receive timeout
	// and six wal_sender_timeouts.
	select {
	case err := <-done:
		t.Fatalf("Run ended during the stall: %v", err)
	case <-time.After(4 * time.Second):
	}
	if got := activePID(t, db); got != pid {
		t.Fatalf("walsender pid %d after the stall, was %d: the server ended the connection", got, pid)
	}
	inserts := 0
	deadline := time.After(30 * time.Second)
	for inserts < rows {
		select {
		case batch := <-out:
			for _, m := range batch {
				if m.Data != nil && m.Data[0] == 'I' {
					inserts++
				}
			}
			Release(batch)
		case err := <-done:
			t.Fatalf("Run ended after the stall with %d of %d rows: %v", inserts, rows, err)
		case <-deadline:
			t.Fatalf("%d of %d rows after the stall", inserts, rows)
		}
	}
	if got := activePID(t, db); got != pid {
		t.Fatalf("walsender pid %d after the stall, was %d", got, pid)
	}
}

func TestParsePGDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"60s": time.Minute, "500ms": 500 * time.Millisecond, "2min": 2 * time.Minute,
		"1h": time.Hour, "0": 0, "1500": 1500 * time.Millisecond, "1d": 24 * time.Hour,
	} {
		got, err := ParsePGDuration(in)
		if err != nil || got != want {
			t.Errorf("ParsePGDuration(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1s", "1.5s"} {
		if _, err := ParsePGDuration(in); err == nil {
			t.Errorf("ParsePGDuration(%q) succeeded", in)
		}
	}
}

// With a long status interval, the safe position is still confirmed about
// a second after it moves, also when the broker acknowledges late (the
// first look finds nothing new): a crash then repeats about a second of
// events, not a status interval's.
func TestStreamConfirmsSoonAfterTheSafePositionMoves(t *testing.T) {
	db, start := testSlot(t)
	var safe atomic.Uint64
	safe.Store(uint64(start))
	_, out, done := startStream(t, db, start, Config{StatusInterval: time.Minute}, func() pglogrepl.LSN { return pglogrepl.LSN(safe.Load()) })
	conn := db.Conn(t)
	confirmed := func() pglogrepl.LSN {
		var s string
		if err := conn.QueryRow(t.Context(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		lsn, _ := pglogrepl.ParseLSN(s)
		return lsn
	}
	for i, ackAfter := range []time.Duration{0, 1500 * time.Millisecond} {
		db.Exec(t, `INSERT INTO t VALUES ($1, 'x')`, i)
		end := nextCommit(t, out, done)
		// The broker's acknowledgement, ackAfter from now (the load's
		// shape, not a synchronisation).
		acked := make(chan time.Time, 1)
		time.AfterFunc(ackAfter, func() {
			safe.Store(uint64(end))
			acked <- time.Now()
		})
		at := <-acked
		for confirmed() != end {
			if time.Since(at) > 4*time.Second {
				t.Fatalf("row %d: slot at %s %s after its commit %s became safe (status interval 1m): not confirmed soon", i, confirmed(), time.Since(at).Round(time.Millisecond), end)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("row %d (acknowledged %s after receipt): confirmed %s after it became safe", i, ackAfter, time.Since(at).Round(time.Millisecond))
	}
}
