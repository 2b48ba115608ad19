package stdout

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/sinktest"
	"github.com/outbox-relay/outbox-relay/sink"
)

// Every event becomes one JSON line in publish order, acknowledged after the
// write; payloads that are not JSON are base64.
func TestStdoutWritesJSONLinesInOrder(t *testing.T) {
	var buf bytes.Buffer
	s, err := New(Config{Writer: &buf, MaxInFlight: 7})
	if err != nil {
		t.Fatal(err)
	}
	const aggs, per = 5, 40
	a := sinktest.NewAckLog(aggs*per + 1)
	for n := 1; n <= per; n++ {
		for agg := range aggs {
			ev := sinktest.Event(agg, n)
			if err := s.Publish(t.Context(), ev, a.Ack(ev.ID)); err != nil {
				t.Fatal(err)
			}
		}
	}
	bin := sinktest.Event(9, 1)
	bin.Payload = []byte{0xff, 0x00, 'x'}
	if err := s.Publish(t.Context(), bin, a.Ack(bin.ID)); err != nil {
		t.Fatal(err)
	}
	for id, err := range a.Wait(t, 10*time.Second) {
		if err != nil {
			t.Fatalf("ack %s: %v", id, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var got [][2]string
	sc := bufio.NewScanner(&buf)
	var last sink.EventJSON
	for sc.Scan() {
		var e sink.EventJSON
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if e.Headers["source"] != "test" || e.EventType != "updated" || e.CreatedAt.IsZero() {
			t.Fatalf("line %q lacks fields", sc.Text())
		}
		last = e
		if e.AggregateID != "agg-9" {
			got = append(got, [2]string{e.AggregateID, strconv.Itoa(sinktest.SeqOf(t, e.Payload))})
		}
	}
	sinktest.CheckOrder(t, got, aggs, per)
	if string(last.Payload) != `"/wB4"` {
		t.Fatalf("binary payload encoded as %s, want base64 \"/wB4\"", last.Payload)
	}
	if err := s.Publish(t.Context(), sinktest.Event(0, 99), func(error) {}); err == nil {
		t.Fatal("Publish after Close succeeded")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// A write error reaches the ack.
func TestStdoutWriteErrorFailsAck(t *testing.T) {
	s, err := New(Config{Writer: failWriter{}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := sinktest.NewAckLog(1)
	ev := &decoder.Event{ID: "x", Payload: []byte(strings.Repeat("a", 100<<10))}
	if err := s.Publish(t.Context(), ev, a.Ack("x")); err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(t, 5*time.Second)["x"]; err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("ack error %v, want the write error", err)
	}
}

func BenchmarkStdout(b *testing.B) {
	s, err := New(Config{Writer: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	sinktest.Bench(b, s)
}
