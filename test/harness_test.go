package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/brokerserver"
	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// relayBin is the outbox-relay binary built once for the whole package, so
// the tests exercise what users run, and can SIGKILL it.
var relayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outbox-relay-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	relayBin = filepath.Join(dir, "outbox-relay")
	build := exec.Command("go", "build", "-race", "-o", relayBin, "../cmd/outbox-relay")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building outbox-relay:", err)
		os.Exit(1)
	}
	code := pgtest.Run(m)
	if err := brokerserver.CloseAll(natsServer, rabbitServer, redisServer); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the test brokers:", err)
		if code == 0 {
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output for failure messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// relayProc is a running outbox-relay binary.
type relayProc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// startRelay runs `outbox-relay run` with the given flags plus fast status
// updates; the process is killed on cleanup if the test did not stop it.
func startRelay(t *testing.T, args ...string) *relayProc {
	t.Helper()
	return launchRelay(t, relayBin, append([]string{"--status-interval", "300ms", "--receive-timeout", "10s"}, args...)...)
}

// startRelayDefaults is startRelay with the relay's default status
// interval and receive timeout.
func startRelayDefaults(t *testing.T, args ...string) *relayProc {
	t.Helper()
	return launchRelay(t, relayBin, args...)
}

// launchRelay runs `bin run` with debug logging and the given flags.
func launchRelay(t *testing.T, bin string, args ...string) *relayProc {
	t.Helper()
	// No fixed metrics port: tests run side by side; a test that scrapes
	// passes its own --metrics-addr, and the later flag wins.
	full := append([]string{"run", "--log-level", "debug", "--metrics-addr", ""}, args...)
	cmd := exec.Command(bin, full...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = relayEnv()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting relay: %v", err)
	}
	p := &relayProc{cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("relay output:\n%s", tail(out.String(), 60))
		}
	})
	return p
}

// relayEnv is the environment for a relay under test: this process's,
// without the relay's own OUTBOX_RELAY_* settings, so that a shell set up
// for a real relay cannot point a test's relay at a real broker or
// database. Tests pass everything as flags. OUTBOX_RELAY_PG_BIN stays: it
// only says where the PostgreSQL binaries are (for the demo). Metrics are
// off unless a test passes --metrics-addr: relays side by side must not
// compete for the default port.
func relayEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "OUTBOX_RELAY_") && !strings.HasPrefix(kv, "OUTBOX_RELAY_PG_BIN=")
	})
	return append(env, "OUTBOX_RELAY_METRICS_ADDR=")
}

// relayCmd is `outbox-relay args...` with relayEnv.
func relayCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, relayBin, args...)
	cmd.Env = relayEnv()
	return cmd
}

// stop sends sig and waits for the exit code.
func (p *relayProc) stop(t *testing.T, sig syscall.Signal, within time.Duration) int {
	t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("relay did not exit within %s after %s", within, sig)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("waiting for relay: %v", p.err)
	}
	return 0
}

func (p *relayProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(within)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", within, what, lastErr)
}

// ---- the outbox scenario shared by the tests -----------------------------

// scenario writes outbox events whose per-aggregate commit order is known:
// every event bumps its aggregate's counter row in the same transaction,
// and the row lock serialises transactions on one aggregate, so the
// counter (the payload's seq) is the commit order.
type scenario struct {
	db   *pgtest.DB
	aggs int

	mu  sync.Mutex
	txs []writtenTx // every committed transaction
}

type writtenTx struct {
	ids []string
	// after is pg_current_wal_lsn() right after the commit: at or past the
	// transaction's end LSN.
	after pglogrepl.LSN
}

func newScenario(t *testing.T, db *pgtest.DB, aggs int) *scenario {
	t.Helper()
	db.Exec(t, `create table agg_seq (id text primary key, n bigint not null default 0)`)
	db.Exec(t, `insert into agg_seq (id) select 'agg-' || g from generate_series(0, $1::int - 1) g`, aggs)
	return &scenario{db: db, aggs: aggs}
}

