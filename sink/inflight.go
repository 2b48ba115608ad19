package sink

import (
	"context"
	"sync"
)

// Slots is a sink's in-flight cap: a semaphore that Publish fills and the
// ack side empties. Acquire blocks at the cap (backpressure) until a slot
// frees, the context ends or Close is called.
type Slots struct {
	c       chan struct{}
	closing chan struct{}
	once    sync.Once
}

// NewSlots returns a cap of n in-flight events.
func NewSlots(n int) *Slots {
	return &Slots{c: make(chan struct{}, n), closing: make(chan struct{})}
}

// Acquire takes a slot. It returns ctx.Err() if ctx ends first, or
// ErrSinkClosed once Close was called, without a slot.
func (s *Slots) Acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case s.c <- struct{}{}:
		return nil
	default:
	}
	select {
	case s.c <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return ErrSinkClosed
	}
}

// Release frees a slot taken by Acquire.
func (s *Slots) Release() { <-s.c }

// InFlight returns how many slots are taken.
func (s *Slots) InFlight() int { return len(s.c) }

// Close wakes the Acquire calls blocked at the cap, and makes later ones
// that would block fail; slots already taken stay taken until released.
// Calling it again does nothing.
func (s *Slots) Close() { s.once.Do(func() { close(s.closing) }) }

// Closing returns a channel closed by Close.
func (s *Slots) Closing() <-chan struct{} { return s.closing }

// Gate is the in-flight bookkeeping of the sinks that keep at most one
// publish per aggregate in flight: Slots for the in-flight cap, and a
// queue per busy key holding the events that wait behind the one in flight.
type Gate[T any] struct {
	slots *Slots

	mu     sync.Mutex
	closed bool
	busy   map[string][]T // key in flight -> events waiting behind it
	wg     sync.WaitGroup // one count per event admitted and not yet acked
}

// NewGate returns a gate of maxInFlight slots.
func NewGate[T any](maxInFlight int) *Gate[T] {
	return &Gate[T]{slots: NewSlots(maxInFlight), busy: make(map[string][]T)}
}

// Acquire takes an in-flight slot, blocking at the cap (backpressure).
func (g *Gate[T]) Acquire(ctx context.Context) error { return g.slots.Acquire(ctx) }

// Admit registers it under key once a slot is held. It returns send=true
// when nothing of key is in flight, so the caller sends it now; otherwise
// it is queued and released later by Done. It returns ErrSinkClosed (and
// frees the slot) once Close has begun.
func (g *Gate[T]) Admit(key string, it T) (send bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.slots.Release()
		return false, ErrSinkClosed
	}
	g.wg.Add(1)
	q, inFlight := g.busy[key]
	if inFlight {
		g.busy[key] = append(q, it)
		return false, nil
	}
	g.busy[key] = nil
	return true, nil
}

// Done is called after the ack of key's in-flight event was called. It
// frees the event's slot and returns the next event of key, which the
// caller must now send, if one is waiting.
func (g *Gate[T]) Done(key string) (next T, ok bool) {
	g.mu.Lock()
	q := g.busy[key]
	if len(q) == 0 {
		delete(g.busy, key)
	} else {
		next, ok = q[0], true
		q[0] = *new(T)
		g.busy[key] = q[1:]
	}
	g.mu.Unlock()
	g.slots.Release()
	g.wg.Done()
	return next, ok
}

// Close stops admitting events; Wait then waits for every admitted one.
func (g *Gate[T]) Close() {
	g.mu.Lock()
	g.closed = true
	g.slots.Close()
	g.mu.Unlock()
}

// Wait waits until every admitted event was Done.
func (g *Gate[T]) Wait() { g.wg.Wait() }

// InFlight returns how many admitted events have not been acked.
func (g *Gate[T]) InFlight() int { return g.slots.InFlight() }
