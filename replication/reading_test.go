package replication

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// xlogData is an XLogData message without its type byte, as Run reads it.
func xlogData(start pglogrepl.LSN, wal []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(start))
	b = binary.BigEndian.AppendUint64(b, uint64(start)+uint64(len(wal)))
	b = binary.BigEndian.AppendUint64(b, 0) // send time
	return append(b, wal...)
}

// keepaliveData is a primary keepalive message without its type byte.
func keepaliveData(walEnd pglogrepl.LSN, reply bool) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(walEnd))
	b = binary.BigEndian.AppendUint64(b, 0)
	if reply {
		return append(b, 1)
	}
	return append(b, 0)
}

func walBegin() []byte { return append([]byte{'B'}, make([]byte, 20)...) }

func walCommit(end pglogrepl.LSN) []byte {
	b := []byte{'C', 0}
	b = binary.BigEndian.AppendUint64(b, uint64(end-8))
	b = binary.BigEndian.AppendUint64(b, uint64(end))
	return binary.BigEndian.AppendUint64(b, 0)
}

func walInsert(n int) []byte { return append([]byte{'I'}, make([]byte, n)...) }

// testReading is a Run's state without a connection: the steps that only
// gather and hand off batches. *buffered is what the connection has read
// and not parsed.
func testReading(t *testing.T, out chan []Message, buffered *int) *reading {
	t.Helper()
	s := &Stream{cfg: Config{Slot: "s", StatusInterval: time.Hour, ReceiveTimeout: 2 * time.Hour}.withDefaults()}
	now := time.Now()
	r := &reading{
		s: s, ctx: t.Context(), out: out, safe: func() pglogrepl.LSN { return 1 },
		interval: time.Hour, ticker: time.NewTicker(time.Hour), soon: confirmSoon,
		co: newCoalescer(nil, -1), buffered: func() int { return *buffered },
		now: now, lastHeard: now, nextStatus: now.Add(time.Hour), batch: newBatch(),
	}
	t.Cleanup(r.ticker.Stop)
	return r
}

// handedOff returns the batch Run handed off, failing if there is none.
func handedOff(t *testing.T, out chan []Message) []Message {
	t.Helper()
	select {
	case b := <-out:
		return b
	default:
		t.Fatal("no batch handed off")
		return nil
	}
}

func noHandOff(t *testing.T, out chan []Message, when string) {
	t.Helper()
	select {
	case b := <-out:
		t.Fatalf("%s: a batch of %d handed off", when, len(b))
	default:
	}
}

// A batch goes to the pipeline at a commit once nothing more is waiting
// to be parsed, not per message and not in the middle of a transaction;
// a keepalive after a commit goes with it.
func TestBatchIsHandedOffAtACommitWithNothingMoreToRead(t *testing.T) {
	out := make(chan []Message, 4)
	buffered := 0
	r := testReading(t, out, &buffered)
	step := func(start pglogrepl.LSN, wal []byte) {
		t.Helper()
		if err := r.onXLogData(xlogData(start, wal)); err != nil {
			t.Fatal(err)
		}
	}

	step(0x100, walBegin())
	step(0x200, walInsert(10))
	noHandOff(t, out, "inside a transaction")
	buffered = 64 // the next message is read already
	step(0x300, walCommit(0x400))
	noHandOff(t, out, "a commit with more to parse")
	if r.inTxn || r.lastEnd != 0x400 {
		t.Fatalf("after a commit: inTxn %v, lastEnd %s", r.inTxn, r.lastEnd)
	}
	buffered = 0
	if err := r.onKeepalive(keepaliveData(0x500, false)); err != nil {
		t.Fatal(err)
	}
	b := handedOff(t, out)
	if len(b) != 4 || b[0].Data[0] != 'B' || b[2].Data[0] != 'C' || b[3].Data != nil || b[3].ServerWALEnd != 0x500 {
		t.Fatalf("batch %v, want begin, insert, commit and the keepalive", b)
	}
	if r.confirmAt.IsZero() {
		t.Fatal("a hand-off of WAL data did not arm the look at the safe position")
	}
	if got := r.s.Received(); got != 0x300+pglogrepl.LSN(len(walCommit(0))) {
		t.Fatalf("received %s", got)
	}
	if got := r.s.ServerWALEnd(); got != 0x500 {
		t.Fatalf("server WAL end %s, want the keepalive's", got)
	}

	step(0x600, walBegin())
	step(0x700, walInsert(10))
	step(0x800, walCommit(0x900))
	if b := handedOff(t, out); len(b) != 3 || r.lastEnd != 0x900 {
		t.Fatalf("a lone transaction: batch of %d, lastEnd %s", len(b), r.lastEnd)
	}
}

