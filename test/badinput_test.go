package test

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// waitExit waits for the relay to exit on its own and returns its code.
func (p *relayProc) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("relay still running after %s; output:\n%s", within, tail(p.out.String(), 30))
	}
	if p.cmd.ProcessState == nil {
		t.Fatalf("relay exited without a process state: %v", p.err)
	}
	return p.cmd.ProcessState.ExitCode()
}

// expectConfigError runs the relay and expects exit code 2 with every
// phrase in its output.
func expectConfigError(t *testing.T, args []string, phrases ...string) string {
	t.Helper()
	p := startRelay(t, args...)
	code := p.waitExit(t, 60*time.Second)
	out := p.out.String()
	if code != 2 {
		t.Fatalf("exit code %d, want 2 (bad configuration); output:\n%s", code, tail(out, 30))
	}
	for _, ph := range phrases {
		if !strings.Contains(out, ph) {
			t.Fatalf("output does not say %q:\n%s", ph, tail(out, 30))
		}
	}
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func withUser(t *testing.T, raw, user, password string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if password == "" {
		u.User = url.User(user)
	} else {
		u.User = url.UserPassword(user, password)
	}
	return u.String()
}

func TestWalLevelReplicaIsAClearConfigError(t *testing.T) {
	srv := pgtest.NewServer(t, map[string]string{"wal_level": "replica"})
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	expectConfigError(t, []string{"--pg-url", db.URL, "--kafka-brokers", "127.0.0.1:1"},
		"wal_level", "logical", "restart")
}

func TestMissingTableIsAClearConfigError(t *testing.T) {
	db := pgtest.New(t)
	expectConfigError(t, []string{"--pg-url", db.URL, "--kafka-brokers", "127.0.0.1:1", "--table", "public.nope"},
		"public.nope", "does not exist", "migrate")
}

func TestSlotWithAnotherPluginIsAClearConfigError(t *testing.T) {
	db := pgtest.New(t)
	migrate(t, db)
	db.Exec(t, `select pg_create_logical_replication_slot('other_plugin', 'test_decoding')`)
	expectConfigError(t, []string{"--pg-url", db.URL, "--kafka-brokers", "127.0.0.1:1", "--slot", "other_plugin"},
		"other_plugin", "test_decoding")
}

func TestRoleWithoutReplicationIsAClearConfigError(t *testing.T) {
	db := pgtest.New(t)
	migrate(t, db)
	db.Exec(t, `do $$ begin if not exists (select from pg_roles where rolname = 'no_repl') then create role no_repl login; end if; end $$`)
	expectConfigError(t, []string{"--pg-url", withUser(t, db.URL, "no_repl", ""), "--kafka-brokers", "127.0.0.1:1"},
		"no_repl", "REPLICATION")
}

// A wrong password fails fast with exit code 2 and neither the wrong nor the
// right password appears anywhere in the output.
func TestWrongPasswordFailsFastWithoutLeakingIt(t *testing.T) {
	srv := pgtest.NewServer(t, nil)
	db := pgtest.OnServer(t, srv)
	migrate(t, db)
	const right, wrong = "right-secret-7781", "wrong-secret-1234"
	db.Exec(t, `create role app_user login replication password '`+right+`'`)
	// Require a password for app_user on TCP; everyone else keeps trust.
	hba := filepath.Join(srv.DataDir(), "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	rule := "host all app_user 127.0.0.1/32 scram-sha-256\nhost replication app_user 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(hba, append([]byte(rule), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `select pg_reload_conf()`)

	start := time.Now()
	out := expectConfigError(t, []string{"--pg-url", withUser(t, db.URL, "app_user", wrong), "--kafka-brokers", "127.0.0.1:1"},
		"password authentication failed", "app_user")
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("took %s to give up on a wrong password: it should fail fast", d)
	}
	for _, secret := range []string{wrong, right} {
		if strings.Contains(out, secret) {
			t.Fatalf("output contains the password %q:\n%s", secret, out)
		}
	}
}

// An unreachable PostgreSQL is retried (it may be restarting); each attempt
// says on one line where it tried and what to check, no other warning comes
// first, and the password in the URL never shows up in the logs.
func TestUnreachablePostgresIsRetriedWithoutLeakingThePassword(t *testing.T) {
	const secret = "pw-in-url-5521"
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	u := "postgres://relay:" + secret + "@" + addr + "/app?sslmode=prefer&connect_timeout=2"
	// With metrics on, the slot poller tries to connect too.
	p := startRelay(t, "--pg-url", u, "--kafka-brokers", "127.0.0.1:1", "--metrics-addr", "127.0.0.1:0")
	waitFor(t, 30*time.Second, "two reconnect attempts", func() (bool, error) {
		return strings.Count(p.out.String(), "reconnecting") >= 2, nil
	})
	if code := p.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM while retrying, want 0", code)
	}
	out := p.out.String()
	if strings.Contains(out, secret) {
		t.Fatalf("output contains the password:\n%s", out)
	}
	var firstWarn string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			firstWarn = l
			break
		}
	}
	for _, want := range []string{"session ended; reconnecting", "cannot connect to PostgreSQL at " + addr, "connection refused", "check --pg-url"} {
		if !strings.Contains(firstWarn, want) {
			t.Errorf("first warning %q does not say %q", firstWarn, want)
		}
	}
	if strings.Contains(firstWarn, `\n`) || strings.Count(firstWarn, "connection refused") != 1 {
		t.Errorf("first warning is not one line with the cause once: %q", firstWarn)
	}
}