func aggType(agg int) string {
	if agg%2 == 0 {
		return "order"
	}
	return "customer"
}

// writeTx commits one transaction of size events on random aggregates.
func (s *scenario) writeTx(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, size int) error {
	aggs := make([]int, size)
	for i := range aggs {
		aggs[i] = rng.IntN(s.aggs)
	}
	// Lock the aggregates in one order to avoid deadlocks between writers.
	locked := append([]int(nil), aggs...)
	sort.Ints(locked)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	names := make([]string, len(locked))
	for i, a := range locked {
		names[i] = fmt.Sprintf("agg-%d", a)
	}
	if _, err := tx.Exec(ctx, `select 1 from agg_seq where id = any($1) order by id for update`, names); err != nil {
		return err
	}
	ids := make([]string, 0, size)
	for _, a := range aggs {
		agg := fmt.Sprintf("agg-%d", a)
		var id string
		err := tx.QueryRow(ctx, `with s as (update agg_seq set n = n + 1 where id = $1 returning n)
			insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			select $2, $1, 'updated', jsonb_build_object('seq', s.n, 'note', 'x'), '{"source":"test","n":1}' from s
			returning id::text`, agg, aggType(a)).Scan(&id)
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	return s.recordTx(ctx, conn, ids)
}

func (s *scenario) recordTx(ctx context.Context, conn *pgx.Conn, ids []string) error {
	var after pglogrepl.LSN
	if err := conn.QueryRow(ctx, `select pg_current_wal_lsn()`).Scan(&after); err != nil {
		return err
	}
	s.mu.Lock()
	s.txs = append(s.txs, writtenTx{ids: ids, after: after})
	s.mu.Unlock()
	return nil
}

// writeBulk inserts rows events with one INSERT ... SELECT generate_series:
// every row shares the statement, and the transaction is large.
func (s *scenario) writeBulk(ctx context.Context, conn *pgx.Conn, rows int) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `select 1 from agg_seq order by id for update`); err != nil {
		return err
	}
	r, err := tx.Query(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
		select case when g % $2 % 2 = 0 then 'order' else 'customer' end,
		       'agg-' || (g % $2),
		       'bulk',
		       jsonb_build_object('seq', a.n + g / $2 + 1)
		from generate_series(0, $1::int - 1) g
		join agg_seq a on a.id = 'agg-' || (g % $2)
		order by g
		returning id::text`, rows, s.aggs)
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `update agg_seq set n = n + c.cnt
		from (select 'agg-' || (g % $2) as id, count(*) as cnt from generate_series(0, $1::int - 1) g group by 1) c
		where agg_seq.id = c.id`, rows, s.aggs); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	return s.recordTx(ctx, conn, ids)
}

// writeConcurrently runs writers that together commit total events in
// transactions of random size 1..maxTx. pace, if set, is called between
// transactions (to spread writes over a fault).
func (s *scenario) writeConcurrently(ctx context.Context, writers, total, maxTx int, pace func()) error {
	return s.write(ctx, writers, total, maxTx, nil, pace)
}

// writeUntil is writeConcurrently without a total: the writers go on until
// stop is closed, each finishing the transaction it is in. For load that
// must span moments the test waits for, however long they take.
func (s *scenario) writeUntil(ctx context.Context, writers, maxTx int, stop <-chan struct{}, pace func()) error {
	return s.write(ctx, writers, math.MaxInt, maxTx, stop, pace)
}

func (s *scenario) write(ctx context.Context, writers, total, maxTx int, stop <-chan struct{}, pace func()) error {
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	per := total / writers
	for w := range writers {
		n := per
		if w == writers-1 {
			n = total - per*(writers-1)
		}
		wg.Add(1)
		go func(seed uint64, n int) {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, s.db.URL)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(seed, seed+1))
			for n > 0 {
				select {
				case <-stop:
					return
				default:
				}
				size := min(1+rng.IntN(maxTx), n)
				if err := s.writeTx(ctx, conn, rng, size); err != nil {
					errs <- fmt.Errorf("writer %d: %w", seed, err)
					return
				}
				n -= size
				if pace != nil {
					pace()
				}
			}
		}(uint64(w+1), n)
	}
	wg.Wait()
	close(errs)
	return errors.Join(collect(errs)...)
}

func collect(ch <-chan error) []error {
	var out []error
	for err := range ch {
		out = append(out, err)
	}
	return out
}

func (s *scenario) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, tx := range s.txs {
		n += len(tx.ids)
	}
	return n
}

// ---- the checker -------------------------------------------------------

type payload struct {
	Seq int64 `json:"seq"`
}

type checkResult struct {
	delivered  int
	unique     int
	duplicates []string // event ids delivered more than once
}

// check asserts every committed event was delivered, with the right key and
// headers, and that, after dropping repeats, each aggregate's events arrive
// in commit order (seq 1, 2, 3, ... within its partition).
func (s *scenario) check(t *testing.T, recs []kafkatest.Record) checkResult {
	t.Helper()
	s.mu.Lock()
	want := map[string]bool{}
	for _, tx := range s.txs {
		for _, id := range tx.ids {
			want[id] = true
		}
	}
	s.mu.Unlock()

	// Order records by partition offset: that is the order a consumer sees.
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].Topic != recs[j].Topic {
			return recs[i].Topic < recs[j].Topic
		}
		if recs[i].Partition != recs[j].Partition {
			return recs[i].Partition < recs[j].Partition
		}
		return recs[i].Offset < recs[j].Offset
	})
	seen := map[string]int{}
	lastSeq := map[string]int64{}
	partOf := map[string]int32{}
	var res checkResult
	for _, r := range recs {
		res.delivered++
		id := r.Headers["id"]
		if id == "" {
			t.Fatalf("record %s/%d@%d has no id header", r.Topic, r.Partition, r.Offset)
		}
		seen[id]++
		if seen[id] > 1 {
			res.duplicates = append(res.duplicates, id)
			continue
		}
		if !want[id] {
			t.Fatalf("record with id %s was never committed", id)
		}
		key := string(r.Key)
		var agg int
		if _, err := fmt.Sscanf(key, "agg-%d", &agg); err != nil {
			t.Fatalf("record %s has key %q, want agg-N", id, key)
		}
		if wantTopic := "outbox." + aggType(agg); r.Topic != wantTopic {
			t.Fatalf("record %s on topic %s, want %s", id, r.Topic, wantTopic)
		}
		if r.Headers["aggregate_type"] != aggType(agg) || r.Headers["event_type"] == "" {
			t.Fatalf("record %s headers %v: want aggregate_type and event_type", id, r.Headers)
		}
		if p, ok := partOf[key]; ok && p != r.Partition {
			t.Fatalf("aggregate %s on partitions %d and %d", key, p, r.Partition)
		}
		partOf[key] = r.Partition
		var pl payload
		if err := json.Unmarshal(r.Value, &pl); err != nil {
			t.Fatalf("record %s payload %q: %v", id, r.Value, err)
		}
		if pl.Seq != lastSeq[key]+1 {
			t.Fatalf("aggregate %s: seq %d after %d (record %s at %s/%d@%d): per-aggregate order broken or event lost",
				key, pl.Seq, lastSeq[key], id, r.Topic, r.Partition, r.Offset)
		}
		lastSeq[key] = pl.Seq
	}
	res.unique = len(seen)
	for id := range want {
		if seen[id] == 0 {
			t.Fatalf("event %s committed but never delivered (%d of %d delivered)", id, len(seen), len(want))
		}
	}
	return res
}

// confirmedBefore returns the ids of events whose transaction ended at or
// before lsn: a correct relay never sends them again after a restart.
func (s *scenario) confirmedBefore(lsn pglogrepl.LSN) map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]bool{}
	for _, tx := range s.txs {
		if tx.after <= lsn {
			for _, id := range tx.ids {
				out[id] = true
			}
		}
	}
	return out
}

// slotConfirmed reads the slot's confirmed_flush_lsn.
func slotConfirmed(ctx context.Context, db *pgtest.DB, slotName string) (pglogrepl.LSN, error) {
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var lsn pglogrepl.LSN
	err = conn.QueryRow(ctx, `select confirmed_flush_lsn from pg_replication_slots where slot_name = $1`, slotName).Scan(&lsn)
	return lsn, err
}

func currentWAL(ctx context.Context, db *pgtest.DB) (pglogrepl.LSN, error) {
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var lsn pglogrepl.LSN
	err = conn.QueryRow(ctx, `select pg_current_wal_lsn()`).Scan(&lsn)
	return lsn, err
}

// migrate creates the outbox table with the relay's own command.
func migrate(t *testing.T, db *pgtest.DB) {
	t.Helper()
	out, err := relayCmd(t.Context(), "migrate", "--pg-url", db.URL).CombinedOutput()
	if err != nil {
		t.Fatalf("outbox-relay migrate: %v\n%s", err, out)
	}
}

// ---- the confirmed-position watcher -------------------------------------

// confirmPoll is one sample: the slot's confirmed position, then the end
// offset of every partition read right after it.
type confirmPoll struct {
	confirmed pglogrepl.LSN
	ends      map[string]map[int32]int64 // topic -> partition -> end offset
}

// confirmWatcher polls the slot's confirmed_flush_lsn and the broker's end
// offsets throughout a run. Reading the position first and the offsets
// second makes every event the relay had confirmed by then sit below the
// offsets sampled, if the relay only confirms what the broker acked.
type confirmWatcher struct {
	mu    sync.Mutex
	polls []confirmPoll
	stop  context.CancelFunc
	done  chan struct{}
}

func watchConfirmed(t *testing.T, db *pgtest.DB, slotName string, brokers []string) *confirmWatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w := &confirmWatcher{stop: cancel, done: make(chan struct{})}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer cl.Close()
		high := map[string]map[int32]int64{}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			lsn, err := slotConfirmed(ctx, db, slotName)
			if err != nil {
				continue // slot not created yet, or the server is restarting
			}
			ends, err := endOffsets(ctx, cl, topics)
			if err != nil {
				continue
			}
			// A leader that was frozen and woke up answers with its old
			// end offset until it learns it was replaced; an end offset
			// seen once is in the log for good (acks=all, no unclean
			// election), so keep the highest seen.
			for tp, ps := range ends {
				for p, end := range ps {
					if high[tp] == nil {
						high[tp] = map[int32]int64{}
					}
					high[tp][p] = max(high[tp][p], end)
					ps[p] = high[tp][p]
				}
			}
			w.mu.Lock()
			w.polls = append(w.polls, confirmPoll{confirmed: lsn, ends: ends})
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.close)
	return w
}

func (w *confirmWatcher) close() {
	w.stop()
	<-w.done
}

// endOffsets lists the end offset of every partition of the topics: the
// highest any broker reports. Every broker is asked, not only the leader
// the client has in its metadata: a leader that was frozen and woke up
// still answers, with its old end offset, until it learns it was
// replaced, while the new leader has more. Followers refuse (not the
// leader), a frozen broker times out; a partition no broker answered for
// is an error.
func endOffsets(ctx context.Context, cl *kgo.Client, topics []string) (map[string]map[int32]int64, error) {
	meta := kmsg.NewPtrMetadataRequest()
	for _, tp := range topics {
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = kmsg.StringPtr(tp)
		meta.Topics = append(meta.Topics, mt)
	}
	mresp, err := meta.RequestWith(ctx, cl)
	if err != nil {
		return nil, err
	}
	// The high watermark: what the broker has. (Not the last stable
	// offset: with --exactly-once the relay confirms once Kafka's commit
	// is decided, and the markers that make the records visible to
	// read_committed consumers are written a moment later; a commit
	// decided is never undone.)
	req := kmsg.NewPtrListOffsetsRequest()
	want := 0
	for _, mt := range mresp.Topics {
		if mt.ErrorCode != 0 || mt.Topic == nil {
			continue // topic not created yet: nothing published to it
		}
		rt := kmsg.NewListOffsetsRequestTopic()
		rt.Topic = *mt.Topic
		for _, mp := range mt.Partitions {
			rp := kmsg.NewListOffsetsRequestTopicPartition()
			rp.Partition = mp.Partition
			rp.Timestamp = -1 // latest
			rt.Partitions = append(rt.Partitions, rp)
			want++
		}
		req.Topics = append(req.Topics, rt)
	}
	out := map[string]map[int32]int64{}
	if want == 0 {
		return out, nil
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		got int
	)
	for _, b := range mresp.Brokers {
		wg.Add(1)
		go func(id int32) {
			defer wg.Done()
			bctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			own := *req // the client sets the version on the request it sends
			resp, err := cl.Broker(int(id)).Request(bctx, &own)
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, rt := range resp.(*kmsg.ListOffsetsResponse).Topics {
				for _, rp := range rt.Partitions {
					if rp.ErrorCode != 0 {
						continue
					}
					if out[rt.Topic] == nil {
						out[rt.Topic] = map[int32]int64{}
					}
					if prev, ok := out[rt.Topic][rp.Partition]; !ok {
						got++
					} else if prev >= rp.Offset {
						continue
					}
					out[rt.Topic][rp.Partition] = rp.Offset
				}
			}
		}(b.NodeID)
	}
	wg.Wait()
	if got < want {
		return nil, fmt.Errorf("list offsets: %d of %d partitions had no broker answer as leader", want-got, want)
	}
	return out, nil
}

// check asserts that at every poll, each event whose transaction had
// ended at or before the confirmed position was already in the broker:
// the relay never confirmed past an event the broker had not acknowledged.
// recs are all records read at the end; an event's first copy counts.
func (w *confirmWatcher) check(t *testing.T, sc *scenario, recs []kafkatest.Record) int {
	t.Helper()
	w.close()
	first := map[string]kafkatest.Record{}
	for _, r := range recs {
		id := r.Headers["id"]
		if prev, ok := first[id]; !ok || (r.Topic == prev.Topic && r.Partition == prev.Partition && r.Offset < prev.Offset) {
			first[id] = r
		}
	}
	w.mu.Lock()
	polls := w.polls
	w.mu.Unlock()
	sc.mu.Lock()
	txs := append([]writtenTx(nil), sc.txs...)
	sc.mu.Unlock()
	checked := 0
	for _, p := range polls {
		for _, tx := range txs {
			if tx.after > p.confirmed {
				continue
			}
			for _, id := range tx.ids {
				r, ok := first[id]
				if !ok {
					t.Fatalf("event %s was confirmed (slot at %s) but never reached the broker", id, p.confirmed)
				}
				if end := p.ends[r.Topic][r.Partition]; r.Offset >= end {
					t.Fatalf("slot confirmed %s while event %s (ended by %s) was not yet in the broker: %s/%d offset %d, end offset then %d",
						p.confirmed, id, tx.after, r.Topic, r.Partition, r.Offset, end)
				}
				checked++
			}
		}
	}
	if len(polls) < 5 {
		t.Fatalf("only %d polls of the confirmed position: the watcher did not watch the run", len(polls))
	}
	return checked
}

// readBack reads every record the scenario committed from the broker, with
// a deadline, then whatever else arrives until the topics are quiet, so the
// result includes any repeats.
func (s *scenario) readBack(t *testing.T, brokers []string) []kafkatest.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := kafkatest.ReadN(ctx, brokers, topics, s.total()); err != nil {
		t.Fatalf("reading %d records back: %v", s.total(), err)
	}
	recs, _ := kafkatest.ReadAll(t.Context(), brokers, topics, 2*time.Second)
	return recs
}