// A transaction larger than a batch is handed off in batches of maxBatch
// messages, or of about maxBatchBytes.
func TestBatchIsHandedOffWhenFull(t *testing.T) {
	out := make(chan []Message, 4)
	buffered := 0
	r := testReading(t, out, &buffered)
	lsn := pglogrepl.LSN(0x100)
	add := func(wal []byte) {
		t.Helper()
		lsn += 0x100
		if err := r.onXLogData(xlogData(lsn, wal)); err != nil {
			t.Fatal(err)
		}
	}
	add(walBegin())
	for range maxBatch - 2 {
		add(walInsert(1))
	}
	noHandOff(t, out, "one message short of a full batch")
	add(walInsert(1))
	if b := handedOff(t, out); len(b) != maxBatch {
		t.Fatalf("batch of %d, want %d", len(b), maxBatch)
	}
	add(walInsert(maxBatchBytes / 2))
	noHandOff(t, out, "half a batch's bytes")
	add(walInsert(maxBatchBytes / 2))
	if b := handedOff(t, out); len(b) != 2 {
		t.Fatalf("batch of %d over %d bytes, want 2 messages", len(b), maxBatchBytes)
	}
}

// The read buffer is reused by the next read: a message's Data is a copy.
func TestReceivedDataIsCopied(t *testing.T) {
	out := make(chan []Message, 1)
	buffered := 1 // more to parse: the message stays in the batch
	r := testReading(t, out, &buffered)
	msg := xlogData(0x100, walInsert(4))
	if err := r.onXLogData(msg); err != nil {
		t.Fatal(err)
	}
	for i := range msg {
		msg[i] = 0xFF
	}
	if d := r.batch[0].Data; d[0] != 'I' || d[1] != 0 {
		t.Fatalf("the batch's data changed with the read buffer: %x", d)
	}
}