// A broker that is unreachable at start is retried with backoff, nothing is
// confirmed meanwhile, and once it comes up every event arrives once.
func TestBrokerUnreachableAtStartConfirmsNothingThenDelivers(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	port := freePort(t)
	broker := "127.0.0.1:" + strconv.Itoa(port)

	p := startRelay(t, "--pg-url", db.URL, "--kafka-brokers", broker, "--slot", "nobroker", "--publication", "nobroker")
	waitFor(t, 60*time.Second, "slot created", func() (bool, error) {
		_, err := slotConfirmed(ctx, db, "nobroker")
		return err == nil, err
	})
	before, err := slotConfirmed(ctx, db, "nobroker")
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.writeConcurrently(ctx, 2, 500, 10, nil); err != nil {
		t.Fatalf("writing: %v", err)
	}
	waitFor(t, 60*time.Second, "the relay to report the broker unreachable twice", func() (bool, error) {
		out := p.out.String()
		return strings.Count(out, "reconnecting") >= 2 && strings.Contains(out, broker), nil
	})
	if after, err := slotConfirmed(ctx, db, "nobroker"); err != nil || after != before {
		t.Fatalf("slot confirmed moved from %s to %s (err %v) while the broker was unreachable", before, after, err)
	}

	kafkatest.NewCluster(t, kfake.Ports(port))
	recs := sc.readBack(t, []string{broker})
	res := sc.check(t, recs)
	if len(res.duplicates) != 0 {
		t.Fatalf("%d duplicates: nothing was published before the broker came up, so none are expected", len(res.duplicates))
	}
}

// refusingCluster starts a broker that answers every produce request with
// NOT_LEADER_OR_FOLLOWER (retriable: the producer keeps trying) while the
// returned flag is set.
func refusingCluster(t *testing.T) (*kfake.Cluster, *atomic.Bool) {
	cluster := kafkatest.NewCluster(t)
	down := &atomic.Bool{}
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if !down.Load() {
			return nil, nil, false
		}
		return produceError(req, 6 /* NOT_LEADER_OR_FOLLOWER */), nil, true
	})
	return cluster, down
}

// A broker that refuses every record for longer than a short retry budget
// would last (every produce answered NOT_LEADER_OR_FOLLOWER for 15s) pauses
// the relay: the producer keeps retrying, reading WAL stops at the in-flight
// cap, the stall is logged, and nothing is confirmed past what the broker
// acknowledged. When the broker recovers everything arrives, in order.
func TestBrokerOutagePausesTheRelayAndLosesNothing(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	cluster, down := refusingCluster(t)
	brokers := cluster.ListenAddrs()

	p := startRelay(t, "--pg-url", db.URL, "--kafka-brokers", brokers[0], "--slot", "outage", "--publication", "outage")
	waitSlotActive(t, db, "outage")
	watch := watchConfirmed(t, db, "outage", brokers)
	if err := sc.writeConcurrently(ctx, 2, 500, 10, nil); err != nil {
		t.Fatal(err)
	}
	sc.readBack(t, brokers)

	down.Store(true)
	outage := time.Now()
	if err := sc.writeConcurrently(ctx, 2, 500, 10, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the relay to report that Kafka acknowledges nothing", func() (bool, error) {
		return strings.Contains(p.out.String(), "Kafka has acknowledged nothing"), nil
	})
	confirmed, err := slotConfirmed(ctx, db, "outage")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(sc.confirmedBefore(confirmed)); n >= sc.total() {
		t.Fatalf("slot confirmed everything (%s) while the broker refused every record", confirmed)
	}
	// The fault itself lasts 15s, far past the producer's first retries.
	<-time.After(time.Until(outage.Add(15 * time.Second)))
	down.Store(false)

	recs := sc.readBack(t, brokers)
	res := sc.check(t, recs)
	watch.check(t, sc, recs)
	waitFor(t, 30*time.Second, "the relay to report Kafka acknowledging again", func() (bool, error) {
		return strings.Contains(p.out.String(), "Kafka is acknowledging again"), nil
	})
	if strings.Contains(p.out.String(), "reconnecting") {
		t.Fatalf("the session restarted during the outage: retriable errors must be retried, not end the stream")
	}
	t.Logf("outage: %d events, %d records, %d repeats, outage %s", sc.total(), res.delivered, len(res.duplicates), time.Since(outage).Round(time.Second))
}
