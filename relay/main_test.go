package relay

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/slot"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testConfig is a relay's config for slot s, publication p and table
// public.outbox on connString.
func testConfig(connString string) Config {
	return Config{
		ConnString: connString,
		Slot:       slot.Config{Slot: "s", Publication: "p", Table: "outbox"},
		Decoder:    decoder.Config{Table: "public.outbox"},
	}
}

// newTestRelay is New on cfg with its logs recorded.
func newTestRelay(t *testing.T, cfg Config, publish NewPublisher) (*Relay, *logRecorder) {
	t.Helper()
	logs := newLogRecorder()
	cfg.Logger = slog.New(logs)
	r, err := New(cfg, publish)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, rec := range logs.find("") {
				var b strings.Builder
				rec.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
				t.Logf("log: %s %s%s", rec.Level, rec.Message, b.String())
			}
		}
	})
	return r, logs
}

// createOutbox creates the default outbox table in db.
func createOutbox(t *testing.T, db *pgtest.DB) {
	t.Helper()
	if err := migrations.Apply(t.Context(), db.Conn(t), "outbox"); err != nil {
		t.Fatal(err)
	}
}

// walPosition is the server's current WAL write position.
func walPosition(t *testing.T, db *pgtest.DB) pglogrepl.LSN {
	t.Helper()
	var s string
	if err := db.Conn(t).QueryRow(t.Context(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// eventually polls cond until it holds, failing the test after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logRecorder is a slog handler that keeps every record.
type logRecorder struct {
	mu     sync.Mutex
	recs   []slog.Record
	signal chan struct{}
}

func newLogRecorder() *logRecorder { return &logRecorder{signal: make(chan struct{}, 1)} }

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	select {
	case l.signal <- struct{}{}:
	default:
	}
	return nil
}

// find returns the records whose message starts with msg.
func (l *logRecorder) find(msg string) []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []slog.Record
	for _, r := range l.recs {
		if strings.HasPrefix(r.Message, msg) {
			out = append(out, r)
		}
	}
	return out
}

// waitFor waits for a record whose message starts with msg.
func (l *logRecorder) waitFor(t *testing.T, msg string) slog.Record {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if recs := l.find(msg); len(recs) > 0 {
			return recs[0]
		}
		select {
		case <-l.signal:
		case <-deadline:
			t.Fatalf("no log record %q after 10s", msg)
		}
	}
}

// attr returns a record's attribute.
func attr(r slog.Record, key string) slog.Value {
	var v slog.Value
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value
			return false
		}
		return true
	})
	return v
}

// newTestPipeline is a pipeline over pub for table public.outbox, not
// running; poison stops it unless the test sets deadLetters.
func newTestPipeline(t *testing.T, pub Publisher) *pipeline {
	t.Helper()
	dec, err := decoder.New(decoder.Config{Table: "public.outbox"})
	if err != nil {
		t.Fatal(err)
	}
	p := &pipeline{
		log: slog.New(slog.DiscardHandler), slot: "s", dec: dec, pub: pub, tracker: checkpoint.New(1),
		obs: nopObserver{}, commits: &commitLog{}, budget: newByteBudget(1 << 20),
	}
	p.newPubCtx()
	return p
}
