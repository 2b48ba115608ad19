package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// heartbeat keeps an idle slot moving. PostgreSQL 15 skips empty
// transactions, so when only other tables or databases are written the
// slot would see nothing and pin WAL. A transactional logical decoding
// message on the relay's own database is a tiny transaction that streams
// through the slot; the decoder skips it by prefix, and its commit lets
// the checkpoint advance. It has no part in PostgreSQL 18's
// idle_replication_slot_timeout, which counts only the time no session
// streams from the slot: a connected relay keeps its slot active anyway.
type heartbeat struct {
	connString string
	interval   time.Duration
	prefix     string
	log        *slog.Logger
	// idle reports whether nothing was published since the last tick, so
	// a busy relay sends no heartbeats.
	idle func() bool
	// sent is called after each heartbeat (for metrics).
	sent func()
}

// run emits heartbeats until ctx ends. Failures are logged, not fatal: the
// stream itself notices a dead server.
func (h *heartbeat) run(ctx context.Context) {
	if h.interval <= 0 {
		return
	}
	prefix := h.prefix
	if prefix == "" {
		prefix = decoder.DefaultHeartbeatPrefix
	}
	tick := time.NewTicker(h.interval)
	defer tick.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !h.idle() {
			continue
		}
		if conn == nil || conn.IsClosed() {
			c, err := connectAdmin(ctx, h.connString)
			if err != nil {
				h.log.Warn("heartbeat: connecting", "err", err)
				continue
			}
			conn = c
		}
		qctx, cancel := context.WithTimeout(ctx, h.interval)
		_, err := conn.Exec(qctx, `select pg_logical_emit_message(true, $1, '')`, prefix)
		cancel()
		if err != nil {
			h.log.Warn("heartbeat: emitting", "err", err)
			conn.Close(context.Background())
			conn = nil
			continue
		}
		if h.sent != nil {
			h.sent()
		}
		h.log.Debug("heartbeat sent")
	}
}
