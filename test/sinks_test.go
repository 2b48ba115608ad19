package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/outbox-relay/outbox-relay/internal/brokerserver"
	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/sink"
	"github.com/outbox-relay/outbox-relay/sink/webhook"
)

// The brokers of these tests: private servers, each started on first use
// and shared by the tests, or existing ones named by
// OUTBOX_RELAY_TEST_{NATS,RABBITMQ,REDIS}_URL. TestMain stops them.
var (
	natsServer   = &brokerserver.Shared{Env: brokerserver.EnvNATSURL, Start: brokerserver.StartNATS}
	rabbitServer = &brokerserver.Shared{Env: brokerserver.EnvRabbitMQURL, Start: brokerserver.StartRabbitMQ}
	redisServer  = &brokerserver.Shared{Env: brokerserver.EnvRedisURL, Start: brokerserver.StartRedis}
)

func brokerURL(t *testing.T, sh *brokerserver.Shared) string {
	t.Helper()
	u, err := sh.URL()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// privateBroker starts a broker for one test alone (one it restarts).
func privateBroker(t *testing.T, start func(context.Context, brokerserver.Options) (*brokerserver.Server, error)) *brokerserver.Server {
	t.Helper()
	b, err := start(t.Context(), brokerserver.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// uniq returns a name no other test run uses.
func uniq(prefix string) string { return fmt.Sprintf("%s%d", prefix, time.Now().UnixNano()) }

// sinkRun is one relay on a fresh scenario, writing to one sink.
type sinkRun struct {
	db   *pgtest.DB
	sc   *scenario
	slot string
	args []string
}

func newSinkRun(t *testing.T, slot string, sinkArgs ...string) *sinkRun {
	db := pgtest.New(t)
	migrate(t, db)
	return &sinkRun{
		db:   db,
		sc:   newScenario(t, db, 50),
		slot: slot,
		args: append([]string{"--pg-url", db.URL, "--slot", slot, "--publication", slot}, sinkArgs...),
	}
}

func (r *sinkRun) start(t *testing.T) *relayProc {
	p := startRelay(t, r.args...)
	waitSlotActive(t, r.db, r.slot)
	return p
}

// deliverAndCheck writes events, reads them back until want arrived (and
// a moment more for repeats), and checks them. It returns the check and
// the end-to-end rate.
func (r *sinkRun) deliverAndCheck(t *testing.T, events int, read func() ([]kafkatest.Record, error)) (checkResult, float64) {
	t.Helper()
	start := time.Now()
	if err := r.sc.writeConcurrently(t.Context(), 4, events, 20, nil); err != nil {
		t.Fatalf("writing: %v", err)
	}
	return r.awaitAndCheck(t, start, read)
}

func (r *sinkRun) awaitAndCheck(t *testing.T, start time.Time, read func() ([]kafkatest.Record, error)) (checkResult, float64) {
	t.Helper()
	total := r.sc.total()
	var recs []kafkatest.Record
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d events delivered", total), func() (bool, error) {
		var err error
		recs, err = read()
		return err == nil && uniqueIDs(recs) >= total, err
	})
	rate := float64(total) / time.Since(start).Seconds()
	time.Sleep(time.Second)
	recs, err := read()
	if err != nil {
		t.Fatal(err)
	}
	return r.sc.check(t, recs), rate
}

func uniqueIDs(recs []kafkatest.Record) int {
	ids := map[string]bool{}
	for _, r := range recs {
		ids[r.Headers["id"]] = true
	}
	return len(ids)
}

func requireClean(t *testing.T, res checkResult, rate float64, sinkName string) {
	t.Helper()
	if len(res.duplicates) != 0 {
		t.Fatalf("clean run delivered %d duplicates, e.g. %s", len(res.duplicates), res.duplicates[0])
	}
	t.Logf("%s: %d events delivered once each, in order per aggregate (%.0f events/s end to end)", sinkName, res.unique, rate)
}

// ---- NATS -------------------------------------------------------------

// readNATS reads a whole stream; the subject's second token is the
// aggregate type (subjects are <prefix>.<type>.<aggregate>).
func readNATS(ctx context.Context, url, stream string) ([]kafkatest.Record, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	var recs []kafkatest.Record
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			return nil, err
		}
		tokens := strings.Split(m.Subject, ".")
		h := map[string]string{}
		for k, v := range m.Header {
			h[k] = v[0]
		}
		recs = append(recs, kafkatest.Record{
			Topic: "outbox." + tokens[1], Offset: int64(seq), Key: []byte(tokens[2]), Value: m.Data, Headers: h,
		})
	}
	return recs, nil
}

