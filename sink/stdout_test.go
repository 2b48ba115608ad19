package sink

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// Every event becomes one JSON line in publish order, acknowledged after the
// write; payloads that are not JSON are base64.
func TestStdoutWritesJSONLinesInOrder(t *testing.T) {
	var buf bytes.Buffer
	s, err := NewStdout(StdoutConfig{Writer: &buf, MaxInFlight: 7})
	if err != nil {
		t.Fatal(err)
	}
	const aggs, per = 5, 40
	a := newAckLog(aggs*per + 1)
	for n := 1; n <= per; n++ {
		for agg := range aggs {
			ev := testEvent(agg, n)
			if err := s.Publish(t.Context(), ev, a.ack(ev.ID)); err != nil {
				t.Fatal(err)
			}
		}
	}
	bin := testEvent(9, 1)
	bin.Payload = []byte{0xff, 0x00, 'x'}
	if err := s.Publish(t.Context(), bin, a.ack(bin.ID)); err != nil {
		t.Fatal(err)
	}
	for id, err := range a.wait(t, 10*time.Second) {
		if err != nil {
			t.Fatalf("ack %s: %v", id, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var got [][2]string
	sc := bufio.NewScanner(&buf)
	var last EventJSON
	for sc.Scan() {
		var e EventJSON
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if e.Headers["source"] != "test" || e.EventType != "updated" || e.CreatedAt.IsZero() {
			t.Fatalf("line %q lacks fields", sc.Text())
		}
		last = e
		if e.AggregateID != "agg-9" {
			got = append(got, [2]string{e.AggregateID, strconv.Itoa(seqOf(t, e.Payload))})
		}
	}
	checkOrder(t, got, aggs, per)
	if string(last.Payload) != `"/wB4"` {
		t.Fatalf("binary payload encoded as %s, want base64 \"/wB4\"", last.Payload)
	}
	if err := s.Publish(t.Context(), testEvent(0, 99), func(error) {}); err == nil {
		t.Fatal("Publish after Close succeeded")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// A write error reaches the ack.
func TestStdoutWriteErrorFailsAck(t *testing.T) {
	s, err := NewStdout(StdoutConfig{Writer: failWriter{}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := newAckLog(1)
	ev := &decoder.Event{ID: "x", Payload: []byte(strings.Repeat("a", 100<<10))}
	if err := s.Publish(t.Context(), ev, a.ack("x")); err != nil {
		t.Fatal(err)
	}
	if err := a.wait(t, 5*time.Second)["x"]; err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("ack error %v, want the write error", err)
	}
}
