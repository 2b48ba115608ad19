package redis

import (
	"context"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/outbox-relay/outbox-relay/internal/sinktest"
)

// Every event is appended to its stream in order, with its fields; MAXLEN
// trims.
func TestRedisAppendsInOrder(t *testing.T) {
	ctx := t.Context()
	name := sinktest.UniqueName("sinktest")
	r, err := New(ctx, Config{URL: sinktest.URL(t, sinktest.Redis), Stream: name + ".{aggregate_type}", MaxInFlight: 64, MaxBatch: 16})
	if err != nil {
		t.Fatal(err)
	}
	opts, _ := goredis.ParseURL(sinktest.URL(t, sinktest.Redis))
	c := goredis.NewClient(opts)
	defer c.Close()
	t.Cleanup(func() { c.Del(context.Background(), name+".order") })

	const aggs, per = 8, 100
	a := sinktest.NewAckLog(aggs * per)
	for i := 1; i <= per; i++ {
		for agg := range aggs {
			ev := sinktest.Event(agg, i)
			if err := r.Publish(ctx, ev, a.Ack(ev.ID)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for id, err := range a.Wait(t, 30*time.Second) {
		if err != nil {
			t.Fatalf("ack %s: %v", id, err)
		}
	}
	r.Close()
	msgs, err := c.XRange(ctx, name+".order", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != aggs*per {
		t.Fatalf("stream holds %d entries, want %d", len(msgs), aggs*per)
	}
	var got [][2]string
	for _, m := range msgs {
		if m.Values["id"] == "" || m.Values["event_type"] != "updated" || m.Values["headers"] != `{"source":"test"}` {
			t.Fatalf("entry %s fields %v", m.ID, m.Values)
		}
		got = append(got, [2]string{m.Values["aggregate_id"].(string), strconv.Itoa(sinktest.SeqOf(t, []byte(m.Values["payload"].(string))))})
	}
	sinktest.CheckOrder(t, got, aggs, per)

	trimmed, err := New(ctx, Config{URL: sinktest.URL(t, sinktest.Redis), Stream: name + ".trim", MaxLen: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Del(context.Background(), name+".trim") })
	a = sinktest.NewAckLog(1000)
	for i := 1; i <= 1000; i++ {
		ev := sinktest.Event(0, i)
		if err := trimmed.Publish(ctx, ev, a.Ack(ev.ID)); err != nil {
			t.Fatal(err)
		}
	}
	a.Wait(t, 30*time.Second)
	trimmed.Close()
	if n := c.XLen(ctx, name+".trim").Val(); n >= 1000 || n < 10 {
		t.Fatalf("trimmed stream holds %d entries, want about 10", n)
	}
}

// A key of another type is a final error: the ack fails, no retry.
func TestRedisWrongTypeFailsAck(t *testing.T) {
	ctx := t.Context()
	name := sinktest.UniqueName("sinktest")
	opts, _ := goredis.ParseURL(sinktest.URL(t, sinktest.Redis))
	c := goredis.NewClient(opts)
	defer c.Close()
	c.Set(ctx, name, "a string", time.Minute)
	r, err := New(ctx, Config{URL: sinktest.URL(t, sinktest.Redis), Stream: name})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a := sinktest.NewAckLog(1)
	ev := sinktest.Event(0, 1)
	if err := r.Publish(ctx, ev, a.Ack(ev.ID)); err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(t, 10*time.Second)[ev.ID]; err == nil {
		t.Fatal("XADD to a string key acknowledged")
	}
}

func BenchmarkRedis(b *testing.B) {
	name := sinktest.UniqueName("bench")
	url := sinktest.URL(b, sinktest.Redis)
	r, err := New(b.Context(), Config{URL: url, Stream: name})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		opts, _ := goredis.ParseURL(url)
		c := goredis.NewClient(opts)
		c.Del(context.Background(), name)
		c.Close()
	}()
	sinktest.Bench(b, r)
}
