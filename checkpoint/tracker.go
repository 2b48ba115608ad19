// Package checkpoint tracks which WAL positions are safe to confirm.
//
// The relay may confirm an LSN to PostgreSQL only when every transaction up
// to it has been fully acknowledged by the broker: confirming more loses
// events after a crash, confirming less only replays some. A [Tracker]
// follows transactions in commit order and exposes the newest safe position
// through [Tracker.Safe].
//
// Tracking is per transaction, not per LSN: many events may share one LSN
// (a multi-row INSERT ... SELECT, COPY), and only the end LSN of a fully
// acknowledged transaction is ever reported.
package checkpoint

import (
	"sync"
	"sync/atomic"

	"github.com/jackc/pglogrepl"
)

// maxFree caps the recycled transaction records kept for reuse, so a burst
// of many small transactions does not pin memory after it is acknowledged.
const maxFree = 1024

// txn is one transaction in commit order.
type txn struct {
	// state packs the record's generation (high 32 bits) with pending (low
	// 32 bits): the events not yet acknowledged, plus one while the
	// transaction is open. The transaction is done when pending reaches
	// zero. One word, so a single atomic add both counts an ack and sees
	// which generation it counted in: a stale token cannot slip in between
	// a check and the decrement.
	state atomic.Uint64
	// end is the commit's end LSN, set by Commit under Tracker.mu.
	end pglogrepl.LSN
}

// pendingMask selects pending in txn.state.
const pendingMask = 1<<32 - 1

// generation and pending split a txn.state value.
func generation(state uint64) uint32 { return uint32(state >> 32) }
func pending(state uint64) uint32    { return uint32(state & pendingMask) }

// Token identifies one in-flight event: its transaction record and the
// record's generation when the event was added. Records are reused once
// their transaction is done, and the generation tells a token of the
// current use from a stale one. The zero Token is invalid.
type Token struct {
	tx  *txn
	gen uint32
}

// Tracker is the in-order acknowledgement tracker.
//
// It is safe for concurrent use, with this division of work: one goroutine
// (the pipeline) calls Begin, Add, Commit and Idle, in the order the
// transactions arrive; any goroutine calls Ack, Safe and InFlight. Add and
// Ack are lock-free (two atomic operations each); the lock is taken once
// per transaction at Begin and Commit, and by the Ack that completes a
// transaction.
type Tracker struct {
	safe     atomic.Uint64 // pglogrepl.LSN; read lock-free by Safe
	inFlight atomic.Int64

	mu    sync.Mutex
	open  *txn   // the transaction between Begin and Commit, if any
	queue []*txn // unfinished transactions in commit order; queue[head] is the oldest
	head  int
	free  []*txn // done transactions kept for reuse, at most maxFree
}

// New returns a Tracker whose safe position starts at start, normally the
// slot's confirmed_flush_lsn. Safe never reports less than start.
func New(start pglogrepl.LSN) *Tracker {
	t := &Tracker{}
	t.safe.Store(uint64(start))
	return t
}

// Begin opens a transaction (pgoutput Begin). It panics if a transaction is
// already open: that would mean the stream and the tracker disagree, and
// guessing could confirm a position too early.
func (t *Tracker) Begin() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open != nil {
		panic("checkpoint: Begin while a transaction is open")
	}
	var tx *txn
	var gen uint32
	if n := len(t.free); n > 0 {
		tx = t.free[n-1]
		t.free[n-1] = nil
		t.free = t.free[:n-1]
		tx.end = 0
		// A new generation: tokens of the record's earlier use go stale.
		gen = generation(tx.state.Load()) + 1
	} else {
		tx = new(txn)
	}
	tx.state.Store(uint64(gen)<<32 | 1) // the open transaction holds itself back
	t.open = tx
	t.queue = append(t.queue, tx)
}

// Add records that one event of the open transaction is now in flight and
// returns the token to pass to Ack once the broker acknowledged it. Call
// Add before handing the event to the broker, so the Ack cannot come first.
// It panics if no transaction is open.
func (t *Tracker) Add() Token {
	// t.open is written only by the goroutine that calls Add, so reading
	// it without the lock is safe.
	tx := t.open
	if tx == nil {
		panic("checkpoint: Add outside a transaction")
	}
	state := tx.state.Add(1)
	t.inFlight.Add(1)
	return Token{tx: tx, gen: generation(state)}
}

