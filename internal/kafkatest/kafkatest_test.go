package kafkatest

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func produce(t *testing.T, brokers []string, records ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.AllowAutoTopicCreation(),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(t.Context(), records...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func partitions(t *testing.T, brokers []string, topic string) int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(t.Context(), cl)
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Topics[0].Partitions)
}

// awkward is a record whose bytes trip naive parsers.
func awkward(topic string) *kgo.Record {
	return &kgo.Record{
		Topic:     topic,
		Key:       []byte("order|42\n"),
		Value:     []byte("{\"note\":\"a|b\\n\"}\nsecond line\x00\xff\xfe é 😀"),
		Headers:   []kgo.RecordHeader{{Key: "id", Value: []byte("6f1c")}, {Key: "event_type", Value: []byte("a=b,c")}},
		Timestamp: time.UnixMilli(1700000000123),
	}
}

func TestClusterCreatesTopicsWithFourPartitions(t *testing.T) {
	c := NewCluster(t)
	produce(t, c.ListenAddrs(), &kgo.Record{Topic: "outbox.orders", Value: []byte("v")})
	if n := partitions(t, c.ListenAddrs(), "outbox.orders"); n != 4 {
		t.Errorf("auto-created topic has %d partitions, want 4", n)
	}

	one := NewCluster(t, kfake.DefaultNumPartitions(1))
	produce(t, one.ListenAddrs(), &kgo.Record{Topic: "outbox.orders", Value: []byte("v")})
	if n := partitions(t, one.ListenAddrs(), "outbox.orders"); n != 1 {
		t.Errorf("with DefaultNumPartitions(1): %d partitions", n)
	}
}

