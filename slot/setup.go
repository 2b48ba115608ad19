package slot

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

// plugin is the output plugin the relay decodes.
const plugin = "pgoutput"

// SQLSTATE codes this package reacts to.
const (
	codeDuplicateObject       = "42710"
	codeUndefinedObject       = "42704"
	codeObjectInUse           = "55006"
	codeConfigLimitExceeded   = "53400"
	codeInsufficientPrivilege = "42501"
)

// Changes says which objects a call created or dropped.
type Changes struct {
	// Publication is true when the publication was created (or dropped).
	Publication bool
	// Slot is true when the replication slot was created (or dropped).
	Slot bool
}

// Preflight checks that the server and the objects that already exist can
// serve the relay: wal_level is logical, the role may replicate, there are
// replication slots and WAL senders, the table exists, and an existing
// publication or slot is one the relay can use. It creates nothing. Every
// failure is a *Problem.
func Preflight(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return &Problem{What: err.Error(), Err: err}
	}
	srv, err := readServer(ctx, conn)
	if err != nil {
		return err
	}
	if srv.walLevel != "logical" {
		return &Problem{
			What: fmt.Sprintf("wal_level is '%s'", srv.walLevel),
			Fix:  "set wal_level = logical in postgresql.conf and restart PostgreSQL",
		}
	}
	if !srv.superuser && !srv.replication {
		return &Problem{
			What: fmt.Sprintf("role %s may not use replication (it has neither the REPLICATION nor the SUPERUSER attribute)", srv.role),
			Fix:  fmt.Sprintf("as a superuser, run ALTER ROLE %s REPLICATION", pgname.Quote(srv.role)),
		}
	}
	if srv.maxSlots == 0 {
		return &Problem{What: "max_replication_slots is 0", Fix: "set max_replication_slots to at least 1 in postgresql.conf and restart PostgreSQL"}
	}
	if srv.maxSenders == 0 {
		return &Problem{What: "max_wal_senders is 0", Fix: "set max_wal_senders to at least 1 in postgresql.conf and restart PostgreSQL"}
	}
	if cfg.Failover && srv.versionNum < failoverVersion {
		return failoverTooOld(srv.versionNum)
	}
	kind, err := checkTable(ctx, conn, cfg)
	if err != nil {
		return err
	}
	if err := checkExistingPublication(ctx, conn, cfg, kind); err != nil {
		return err
	}
	info, ok, err := Get(ctx, conn, cfg.Slot)
	if err != nil {
		return err
	}
	if ok {
		return checkSlot(info, srv.database, cfg.Failover)
	}
	if srv.usedSlots >= srv.maxSlots {
		return &Problem{
			What: fmt.Sprintf("all %d replication slots are in use, so replication slot %s cannot be created", srv.maxSlots, cfg.Slot),
			Fix:  "drop a slot nothing uses (see `outbox-relay slot list`), or raise max_replication_slots and restart PostgreSQL",
		}
	}
	return nil
}

// Ensure creates what is missing: the publication of the table's inserts,
// then the logical replication slot (pgoutput). It reports whether it
// created either. An existing publication or slot the relay cannot use is a
// *Problem; it is never altered or replaced.
func Ensure(ctx context.Context, conn *pgx.Conn, cfg Config) (created bool, err error) {
	ch, err := Create(ctx, conn, cfg)
	return ch.Publication || ch.Slot, err
}

// Create is Ensure reporting which of the two objects it created: running
// it again creates nothing and reports so.
func Create(ctx context.Context, conn *pgx.Conn, cfg Config) (Changes, error) {
	var ch Changes
	if err := cfg.Validate(); err != nil {
		return ch, &Problem{What: err.Error(), Err: err}
	}
	kind, err := checkTable(ctx, conn, cfg)
	if err != nil {
		return ch, err
	}
	if ch.Publication, err = ensurePublication(ctx, conn, cfg, kind); err != nil {
		return ch, err
	}
	ch.Slot, err = ensureSlot(ctx, conn, cfg)
	return ch, err
}