func natsArgs(url, stream string) []string {
	return []string{"--sink", "nats", "--nats-url", url, "--nats-create-stream", "--nats-stream", stream,
		"--nats-subject", stream + ".{aggregate_type}.{aggregate_id}"}
}

// Every event reaches the JetStream stream once, in order per aggregate.
func TestNATSSinkEveryEventOnceInOrder(t *testing.T) {
	natsURL := brokerURL(t, natsServer)
	stream := uniq("e2enats")
	t.Cleanup(func() { deleteNATSStream(natsURL, stream) })
	r := newSinkRun(t, "natse2e", natsArgs(natsURL, stream)...)
	relay := r.start(t)
	res, rate := r.deliverAndCheck(t, 2000, func() ([]kafkatest.Record, error) { return readNATS(t.Context(), natsURL, stream) })
	requireClean(t, res, rate, "nats")
	if code := relay.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM, want 0", code)
	}
}

func deleteNATSStream(url, stream string) {
	nc, err := nats.Connect(url)
	if err != nil {
		return
	}
	defer nc.Close()
	if js, err := jetstream.New(nc); err == nil {
		_ = js.DeleteStream(context.Background(), stream)
	}
}

// A relay killed mid-stream sends unconfirmed events again after the
// restart, and the stream's duplicate window (Nats-Msg-Id) drops every
// repeat: the stream holds each event once.
func TestNATSDedupeDropsRedeliveryAfterCrash(t *testing.T) {
	natsURL := brokerURL(t, natsServer)
	ctx := t.Context()
	stream := uniq("e2enatscrash")
	t.Cleanup(func() { deleteNATSStream(natsURL, stream) })
	r := newSinkRun(t, "natscrash", natsArgs(natsURL, stream)...)
	relay := r.start(t)
	start := time.Now()
	writeErr := make(chan error, 1)
	go func() { writeErr <- r.sc.writeConcurrently(ctx, 4, 4000, 20, nil) }()
	waitFor(t, 60*time.Second, "events flowing", func() (bool, error) {
		recs, err := readNATS(ctx, natsURL, stream)
		return len(recs) > 800, err
	})
	_ = relay.cmd.Process.Kill()
	<-relay.done
	afterKill, _ := readNATS(ctx, natsURL, stream)
	r.start(t)
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	res, _ := r.awaitAndCheck(t, start, func() ([]kafkatest.Record, error) { return readNATS(ctx, natsURL, stream) })
	if len(res.duplicates) != 0 || res.delivered != r.sc.total() {
		t.Fatalf("stream holds %d messages for %d events (%d repeats): the duplicate window should drop redeliveries",
			res.delivered, r.sc.total(), len(res.duplicates))
	}
	if len(afterKill) == 0 {
		t.Fatal("nothing was delivered before the kill")
	}
	t.Logf("nats crash: %d events, %d in the stream before the kill, each stored once", r.sc.total(), len(afterKill))
}

// brokerRestartLosesNothing writes events while the broker restarts and
// checks every event arrives in order.
func brokerRestartLosesNothing(t *testing.T, r *sinkRun, b *brokerserver.Server, read func() ([]kafkatest.Record, error)) checkResult {
	t.Helper()
	ctx := t.Context()
	relay := r.start(t)
	start := time.Now()
	writeErr := make(chan error, 1)
	go func() {
		writeErr <- r.sc.writeConcurrently(ctx, 2, 3000, 10, func() { time.Sleep(2 * time.Millisecond) })
	}()
	waitFor(t, 60*time.Second, "events flowing", func() (bool, error) {
		recs, err := read()
		return len(recs) > 500, err
	})
	// Down for a moment, as in a real restart, while the relay retries.
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	res, _ := r.awaitAndCheck(t, start, read)
	if relay.exited() {
		t.Logf("relay exited: %s", tail(relay.out.String(), 20))
	}
	return res
}

