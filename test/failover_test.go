package test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgserver"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// A primary dies (SIGKILL, no shutdown) while writers commit and the relay
// streams from a failover slot; its standby, which synced the slot, is
// promoted; the writers and the relay follow it through a multi-host URL.
// Every committed event is delivered, in order per aggregate; repeats are
// only of events after the position the standby had synced; the slot was
// never confirmed past an event the broker had not acknowledged.
func TestFailoverToAPromotedStandbyLosesNothing(t *testing.T) {
	for _, major := range []int{17, 18} {
		t.Run("pg"+strconv.Itoa(major), func(t *testing.T) { failoverLosesNothing(t, major) })
	}
}

// Without a failover slot the standby has no copy of the slot: after the
// promotion the relay stops with exit code 1 and says after which position
// events may be lost, and creates no slot, nor does a relay started again.
func TestFailoverWithoutAFailoverSlotStopsAndSaysWhatMayBeLost(t *testing.T) {
	ctx := t.Context()
	ha := newHAPair(t, 17)
	sc := newScenario(t, ha.db, 20)
	cluster := kafkatest.NewCluster(t)
	relay := startRelay(t, faultArgs(ha.url, cluster, "plain")...)
	waitSlotActive(t, ha.db, "plain")
	w := ha.startWriters(ctx, sc, 4)
	waitFor(t, 60*time.Second, "the relay to confirm some events", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, ha.mdb, "plain")
		return lsn > 0 && w.committed.Load() >= 300, err
	})
	ha.failover(t)
	w.writeMore(t, 300)
	code := relay.waitExit(t, 2*time.Minute)
	out := relay.out.String()
	if code != 1 {
		t.Fatalf("relay exit code %d after a failover to a standby without the slot, want 1:\n%s", code, tail(out, 20))
	}
	for _, want := range []string{"no slot plain", "may never be delivered", "the last position the relay confirmed", "slot create --failover"} {
		if !strings.Contains(out, want) {
			t.Fatalf("exit message lacks %q:\n%s", want, tail(out, 10))
		}
	}
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	// Started again, as a supervisor would, a relay that never saw the
	// old primary refuses as well.
	again := startRelay(t, faultArgs(ha.url, cluster, "plain")...)
	if code := again.waitExit(t, time.Minute); code != 1 || !strings.Contains(again.out.String(), "was promoted (timeline 2)") {
		t.Fatalf("a restarted relay on the promoted server without the slot: exit %d, want 1 naming the promotion:\n%s", code, tail(again.out.String(), 10))
	}
	var slots int
	if err := queryOne(ctx, ha.mdb, "select count(*) from pg_replication_slots where slot_name = 'plain'", nil, &slots); err != nil || slots != 0 {
		t.Fatalf("%d slots named plain on the new primary (%v): the relay created one", slots, err)
	}
	t.Logf("without a failover slot: exit %d, %s", code, lastLine(out, "outbox-relay:"))
	t.Logf("restarted: %s", lastLine(again.out.String(), "outbox-relay:"))
}

// A slot of the same name that the promoted server has but did not sync
// from the old primary (here created on the standby itself) does not hold
// the relay's position: the relay stops rather than stream from it.
func TestFailoverToASlotThatWasNotSyncedStops(t *testing.T) {
	ctx := t.Context()
	ha := newHAPair(t, 17)
	sc := newScenario(t, ha.db, 20)
	cluster := kafkatest.NewCluster(t)
	relay := startRelay(t, faultArgs(ha.url, cluster, "plain")...)
	waitSlotActive(t, ha.db, "plain")
	if err := sc.writeConcurrently(ctx, 2, 200, 5, nil); err != nil {
		t.Fatal(err)
	}
	// A logical slot on a standby (PostgreSQL 16+) waits for a snapshot
	// of the primary's running transactions; ask the primary for one.
	created := make(chan error, 1)
	go func() {
		created <- execFresh(ctx, ha.standbyDB, "select pg_create_logical_replication_slot('plain', 'pgoutput')")
	}()
	waitFor(t, time.Minute, "the slot created on the standby", func() (bool, error) {
		select {
		case err := <-created:
			return err == nil, err
		default:
		}
		return false, execFresh(ctx, ha.db, "select pg_log_standby_snapshot()")
	})
	ha.failover(t)
	code := relay.waitExit(t, 2*time.Minute)
	out := relay.out.String()
	if code != 1 || !strings.Contains(out, "was not synced from the old primary") {
		t.Fatalf("relay on a promoted server whose slot was not synced: exit %d, want 1 saying so:\n%s", code, tail(out, 10))
	}
	t.Logf("slot not synced: %s", lastLine(out, "outbox-relay:"))
}

