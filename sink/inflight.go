package sink

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Defaults shared by the NATS, RabbitMQ, Redis, webhook and stdout sinks.
const (
	// DefaultRetryTimeout bounds how long one event is retried before its
	// error reaches the ack.
	DefaultRetryTimeout = 30 * time.Second
	// DefaultRetryMin and DefaultRetryMaxBackoff bound the exponential
	// backoff between attempts.
	DefaultRetryMin        = 100 * time.Millisecond
	DefaultRetryMaxBackoff = 5 * time.Second
)

// Retry is the retry policy of the non-Kafka sinks: attempts continue with
// exponential backoff (with jitter) between Min and Max until Timeout has
// passed since the first attempt.
type Retry struct {
	Timeout time.Duration
	Min     time.Duration
	Max     time.Duration
}

func (r Retry) withDefaults() Retry {
	if r.Timeout == 0 {
		r.Timeout = DefaultRetryTimeout
	}
	if r.Min == 0 {
		r.Min = DefaultRetryMin
	}
	if r.Max == 0 {
		r.Max = DefaultRetryMaxBackoff
	}
	if r.Max < r.Min {
		r.Max = r.Min
	}
	return r
}

// backoff returns the wait before attempt n (n >= 1 is the first retry).
func (r Retry) backoff(n int) time.Duration {
	d := r.Min
	for i := 1; i < n && d < r.Max; i++ {
		d *= 2
	}
	d = min(d, r.Max)
	// Up to 20% jitter, so many keys do not retry in lockstep.
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// sleepCtx waits d or until done is closed; it reports whether the full
// wait passed.
func sleepCtx(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// gate is the in-flight bookkeeping of the sinks that keep at most one
// publish per aggregate in flight: a semaphore for the in-flight cap, and a
// queue per busy key holding the events that wait behind the one in flight.
type gate[T any] struct {
	slots   chan struct{}
	closing chan struct{}

	mu     sync.Mutex
	closed bool
	busy   map[string][]T // key in flight -> events waiting behind it
	wg     sync.WaitGroup // one count per event admitted and not yet acked
}

func newGate[T any](maxInFlight int) *gate[T] {
	return &gate[T]{
		slots:   make(chan struct{}, maxInFlight),
		closing: make(chan struct{}),
		busy:    make(map[string][]T),
	}
}

// acquire takes an in-flight slot, blocking at the cap (backpressure).
func (g *gate[T]) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case g.slots <- struct{}{}:
		return nil
	default:
	}
	select {
	case g.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-g.closing:
		return errSinkClosed
	}
}

// admit registers it under key once a slot is held. It returns send=true
// when nothing of key is in flight, so the caller sends it now; otherwise
// it is queued and released later by done. It returns errSinkClosed (and
// frees the slot) once close has begun.
func (g *gate[T]) admit(key string, it T) (send bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		<-g.slots
		return false, errSinkClosed
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

// done is called after the ack of key's in-flight event was called. It
// frees the event's slot and returns the next event of key, which the
// caller must now send, if one is waiting.
func (g *gate[T]) done(key string) (next T, ok bool) {
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
	<-g.slots
	g.wg.Done()
	return next, ok
}

// close stops admitting events; wait then waits for every admitted one.
func (g *gate[T]) close() {
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		close(g.closing)
	}
	g.mu.Unlock()
}

func (g *gate[T]) wait() { g.wg.Wait() }

// inFlight returns how many admitted events have not been acked.
func (g *gate[T]) inFlight() int { return len(g.slots) }

// sticky remembers the first permanent failure of a sink: once one event
// failed, every later one fails too without being sent, so nothing is
// published past a failed event of the same aggregate (the relay resumes
// from the slot in a new session).
type sticky struct {
	mu  sync.Mutex
	err error
}

func (s *sticky) get() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *sticky) set(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}
