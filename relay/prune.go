package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/outbox/pgname"
	"github.com/outbox-relay/outbox-relay/slot"
)

// Pruning defaults: rows deleted per statement, and rows collected per
// snapshot (the ids wait in memory until the relay confirmed past them).
const (
	pruneBatch = 1000
	pruneScan  = 10 * pruneBatch
)

// pruner deletes outbox rows older than a duration once the relay has
// confirmed the transactions that inserted them.
//
// The rule that keeps it from deleting an unpublished row, without
// trusting timestamps or transaction ids: in one REPEATABLE READ
// transaction it reads pg_current_wal_insert_lsn() as the first statement,
// so after the transaction's snapshot was taken, and then the ids of the
// old rows that snapshot sees. A row is visible only once its inserting
// transaction committed, and a commit record is in the WAL before the
// transaction becomes visible, so every one of those transactions ends at
// or before that LSN. The ids are deleted only after the relay's confirmed
// position reached the LSN: the checkpoint's safe position, up to which
// the broker acknowledged every event, which is what the next status
// update reports to PostgreSQL. Waiting for the status update itself would
// add up to a status interval per round and let a busy outbox outgrow
// pruning; it would add no safety, since a row's event is read from the
// WAL, which the slot keeps until then, not from the row. A transaction that started
// long ago and commits late is simply not in the snapshot; it is picked up
// by a later one. Holding the ids instead of the snapshot keeps no
// transaction open while waiting, so pruning never holds back VACUUM.
type pruner struct {
	connString string
	table      pgx.Identifier
	idColumn   string
	ageColumn  string
	after      time.Duration
	interval   time.Duration
	confirmed  func() pglogrepl.LSN
	log        *slog.Logger
	pruned     func(n int)

	conn   *pgx.Conn
	idType string // the id column's SQL type, for the delete's array cast
	// pending are ids visible in the snapshot taken at WAL position lsn.
	pending []string
	lsn     pglogrepl.LSN
	// waitLogged limits the waiting message to one per interval.
	waitLogged time.Time
}

// pruneInterval is how often the pruner looks for old rows: often enough
// that the table stays near its intended age, rarely enough to cost
// nothing (the query is an index range scan on the age column).
func pruneInterval(after time.Duration) time.Duration {
	return min(max(after/2, 200*time.Millisecond), 10*time.Second)
}

// pruneRecheck is how often collected ids are checked against the
// confirmed position: a comparison in memory, no query.
const pruneRecheck = 100 * time.Millisecond

// run prunes until ctx ends, starting at once. Failures are logged and
// retried on the next tick: pruning is housekeeping, never a reason to stop
// relaying.
func (p *pruner) run(ctx context.Context) {
	defer func() {
		if p.conn != nil {
			p.conn.Close(context.Background())
		}
	}()
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := p.round(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("pruning the outbox table", "table", p.table.Sanitize(), "err", err)
			if p.conn != nil {
				p.conn.Close(context.Background())
				p.conn = nil
			}
		}
		wait = p.interval
		if p.pending != nil {
			// Waiting for the relay to confirm: usually one status interval.
			wait = min(p.interval, pruneRecheck)
		}
	}
}

// round deletes what is confirmed and collects the next ids. It keeps
// going while full batches of confirmed rows are found, so a backlog of
// old rows drains in one round, a statement of pruneBatch rows at a time.
func (p *pruner) round(ctx context.Context) error {
	if p.conn == nil || p.conn.IsClosed() {
		conn, err := connectAdmin(ctx, p.connString)
		if err != nil {
			return fmt.Errorf("connecting: %w", err)
		}
		p.conn = conn
		if p.idType, err = columnType(ctx, conn, p.table, p.idColumn); err != nil {
			return err
		}
	}
	total := 0
	defer func() {
		if total > 0 {
			p.log.Info("pruned outbox rows", "table", p.table.Sanitize(), "rows", total, "older_than", p.after)
		}
	}()
	for ctx.Err() == nil {
		if p.pending == nil {
			if err := p.collect(ctx); err != nil {
				return err
			}
			if len(p.pending) == 0 {
				p.pending = nil
				return nil
			}
		}
		if confirmed := p.confirmed(); confirmed < p.lsn {
			// Not confirmed yet: check again soon.
			if time.Since(p.waitLogged) >= p.interval {
				p.waitLogged = time.Now()
				p.log.Debug("pruning: old rows wait for the relay to confirm their transactions",
					"rows", len(p.pending), "until", p.lsn, "confirmed", confirmed)
			}
			return nil
		}
		n, err := p.deletePending(ctx)
		total += n
		if err != nil {
			return err
		}
		full := len(p.pending) == pruneScan
		p.pending = nil
		if !full {
			return nil
		}
	}
	return nil
}

