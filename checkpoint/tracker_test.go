package checkpoint

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pglogrepl"
)

// step is one call in a table test. Exactly one of its fields says what.
type step struct {
	begin  bool
	add    string // name the token
	ack    string
	commit pglogrepl.LSN
	idle   pglogrepl.LSN
	// wantSafe is checked after every step; wantIdle after idle steps.
	wantSafe pglogrepl.LSN
	wantIdle bool
}

func TestTracker(t *testing.T) {
	tests := []struct {
		name  string
		start pglogrepl.LSN
		steps []step
	}{
		{
			name:  "an empty transaction is done at commit",
			start: 100,
			steps: []step{
				{begin: true, wantSafe: 100},
				{commit: 200, wantSafe: 200},
			},
		},
		{
			name:  "safe waits for the last ack of a transaction",
			start: 100,
			steps: []step{
				{begin: true, wantSafe: 100},
				{add: "a", wantSafe: 100},
				{add: "b", wantSafe: 100},
				{commit: 200, wantSafe: 100},
				{ack: "b", wantSafe: 100},
				{ack: "a", wantSafe: 200},
			},
		},
		{
			name:  "acks before commit do not finish the open transaction",
			start: 100,
			steps: []step{
				{begin: true},
				{add: "a"},
				{ack: "a", wantSafe: 100},
				{commit: 200, wantSafe: 200},
			},
		},
		{
			name:  "a later transaction acked first waits for the earlier one",
			start: 100,
			steps: []step{
				{begin: true},
				{add: "a"},
				{commit: 200, wantSafe: 100},
				{begin: true, wantSafe: 100},
				{add: "b", wantSafe: 100},
				{commit: 300, wantSafe: 100},
				{begin: true, wantSafe: 100},
				{commit: 400, wantSafe: 100}, // empty, but behind a
				{ack: "b", wantSafe: 100},
				{ack: "a", wantSafe: 400},
			},
		},
		{
			name:  "many events at one LSN are tracked by transaction",
			start: 100,
			steps: []step{
				{begin: true},
				{add: "a"}, {add: "b"}, {add: "c"},
				{commit: 150},
				{ack: "a", wantSafe: 100},
				{ack: "c", wantSafe: 100},
				{ack: "b", wantSafe: 150},
			},
		},
		{
			name:  "idle advances only when nothing is open or in flight",
			start: 100,
			steps: []step{
				{idle: 150, wantSafe: 150, wantIdle: true},
				{idle: 120, wantSafe: 150, wantIdle: false}, // never backwards
				{begin: true, wantSafe: 150},
				{idle: 200, wantSafe: 150, wantIdle: false}, // open transaction
				{add: "a", wantSafe: 150},
				{commit: 250, wantSafe: 150},
				{idle: 300, wantSafe: 150, wantIdle: false}, // a in flight
				{ack: "a", wantSafe: 250},
				{idle: 300, wantSafe: 300, wantIdle: true},
			},
		},
		{
			name:  "a commit below the start does not move safe backwards",
			start: 500,
			steps: []step{
				{begin: true},
				{commit: 400, wantSafe: 500},
				{begin: true},
				{commit: 600, wantSafe: 600},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(tt.start)
			toks := map[string]Token{}
			want := tt.start
			for i, s := range tt.steps {
				switch {
				case s.begin:
					tr.Begin()
				case s.add != "":
					toks[s.add] = tr.Add()
				case s.ack != "":
					tr.Ack(toks[s.ack])
				case s.commit != 0:
					tr.Commit(s.commit)
				case s.idle != 0:
					if got := tr.Idle(s.idle); got != s.wantIdle {
						t.Fatalf("step %d: Idle(%s) = %v, want %v", i, s.idle, got, s.wantIdle)
					}
				}
				if s.wantSafe != 0 {
					want = s.wantSafe
				}
				if got := tr.Safe(); got != want {
					t.Fatalf("step %d: Safe() = %s, want %s", i, got, want)
				}
			}
		})
	}
}

func TestTrackerInFlight(t *testing.T) {
	tr := New(0)
	tr.Begin()
	a, b := tr.Add(), tr.Add()
	tr.Commit(10)
	tr.Begin()
	c := tr.Add()
	if got := tr.InFlight(); got != 3 {
		t.Fatalf("InFlight() = %d, want 3", got)
	}
	tr.Ack(b)
	tr.Ack(c)
	tr.Ack(a)
	if got := tr.InFlight(); got != 0 {
		t.Fatalf("InFlight() = %d after every ack, want 0", got)
	}
}

