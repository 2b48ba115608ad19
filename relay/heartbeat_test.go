package relay

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// heartbeatSlot creates a test_decoding slot in db that shows the logical
// decoding messages written after it, and returns a func that counts
// those with prefix.
func heartbeatSlot(t *testing.T, db *pgtest.DB) (count func(prefix string) int) {
	t.Helper()
	db.Exec(t, `SELECT pg_create_logical_replication_slot('hb', 'test_decoding')`)
	conn := db.Conn(t)
	return func(prefix string) int {
		t.Helper()
		var n int
		err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_logical_slot_peek_changes('hb', NULL, NULL)
			WHERE data LIKE 'message: transactional: 1 prefix: ' || $1 || ',%'`, prefix).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
}

// runHeartbeat runs h until the test ends or stop is called, which waits
// for run to return.
func runHeartbeat(t *testing.T, h *heartbeat) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		h.run(ctx)
	}()
	stop = func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Fatal("the heartbeat did not stop")
		}
	}
	t.Cleanup(stop)
	return stop
}

// An idle relay writes a transactional logical decoding message with its
// prefix (the default when none is set) at every tick, which goes through
// the slot.
func TestHeartbeatWritesAMessageThroughTheSlotWhenIdle(t *testing.T) {
	db := pgtest.New(t)
	count := heartbeatSlot(t, db)
	for _, prefix := range []string{"", "custom.heartbeat"} {
		var sent atomic.Int32
		stop := runHeartbeat(t, &heartbeat{
			connString: db.URL, interval: 5 * time.Millisecond, prefix: prefix, log: slog.New(slog.DiscardHandler),
			idle: func() bool { return true }, sent: func() { sent.Add(1) },
		})
		eventually(t, "three heartbeats sent", func() bool { return sent.Load() >= 3 })
		stop()
		want := prefix
		if want == "" {
			want = decoder.DefaultHeartbeatPrefix
		}
		if n := count(want); n < int(sent.Load()) {
			t.Fatalf("%d heartbeats sent, %d messages with prefix %q in the slot", sent.Load(), n, want)
		}
	}
}

// A relay that published since the last tick sends no heartbeat.
func TestHeartbeatIsNotSentWhileBusy(t *testing.T) {
	db := pgtest.New(t)
	count := heartbeatSlot(t, db)
	var asked, sent atomic.Int32
	stop := runHeartbeat(t, &heartbeat{
		connString: db.URL, interval: 5 * time.Millisecond, log: slog.New(slog.DiscardHandler),
		idle: func() bool { asked.Add(1); return false }, sent: func() { sent.Add(1) },
	})
	eventually(t, "idle asked three times", func() bool { return asked.Load() >= 3 })
	stop()
	if n, m := sent.Load(), count(decoder.DefaultHeartbeatPrefix); n != 0 || m != 0 {
		t.Fatalf("%d heartbeats sent, %d in the slot, while busy", n, m)
	}
}

// Heartbeat failures are logged and retried, never fatal: a connection the
// server ended is replaced at the next tick.
func TestHeartbeatReconnectsAfterItsConnectionEnded(t *testing.T) {
	db := pgtest.New(t)
	logs := newLogRecorder()
	var sent atomic.Int32
	runHeartbeat(t, &heartbeat{
		connString: db.URL, interval: 5 * time.Millisecond, log: slog.New(logs),
		idle: func() bool { return true }, sent: func() { sent.Add(1) },
	})
	eventually(t, "a heartbeat sent", func() bool { return sent.Load() >= 1 })
	db.Exec(t, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%pg_logical_emit_message%'`)
	logs.waitFor(t, "heartbeat: emitting")
	after := sent.Load()
	eventually(t, "heartbeats sent again", func() bool { return sent.Load() >= after+2 })
}

// A server the heartbeat cannot reach is retried at every tick.
func TestHeartbeatRetriesAnUnreachableServer(t *testing.T) {
	logs := newLogRecorder()
	var sent atomic.Int32
	stop := runHeartbeat(t, &heartbeat{
		connString: "postgres://127.0.0.1:1/none?connect_timeout=1", interval: 5 * time.Millisecond, log: slog.New(logs),
		idle: func() bool { return true }, sent: func() { sent.Add(1) },
	})
	eventually(t, "two failed connects logged", func() bool { return len(logs.find("heartbeat: connecting")) >= 2 })
	stop()
	if n := sent.Load(); n != 0 {
		t.Fatalf("%d heartbeats sent to an unreachable server", n)
	}
	if err := attr(logs.find("heartbeat: connecting")[0], "err").String(); !strings.Contains(err, "127.0.0.1") {
		t.Logf("connect error: %s", err)
	}
}
