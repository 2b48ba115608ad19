package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	errFlaky = errors.New("flaky")
	errFatal = errors.New("fatal")
)

// fakeItem is one event of a fake destination; the test decides what each
// of its attempts gets.
type fakeItem struct {
	id, key string
	// sendErr and waitErr give the result of attempt n (1-based); nil
	// means success.
	sendErr func(n int) error
	waitErr func(n int) error

	attempt int  // of the latest Send
	sent    bool // the latest Send started an attempt
}

// fakeConfirms records what a ConfirmPipeline does with fakeItems.
type fakeConfirms struct {
	t *testing.T

	mu       sync.Mutex
	log      []string           // "send id", "ack id", in call order
	acks     map[string][]error // every ack call per id
	retrying map[string][]int   // attempt numbers passed to Retrying
	failed   map[string]int     // attempts passed to Failed
	closed   int
	closedAt int // acks called when Closed ran
	acked    chan string
}

func newFakeConfirms(t *testing.T) *fakeConfirms {
	return &fakeConfirms{
		t:        t,
		acks:     make(map[string][]error),
		retrying: make(map[string][]int),
		failed:   make(map[string]int),
		acked:    make(chan string, 1000),
	}
}

func (f *fakeConfirms) funcs(retryable func(error) bool) ConfirmFuncs[*fakeItem] {
	return ConfirmFuncs[*fakeItem]{
		Send: func(it *fakeItem) error {
			f.mu.Lock()
			f.log = append(f.log, "send "+it.id)
			f.mu.Unlock()
			it.attempt++
			var err error
			if it.sendErr != nil {
				err = it.sendErr(it.attempt)
			}
			it.sent = err == nil
			return err
		},
		Wait: func(it *fakeItem) error {
			if !it.sent {
				f.t.Errorf("Wait for %s attempt %d, which Send did not start", it.id, it.attempt)
			}
			if it.waitErr == nil {
				return nil
			}
			return it.waitErr(it.attempt)
		},
		Retryable: retryable,
		Retrying: func(it *fakeItem, attempt int, _ error) {
			f.mu.Lock()
			f.retrying[it.id] = append(f.retrying[it.id], attempt)
			f.mu.Unlock()
		},
		Failed: func(it *fakeItem, attempts int, err error) error {
			f.mu.Lock()
			f.failed[it.id] = attempts
			f.mu.Unlock()
			return fmt.Errorf("%s after %d attempts: %w", it.id, attempts, err)
		},
		Closed: func() {
			f.mu.Lock()
			f.closed++
			f.closedAt = f.count("ack ")
			f.mu.Unlock()
		},
	}
}

// count counts the entries of f.log that start with prefix; f.mu is held.
func (f *fakeConfirms) count(prefix string) int {
	n := 0
	for _, l := range f.log {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

func (f *fakeConfirms) ack(id string) func(error) {
	return func(err error) {
		f.mu.Lock()
		f.log = append(f.log, "ack "+id)
		f.acks[id] = append(f.acks[id], err)
		f.mu.Unlock()
		f.acked <- id
	}
}

// submit takes a slot and submits it.
func (f *fakeConfirms) submit(p *ConfirmPipeline[*fakeItem], it *fakeItem) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.t.Context(), 10*time.Second)
	defer cancel()
	if err := p.Acquire(ctx); err != nil {
		f.t.Fatalf("Acquire for %s: %v", it.id, err)
	}
	if err := p.Submit(it.key, it, f.ack(it.id)); err != nil {
		f.t.Fatalf("Submit %s: %v", it.id, err)
	}
}

// waitAcks waits until the acks of ids were called.
func (f *fakeConfirms) waitAcks(ids ...string) {
	f.t.Helper()
	deadline := time.After(10 * time.Second)
	for range ids {
		select {
		case <-f.acked:
		case <-deadline:
			f.t.Fatalf("acks of %v not all called within 10s", ids)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		if len(f.acks[id]) == 0 {
			f.t.Fatalf("ack of %s not called", id)
		}
	}
}

// closeWithin closes p, failing the test if that takes over 10s.
func closeWithin(t *testing.T, p *ConfirmPipeline[*fakeItem]) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		p.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s")
	}
}

// closeUnlessFailed closes p at the end of a test that passed: after a
// failure an event may still be retried, and Close would wait for it.
func closeUnlessFailed(t *testing.T, p *ConfirmPipeline[*fakeItem]) {
	t.Cleanup(func() {
		if !t.Failed() {
			p.Close()
		}
	})
}

