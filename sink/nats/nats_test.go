package nats

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/outbox-relay/outbox-relay/internal/sinktest"
	"github.com/outbox-relay/outbox-relay/sink"
)

// Events reach the stream in order per aggregate with their headers, and
// publishing them again adds nothing: Nats-Msg-Id dedupes.
func TestNATSPublishesInOrderAndDedupes(t *testing.T) {
	ctx := t.Context()
	name := sinktest.UniqueName("sinktest")
	cfg := Config{
		URL:          sinktest.URL(t, sinktest.NATS),
		Subject:      name + ".{aggregate_type}.{aggregate_id}",
		CreateStream: true,
		Stream:       name,
		MaxInFlight:  50,
	}
	n, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := natsgo.Connect(cfg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })

	const aggs, per = 8, 100
	publishAll := func(n *Sink) {
		a := sinktest.NewAckLog(aggs * per)
		for i := 1; i <= per; i++ {
			for agg := range aggs {
				ev := sinktest.Event(agg, i)
				if err := n.Publish(ctx, ev, a.Ack(ev.ID)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for id, err := range a.Wait(t, 30*time.Second) {
			if err != nil {
				t.Fatalf("ack %s: %v", id, err)
			}
		}
	}
	publishAll(n)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	if info.State.Msgs != aggs*per {
		t.Fatalf("stream holds %d messages, want %d", info.State.Msgs, aggs*per)
	}
	var got [][2]string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get("id") == "" || m.Header.Get(jetstream.MsgIDHeader) != m.Header.Get("id") || m.Header.Get("source") != "test" {
			t.Fatalf("message %d headers %v", seq, m.Header)
		}
		key := m.Subject[len(name+".order."):]
		got = append(got, [2]string{key, strconv.Itoa(sinktest.SeqOf(t, m.Data))})
	}
	sinktest.CheckOrder(t, got, aggs, per)

	// A second relay session sending the same events: the duplicate window
	// drops them all.
	n2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	publishAll(n2)
	n2.Close()
	info, _ = st.Info(ctx)
	if info.State.Msgs != aggs*per {
		t.Fatalf("after redelivery the stream holds %d messages, want %d", info.State.Msgs, aggs*per)
	}
}

// A subject no stream captures fails the ack after the retry budget, and
// every later event fails too.
func TestNATSNoStreamFailsAck(t *testing.T) {
	prefix := sinktest.UniqueName("nostream")
	n, err := New(t.Context(), Config{
		URL:        sinktest.URL(t, sinktest.NATS),
		Subject:    prefix + ".{aggregate_id}",
		AckTimeout: 200 * time.Millisecond,
		Retry:      sink.Retry{Timeout: 300 * time.Millisecond, Min: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	a := sinktest.NewAckLog(2)
	for i := 1; i <= 2; i++ {
		ev := sinktest.Event(1, i)
		if err := n.Publish(t.Context(), ev, a.Ack(ev.ID)); err != nil {
			t.Fatal(err)
		}
	}
	for id, err := range a.Wait(t, 20*time.Second) {
		if err == nil {
			t.Fatalf("event %s acknowledged without a stream", id)
		}
		// The first says what is missing and what to do about it.
		if id == sinktest.Event(1, 1).ID {
			for _, want := range []string{"no JetStream stream captures subject " + prefix + ".agg-1", "--nats-create-stream"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("ack error %q does not say %q", err, want)
				}
			}
		}
	}
}

func BenchmarkNATS(b *testing.B) {
	name := sinktest.UniqueName("bench")
	url := sinktest.URL(b, sinktest.NATS)
	n, err := New(b.Context(), Config{URL: url, Subject: name + ".{aggregate_id}", CreateStream: true, Stream: name})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		nc, _ := natsgo.Connect(url)
		js, _ := jetstream.New(nc)
		_ = js.DeleteStream(context.Background(), name)
		nc.Close()
	}()
	sinktest.Bench(b, n)
}