// A JetStream server restarted mid-stream loses nothing: publishes that
// failed meanwhile are retried, and the duplicate window drops repeats.
func TestNATSBrokerRestartLosesNothing(t *testing.T) {
	b := privateBroker(t, brokerserver.StartNATS)
	url := b.URL()
	stream := uniq("e2enatsrestart")
	r := newSinkRun(t, "natsrestart", natsArgs(url, stream)...)
	res := brokerRestartLosesNothing(t, r, b, func() ([]kafkatest.Record, error) { return readNATS(t.Context(), url, stream) })
	if len(res.duplicates) != 0 {
		t.Fatalf("%d repeats reached the stream despite Nats-Msg-Id", len(res.duplicates))
	}
	t.Logf("nats restart: %d events delivered, each once", res.unique)
}

// ---- Redis ------------------------------------------------------------

// readRedis reads the streams <prefix>.order and <prefix>.customer.
func readRedis(ctx context.Context, url, prefix string) ([]kafkatest.Record, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	c := redis.NewClient(opts)
	defer c.Close()
	var recs []kafkatest.Record
	for _, typ := range []string{"order", "customer"} {
		msgs, err := c.XRange(ctx, prefix+"."+typ, "-", "+").Result()
		if err != nil {
			return nil, err
		}
		for i, m := range msgs {
			h := map[string]string{}
			_ = json.Unmarshal([]byte(m.Values["headers"].(string)), &h)
			for _, k := range []string{"id", "event_type", "aggregate_type"} {
				h[k], _ = m.Values[k].(string)
			}
			agg, _ := m.Values["aggregate_id"].(string)
			pl, _ := m.Values["payload"].(string)
			recs = append(recs, kafkatest.Record{Topic: "outbox." + typ, Offset: int64(i), Key: []byte(agg), Value: []byte(pl), Headers: h})
		}
	}
	return recs, nil
}

func deleteRedisStreams(url, prefix string) {
	opts, _ := redis.ParseURL(url)
	c := redis.NewClient(opts)
	defer c.Close()
	c.Del(context.Background(), prefix+".order", prefix+".customer")
}

// Every event is appended to its Redis stream once, in order per aggregate.
func TestRedisSinkEveryEventOnceInOrder(t *testing.T) {
	redisURL := brokerURL(t, redisServer)
	prefix := uniq("e2eredis")
	t.Cleanup(func() { deleteRedisStreams(redisURL, prefix) })
	r := newSinkRun(t, "redise2e", "--sink", "redis", "--redis-url", redisURL, "--redis-stream", prefix+".{aggregate_type}")
	relay := r.start(t)
	res, rate := r.deliverAndCheck(t, 2000, func() ([]kafkatest.Record, error) { return readRedis(t.Context(), redisURL, prefix) })
	requireClean(t, res, rate, "redis")
	if code := relay.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM, want 0", code)
	}
}

// A Redis server (private, with an append-only file) stopped and started
// mid-stream loses nothing; order per aggregate holds.
func TestRedisBrokerRestartLosesNothing(t *testing.T) {
	b := privateBroker(t, brokerserver.StartRedis)
	url := b.URL()
	prefix := uniq("e2eredisrestart")
	r := newSinkRun(t, "redisrestart", "--sink", "redis", "--redis-url", url, "--redis-stream", prefix+".{aggregate_type}")
	res := brokerRestartLosesNothing(t, r, b, func() ([]kafkatest.Record, error) { return readRedis(t.Context(), url, prefix) })
	t.Logf("redis restart: %d events delivered, %d repeats (at-least-once)", res.unique, len(res.duplicates))
}

// ---- RabbitMQ ---------------------------------------------------------