// first returns the index in f.log of the first entry l, or -1.
func (f *fakeConfirms) first(l string) int { return slices.Index(f.log, l) }

// Every event is acked exactly once, the events of a key in submit order,
// each sent only after the previous one's ack, also when attempts fail
// (before being sent or at the confirmation) and are retried.
func TestConfirmPipelineAcksEveryEventOnceInKeyOrder(t *testing.T) {
	f := newFakeConfirms(t)
	// Below the total, so Submit also waits at the cap.
	p := NewConfirmPipeline(20, Retry{Timeout: time.Minute, Min: time.Microsecond, Max: time.Microsecond}, f.funcs(nil))
	const keys, per = 3, 50
	failFirst := func(n int) error {
		if n == 1 {
			return errFlaky
		}
		return nil
	}
	for i := range per {
		for k := range keys {
			it := &fakeItem{id: fmt.Sprintf("k%d-%d", k, i), key: fmt.Sprintf("k%d", k)}
			switch (i*keys + k) % 7 {
			case 3:
				it.sendErr = failFirst
			case 5:
				it.waitErr = failFirst
			}
			f.submit(p, it)
		}
	}
	closeWithin(t, p)
	p.Close()

	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range keys {
		prevAck := -1
		for i := range per {
			id := fmt.Sprintf("k%d-%d", k, i)
			if errs := f.acks[id]; len(errs) != 1 || errs[0] != nil {
				t.Fatalf("acks of %s = %v, want one nil", id, errs)
			}
			if s := f.first("send " + id); s < prevAck {
				t.Fatalf("%s sent (log entry %d) before the previous event of its key was acked (%d)", id, s, prevAck)
			}
			prevAck = f.first("ack " + id)
		}
	}
	if len(f.acks) != keys*per {
		t.Fatalf("%d events acked, want %d", len(f.acks), keys*per)
	}
	if f.closed != 1 || f.closedAt != keys*per {
		t.Fatalf("Closed ran %d times, after %d acks; want once after %d", f.closed, f.closedAt, keys*per)
	}
	if n := p.InFlight(); n != 0 {
		t.Fatalf("InFlight = %d after Close", n)
	}
}

// A failing event is sent again while less than Retry.Timeout has passed
// since its first attempt, and then no more; its ack gets Failed's error.
func TestConfirmPipelineRetriesUntilTheTimeout(t *testing.T) {
	f := newFakeConfirms(t)
	const timeout = 50 * time.Millisecond
	var mu sync.Mutex
	var sentAt, retryingAt []time.Time
	var failedAt time.Time
	funcs := f.funcs(nil)
	send, retrying, failed := funcs.Send, funcs.Retrying, funcs.Failed
	funcs.Send = func(it *fakeItem) error {
		mu.Lock()
		sentAt = append(sentAt, time.Now())
		mu.Unlock()
		return send(it)
	}
	funcs.Retrying = func(it *fakeItem, attempt int, err error) {
		mu.Lock()
		retryingAt = append(retryingAt, time.Now())
		mu.Unlock()
		retrying(it, attempt, err)
	}
	funcs.Failed = func(it *fakeItem, attempts int, err error) error {
		mu.Lock()
		failedAt = time.Now()
		mu.Unlock()
		return failed(it, attempts, err)
	}
	p := NewConfirmPipeline(10, Retry{Timeout: timeout, Min: time.Millisecond, Max: 5 * time.Millisecond}, funcs)
	closeUnlessFailed(t, p)
	submitted := time.Now() // before the pipeline's own start of the timeout
	f.submit(p, &fakeItem{id: "a", key: "a", waitErr: func(int) error { return errFlaky }})
	f.waitAcks("a")

	f.mu.Lock()
	defer f.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if errs := f.acks["a"]; len(errs) != 1 || !errors.Is(errs[0], errFlaky) {
		t.Fatalf("acks = %v, want one error wrapping %v", errs, errFlaky)
	}
	n := len(sentAt)
	if n < 2 {
		t.Fatalf("%d attempts, want retries within %v", n, timeout)
	}
	var want []int
	for i := 1; i < n; i++ {
		want = append(want, i)
	}
	if !slices.Equal(f.retrying["a"], want) || f.failed["a"] != n {
		t.Fatalf("Retrying told of attempts %v and Failed of %d, with %d attempts sent", f.retrying["a"], f.failed["a"], n)
	}
	for _, at := range retryingAt {
		if d := at.Sub(sentAt[0]); d >= timeout {
			t.Fatalf("retry decided %v after the first attempt, past the retry timeout %v", d, timeout)
		}
	}
	if d := failedAt.Sub(submitted); d < timeout {
		t.Fatalf("gave up %v after the first attempt, before the retry timeout %v", d, timeout)
	}
}