func failoverLosesNothing(t *testing.T, major int) {
	ctx := t.Context()
	ha := newHAPair(t, major)
	sc := newScenario(t, ha.db, 20)
	cluster := kafkatest.NewCluster(t)
	brokers := cluster.ListenAddrs()
	relay := startRelay(t, faultArgs(ha.url, cluster, "fo", "--failover")...)
	waitSlotActive(t, ha.db, "fo")
	watch := watchConfirmed(t, ha.mdb, "fo", brokers)

	// The standby's copy of the slot stays temporary (a promotion would
	// drop it) until the primary's slot moves past where the copy began:
	// a trickle of events moves it until then.
	trickle := ha.db.Conn(t)
	rng := rand.New(rand.NewPCG(99, 100))
	syncing := time.Now()
	waitFor(t, 90*time.Second, "the slot synced to the standby and persistent", func() (bool, error) {
		if err := sc.writeTx(ctx, trickle, rng, 3); err != nil {
			return false, err
		}
		var ready bool
		err := queryOne(ctx, ha.standbyDB, `select synced and not temporary from pg_replication_slots where slot_name = 'fo'`, nil, &ready)
		return ready, err
	})
	t.Logf("slot synced to the standby and persistent %s after the relay created it (%d events)", time.Since(syncing).Round(time.Millisecond), sc.total())
	// Kill once the slot moved with the writers' events, while they write.
	w := ha.startWriters(ctx, sc, 4)
	var from pglogrepl.LSN
	if err := queryOne(ctx, ha.standbyDB, "select confirmed_flush_lsn from pg_replication_slots where slot_name = 'fo'", nil, &from); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, "the synced slot to move with the writers' events", func() (bool, error) {
		var moved bool
		err := queryOne(ctx, ha.standbyDB, "select confirmed_flush_lsn > $1 from pg_replication_slots where slot_name = 'fo'", []any{from}, &moved)
		return moved && w.committed.Load() >= 1000, err
	})
	// What status says on the standby before the failover.
	out, errOut, code := runStatus(t, os.Environ(), "--pg-url", ha.standbyDB.URL, "--slot", "fo")
	if code != 0 || !strings.Contains(out, "yes,synced") || strings.Contains(errOut, "warning") {
		t.Fatalf("status on the standby: exit %d, want the slot failover and synced without warnings:\n%s%s", code, out, errOut)
	}

	killedAt := ha.killPrimary(t)
	var synced pglogrepl.LSN
	if err := queryOne(ctx, ha.standbyDB, "select confirmed_flush_lsn from pg_replication_slots where slot_name = 'fo'", nil, &synced); err != nil {
		t.Fatal(err)
	}
	committedAtKill := w.committed.Load()
	ha.promote(t)
	// The relay streams again, from the promoted server.
	waitFor(t, 2*time.Minute, "the relay streaming from the promoted server", func() (bool, error) {
		var streaming bool
		err := queryOne(ctx, ha.standbyDB, `select exists (select 1 from pg_replication_slots s
			join pg_stat_replication r on r.pid = s.active_pid where s.slot_name = 'fo')`, nil, &streaming)
		return streaming, err
	})
	without := time.Since(killedAt)
	w.writeMore(t, 1000)
	if err := w.wait(); err != nil {
		t.Fatalf("writing: %v", err)
	}
	if relay.exited() {
		t.Fatalf("the relay exited after the failover:\n%s", tail(relay.out.String(), 20))
	}

	recs := settleRecords(t, ha.mdb, "fo", cluster, sc.total())
	res := sc.check(t, recs)
	before := sc.confirmedBefore(synced)
	for _, id := range res.duplicates {
		if before[id] {
			t.Fatalf("event %s ended before %s, the slot's position synced to the standby, yet was sent again", id, synced)
		}
	}
	checks := watch.check(t, sc, recs)
	t.Logf("PostgreSQL %d failover: %d events committed (%d when the primary was killed, %d ambiguous commits resolved), %d delivered, %d repeats (all after the synced position %s); "+
		"the relay streamed again %s after the kill (%s); confirmed position never ahead of the broker: %d event checks",
		major, sc.total(), committedAtKill, w.ambiguous.Load(), res.delivered, len(res.duplicates), synced,
		without.Round(time.Millisecond), lastLine(relay.out.String(), "following the promoted primary"), checks)
	if !strings.Contains(relay.out.String(), "following the promoted primary") {
		t.Fatalf("the relay did not log that it followed the promoted primary:\n%s", tail(relay.out.String(), 20))
	}
}