// Drop drops the replication slot, then the publication. Missing ones are
// not an error; Changes reports what was dropped. A slot that is active, that
// belongs to another database or that is physical is left alone, and so is
// the publication then.
func Drop(ctx context.Context, conn *pgx.Conn, cfg Config) (Changes, error) {
	var ch Changes
	if err := cfg.validateNames(); err != nil {
		return ch, &Problem{What: err.Error(), Err: err}
	}
	var err error
	if ch.Slot, err = dropSlot(ctx, conn, cfg.Slot); err != nil {
		return ch, err
	}
	var exists bool
	if err := conn.QueryRow(ctx, "select exists (select 1 from pg_publication where pubname = $1)", cfg.Publication).Scan(&exists); err != nil {
		return ch, fmt.Errorf("looking up publication %s: %w", cfg.Publication, err)
	}
	if exists {
		if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgname.Quote(cfg.Publication)); err != nil {
			return ch, fmt.Errorf("dropping publication %s: %w", cfg.Publication, err)
		}
		ch.Publication = true
	}
	return ch, nil
}

func dropSlot(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	info, ok, err := Get(ctx, conn, name)
	if err != nil || !ok {
		return false, err
	}
	var db string
	if err := conn.QueryRow(ctx, "select current_database()::text").Scan(&db); err != nil {
		return false, fmt.Errorf("reading the current database: %w", err)
	}
	if info.Type != "logical" {
		return false, &Problem{
			What: fmt.Sprintf("replication slot %s is a %s slot, not one the relay created", name, info.Type),
			Fix:  fmt.Sprintf("if nothing uses it, drop it with SELECT pg_drop_replication_slot('%s')", name),
		}
	}
	if info.Database != db {
		return false, &Problem{
			What: fmt.Sprintf("replication slot %s belongs to database %s, not %s", name, info.Database, db),
			Fix:  fmt.Sprintf("connect to database %s to drop it", info.Database),
		}
	}
	if info.Active {
		return false, activeError(name, info.ActivePID)
	}
	if _, err := conn.Exec(ctx, "select pg_drop_replication_slot($1)", name); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			switch pgErr.Code {
			case codeUndefinedObject: // dropped meanwhile
				return false, nil
			case codeObjectInUse: // a session started streaming meanwhile
				info, _, _ := Get(ctx, conn, name)
				return false, activeError(name, info.ActivePID)
			}
		}
		return false, fmt.Errorf("dropping replication slot %s: %w", name, err)
	}
	return true, nil
}

func activeError(name string, pid int) error {
	return fmt.Errorf("replication slot %s is active (pid %d): stop the relay that streams from it, or end that session with SELECT pg_terminate_backend(%d), then drop it again", name, pid, pid)
}

// server is what Preflight reads about the server and the session's role.
type server struct {
	versionNum             int // server_version_num: 170010 is 17.10
	walLevel               string
	maxSlots, maxSenders   int
	usedSlots              int
	role, database         string
	superuser, replication bool
}

func readServer(ctx context.Context, conn *pgx.Conn) (server, error) {
	var s server
	// Amazon RDS grants replication through membership of rds_replication
	// rather than the REPLICATION attribute.
	err := conn.QueryRow(ctx, `
select current_setting('server_version_num')::int, current_setting('wal_level'),
	current_setting('max_replication_slots')::int,
	current_setting('max_wal_senders')::int,
	(select count(*) from pg_replication_slots)::int,
	current_user::text, current_database()::text,
	r.rolsuper,
	r.rolreplication or case when exists (select 1 from pg_roles where rolname = 'rds_replication')
		then pg_has_role(current_user, 'rds_replication', 'member') else false end
from pg_roles r where r.rolname = current_user`).Scan(
		&s.versionNum, &s.walLevel, &s.maxSlots, &s.maxSenders, &s.usedSlots, &s.role, &s.database, &s.superuser, &s.replication)
	if err != nil {
		return s, fmt.Errorf("reading server settings: %w", err)
	}
	return s, nil
}