func TestTrackerMisusePanics(t *testing.T) {
	for name, f := range map[string]func(*Tracker){
		"Add outside a transaction":    func(tr *Tracker) { tr.Add() },
		"Commit outside a transaction": func(tr *Tracker) { tr.Commit(1) },
		"Begin twice":                  func(tr *Tracker) { tr.Begin(); tr.Begin() },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			f(New(0))
		})
	}
}

// mustPanic runs f and returns the panic's message, failing when there is
// none.
func mustPanic(t *testing.T, f func()) (msg string) {
	t.Helper()
	defer func() {
		r := recover()
		if r == nil {
			t.Fatal("no panic")
		}
		msg = fmt.Sprint(r)
	}()
	f()
	return ""
}

// A second Ack of a token whose transaction record was recycled for a later
// transaction must not count against that transaction: it would let Safe
// pass the later transaction's unacknowledged event.
func TestTrackerSecondAckAfterRecyclePanics(t *testing.T) {
	tr := New(0)
	tr.Begin()
	stale := tr.Add()
	tr.Commit(10)
	tr.Ack(stale) // done: the record goes back to the free list
	tr.Begin()    // and is reused here
	tr.Add()
	tr.Commit(20)
	msg := mustPanic(t, func() { tr.Ack(stale) })
	if !strings.Contains(msg, "reused") || !strings.Contains(msg, "acknowledged twice") {
		t.Errorf("panic %q does not say the token is stale", msg)
	}
	if got := tr.Safe(); got != 10 {
		t.Errorf("Safe() = %s after the stale Ack, want 0/A: the later transaction is still in flight", got)
	}
}

// A second Ack before the record is reused finds nothing pending.
func TestTrackerSecondAckWithNothingPendingPanics(t *testing.T) {
	tr := New(0)
	tr.Begin()
	tok := tr.Add()
	tr.Commit(10)
	tr.Ack(tok)
	msg := mustPanic(t, func() { tr.Ack(tok) })
	if !strings.Contains(msg, "nothing pending") || !strings.Contains(msg, "acknowledged twice") {
		t.Errorf("panic %q does not say the transaction had nothing pending", msg)
	}
}

// Acks outnumbering the events of an open transaction are caught at
// Commit at the latest.
func TestTrackerMoreAcksThanEventsPanicsAtCommit(t *testing.T) {
	tr := New(0)
	tr.Begin()
	tok := tr.Add()
	tr.Ack(tok)
	tr.Ack(tok)
	msg := mustPanic(t, func() { tr.Commit(10) })
	if !strings.Contains(msg, "more Acks than events") {
		t.Errorf("panic %q", msg)
	}
}

