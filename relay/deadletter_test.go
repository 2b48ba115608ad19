package relay

import (
	"errors"
	"strings"
	"testing"
)

// An event the broker accepted and then rejected for good (its ack) is
// dead-lettered; the slot moves past it only once the dead letter is
// acknowledged, and the relay remembers it was sent.
func TestEventRejectedOnItsAckIsDeadLettered(t *testing.T) {
	pub := newFakePublisher(false)
	tp := startPipeline(t, pub, true, 1<<20)
	var w wal
	m, end := w.txn(pgInsert("e1", "a1", `{"n":1}`, `{}`), pgInsert("e2", "a1", `{"n":2}`, `{}`))
	tp.msgs <- m
	evs := pub.waitN(t, 2)
	evs[1].ack(nil)
	evs[0].ack(rejected{"record too large"})
	evs = pub.waitN(t, 3)
	dl := evs[2]
	if dl.ev.Topic != "dlq" || dl.ev.ID != "e1" {
		t.Fatalf("published %s to %s, want e1's dead letter to dlq", dl.ev.ID, dl.ev.Topic)
	}
	if got := tp.tracker.Safe(); got >= end {
		t.Fatalf("safe position %s before the dead letter was acknowledged, transaction ends at %s", got, end)
	}
	if tp.deadLetters.sent.has("e1") {
		t.Fatal("e1 remembered as dead-lettered before its dead letter was acknowledged")
	}
	dl.ack(nil)
	tp.waitSafe(t, end)
	if !tp.deadLetters.sent.has("e1") {
		t.Fatal("e1 not remembered as dead-lettered")
	}
}

// A dead letter the broker rejects on its ack is sent again minimal; one
// rejected even then stops the relay at the event.
func TestDeadLetterRejectedOnItsAckIsSentMinimalThenStops(t *testing.T) {
	pub := newFakePublisher(false)
	tp := startPipeline(t, pub, true, 1<<20)
	var w wal
	m, _ := w.txn(pgInsert("e1", "a1", `{"n":1}`, `{"h":"v"}`))
	tp.msgs <- m
	evs := pub.waitN(t, 1)
	evs[0].ack(rejected{"record too large"})
	full := pub.waitN(t, 2)[1]
	if full.ev.Topic != "dlq" || len(full.ev.Payload) == 0 {
		t.Fatalf("first dead letter to %s with %d bytes of payload, want the full one to dlq", full.ev.Topic, len(full.ev.Payload))
	}
	full.ack(rejected{"dead letter too large"})
	minimal := pub.waitN(t, 3)[2]
	var truncated bool
	for _, h := range minimal.ev.Headers {
		truncated = truncated || h.Key == HeaderTruncated
	}
	if minimal.ev.Topic != "dlq" || len(minimal.ev.Payload) != 0 || !truncated {
		t.Fatalf("second dead letter to %s with %d bytes of payload (truncated header %v), want a minimal one",
			minimal.ev.Topic, len(minimal.ev.Payload), truncated)
	}
	minimal.ack(rejected{"still too large"})
	err := tp.result(t)
	var pe *PoisonError
	if !errors.As(err, &pe) || pe.EventID != "e1" || !strings.Contains(err.Error(), "not even a minimal dead letter was accepted by dlq") {
		t.Fatalf("run = %v, want a PoisonError for e1", err)
	}
	if len(pub.all()) != 3 {
		t.Fatalf("%d records published, want the event and two dead letters", len(pub.all()))
	}
}

// A dead letter that fails for another reason (the broker down) ends the
// session without confirming the event.
func TestDeadLetterThatFailsEndsTheSession(t *testing.T) {
	pub := newFakePublisher(false)
	tp := startPipeline(t, pub, true, 1<<20)
	var w wal
	m, end := w.txn(pgInsert("e1", "a1", `{}`, `{}`))
	tp.msgs <- m
	pub.waitN(t, 1)[0].ack(rejected{"record too large"})
	pub.waitN(t, 2)[1].ack(errors.New("broker down"))
	err := tp.result(t)
	if err == nil || err.Error() != "dead-lettering event e1 to dlq: broker down" {
		t.Fatalf("run = %v", err)
	}
	var fe fatalError
	if errors.As(err, &fe) {
		t.Fatal("a broker that is down stopped the relay for good")
	}
	if got := tp.tracker.Safe(); got >= end {
		t.Fatalf("safe position %s past the event that was not dead-lettered (transaction end %s)", got, end)
	}
}

// An event this relay dead-lettered in an earlier session is not sent
// again when a later session meets it.
func TestEventDeadLetteredEarlierIsSkipped(t *testing.T) {
	pub := newFakePublisher(true)
	tp := startPipeline(t, pub, true, 1<<20)
	tp.deadLetters.sent.add("e1")
	var w wal
	m, end := w.txn(pgInsert("e1", "a1", `{}`, `{}`), pgInsert("e2", "a1", `{}`, `{}`))
	tp.msgs <- m
	evs := pub.waitN(t, 1)
	tp.waitSafe(t, end)
	if len(pub.all()) != 1 || evs[0].ev.ID != "e2" {
		t.Fatalf("published %v, want e2 alone", pub.all())
	}
}
