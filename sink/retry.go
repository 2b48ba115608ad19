package sink

import (
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

// WithDefaults fills the zero fields with the defaults above.
func (r Retry) WithDefaults() Retry {
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

// Backoff returns the wait before attempt n (n >= 1 is the first retry).
func (r Retry) Backoff(n int) time.Duration {
	d := r.Min
	for i := 1; i < n && d < r.Max; i++ {
		d *= 2
	}
	d = min(d, r.Max)
	// Up to 20% jitter, so many keys do not retry in lockstep.
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// Sleep waits d or until done is closed; it reports whether the full wait
// passed. A nil done waits the full d.
func Sleep(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// Sticky remembers the first permanent failure of a sink: once one event
// failed, every later one fails too without being sent, so nothing is
// published past a failed event of the same aggregate (the relay resumes
// from the slot in a new session).
type Sticky struct {
	mu  sync.Mutex
	err error
}

// Get returns the failure, or nil.
func (s *Sticky) Get() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Set records err unless a failure is recorded already.
func (s *Sticky) Set(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}