// haPair is a primary and a streaming standby with slot synchronization,
// a database on them, and a URL that names both (read-write wanted).
type haPair struct {
	primary, standby *pgserver.Server
	db               *pgtest.DB // on the primary
	standbyDB        *pgtest.DB // the same database, on the standby
	mdb              *pgtest.DB // the same database, through url
	url              string     // multi-host, target_session_attrs=read-write
}

func newHAPair(t *testing.T, major int) *haPair {
	t.Helper()
	primary := pgtest.NewServerVersion(t, major, nil)
	standby, err := primary.StartStandby(t.Context(), pgserver.StandbyOptions{Slot: "standby1",
		Settings: map[string]string{"sync_replication_slots": "on"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := standby.Close(); err != nil {
			t.Error(err)
		}
	})
	db := pgtest.OnServer(t, primary)
	migrate(t, db)
	// Commits wait for the standby (so a commit the writers saw survives
	// the failover), and the relay receives only what the standby has
	// (so the synced slot is never behind what the relay published from).
	db.Exec(t, "alter system set synchronous_standby_names = 'standby1'")
	db.Exec(t, "alter system set synchronized_standby_slots = 'standby1'")
	db.Exec(t, "select pg_reload_conf()")

	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = u.Host + "," + net.JoinHostPort("127.0.0.1", strconv.Itoa(standby.Port()))
	q := u.Query()
	q.Set("target_session_attrs", "read-write")
	q.Set("connect_timeout", "5")
	u.RawQuery = q.Encode()
	su, _ := url.Parse(db.URL)
	su.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(standby.Port()))
	return &haPair{
		primary: primary, standby: standby, db: db, url: u.String(),
		standbyDB: &pgtest.DB{URL: su.String(), Name: db.Name, Server: standby},
		mdb:       &pgtest.DB{URL: u.String(), Name: db.Name},
	}
}

// killPrimary ends the primary like a machine's death and returns when.
func (ha *haPair) killPrimary(t *testing.T) time.Time {
	t.Helper()
	at := time.Now()
	if err := ha.primary.Kill(); err != nil {
		t.Fatal(err)
	}
	return at
}

// failover kills the primary and promotes the standby.
func (ha *haPair) failover(t *testing.T) {
	t.Helper()
	ha.killPrimary(t)
	ha.promote(t)
}

func (ha *haPair) promote(t *testing.T) {
	t.Helper()
	if err := ha.standby.Promote(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// haWriters are writers through the multi-host URL that write until
// stopped, reconnecting after the failover. A commit whose outcome the
// lost connection hid is resolved on the new primary: its events count as
// committed if they are there.
type haWriters struct {
	committed atomic.Int64 // events committed so far
	ambiguous atomic.Int64 // commits resolved after the failover
	stop      chan struct{}
	errs      chan error
	wg        sync.WaitGroup
}

func (ha *haPair) startWriters(ctx context.Context, sc *scenario, writers int) *haWriters {
	w := &haWriters{stop: make(chan struct{}), errs: make(chan error, writers)}
	for i := range writers {
		w.wg.Add(1)
		go func(seed uint64) {
			defer w.wg.Done()
			if err := ha.write(ctx, sc, w, seed); err != nil {
				w.errs <- fmt.Errorf("writer %d: %w", seed, err)
			}
		}(uint64(i + 1))
	}
	return w
}

// writeMore waits until n more events are committed (on the new primary,
// after a failover).
func (w *haWriters) writeMore(t *testing.T, n int64) {
	t.Helper()
	target := w.committed.Load() + n
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d more events committed", n), func() (bool, error) {
		return w.committed.Load() >= target, nil
	})
}

func (w *haWriters) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// wait stops the writers and returns their errors.
func (w *haWriters) wait() error {
	close(w.stop)
	w.wg.Wait()
	close(w.errs)
	return errors.Join(collect(w.errs)...)
}

// write commits events in transactions of 1..10 until w.stop closes,
// paced so that the failover lands mid-stream (this shapes the load; it
// synchronises nothing).
func (ha *haPair) write(ctx context.Context, sc *scenario, w *haWriters, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	var pending [][]string // transactions whose commit outcome is unknown
	for !w.stopped() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if conn == nil || conn.IsClosed() {
			var err error
			if conn, err = pgx.Connect(ctx, ha.url); err != nil {
				conn = nil
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(100 * time.Millisecond): // no primary yet
				}
				continue
			}
			for _, ids := range pending {
				if err := resolve(ctx, conn, sc, w, ids); err != nil {
					return err
				}
			}
			pending = nil
		}
		ids, committed, err := writeTxIDs(ctx, sc, conn, rng, 1+rng.IntN(10))
		switch {
		case err == nil:
		case ids != nil && !committed:
			// The commit was sent and its answer lost: look on the primary
			// that answers next.
			pending = append(pending, ids)
			conn.Close(context.Background())
			conn = nil
		default:
			// Failed before the commit: nothing committed; try again.
			conn.Close(context.Background())
			conn = nil
		}
		if committed {
			w.committed.Add(int64(len(ids)))
		}
		<-time.After(5 * time.Millisecond)
	}
	if conn == nil && len(pending) > 0 {
		var err error
		if conn, err = pgx.Connect(ctx, ha.url); err != nil {
			return err
		}
	}
	for _, ids := range pending {
		if err := resolve(ctx, conn, sc, w, ids); err != nil {
			return err
		}
	}
	return nil
}