// Keepalives alone are held, a newer one replaces an older one, and they
// are only offered: a pipeline with no room does not block the reader.
func TestKeepalivesReplaceEachOtherAndAreOnlyOffered(t *testing.T) {
	out := make(chan []Message) // nobody receives: no room
	buffered := 0
	r := testReading(t, out, &buffered)
	for _, end := range []pglogrepl.LSN{0x100, 0x200} {
		if err := r.onKeepalive(keepaliveData(end, false)); err != nil {
			t.Fatal(err)
		}
	}
	if len(r.batch) != 1 || r.batch[0].ServerWALEnd != 0x200 {
		t.Fatalf("batch %v, want the newer keepalive alone", r.batch)
	}
	if want := r.now.Add(holdMax); !r.holdUntil.Equal(want) {
		t.Fatalf("hold until %s, want %s", r.holdUntil, want)
	}
	done := make(chan error, 1)
	go func() { done <- r.flush() }()
	select {
	case err := <-done:
		if err != nil || len(r.batch) != 0 {
			t.Fatalf("flush = %v, batch %v: want the keepalive dropped", err, r.batch)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a keepalive offered to a full pipeline blocked the reader")
	}

	// After WAL data a keepalive is appended, never replaces it.
	r.now = time.Now()
	if err := r.onXLogData(xlogData(0x300, walBegin())); err != nil {
		t.Fatal(err)
	}
	if err := r.onKeepalive(keepaliveData(0x400, false)); err != nil {
		t.Fatal(err)
	}
	if len(r.batch) != 2 || r.batch[0].Data == nil || r.batch[1].Data != nil {
		t.Fatalf("batch %v, want the begin and then the keepalive", r.batch)
	}
}

// A batch held for a transaction's commit goes to the pipeline when its
// hold ends, without another read.
func TestStepHandsOffAHeldBatchWhenItsHoldEnds(t *testing.T) {
	out := make(chan []Message, 1)
	buffered := 0
	r := testReading(t, out, &buffered)
	for i, wal := range [][]byte{walBegin(), walInsert(1)} {
		if err := r.onXLogData(xlogData(pglogrepl.LSN(0x100*(i+1)), wal)); err != nil {
			t.Fatal(err)
		}
	}
	noHandOff(t, out, "before the hold ends")
	r.now = r.holdUntil
	// r.s has no connection: a read would panic.
	if err := r.step(); err != nil {
		t.Fatal(err)
	}
	if b := handedOff(t, out); len(b) != 2 {
		t.Fatalf("batch of %d, want the held 2", len(b))
	}
	if len(r.batch) != 0 || r.hasData || r.batchBytes != 0 {
		t.Fatalf("a new batch after the hand-off has %d messages, data %v, %d bytes", len(r.batch), r.hasData, r.batchBytes)
	}
}

// The read returns for the first thing due: a status update, the end of a
// coalescing period, the look at the safe position or the end of a hold.
func TestReadDeadlineIsTheEarliestThingDue(t *testing.T) {
	buffered := 0
	r := testReading(t, make(chan []Message, 1), &buffered)
	t0 := time.Unix(1000, 0)
	r.nextStatus = t0.Add(10 * time.Second)
	r.holdUntil = t0.Add(time.Millisecond)
	if got := r.nextDeadline(); !got.Equal(r.nextStatus) {
		t.Fatalf("deadline %s, want the status update %s (no batch is held)", got, r.nextStatus)
	}
	r.confirmAt = t0.Add(time.Second)
	if got := r.nextDeadline(); !got.Equal(r.confirmAt) {
		t.Fatalf("deadline %s, want the look at the safe position %s", got, r.confirmAt)
	}
	r.batch = append(r.batch, Message{ServerWALEnd: 1})
	if got := r.nextDeadline(); !got.Equal(r.holdUntil) {
		t.Fatalf("deadline %s, want the end of the hold %s", got, r.holdUntil)
	}
	r.batch = r.batch[:0]
	r.co = &coalescer{sock: &fakeLowWater{}, max: time.Millisecond, on: true, until: t0.Add(500 * time.Microsecond)}
	if got := r.nextDeadline(); !got.Equal(r.co.until) {
		t.Fatalf("deadline %s, want the end of the coalescing period %s", got, r.co.until)
	}
}

// A server silent for longer than the receive timeout is presumed gone.
func TestSilenceLongerThanTheReceiveTimeoutEndsTheConnection(t *testing.T) {
	buffered := 0
	r := testReading(t, make(chan []Message, 1), &buffered)
	r.s.cfg.ReceiveTimeout = 2 * time.Second
	r.lastHeard = r.now.Add(-2 * time.Second)
	if err := r.checkSilence(); err != nil {
		t.Fatalf("silent for the receive timeout exactly: %v", err)
	}
	r.lastHeard = r.now.Add(-3 * time.Second)
	err := r.checkSilence()
	if err == nil || err.Error() != "no message from the server for 3s (receive timeout 2s): connection presumed dead" {
		t.Fatalf("checkSilence = %v", err)
	}
}

// The look at the safe position confirms it only when it moved past what
// was sent, and looks again while a received commit is not safe yet.
func TestConfirmIfMovedSendsOnlyANewSafePosition(t *testing.T) {
	db, start := testSlot(t)
	s, err := Connect(t.Context(), Config{ConnString: db.URL, Slot: "s", Publication: "p"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Start(t.Context(), start); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO t VALUES (1, 'x')`)
	var pos string
	if err := db.Conn(t).QueryRow(t.Context(), `SELECT pg_current_wal_lsn()::text`).Scan(&pos); err != nil {
		t.Fatal(err)
	}
	end, err := pglogrepl.ParseLSN(pos)
	if err != nil {
		t.Fatal(err)
	}
	safe := start
	r := s.newReading(t.Context(), make(chan []Message, 1), func() pglogrepl.LSN { return safe })
	t.Cleanup(r.ticker.Stop)
	r.lastEnd = end

	r.confirmAt = r.now
	if err := r.confirmIfMoved(); err != nil {
		t.Fatal(err)
	}
	if got := s.Confirmed(); got != start {
		t.Fatalf("confirmed %s with the safe position unmoved at %s", got, start)
	}
	if want := r.now.Add(r.soon); !r.confirmAt.Equal(want) {
		t.Fatalf("next look at %s, want %s: a commit received is not safe yet", r.confirmAt, want)
	}

	safe = end
	r.now = r.confirmAt
	if err := r.confirmIfMoved(); err != nil {
		t.Fatal(err)
	}
	if got := s.Confirmed(); got != end {
		t.Fatalf("confirmed %s, want the safe position %s", got, end)
	}
	if !r.confirmAt.IsZero() {
		t.Fatalf("next look at %s with everything received confirmed", r.confirmAt)
	}
	conn := db.Conn(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got string
		if err := conn.QueryRow(t.Context(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got == end.String() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed %s, want %s", got, end)
		}
		// The walsender reads the status update on its own time.
		time.Sleep(10 * time.Millisecond)
	}
}

// A walsender the server ends ends Run with an error that names the slot.
func TestTerminatedWalsenderEndsRun(t *testing.T) {
	db, start := testSlot(t)
	_, _, done := startStream(t, db, start, Config{}, func() pglogrepl.LSN { return start })
	pid := activePID(t, db)
	db.Exec(t, `SELECT pg_terminate_backend($1)`, pid)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "slot s") {
			t.Fatalf("Run = %v, want an error naming slot s", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still reading 10s after its walsender was terminated")
	}
}
