package sink

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Every event is appended to its stream in order, with its fields; MAXLEN
// trims.
func TestRedisAppendsInOrder(t *testing.T) {
	ctx := t.Context()
	name := uniqueName("sinktest")
	r, err := NewRedis(ctx, RedisConfig{URL: redisURL(t), Stream: name + ".{aggregate_type}", MaxInFlight: 64, MaxBatch: 16})
	if err != nil {
		t.Fatal(err)
	}
	opts, _ := redis.ParseURL(redisURL(t))
	c := redis.NewClient(opts)
	defer c.Close()
	t.Cleanup(func() { c.Del(context.Background(), name+".order") })

	const aggs, per = 8, 100
	a := newAckLog(aggs * per)
	for i := 1; i <= per; i++ {
		for agg := range aggs {
			ev := testEvent(agg, i)
			if err := r.Publish(ctx, ev, a.ack(ev.ID)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for id, err := range a.wait(t, 30*time.Second) {
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
		got = append(got, [2]string{m.Values["aggregate_id"].(string), strconv.Itoa(seqOf(t, []byte(m.Values["payload"].(string))))})
	}
	checkOrder(t, got, aggs, per)

	trimmed, err := NewRedis(ctx, RedisConfig{URL: redisURL(t), Stream: name + ".trim", MaxLen: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Del(context.Background(), name+".trim") })
	a = newAckLog(1000)
	for i := 1; i <= 1000; i++ {
		ev := testEvent(0, i)
		if err := trimmed.Publish(ctx, ev, a.ack(ev.ID)); err != nil {
			t.Fatal(err)
		}
	}
	a.wait(t, 30*time.Second)
	trimmed.Close()
	if n := c.XLen(ctx, name+".trim").Val(); n >= 1000 || n < 10 {
		t.Fatalf("trimmed stream holds %d entries, want about 10", n)
	}
}

// A key of another type is a final error: the ack fails, no retry.
func TestRedisWrongTypeFailsAck(t *testing.T) {
	ctx := t.Context()
	name := uniqueName("sinktest")
	opts, _ := redis.ParseURL(redisURL(t))
	c := redis.NewClient(opts)
	defer c.Close()
	c.Set(ctx, name, "a string", time.Minute)
	r, err := NewRedis(ctx, RedisConfig{URL: redisURL(t), Stream: name})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a := newAckLog(1)
	ev := testEvent(0, 1)
	if err := r.Publish(ctx, ev, a.ack(ev.ID)); err != nil {
		t.Fatal(err)
	}
	if err := a.wait(t, 10*time.Second)[ev.ID]; err == nil {
		t.Fatal("XADD to a string key acknowledged")
	}
}