// collect takes a snapshot and keeps the ids of old rows visible in it,
// with the WAL position every one of their transactions ended before.
func (p *pruner) collect(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	tx, err := p.conn.BeginTx(qctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	// The first statement takes the snapshot, then reads the position.
	var pos string
	if err := tx.QueryRow(qctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&pos); err != nil {
		return fmt.Errorf("reading the WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(pos)
	if err != nil {
		return fmt.Errorf("reading the WAL position: %w", err)
	}
	q := fmt.Sprintf(`SELECT %s::text FROM %s WHERE %s < now() - $1 * interval '1 microsecond' ORDER BY %s LIMIT %d`,
		pgname.Quote(p.idColumn), p.table.Sanitize(), pgname.Quote(p.ageColumn),
		pgname.Quote(p.ageColumn), pruneScan)
	rows, err := tx.Query(qctx, q, p.after.Microseconds())
	if err != nil {
		return fmt.Errorf("finding rows older than %s: %w", p.after, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("finding rows older than %s: %w", p.after, err)
	}
	if err := tx.Commit(qctx); err != nil {
		return err
	}
	p.pending, p.lsn = ids, lsn
	return nil
}

// deletePending deletes the pending ids, pruneBatch per statement, each
// statement its own transaction so locks and WAL stay small.
func (p *pruner) deletePending(ctx context.Context) (int, error) {
	q := fmt.Sprintf(`DELETE FROM %s WHERE %s = ANY($1::%s[])`,
		p.table.Sanitize(), pgname.Quote(p.idColumn), p.idType)
	deleted := 0
	for i := 0; i < len(p.pending); i += pruneBatch {
		batch := p.pending[i:min(i+pruneBatch, len(p.pending))]
		qctx, cancel := context.WithTimeout(ctx, setupTimeout)
		tag, err := p.conn.Exec(qctx, q, batch)
		cancel()
		if err != nil {
			return deleted, fmt.Errorf("deleting confirmed rows: %w", err)
		}
		n := int(tag.RowsAffected())
		deleted += n
		if p.pruned != nil && n > 0 {
			p.pruned(n)
		}
	}
	return deleted, nil
}

// columnType returns a column's SQL type as format_type spells it.
func columnType(ctx context.Context, conn *pgx.Conn, table pgx.Identifier, column string) (string, error) {
	var typ string
	err := conn.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = $1::regclass AND attname = $2 AND attnum > 0 AND NOT attisdropped`,
		table.Sanitize(), column).Scan(&typ)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("table %s has no column %s", table.Sanitize(), column)
	}
	return typ, err
}

// checkPrune is the set-up check for --prune-after: the columns it needs
// exist and the role may delete. Each failure says what to do.
func checkPrune(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	table := tableIdent(cfg.Slot)
	cols := columnsOf(cfg.Decoder)
	if cols.CreatedAt == "" {
		return &slot.Problem{
			What: fmt.Sprintf("--prune-after needs the age of each row, but no created_at column is mapped for %s", table.Sanitize()),
			Fix:  "map a timestamp column, e.g. --columns created_at=<column>, or turn pruning off",
		}
	}
	for _, c := range []string{cols.ID, cols.CreatedAt} {
		if _, err := columnType(ctx, conn, table, c); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				return err
			}
			return &slot.Problem{What: "--prune-after: " + err.Error(), Fix: "check --columns, or turn pruning off"}
		}
	}
	var canDelete bool
	if err := conn.QueryRow(ctx, `SELECT has_table_privilege($1, 'DELETE')`, table.Sanitize()).Scan(&canDelete); err != nil {
		return err
	}
	if !canDelete {
		return &slot.Problem{
			What: fmt.Sprintf("--prune-after: the relay's role may not delete from %s", table.Sanitize()),
			Fix:  fmt.Sprintf("GRANT DELETE ON %s TO <the relay's role>, or turn pruning off", table.Sanitize()),
		}
	}
	return nil
}

// columnsOf returns the decoder's column mapping with defaults applied.
func columnsOf(c decoder.Config) decoder.Columns {
	if c.Columns == (decoder.Columns{}) {
		return decoder.DefaultColumns()
	}
	return c.Columns
}

// tableIdent is the outbox table as a quotable identifier.
func tableIdent(c slot.Config) pgx.Identifier {
	schema, name := c.SchemaAndName()
	return pgname.Table{Schema: schema, Name: name}.Identifier()
}