// checkTable returns the table's relkind: 'r' for a table, 'p' for a
// partitioned one.
func checkTable(ctx context.Context, conn *pgx.Conn, cfg Config) (string, error) {
	schema, name, err := cfg.table()
	if err != nil {
		return "", err
	}
	var kind string
	err = conn.QueryRow(ctx, `
select c.relkind::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = $1 and c.relname = $2`, schema, name).Scan(&kind)
	if errors.Is(err, pgx.ErrNoRows) {
		migrate := "outbox-relay migrate"
		if schema != pgname.DefaultSchema || name != "outbox" {
			migrate += " --table " + schema + "." + name
		}
		return "", &Problem{
			What: fmt.Sprintf("table %s.%s does not exist", schema, name),
			Fix:  fmt.Sprintf("run `%s` or create it", migrate),
		}
	}
	if err != nil {
		return "", fmt.Errorf("looking up table %s.%s: %w", schema, name, err)
	}
	if kind != "r" && kind != "p" {
		return "", &Problem{
			What: fmt.Sprintf("%s.%s is not a table (relkind %s)", schema, name, kind),
			Fix:  "point --table at the outbox table",
		}
	}
	return kind, nil
}

// publication is a row of pg_publication.
type publication struct {
	insert, viaRoot bool
}

func readPublication(ctx context.Context, conn *pgx.Conn, name string) (publication, bool, error) {
	var p publication
	err := conn.QueryRow(ctx, "select pubinsert, pubviaroot from pg_publication where pubname = $1", name).Scan(&p.insert, &p.viaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, false, nil
	}
	if err != nil {
		return p, false, fmt.Errorf("looking up publication %s: %w", name, err)
	}
	return p, true, nil
}

func checkExistingPublication(ctx context.Context, conn *pgx.Conn, cfg Config, kind string) error {
	p, ok, err := readPublication(ctx, conn, cfg.Publication)
	if err != nil || !ok {
		return err
	}
	return checkPublication(ctx, conn, cfg, kind, p)
}

// checkPublication checks that an existing publication streams the table's
// inserts. Publishing more (updates, deletes, other tables) is fine: the
// decoder skips what is not an outbox insert.
func checkPublication(ctx context.Context, conn *pgx.Conn, cfg Config, kind string, p publication) error {
	schema, name, _ := cfg.table()
	pub := pgname.Quote(cfg.Publication)
	tbl := pgname.Table{Schema: schema, Name: name}.Quoted()
	if !p.insert {
		return &Problem{
			What: fmt.Sprintf("publication %s does not publish inserts", cfg.Publication),
			Fix:  fmt.Sprintf("run ALTER PUBLICATION %s SET (publish = 'insert'), or choose another --publication", pub),
		}
	}
	if kind == "p" && !p.viaRoot {
		return &Problem{
			What: fmt.Sprintf("publication %s publishes the partitions of partitioned table %s.%s under their own names", cfg.Publication, schema, name),
			Fix:  fmt.Sprintf("run ALTER PUBLICATION %s SET (publish_via_partition_root = true)", pub),
		}
	}
	// pg_publication_tables covers FOR TABLE, FOR TABLES IN SCHEMA and
	// FOR ALL TABLES alike.
	var included bool
	err := conn.QueryRow(ctx, `select exists (select 1 from pg_publication_tables
		where pubname = $1 and schemaname = $2 and tablename = $3)`, cfg.Publication, schema, name).Scan(&included)
	if err != nil {
		return fmt.Errorf("looking up the tables of publication %s: %w", cfg.Publication, err)
	}
	if !included {
		return &Problem{
			What: fmt.Sprintf("publication %s exists but does not include table %s.%s", cfg.Publication, schema, name),
			Fix:  fmt.Sprintf("run ALTER PUBLICATION %s ADD TABLE %s, or choose another --publication", pub, tbl),
		}
	}
	return nil
}

func ensurePublication(ctx context.Context, conn *pgx.Conn, cfg Config, kind string) (bool, error) {
	p, ok, err := readPublication(ctx, conn, cfg.Publication)
	if err != nil {
		return false, err
	}
	if ok {
		return false, checkPublication(ctx, conn, cfg, kind, p)
	}
	schema, name, _ := cfg.table()
	stmt := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert'",
		pgname.Quote(cfg.Publication), pgname.Table{Schema: schema, Name: name}.Quoted())
	if kind == "p" {
		stmt += ", publish_via_partition_root = true"
	}
	stmt += ")"
	_, err = conn.Exec(ctx, stmt)
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &pgErr) && pgErr.Code == codeDuplicateObject:
		// Another session created it meanwhile: check theirs.
		return false, checkExistingPublication(ctx, conn, cfg, kind)
	case errors.As(err, &pgErr) && pgErr.Code == codeInsufficientPrivilege:
		return false, &Problem{
			What: fmt.Sprintf("the role may not create publication %s: %s", cfg.Publication, pgErr.Message),
			Fix:  fmt.Sprintf("connect as the owner of table %s.%s, or have an administrator run: %s", schema, name, stmt),
			Err:  err,
		}
	default:
		return false, fmt.Errorf("creating publication %s: %w", cfg.Publication, err)
	}
}