// TestTrackerMemoryBounded checks that finished transactions are released:
// a long run of acknowledged transactions leaves nothing queued.
func TestTrackerMemoryBounded(t *testing.T) {
	tr := New(0)
	var held []Token
	for i := range 100_000 {
		tr.Begin()
		tok := tr.Add()
		tr.Commit(pglogrepl.LSN(i + 1))
		if i%1000 == 0 {
			held = append(held, tok) // a few stay in flight for a while
			continue
		}
		tr.Ack(tok)
		if len(held) > 3 {
			tr.Ack(held[0])
			held = held[1:]
		}
	}
	for _, tok := range held {
		tr.Ack(tok)
	}
	if got, want := tr.Safe(), pglogrepl.LSN(100_000); got != want {
		t.Fatalf("Safe() = %s, want %s", got, want)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if n := len(tr.queue) - tr.head; n != 0 {
		t.Fatalf("%d transactions still queued", n)
	}
	if c := cap(tr.queue); c > 8192 {
		t.Fatalf("queue capacity %d after draining, want it bounded by the peak in flight", c)
	}
	if n := len(tr.free); n > maxFree {
		t.Fatalf("%d recycled transactions kept, want at most %d", n, maxFree)
	}
}

// model is the obvious, slow implementation the Tracker must agree with.
type model struct {
	safe pglogrepl.LSN
	open int // index into txns of the open transaction, or -1
	txns []modelTxn
}

type modelTxn struct {
	committed bool
	end       pglogrepl.LSN
	unacked   int
}

func (m *model) done(i int) bool { return m.txns[i].committed && m.txns[i].unacked == 0 }

// expected recomputes the safe position from scratch.
func (m *model) advance() {
	for len(m.txns) > 0 && m.done(0) {
		m.safe = max(m.safe, m.txns[0].end)
		m.txns = m.txns[1:]
		if m.open >= 0 {
			m.open--
		}
	}
}

// runOps drives a Tracker and the model with the operations encoded in ops
// and checks after every one that the Tracker's Safe equals the model's,
// never decreases, and never passes an unfinished transaction. At the end
// it acknowledges everything and checks Safe reached the last commit's end.
func runOps(t *testing.T, ops []byte) {
	t.Helper()
	const start = pglogrepl.LSN(1000)
	tr := New(start)
	m := &model{safe: start, open: -1}
	type pending struct {
		tok Token
		txn *modelTxn // stable: only m.txns' slice header moves
	}
	var inFlight []pending
	var ptrs []*modelTxn // mirrors m.txns by pointer, oldest first
	cursor := start      // the WAL position the fake stream has reached
	var lastEnd pglogrepl.LSN
	prev := tr.Safe()

	check := func(what string) {
		t.Helper()
		got := tr.Safe()
		if got < prev {
			t.Fatalf("after %s: Safe went backwards from %s to %s", what, prev, got)
		}
		prev = got
		if got != m.safe {
			t.Fatalf("after %s: Safe() = %s, model says %s", what, got, m.safe)
		}
		for _, p := range ptrs {
			if p.committed && p.unacked > 0 && got >= p.end {
				t.Fatalf("after %s: Safe() = %s reaches unfinished transaction ending at %s", what, got, p.end)
			}
		}
		if tr.InFlight() != len(inFlight) {
			t.Fatalf("after %s: InFlight() = %d, want %d", what, tr.InFlight(), len(inFlight))
		}
	}
	sync := func() {
		// Drop finished transactions from the pointer mirror, as the model does.
		for len(ptrs) > 0 && ptrs[0].committed && ptrs[0].unacked == 0 {
			ptrs = ptrs[1:]
		}
	}

	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i]%5, ops[i+1]
		switch op {
		case 0: // begin, or commit if open
			if m.open < 0 {
				tr.Begin()
				mt := &modelTxn{}
				ptrs = append(ptrs, mt)
				m.txns = append(m.txns, modelTxn{})
				m.open = len(m.txns) - 1
				check("Begin")
				continue
			}
			fallthrough
		case 1: // commit
			if m.open < 0 {
				continue
			}
			cursor += pglogrepl.LSN(arg) + 1
			tr.Commit(cursor)
			lastEnd = cursor
			mt := ptrs[len(ptrs)-1]
			mt.committed, mt.end = true, cursor
			m.txns[m.open].committed, m.txns[m.open].end = true, cursor
			m.open = -1
			m.advance()
			sync()
			check("Commit")
		case 2: // add
			if m.open < 0 {
				continue
			}
			for range arg%4 + 1 {
				tok := tr.Add()
				mt := ptrs[len(ptrs)-1]
				mt.unacked++
				m.txns[m.open].unacked++
				inFlight = append(inFlight, pending{tok, mt})
			}
			check("Add")
		case 3: // ack a random in-flight event
			if len(inFlight) == 0 {
				continue
			}
			j := int(arg) % len(inFlight)
			p := inFlight[j]
			inFlight[j] = inFlight[len(inFlight)-1]
			inFlight = inFlight[:len(inFlight)-1]
			tr.Ack(p.tok)
			p.txn.unacked--
			for k, q := range ptrs {
				if q == p.txn {
					m.txns[k].unacked--
				}
			}
			m.advance()
			sync()
			check("Ack")
		case 4: // keepalive, sometimes behind the cursor
			walEnd := cursor + pglogrepl.LSN(arg%16)
			if arg%7 == 0 {
				walEnd = cursor - pglogrepl.LSN(arg)
			}
			cursor = max(cursor, walEnd)
			want := m.open < 0 && len(m.txns) == 0 && walEnd > m.safe
			if got := tr.Idle(walEnd); got != want {
				t.Fatalf("Idle(%s) = %v, want %v", walEnd, got, want)
			}
			if want {
				m.safe = walEnd
			}
			check("Idle")
		}
	}

	// Finish: close the open transaction and acknowledge everything.
	if m.open >= 0 {
		cursor++
		tr.Commit(cursor)
		lastEnd = cursor
		mt := ptrs[len(ptrs)-1]
		mt.committed, mt.end = true, cursor
		m.txns[m.open].committed, m.txns[m.open].end = true, cursor
		m.open = -1
		m.advance()
		sync()
		check("final Commit")
	}
	for len(inFlight) > 0 {
		p := inFlight[len(inFlight)-1]
		inFlight = inFlight[:len(inFlight)-1]
		tr.Ack(p.tok)
		p.txn.unacked--
		for k, q := range ptrs {
			if q == p.txn {
				m.txns[k].unacked--
			}
		}
		m.advance()
		sync()
		check("final Ack")
	}
	if got := tr.Safe(); got < lastEnd {
		t.Fatalf("after every ack: Safe() = %s, want at least the last commit's end %s", got, lastEnd)
	}
	if tr.InFlight() != 0 {
		t.Fatalf("after every ack: InFlight() = %d", tr.InFlight())
	}
}

