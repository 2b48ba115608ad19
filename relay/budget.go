package relay

import (
	"context"
	"sync"

	"github.com/jackc/pglogrepl"
)

// DefaultMaxInFlightBytes is the byte budget of events published and not
// yet acknowledged when Config.MaxInFlightBytes is zero.
const DefaultMaxInFlightBytes = 64 << 20

// byteBudget bounds the bytes of the events between Publish and their ack,
// together with the publisher's own cap on their number: a few large
// events behind a frozen broker must not take the relay's memory with
// them. One event is always admitted when nothing is in flight, however
// large, so an event over the budget still goes through (alone).
type byteBudget struct {
	max int64

	mu      sync.Mutex
	used    int64
	waiting bool
	wake    chan struct{} // closed and replaced when bytes are released to a waiter
}

func newByteBudget(max int64) *byteBudget {
	return &byteBudget{max: max, wake: make(chan struct{})}
}

// acquire takes n bytes, blocking while they do not fit. It returns
// ctx's cause if ctx ends first.
func (b *byteBudget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		b.waiting = true
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// release returns n bytes; it never blocks (it runs on the ack goroutine).
func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	if b.waiting {
		b.waiting = false
		close(b.wake)
		b.wake = make(chan struct{})
	}
	b.mu.Unlock()
}

// inUse returns the bytes acquired and not released.
func (b *byteBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// skipList holds the events `outbox-relay slot skip` recorded for the
// slot: by event id, or by WAL position for a row whose id could not be
// read. A nil list skips nothing.
type skipList struct {
	ids  map[string]bool
	lsns map[pglogrepl.LSN]bool
}

// skip reports whether the event with id at lsn is to be skipped.
func (s *skipList) skip(id string, lsn pglogrepl.LSN) bool {
	if s == nil {
		return false
	}
	return id != "" && s.ids[id] || s.lsns[lsn]
}

// maxDeadLettered bounds the dead-lettered event ids a relay remembers.
const maxDeadLettered = 10000

// deadLettered remembers, across the sessions of one relay, the events
// whose dead letter the broker acknowledged. A session that ends before
// their transaction is confirmed (a later record of the same partition
// failed) meets them again; sending another dead letter, and failing the
// same way behind it, would loop.
type deadLettered struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (d *deadLettered) add(id string) {
	if id == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ids == nil || len(d.ids) >= maxDeadLettered {
		d.ids = make(map[string]bool)
	}
	d.ids[id] = true
}

func (d *deadLettered) has(id string) bool {
	if d == nil || id == "" {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ids[id]
}