func ensureSlot(ctx context.Context, conn *pgx.Conn, cfg Config) (bool, error) {
	var db string
	var versionNum int
	if err := conn.QueryRow(ctx, "select current_database()::text, current_setting('server_version_num')::int").Scan(&db, &versionNum); err != nil {
		return false, fmt.Errorf("reading the current database: %w", err)
	}
	info, ok, err := Get(ctx, conn, cfg.Slot)
	if err != nil {
		return false, err
	}
	if ok {
		return false, checkSlot(info, db, cfg.Failover)
	}
	// This waits for the transactions running now to finish: the slot
	// starts at a consistent point.
	if cfg.Failover {
		if versionNum < failoverVersion {
			return false, failoverTooOld(versionNum)
		}
		// Arguments: name, plugin, temporary, two-phase, failover.
		_, err = conn.Exec(ctx, "select pg_create_logical_replication_slot($1, $2, false, false, true)", cfg.Slot, plugin)
	} else {
		_, err = conn.Exec(ctx, "select pg_create_logical_replication_slot($1, $2)", cfg.Slot, plugin)
	}
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &pgErr) && pgErr.Code == codeDuplicateObject:
		info, ok, err := Get(ctx, conn, cfg.Slot)
		if err != nil || !ok {
			return false, fmt.Errorf("creating replication slot %s: it exists and then did not: %w", cfg.Slot, err)
		}
		return false, checkSlot(info, db, cfg.Failover)
	case errors.As(err, &pgErr) && pgErr.Code == codeConfigLimitExceeded:
		return false, &Problem{
			What: fmt.Sprintf("replication slot %s cannot be created: %s", cfg.Slot, pgErr.Message),
			Fix:  "drop a slot nothing uses (see `outbox-relay slot list`), or raise max_replication_slots and restart PostgreSQL",
			Err:  err,
		}
	default:
		return false, fmt.Errorf("creating replication slot %s: %w", cfg.Slot, err)
	}
}

// failoverVersion is the first server_version_num with failover slots.
const failoverVersion = 170000

func failoverTooOld(versionNum int) error {
	return &Problem{
		What: fmt.Sprintf("--failover needs PostgreSQL 17 or later (failover slots), and this server is %d.%d",
			versionNum/10000, versionNum%10000),
		Fix: "run without --failover (the slot then exists on this server only: after a failover to a standby it is missing), or upgrade PostgreSQL",
	}
}

// checkSlot checks that an existing slot is one the relay can stream from,
// in database db, and a failover slot if failover is asked for.
func checkSlot(info Info, db string, failover bool) error {
	other := fmt.Sprintf("choose another --slot, or drop this one with `outbox-relay slot drop --slot %s` if nothing uses it", info.Name)
	switch {
	case info.Type != "logical":
		return &Problem{What: fmt.Sprintf("replication slot %s is a %s slot, not a logical one", info.Name, info.Type), Fix: "choose another --slot"}
	case info.Plugin != plugin:
		return &Problem{What: fmt.Sprintf("replication slot %s uses output plugin %s, not %s", info.Name, info.Plugin, plugin), Fix: other}
	case info.Database != db:
		return &Problem{
			What: fmt.Sprintf("replication slot %s belongs to database %s, not %s", info.Name, info.Database, db),
			Fix:  fmt.Sprintf("choose another --slot, or connect to database %s", info.Database),
		}
	case info.Lost():
		return LostError(info.Name, info.InvalidationReason)
	case failover && !info.Failover:
		return &Problem{
			What: fmt.Sprintf("replication slot %s exists but is not a failover slot, and --failover asks for one", info.Name),
			Fix: fmt.Sprintf("with the relay stopped, make it one over a replication connection: "+
				"psql \"dbname=%s replication=database\" -c 'ALTER_REPLICATION_SLOT %s (FAILOVER true)'", info.Database, info.Name),
		}
	}
	return nil
}