func TestReadNKeepsEveryByte(t *testing.T) {
	c := NewCluster(t)
	want := awkward("outbox.orders")
	produce(t, c.ListenAddrs(), want)

	got, err := ReadN(t.Context(), c.ListenAddrs(), []string{"outbox.orders"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got[0], want)
}

func checkSame(t *testing.T, got Record, want *kgo.Record) {
	t.Helper()
	if got.Topic != want.Topic || !bytes.Equal(got.Key, want.Key) || !bytes.Equal(got.Value, want.Value) ||
		!got.Timestamp.Equal(want.Timestamp) || got.Offset != want.Offset || got.Partition != want.Partition {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if len(got.Headers) != len(want.Headers) {
		t.Errorf("headers %v, want %v", got.Headers, want.Headers)
	}
	for _, h := range want.Headers {
		if got.Headers[h.Key] != string(h.Value) {
			t.Errorf("header %s = %q, want %q", h.Key, got.Headers[h.Key], h.Value)
		}
	}
}

func TestReadNWaitsForTopicsThatDoNotExistYet(t *testing.T) {
	c := NewCluster(t)
	type result struct {
		records []Record
		err     error
	}
	done := make(chan result, 1)
	go func() {
		recs, err := ReadN(t.Context(), c.ListenAddrs(), []string{"outbox.orders", "outbox.users"}, 3)
		done <- result{recs, err}
	}()
	time.Sleep(300 * time.Millisecond) // let the reader start first
	produce(t, c.ListenAddrs(),
		&kgo.Record{Topic: "outbox.orders", Key: []byte("o1"), Value: []byte("1")},
		&kgo.Record{Topic: "outbox.orders", Key: []byte("o1"), Value: []byte("2")},
		&kgo.Record{Topic: "outbox.users", Key: []byte("u1"), Value: []byte("3")},
		&kgo.Record{Topic: "other", Key: []byte("x"), Value: []byte("not read")},
	)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	var values []string
	for _, rec := range r.records {
		values = append(values, string(rec.Value))
	}
	slices.Sort(values)
	if !slices.Equal(values, []string{"1", "2", "3"}) {
		t.Errorf("values %v", values)
	}
}

func TestReadNMatchingFollowsAPattern(t *testing.T) {
	c := NewCluster(t)
	produce(t, c.ListenAddrs(),
		&kgo.Record{Topic: "outbox.orders", Value: []byte("a")},
		&kgo.Record{Topic: "outbox.users", Value: []byte("b")},
		&kgo.Record{Topic: "unrelated", Value: []byte("c")},
	)
	got, err := ReadNMatching(t.Context(), c.ListenAddrs(), []string{`^outbox\.`}, 2)
	if err != nil {
		t.Fatal(err)
	}
	rest, err := ReadAllMatching(t.Context(), c.ListenAddrs(), []string{`^outbox\.`}, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 2 {
		t.Errorf("ReadAllMatching got %d records, want the same 2", len(rest))
	}
	for _, r := range append(got, rest...) {
		if r.Topic == "unrelated" {
			t.Errorf("read from %s", r.Topic)
		}
	}
}

func TestReadNReturnsWhatItGotWhenCtxEnds(t *testing.T) {
	c := NewCluster(t)
	produce(t, c.ListenAddrs(), &kgo.Record{Topic: "t", Value: []byte("only one")})
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	got, err := ReadN(ctx, c.ListenAddrs(), []string{"t"}, 2)
	if !errors.Is(err, context.DeadlineExceeded) || len(got) != 1 {
		t.Fatalf("got %d records, err = %v; want 1 and a deadline error", len(got), err)
	}
}

func TestReadAllStopsWhenQuiet(t *testing.T) {
	c := NewCluster(t)
	var recs []*kgo.Record
	for i := range 10 {
		recs = append(recs, &kgo.Record{Topic: "t", Key: []byte{byte(i)}, Value: []byte{byte(i)}})
	}
	produce(t, c.ListenAddrs(), recs...)
	start := time.Now()
	got, err := ReadAll(t.Context(), c.ListenAddrs(), []string{"t"}, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 {
		t.Errorf("got %d records, want 10", len(got))
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("ReadAll took %v with a 500ms quiet period", took)
	}
}

// A consumer slow to start (its offsets answered late, as on a busy
// machine) still reads everything: the quiet period counts from its first
// fetch.
func TestReadAllCountsQuietFromTheFirstFetch(t *testing.T) {
	c := NewCluster(t)
	var recs []*kgo.Record
	for i := range 10 {
		recs = append(recs, &kgo.Record{Topic: "t", Value: []byte{byte(i)}})
	}
	produce(t, c.ListenAddrs(), recs...)
	c.ControlKey(int16(kmsg.ListOffsets), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.SleepControl(func() { <-time.After(time.Second) })
		return nil, nil, false
	})
	got, err := ReadAll(t.Context(), c.ListenAddrs(), []string{"t"}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 {
		t.Fatalf("got %d records, want 10", len(got))
	}
}

// ReadAll of a topic that does not exist returns at once, with nothing.
func TestReadAllOfAMissingTopic(t *testing.T) {
	c := NewCluster(t)
	start := time.Now()
	got, err := ReadAll(t.Context(), c.ListenAddrs(), []string{"nowhere"}, 200*time.Millisecond)
	if err != nil || len(got) != 0 {
		t.Fatalf("got %d records, err %v; want none", len(got), err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("ReadAll of a missing topic took %v", took)
	}
}

func TestKcatReadsKfakeByteForByte(t *testing.T) {
	if !KcatAvailable() {
		t.Fatal("kcat is not installed: run `make setup` (Debian/Ubuntu: apt-get install kcat)")
	}
	c := NewCluster(t)
	want := []*kgo.Record{awkward("outbox.orders"), {Topic: "outbox.orders", Timestamp: time.UnixMilli(1)}}
	produce(t, c.ListenAddrs(), want...)

	got, err := KcatRead(t.Context(), c.ListenAddrs()[0], "outbox.orders", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("kcat read %d records, want 2", len(got))
	}
	slices.SortFunc(got, func(a, b Record) int { return int(b.Timestamp.Sub(a.Timestamp)) })
	for i := range want {
		checkSame(t, got[i], want[i])
	}
	if got[1].Key != nil || got[1].Value != nil {
		t.Errorf("null key and value read as %q, %q", got[1].Key, got[1].Value)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if got, err := KcatRead(ctx, c.ListenAddrs()[0], "outbox.orders", 3); !errors.Is(err, context.DeadlineExceeded) || len(got) != 2 {
		t.Errorf("asking for one record too many: got %d, err = %v", len(got), err)
	}
}

func TestJSONBytes(t *testing.T) {
	for in, want := range map[string]string{
		`null`:               "",
		`""`:                 "",
		`"a\"b\\c\/d"`:       `a"b\c/d`,
		`"\n\r\t\b\f"`:       "\n\r\t\b\f",
		`"\u0000\u00e9"`:     "\x00é",
		`"\ud83d\ude00"`:     "😀",
		"\"raw \xff\xfe é\"": "raw \xff\xfe é",
		`"lone \ud83d end"`:  "lone \uFFFD end",
	} {
		got, err := jsonBytes([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("jsonBytes(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`"\x"`, `"\u12"`, `12`, `"unterminated`} {
		if _, err := jsonBytes([]byte(bad)); err == nil {
			t.Errorf("jsonBytes(%s) accepted", bad)
		}
	}
}
