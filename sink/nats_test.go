package sink

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// uniqueName returns a name no other test run uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, time.Now().UnixNano())
}

// Events reach the stream in order per aggregate with their headers, and
// publishing them again adds nothing: Nats-Msg-Id dedupes.
func TestNATSPublishesInOrderAndDedupes(t *testing.T) {
	ctx := t.Context()
	name := uniqueName("sinktest")
	cfg := NATSConfig{
		URL:          natsURL(t),
		Subject:      name + ".{aggregate_type}.{aggregate_id}",
		CreateStream: true,
		Stream:       name,
		MaxInFlight:  50,
	}
	n, err := NewNATS(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(cfg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })

	const aggs, per = 8, 100
	publishAll := func(n *NATS) {
		a := newAckLog(aggs * per)
		for i := 1; i <= per; i++ {
			for agg := range aggs {
				ev := testEvent(agg, i)
				if err := n.Publish(ctx, ev, a.ack(ev.ID)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for id, err := range a.wait(t, 30*time.Second) {
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
		got = append(got, [2]string{key, strconv.Itoa(seqOf(t, m.Data))})
	}
	checkOrder(t, got, aggs, per)

	// A second relay session sending the same events: the duplicate window
	// drops them all.
	n2, err := NewNATS(ctx, cfg)
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
	prefix := uniqueName("nostream")
	n, err := NewNATS(t.Context(), NATSConfig{
		URL:        natsURL(t),
		Subject:    prefix + ".{aggregate_id}",
		AckTimeout: 200 * time.Millisecond,
		Retry:      Retry{Timeout: 300 * time.Millisecond, Min: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	a := newAckLog(2)
	for i := 1; i <= 2; i++ {
		ev := testEvent(1, i)
		if err := n.Publish(t.Context(), ev, a.ack(ev.ID)); err != nil {
			t.Fatal(err)
		}
	}
	for id, err := range a.wait(t, 20*time.Second) {
		if err == nil {
			t.Fatalf("event %s acknowledged without a stream", id)
		}
		// The first says what is missing and what to do about it.
		if id == testEvent(1, 1).ID {
			for _, want := range []string{"no JetStream stream captures subject " + prefix + ".agg-1", "--nats-create-stream"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("ack error %q does not say %q", err, want)
				}
			}
		}
	}
}