// resolve records the transaction of ids as committed if its events are
// on the server conn is connected to (all or none of them are).
func resolve(ctx context.Context, conn *pgx.Conn, sc *scenario, w *haWriters, ids []string) error {
	var found int
	if err := conn.QueryRow(ctx, "select count(*) from outbox where id::text = any($1)", ids).Scan(&found); err != nil {
		return err
	}
	w.ambiguous.Add(1)
	switch found {
	case 0:
		return nil
	case len(ids):
		w.committed.Add(int64(len(ids)))
		return sc.recordTx(ctx, conn, ids)
	default:
		return fmt.Errorf("%d of the %d events of one transaction on the new primary", found, len(ids))
	}
}

// writeTxIDs is scenario.writeTx that reports the transaction's event ids
// once it sent the commit, and whether the commit (and its record) is
// known to have succeeded. ids set with committed false: outcome unknown.
func writeTxIDs(ctx context.Context, sc *scenario, conn *pgx.Conn, rng *rand.Rand, size int) (ids []string, committed bool, err error) {
	aggs := make([]int, size)
	for i := range aggs {
		aggs[i] = rng.IntN(sc.aggs)
	}
	locked := append([]int(nil), aggs...)
	sort.Ints(locked)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, false, err
	}
	defer tx.Rollback(context.Background())
	names := make([]string, len(locked))
	for i, a := range locked {
		names[i] = fmt.Sprintf("agg-%d", a)
	}
	if _, err := tx.Exec(ctx, `select 1 from agg_seq where id = any($1) order by id for update`, names); err != nil {
		return nil, false, err
	}
	out := make([]string, 0, size)
	for _, a := range aggs {
		agg := fmt.Sprintf("agg-%d", a)
		var id string
		err := tx.QueryRow(ctx, `with s as (update agg_seq set n = n + 1 where id = $1 returning n)
			insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			select $2, $1, 'updated', jsonb_build_object('seq', s.n, 'note', 'x'), '{"source":"test","n":1}' from s
			returning id::text`, agg, aggType(a)).Scan(&id)
		if err != nil {
			return nil, false, err
		}
		out = append(out, id)
	}
	if err := tx.Commit(ctx); err != nil {
		return out, false, err
	}
	if err := sc.recordTx(ctx, conn, out); err != nil {
		// Committed, but the position after it is unknown: resolved
		// (recorded) on the next primary like an unknown commit.
		return out, false, err
	}
	return out, true, nil
}

// lastLine returns the last line of out that contains s.
func lastLine(out, s string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}

// From PostgreSQL 16 a relay may decode on a standby, from a slot made
// there; the failover checks leave it alone (a standby has no current
// WAL file to read a timeline from).
func TestRelayStreamsFromASlotOnAStandby(t *testing.T) {
	ctx := t.Context()
	ha := newHAPair(t, 17)
	sc := newScenario(t, ha.db, 10)
	ha.db.Exec(t, "create publication onstandby for table outbox with (publish = 'insert')")
	created := make(chan error, 1)
	go func() {
		created <- execFresh(ctx, ha.standbyDB, "select pg_create_logical_replication_slot('onstandby', 'pgoutput')")
	}()
	waitFor(t, time.Minute, "the slot created on the standby", func() (bool, error) {
		select {
		case err := <-created:
			return err == nil, err
		default:
		}
		return false, execFresh(ctx, ha.db, "select pg_log_standby_snapshot()")
	})
	cluster := kafkatest.NewCluster(t)
	startRelay(t, faultArgs(ha.standbyDB.URL, cluster, "onstandby", "--create-slot=false")...)
	waitSlotActive(t, ha.standbyDB, "onstandby")
	if err := sc.writeConcurrently(ctx, 2, 200, 5, nil); err != nil {
		t.Fatal(err)
	}
	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	recs, err := kafkatest.ReadN(readCtx, cluster.ListenAddrs(), topics, sc.total())
	if err != nil {
		t.Fatalf("reading what the relay on the standby published: %d of %d: %v", len(recs), sc.total(), err)
	}
	sc.check(t, recs)
}