// TestTrackerProperty runs random operation sequences (random ack order
// included) against the model on every `go test`.
func TestTrackerProperty(t *testing.T) {
	seeds := 500
	if testing.Short() {
		seeds = 50
	}
	for seed := range seeds {
		r := rand.New(rand.NewPCG(uint64(seed), 0x0c7))
		ops := make([]byte, 2*(10+r.IntN(400)))
		for i := range ops {
			ops[i] = byte(r.UintN(256))
		}
		t.Run("", func(t *testing.T) { runOps(t, ops) })
	}
}

func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 0, 2, 3, 1, 5, 3, 0})
	f.Add([]byte{0, 0, 2, 1, 1, 1, 0, 0, 2, 2, 1, 9, 3, 1, 4, 4, 3, 0, 4, 7})
	f.Add([]byte{4, 3, 0, 0, 1, 0, 4, 14, 0, 0, 2, 0, 4, 1, 1, 2, 4, 1, 3, 0, 4, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 4096 {
			return
		}
		runOps(t, ops)
	})
}

// TestTrackerConcurrentAcks acknowledges from another goroutine, in a
// shuffled order, while a third goroutine watches Safe as the WAL reader
// does: Safe must never decrease, never cover a transaction with an
// unacknowledged event, and end at the last commit.
func TestTrackerConcurrentAcks(t *testing.T) {
	const txns = 5000
	events := func(i int) int64 { return int64(i % 5) } // transaction i ends at LSN (i+1)*10
	tr := New(0)
	acked := make([]atomic.Int64, txns)
	type ev struct {
		tok Token
		txn int
	}
	acks := make(chan []ev, 16)

	var acker sync.WaitGroup
	acker.Go(func() { // the sink's ack goroutine
		r := rand.New(rand.NewPCG(1, 2))
		var held []ev
		ack := func(e ev) {
			acked[e.txn].Add(1) // before Ack, so a Safe that reflects it sees it
			tr.Ack(e.tok)
		}
		for batch := range acks {
			held = append(held, batch...)
			r.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
			n := len(held) / 2
			for _, e := range held[:n] {
				ack(e)
			}
			held = append(held[:0], held[n:]...)
		}
		for _, e := range held {
			ack(e)
		}
	})

	stop := make(chan struct{})
	errs := make(chan error, 1)
	var reader sync.WaitGroup
	reader.Go(func() { // the WAL reader
		var prev pglogrepl.LSN
		verified := 0 // transactions [0, verified) were checked fully acked
		for {
			got := tr.Safe()
			if got < prev {
				errs <- fmt.Errorf("Safe went backwards from %s to %s", prev, got)
				return
			}
			prev = got
			for ; verified < int(got/10); verified++ {
				if n := acked[verified].Load(); n != events(verified) {
					errs <- fmt.Errorf("Safe() = %s covers transaction %d with %d of %d events acked", got, verified, n, events(verified))
					return
				}
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	})

	for i := range txns {
		tr.Begin()
		batch := make([]ev, 0, events(i))
		for range events(i) {
			batch = append(batch, ev{tr.Add(), i})
		}
		tr.Commit(pglogrepl.LSN(i+1) * 10)
		acks <- batch
	}
	close(acks)
	acker.Wait()
	close(stop)
	reader.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if got, want := tr.Safe(), pglogrepl.LSN(txns*10); got != want {
		t.Fatalf("Safe() = %s after every ack, want %s", got, want)
	}
	if got := tr.InFlight(); got != 0 {
		t.Fatalf("InFlight() = %d after every ack", got)
	}
}