// Ack records that the broker acknowledged the event of tok. It may be
// called from any goroutine, in any order, exactly once per token. It is
// cheap: it takes the lock only when it completes a transaction.
//
// It panics on a token whose transaction is already done: acknowledged
// again after its record was reused for a later transaction (the
// generation differs), or with nothing left pending. A second Ack while its
// transaction still waits for other events cannot be told from theirs (that
// would take state per event); it panics when the last of them comes, by
// which time Safe may have passed an unacknowledged event.
func (t *Tracker) Ack(tok Token) {
	t.inFlight.Add(-1)
	state := tok.tx.state.Add(^uint64(0)) // pending - 1
	if generation(state) != tok.gen {
		// Pending went from 0 to -1, borrowing from the generation, or the
		// record belongs to a later transaction now. Undo the decrement, so
		// a caller that recovers finds the record as it was.
		tok.tx.state.Add(1)
		if pending(state) == pendingMask && generation(state) == tok.gen-1 {
			panic("checkpoint: Ack of an event whose transaction has nothing pending (was its token acknowledged twice?)")
		}
		panic("checkpoint: Ack of a token from a transaction that is done and whose record was reused (was the token acknowledged twice?)")
	}
	if pending(state) == 0 {
		t.mu.Lock()
		t.advance()
		t.mu.Unlock()
	}
}

// Commit closes the open transaction. end is the commit's end LSN
// (TransactionEndLSN), the position after the commit record: confirming the
// commit LSN instead would replay the transaction. A transaction without
// events is done at once; Safe reaches end when every earlier transaction is
// done too. It panics if no transaction is open.
func (t *Tracker) Commit(end pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tx := t.open
	if tx == nil {
		panic("checkpoint: Commit outside a transaction")
	}
	t.open = nil
	tx.end = end
	state := tx.state.Add(^uint64(0)) // pending - 1
	if pending(state) == pendingMask {
		// Acks outnumbered Adds: the transaction already looked done.
		panic("checkpoint: Commit of a transaction with more Acks than events (was a token acknowledged twice?)")
	}
	if pending(state) == 0 {
		t.advance()
	}
}

// advance pops the done transactions at the head of the queue and moves the
// safe position to the end of the last one. t.mu must be held.
func (t *Tracker) advance() {
	var end pglogrepl.LSN
	for t.head < len(t.queue) {
		tx := t.queue[t.head]
		if pending(tx.state.Load()) != 0 {
			break
		}
		end = tx.end
		t.queue[t.head] = nil
		t.head++
		if len(t.free) < maxFree {
			t.free = append(t.free, tx)
		}
	}
	switch {
	case t.head == len(t.queue):
		t.queue = t.queue[:0]
		t.head = 0
	case t.head > 64 && t.head > len(t.queue)/2:
		// Keep the backing array bounded by the unfinished transactions.
		n := copy(t.queue, t.queue[t.head:])
		clear(t.queue[n:])
		t.queue = t.queue[:n]
		t.head = 0
	}
	if end > 0 {
		t.raise(end)
	}
}

// raise moves the safe position to lsn if that is further. t.mu must be
// held, so there is a single writer.
func (t *Tracker) raise(lsn pglogrepl.LSN) bool {
	if uint64(lsn) <= t.safe.Load() {
		return false
	}
	t.safe.Store(uint64(lsn))
	return true
}

// Idle handles a keepalive or any other sign that the server has nothing
// more before walEnd. If no transaction is open and nothing is in flight or
// waiting for earlier transactions, Safe moves to walEnd (if further) and
// Idle reports true; otherwise it changes nothing and reports false. This
// keeps an idle slot from pinning WAL without ever confirming past an
// unacknowledged event.
func (t *Tracker) Idle(walEnd pglogrepl.LSN) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open != nil || t.head < len(t.queue) {
		return false
	}
	return t.raise(walEnd)
}

// Safe returns the end LSN of the newest transaction such that it and every
// earlier transaction are fully acknowledged (or the start position, or the
// last idle position, whichever is newest). It never goes backwards and is
// lock-free.
func (t *Tracker) Safe() pglogrepl.LSN {
	return pglogrepl.LSN(t.safe.Load())
}

// InFlight returns how many events were added and not yet acknowledged.
func (t *Tracker) InFlight() int {
	return int(t.inFlight.Load())
}
