package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/metrics"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/slot"
)

// observeFlags configure metrics and health endpoints.
func observeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "metrics-addr", Value: "127.0.0.1:9187", EnvVars: env("METRICS_ADDR"),
			Usage: "address serving /metrics, /healthz and /readyz; empty disables them"},
		&cli.DurationFlag{Name: "slot-poll-interval", Value: 5 * time.Second, EnvVars: env("SLOT_POLL_INTERVAL"),
			Usage: "how often the slot's retained WAL and wal_status are read from pg_replication_slots for the metrics"},
	}
}

// observability is the running metrics/health server and the slot poller.
type observability struct {
	metrics *metrics.Metrics
	server  *http.Server
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

// startObservability starts what observeFlags ask for: nothing when
// --metrics-addr is empty.
func startObservability(c *cli.Context, log *slog.Logger) (*observability, error) {
	addr := c.String("metrics-addr")
	if addr == "" {
		return &observability{}, nil
	}
	interval := c.Duration("slot-poll-interval")
	if interval <= 0 {
		return nil, usagef("--slot-poll-interval %s: want a positive duration", interval)
	}
	connString, err := pgConnString(c)
	if err != nil {
		return nil, err
	}
	pgcfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, usagef("--pg-url is not a valid PostgreSQL URL or key=value connection string")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg, metrics.Options{Version: version, Secrets: []string{pgcfg.Password}})
	if err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on --metrics-addr %s: %w", addr, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	o := &observability{
		metrics: m,
		server:  &http.Server{Handler: m.Handler(reg), ReadHeaderTimeout: 5 * time.Second},
		stop:    stop,
	}
	o.wg.Add(2)
	go func() {
		defer o.wg.Done()
		if err := o.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	go func() {
		defer o.wg.Done()
		pollSlot(ctx, log, pgcfg, c.String("slot"), interval, m)
	}()
	log.Info("serving metrics and health checks", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	return o, nil
}

// Observer is what the relay reports to; nil means nothing observes it.
func (o *observability) Observer() relay.Observer {
	if o.metrics == nil {
		return nil
	}
	return o.metrics
}

// Close stops the server and the slot poller.
func (o *observability) Close() error {
	if o.server == nil {
		return nil
	}
	o.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := o.server.Shutdown(ctx)
	o.wg.Wait()
	return err
}

// pollSlot reads the slot's row of pg_replication_slots every interval,
// on a normal connection of its own, until ctx ends. A failed poll closes
// the connection; the next one reconnects. Failures are logged once, at
// warn, until a poll succeeds again.
func pollSlot(ctx context.Context, log *slog.Logger, pgcfg *pgx.ConnConfig, slotName string, interval time.Duration, m *metrics.Metrics) {
	pgcfg = pgcfg.Copy()
	pgcfg.RuntimeParams["application_name"] = "outbox-relay metrics"
	if pgcfg.ConnectTimeout == 0 || pgcfg.ConnectTimeout > interval*2 {
		pgcfg.ConnectTimeout = max(interval*2, 2*time.Second)
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	failing := false
	// The relay's session reports an unreachable server itself, with what
	// to check; the poller repeating it first would only mislead.
	connectFailed := false
	poll := func() error {
		connectFailed = false
		pctx, cancel := context.WithTimeout(ctx, max(interval, 2*time.Second))
		defer cancel()
		if conn == nil {
			c, err := pgx.ConnectConfig(pctx, pgcfg)
			if err != nil {
				connectFailed = true
				return redact(relay.ConnectError(err), pgcfg.Password)
			}
			conn = c
		}
		info, found, err := slot.Get(pctx, conn, slotName)
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			return err
		}
		m.ObserveSlot(info, found)
		return nil
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		err := poll()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			m.SlotPollFailed()
			switch {
			case connectFailed:
				log.Debug("polling pg_replication_slots for the metrics", "slot", slotName, "err", err)
			case !failing:
				log.Warn("polling pg_replication_slots for the metrics", "slot", slotName, "err", err)
				failing = true
			}
		case failing:
			log.Info("polling pg_replication_slots works again", "slot", slotName)
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
