package relay

import (
	"bufio"
	"context"
	"encoding/hex"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/replication"
)

// ackingPublisher acknowledges every event at once, as a broker that
// answers instantly would: what is left is the pipeline's own work.
type ackingPublisher struct{}

func (ackingPublisher) Publish(_ context.Context, _ *decoder.Event, ack func(error)) error {
	ack(nil)
	return nil
}

func (ackingPublisher) Close() error { return nil }

// BenchmarkPipelineSingleRowTxn is the live case: one transaction of one
// outbox row (Begin, Insert, Commit, and the keepalive the walsender sends
// after it) through decoding, tracking, publishing and the ack. allocs/op
// is per transaction; the decoder's own (the event's strings and payload)
// are part of it.
func BenchmarkPipelineSingleRowTxn(b *testing.B) {
	rel, begin, insert, commit := captureTxn(b)
	p := &pipeline{
		log:     slog.New(slog.DiscardHandler),
		dec:     mustDecoder(b),
		pub:     ackingPublisher{},
		tracker: checkpoint.New(1),
		obs:     nopObserver{},
		commits: &commitLog{},
	}
	p.newPubCtx()
	ctx := b.Context()
	if err := p.handle(ctx, rel); err != nil {
		b.Fatal(err)
	}
	keepalive := replication.Message{ServerWALEnd: commit.ServerWALEnd}
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range [...]replication.Message{begin, insert, commit, keepalive} {
			if err := p.handle(ctx, m); err != nil {
				b.Fatal(err)
			}
		}
	}
	if n := p.tracker.InFlight(); n != 0 {
		b.Fatalf("%d events in flight after every ack", n)
	}
}

func mustDecoder(tb testing.TB) *decoder.Decoder {
	d, err := decoder.New(decoder.Config{Table: "outbox"})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// captureTxn returns the outbox table's Relation message and the first
// one-row transaction of the decoder's captured stream.
func captureTxn(tb testing.TB) (rel, begin, insert, commit replication.Message) {
	tb.Helper()
	f, err := os.Open("../decoder/testdata/outbox.hex")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var msgs []replication.Message
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lsnText, hexText, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(lsnText, "#") {
			continue
		}
		lsn, err := pglogrepl.ParseLSN(lsnText)
		if err != nil {
			tb.Fatal(err)
		}
		data, err := hex.DecodeString(hexText)
		if err != nil {
			tb.Fatal(err)
		}
		msgs = append(msgs, replication.Message{WALStart: lsn, ServerWALEnd: lsn, Data: data, ReceivedAt: time.Now()})
	}
	// The first transaction: Begin, the Relation, one Insert, Commit.
	kinds := ""
	for _, m := range msgs {
		kinds += string(m.Data[0])
	}
	if i := strings.Index(kinds, "BRIC"); i >= 0 {
		return msgs[i+1], msgs[i], msgs[i+2], msgs[i+3]
	}
	tb.Fatal("no one-row transaction in the capture")
	return
}