// Once an event failed for good, an attempt already in flight is not
// retried and later events are not sent; every ack gets an error.
func TestConfirmPipelineNoRetryAfterFailure(t *testing.T) {
	f := newFakeConfirms(t)
	// A retry would go on for an hour: past the tests' deadlines.
	retry := Retry{Timeout: time.Hour, Min: time.Millisecond, Max: time.Millisecond}
	p := NewConfirmPipeline(10, retry, f.funcs(func(err error) bool { return !errors.Is(err, errFatal) }))
	closeUnlessFailed(t, p)
	release := make(chan struct{})
	f.submit(p, &fakeItem{id: "a1", key: "a", waitErr: func(int) error { <-release; return errFatal }})
	f.submit(p, &fakeItem{id: "b", key: "b", waitErr: func(int) error { return errFlaky }})
	f.submit(p, &fakeItem{id: "a2", key: "a"})
	close(release)
	f.waitAcks("a1", "b", "a2")
	f.submit(p, &fakeItem{id: "c", key: "c"})
	f.waitAcks("c")

	f.mu.Lock()
	defer f.mu.Unlock()
	for id, want := range map[string]error{"a1": errFatal, "b": errFlaky, "a2": errFatal, "c": errFatal} {
		if errs := f.acks[id]; len(errs) != 1 || !errors.Is(errs[0], want) {
			t.Errorf("acks of %s = %v, want one error wrapping %v", id, errs, want)
		}
	}
	for id, want := range map[string]int{"a1": 1, "b": 1, "a2": 0, "c": 0} {
		if n := f.count("send " + id); n != want {
			t.Errorf("%s sent %d times, want %d", id, n, want)
		}
	}
	if len(f.retrying) != 0 {
		t.Errorf("retried after the failure: %v", f.retrying)
	}
}

// Close waits for the acks of the events in flight and of those queued
// behind them, then for the ack goroutine's end, and then runs Closed; Submit after
// Close fails without an ack.
func TestConfirmPipelineCloseWaitsForPendingAcks(t *testing.T) {
	f := newFakeConfirms(t)
	funcs := f.funcs(nil)
	var p *ConfirmPipeline[*fakeItem]
	closedHook := funcs.Closed
	funcs.Closed = func() {
		// The connection closes here: the ack goroutine must be done with it.
		select {
		case <-p.ackDone:
		default:
			t.Error("Closed ran before the ack goroutine ended")
		}
		closedHook()
	}
	p = NewConfirmPipeline(2, Retry{Timeout: time.Minute, Min: time.Millisecond, Max: time.Millisecond}, funcs)
	release := make(chan struct{})
	f.submit(p, &fakeItem{id: "a1", key: "a", waitErr: func(int) error { <-release; return nil }})
	f.submit(p, &fakeItem{id: "a2", key: "a"}) // queued behind a1
	closed := make(chan int)
	go func() {
		p.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		closed <- len(f.acks)
	}()
	// Both slots are taken, so Acquire waits until Close has begun.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := p.Acquire(ctx); !errors.Is(err, ErrSinkClosed) {
		t.Fatalf("Acquire while closing = %v, want ErrSinkClosed", err)
	}
	close(release)
	select {
	case n := <-closed:
		if n != 2 {
			t.Fatalf("Close returned after %d acks, want 2", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s")
	}
	f.mu.Lock()
	if f.closed != 1 || f.closedAt != 2 {
		t.Fatalf("Closed ran %d times, after %d acks; want once after 2", f.closed, f.closedAt)
	}
	f.mu.Unlock()
	if err := p.Acquire(t.Context()); err != nil {
		t.Fatal(err) // a slot is free: Acquire does not block, Submit refuses
	}
	if err := p.Submit("b", &fakeItem{id: "b", key: "b"}, f.ack("b")); !errors.Is(err, ErrSinkClosed) {
		t.Fatalf("Submit after Close = %v, want ErrSinkClosed", err)
	}
	p.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed != 1 || len(f.acks["b"]) != 0 {
		t.Fatalf("after a second Close: Closed ran %d times, ack of b called %d times", f.closed, len(f.acks["b"]))
	}
}
