package rabbitmq

import (
	"errors"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/sinktest"
)

// Confirmed events reach a bound queue in order, persistent, with
// message_id and headers; an unroutable event fails its ack.
func TestRabbitMQConfirmsInOrderAndReturnsUnroutable(t *testing.T) {
	ctx := t.Context()
	name := sinktest.UniqueName("sinktest")
	conn, err := amqp.Dial(sinktest.URL(t, sinktest.RabbitMQ))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(name, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	r, err := New(ctx, Config{
		URL: sinktest.URL(t, sinktest.RabbitMQ), Exchange: name, DeclareExchange: "topic", RoutingKey: "{topic}",
		Mandatory: true, MaxInFlight: 64,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.ExchangeDelete(name, false, false) })
	if err := ch.QueueBind(name, "outbox.order", name, false, nil); err != nil {
		t.Fatal(err)
	}

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
	deliveries, err := ch.Consume(name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got [][2]string
	for len(got) < aggs*per {
		select {
		case d := <-deliveries:
			if d.MessageId == "" || d.Headers["id"] != d.MessageId || d.DeliveryMode != amqp.Persistent || d.Headers["source"] != "test" {
				t.Fatalf("delivery %s: headers %v mode %d", d.MessageId, d.Headers, d.DeliveryMode)
			}
			got = append(got, [2]string{d.MessageId[19:23], strconv.Itoa(sinktest.SeqOf(t, d.Body))})
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d of %d deliveries", len(got), aggs*per)
		}
	}
	for i := range got {
		n, _ := strconv.Atoi(got[i][0])
		got[i][0] = "agg-" + strconv.Itoa(n)
	}
	sinktest.CheckOrder(t, got, aggs, per)

	// Nothing is bound for customer events: returned, so the ack fails.
	a = sinktest.NewAckLog(2)
	ev := sinktest.Event(0, per+1)
	ev.Topic = "outbox.customer"
	later := sinktest.Event(0, per+2)
	if err := r.Publish(ctx, ev, a.Ack(ev.ID)); err != nil {
		t.Fatal(err)
	}
	if err := r.Publish(ctx, later, a.Ack(later.ID)); err != nil {
		t.Fatal(err)
	}
	res := a.Wait(t, 10*time.Second)
	if !errors.Is(res[ev.ID], ErrUnroutable) {
		t.Fatalf("unroutable event ack: %v, want ErrUnroutable", res[ev.ID])
	}
	if res[later.ID] == nil {
		t.Fatal("event after a returned one was acknowledged")
	}
	r.Close()
}

func BenchmarkRabbitMQ(b *testing.B) {
	r, err := New(b.Context(), Config{URL: sinktest.URL(b, sinktest.RabbitMQ), Exchange: "amq.topic"})
	if err != nil {
		b.Fatal(err)
	}
	sinktest.Bench(b, r)
}
