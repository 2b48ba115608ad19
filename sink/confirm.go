package sink

import (
	"context"
	"sync"
	"time"
)

// ConfirmFuncs are what a sink plugs into a ConfirmPipeline: how it starts
// one publish attempt, how it awaits the destination's confirmation, and
// what it logs and reports.
type ConfirmFuncs[T any] struct {
	// Send starts one attempt to publish it without waiting for the
	// confirmation; it may record in it what Wait needs. An error means
	// the attempt could not start. It runs on the goroutine of Submit or
	// on the ack goroutine.
	Send func(it T) error
	// Wait blocks until the destination confirmed (nil) or refused the
	// attempt Send started. It runs on the ack goroutine.
	Wait func(it T) error
	// Retryable reports whether another attempt may help after err. Nil
	// means every error may pass.
	Retryable func(err error) bool
	// Retrying is told of each retry before its backoff (to log it);
	// attempt counts the attempts made so far.
	Retrying func(it T, attempt int, err error)
	// Failed turns an error that ended its retries into the error its
	// ack gets; that error then fails every later event too (Sticky).
	Failed func(it T, attempts int, err error) error
	// Closed runs once at the end of Close, after the ack goroutine
	// ended: the place to close the connection.
	Closed func()
}

// ConfirmPipeline is the ack side of the sinks that publish asynchronously,
// with at most one event per key in flight (Gate), and wait for each
// publish's confirmation on one ack goroutine (NATS, RabbitMQ).
//
// Guarantees:
//   - Every event Submit accepted has its ack called exactly once, on the
//     ack goroutine: with nil once Wait confirmed an attempt, otherwise with
//     Failed's error.
//   - A failed attempt is sent again after Retry's backoff while Retryable
//     allows it, no event has failed for good, and less than Retry.Timeout
//     has passed since the event's first attempt. The backoff is slept on
//     the ack goroutine, so it delays the other acks too.
//   - Once an event failed for good, later attempts are not sent, and
//     their acks get Failed's error made from that failure, without
//     retries.
//   - Confirmations are awaited, and acks called, in the order the attempts
//     were sent (a retried event goes behind those sent meanwhile); the
//     events of one key in the order Submit accepted them, each sent only
//     after the previous one's ack.
//   - Close returns once every accepted event's ack was called, the ack
//     goroutine ended and Closed ran.
type ConfirmPipeline[T any] struct {
	retry   Retry
	f       ConfirmFuncs[T]
	gate    *Gate[*confirmItem[T]]
	pending chan *confirmItem[T] // attempts in flight, in send order
	failed  Sticky
	ackDone chan struct{}
	once    sync.Once
}

type confirmItem[T any] struct {
	it       T
	key      string
	ack      func(error)
	err      error // the attempt did not start (or the sink had failed)
	first    time.Time
	attempts int
}

// NewConfirmPipeline returns a pipeline of maxInFlight slots and starts its
// ack goroutine.
func NewConfirmPipeline[T any](maxInFlight int, retry Retry, f ConfirmFuncs[T]) *ConfirmPipeline[T] {
	p := &ConfirmPipeline[T]{
		retry:   retry,
		f:       f,
		gate:    NewGate[*confirmItem[T]](maxInFlight),
		pending: make(chan *confirmItem[T], maxInFlight),
		ackDone: make(chan struct{}),
	}
	go p.acks()
	return p
}

// Acquire takes an in-flight slot for the next Submit, blocking at the cap
// (backpressure). It returns ctx.Err() or ErrSinkClosed without one.
func (p *ConfirmPipeline[T]) Acquire(ctx context.Context) error { return p.gate.Acquire(ctx) }

// Submit sends it under key, or queues it behind key's event in flight,
// once Acquire took a slot. It returns ErrSinkClosed once Close has begun,
// and then never calls ack.
func (p *ConfirmPipeline[T]) Submit(key string, it T, ack func(error)) error {
	ci := &confirmItem[T]{it: it, key: key, ack: ack}
	send, err := p.gate.Admit(key, ci)
	if err != nil {
		return err
	}
	if send {
		p.send(ci)
	}
	return nil
}

// InFlight returns how many submitted events have not had their ack called.
func (p *ConfirmPipeline[T]) InFlight() int { return p.gate.InFlight() }

// Close stops accepting events, waits until every accepted event's ack was
// called, stops the ack goroutine and runs Closed. Calling it again waits
// for the first call and does nothing more.
func (p *ConfirmPipeline[T]) Close() {
	p.once.Do(func() {
		p.gate.Close()
		// Wait first: an ack may still send its key's next event to pending.
		p.gate.Wait()
		close(p.pending)
		<-p.ackDone
		p.f.Closed()
	})
}

// send starts one attempt; its result reaches the ack goroutine.
func (p *ConfirmPipeline[T]) send(ci *confirmItem[T]) {
	if ci.first.IsZero() {
		ci.first = time.Now()
	}
	ci.attempts++
	ci.err = p.failed.Get()
	if ci.err == nil {
		ci.err = p.f.Send(ci.it)
	}
	// Never blocks: pending has room for every in-flight event.
	p.pending <- ci
}

// acks is the ack goroutine.
func (p *ConfirmPipeline[T]) acks() {
	defer close(p.ackDone)
	for ci := range p.pending {
		err := ci.err
		if err == nil {
			err = p.f.Wait(ci.it)
		}
		if err != nil && (p.f.Retryable == nil || p.f.Retryable(err)) &&
			p.failed.Get() == nil && time.Since(ci.first) < p.retry.Timeout {
			p.f.Retrying(ci.it, ci.attempts, err)
			Sleep(nil, p.retry.Backoff(ci.attempts))
			p.send(ci)
			continue
		}
		if err != nil {
			err = p.f.Failed(ci.it, ci.attempts, err)
			p.failed.Set(err)
		}
		ci.ack(err)
		if next, ok := p.gate.Done(ci.key); ok {
			p.send(next)
		}
	}
}