// Every event reaches a queue bound to the exchange once, in order per
// aggregate.
func TestRabbitMQSinkEveryEventOnceInOrder(t *testing.T) {
	rabbitURL := brokerURL(t, rabbitServer)
	name := uniq("e2erabbit")
	conn, err := amqp.Dial(rabbitURL)
	if err != nil {
		t.Fatalf("RabbitMQ at %s: %v", rabbitURL, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(name, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(name, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(name, "outbox.*", name, false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var recs []kafkatest.Record
	go func() {
		for d := range deliveries {
			h := map[string]string{}
			for k, v := range d.Headers {
				h[k] = fmt.Sprint(v)
			}
			mu.Lock()
			recs = append(recs, kafkatest.Record{Topic: d.RoutingKey, Offset: int64(len(recs)), Key: []byte(h["aggregate_id"]), Value: d.Body, Headers: h})
			mu.Unlock()
		}
	}()
	r := newSinkRun(t, "rabbite2e", "--sink", "rabbitmq", "--rabbitmq-url", rabbitURL, "--rabbitmq-exchange", name)
	relay := r.start(t)
	res, rate := r.deliverAndCheck(t, 2000, func() ([]kafkatest.Record, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]kafkatest.Record(nil), recs...), nil
	})
	requireClean(t, res, rate, "rabbitmq")
	if code := relay.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM, want 0", code)
	}
}

// ---- webhook ----------------------------------------------------------

// Every event is POSTed, signed, and accepted once in order per aggregate,
// through a receiver that fails every fifth request with a 503.
func TestWebhookSinkEveryEventInOrder(t *testing.T) {
	const secret = "e2e-secret"
	var mu sync.Mutex
	var recs []kafkatest.Record
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		mu.Lock()
		defer mu.Unlock()
		requests++
		if requests%5 == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var doc sink.EventJSON
		if err := json.Unmarshal(body, &doc); err != nil || req.Header.Get(webhook.IdempotencyKeyHeader) != doc.ID ||
			!strings.HasPrefix(req.Header.Get(webhook.SignatureHeader), "sha256=") {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h := map[string]string{"id": doc.ID, "event_type": doc.EventType, "aggregate_type": doc.AggregateType}
		recs = append(recs, kafkatest.Record{Topic: strings.TrimPrefix(req.URL.Path, "/"), Offset: int64(len(recs)),
			Key: []byte(doc.AggregateID), Value: doc.Payload, Headers: h})
	}))
	defer srv.Close()
	r := newSinkRun(t, "webhooke2e", "--sink", "webhook", "--webhook-url", srv.URL+"/outbox.{aggregate_type}")
	r.args = append(r.args, "--webhook-secret", secret)
	relay := r.start(t)
	res, rate := r.deliverAndCheck(t, 2000, func() ([]kafkatest.Record, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]kafkatest.Record(nil), recs...), nil
	})
	requireClean(t, res, rate, "webhook")
	if code := relay.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("relay exit code %d after SIGTERM, want 0", code)
	}
	if strings.Contains(relay.out.String(), secret) {
		t.Fatal("the webhook secret appears in the relay's output")
	}
}

// ---- stdout -----------------------------------------------------------

// Every event is one JSON line on stdout, in order per aggregate; logs stay
// on stderr.
func TestStdoutSinkEveryEventOnceInOrder(t *testing.T) {
	r := newSinkRun(t, "stdoute2e", "--sink", "stdout")
	full := append([]string{"run", "--status-interval", "300ms", "--receive-timeout", "10s"}, r.args...)
	cmd := relayCmd(context.Background(), full...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var recs []kafkatest.Record
	var lineErr error
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var doc sink.EventJSON
			mu.Lock()
			if err := json.Unmarshal(sc.Bytes(), &doc); err != nil && lineErr == nil {
				lineErr = fmt.Errorf("stdout line %q: %w", sc.Text(), err)
			}
			h := map[string]string{"id": doc.ID, "event_type": doc.EventType, "aggregate_type": doc.AggregateType}
			recs = append(recs, kafkatest.Record{Topic: "outbox." + doc.AggregateType, Offset: int64(len(recs)),
				Key: []byte(doc.AggregateID), Value: doc.Payload, Headers: h})
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-readDone
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("relay stderr:\n%s", tail(stderr.String(), 40))
		}
	})
	waitSlotActive(t, r.db, r.slot)
	res, rate := r.deliverAndCheck(t, 2000, func() ([]kafkatest.Record, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]kafkatest.Record(nil), recs...), lineErr
	})
	requireClean(t, res, rate, "stdout")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	<-readDone
	if err := cmd.Wait(); err != nil {
		t.Fatalf("relay after SIGTERM: %v", err)
	}
}
