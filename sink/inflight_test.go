package sink

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSlotsBlockAtTheCapAndWakeOnClose(t *testing.T) {
	s := NewSlots(1)
	if err := s.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := s.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire at the cap = %v, want the context's error", err)
	}
	done := make(chan error)
	go func() { done <- s.Acquire(t.Context()) }()
	s.Close()
	if err := <-done; !errors.Is(err, ErrSinkClosed) {
		t.Fatalf("blocked Acquire after Close = %v, want ErrSinkClosed", err)
	}
	if s.InFlight() != 1 {
		t.Fatalf("InFlight = %d, want the slot still taken", s.InFlight())
	}
	s.Release()
	if s.InFlight() != 0 {
		t.Fatalf("InFlight = %d after Release", s.InFlight())
	}
}

func TestGateSendsOnePerKeyInOrder(t *testing.T) {
	g := NewGate[int](10)
	admit := func(key string, it int) bool {
		t.Helper()
		if err := g.Acquire(t.Context()); err != nil {
			t.Fatal(err)
		}
		send, err := g.Admit(key, it)
		if err != nil {
			t.Fatal(err)
		}
		return send
	}
	if !admit("a", 1) || admit("a", 2) || admit("a", 3) || !admit("b", 1) {
		t.Fatal("want only the first event of each key sent at once")
	}
	if next, ok := g.Done("a"); !ok || next != 2 {
		t.Fatalf("Done(a) = %d, %v; want 2", next, ok)
	}
	if next, ok := g.Done("a"); !ok || next != 3 {
		t.Fatalf("Done(a) = %d, %v; want 3", next, ok)
	}
	if _, ok := g.Done("a"); ok {
		t.Fatal("Done(a) returned an event after the last")
	}
	g.Close()
	if err := g.Acquire(t.Context()); err != nil {
		t.Fatal(err) // a free slot is still taken; Admit refuses
	}
	if _, err := g.Admit("c", 1); !errors.Is(err, ErrSinkClosed) {
		t.Fatalf("Admit after Close = %v, want ErrSinkClosed", err)
	}
	g.Done("b")
	g.Wait()
	if g.InFlight() != 0 {
		t.Fatalf("InFlight = %d after every Done", g.InFlight())
	}
}
