package test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// The SCRAM users of the secured node: the relay's, which ACLs restrict,
// and an admin, a super user like ANONYMOUS on the PLAINTEXT listener.
const (
	secRelayUser     = "relay"
	secRelayPassword = "relay-pw-7f3a9c"
	secAdminUser     = "admin"
	secAdminPassword = "admin-pw-1c9e42"
	deadLetterTopic  = "outbox.dead-letter"
)

// The relay against one Apache Kafka node that is secured as in
// production: SCRAM-SHA-512 over TLS on a SASL_SSL listener, ACLs
// (StandardAuthorizer), no topic creation on first use. One JVM for every
// case, run one after the other, each on topics made afresh:
//
//   - the relay verifies the broker's certificate and name and delivers;
//   - a wrong password, a CA that did not sign the certificate or a name the
//     certificate is not for stops it at once (exit 2, one line that says
//     what to fix);
//   - a missing WRITE ACL, and a topic that does not exist, pause the relay
//     (it says which ACL or topic), nothing is dead-lettered or confirmed
//     past them, and once fixed every event arrives in order;
//   - an event over its topic's max.message.bytes, below the producer's
//     limit, is dead-lettered alone: the events of its partition around it
//     are delivered, in order, without a restart.
//
// The checker runs wherever events flow; the dead-letter topic is read with
// the admin principal after each case.
func TestApacheSecureSingleNode(t *testing.T) {
	t.Parallel()
	began := time.Now()
	k := kafkatest.StartApache(t, 1, kafkatest.AutoCreateTopics(false),
		kafkatest.SASLSSL(map[string]string{secRelayUser: secRelayPassword, secAdminUser: secAdminPassword}, true, secAdminUser))
	adm := newSecureAdmin(t, k)
	// The relay's rights, on the topic names (ACLs outlive the topics):
	// the cases below take WRITE away from one and give it back.
	for _, topic := range append(topics[:len(topics):len(topics)], deadLetterTopic) {
		adm.acl(t, true, topic, kmsg.ACLOperationWrite, kmsg.ACLOperationDescribeConfigs)
	}
	t.Logf("secured node up and ACLs set in %s", time.Since(began).Round(time.Millisecond))

	t.Run("scram over verified TLS delivers", func(t *testing.T) {
		adm.resetTopics(t, nil, topics...)
		// Bootstrap through localhost (the certificate's DNS name); the
		// node advertises 127.0.0.1 (its IP address) for the rest.
		local := strings.Replace(k.SecureBrokers()[0], "127.0.0.1", "localhost", 1)
		db, sc, p, watch := startSecureCase(t, k, "secok", "--kafka-brokers", local)
		if err := sc.writeConcurrently(t.Context(), 2, 600, 5, nil); err != nil {
			t.Fatal(err)
		}
		res, checked := settleSecureCase(t, k, adm, db, "secok", sc, p, watch)
		if len(res.duplicates) != 0 {
			t.Fatalf("%d repeats without a fault", len(res.duplicates))
		}
		out := p.out.String()
		if !strings.Contains(out, "tls=true") || !strings.Contains(out, "mechanism=SCRAM-SHA-512") {
			t.Fatalf("the relay did not say it connected with TLS and SCRAM-SHA-512:\n%s", tail(out, 20))
		}
		if code := p.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
			t.Fatalf("exit code %d after SIGTERM", code)
		}
		t.Logf("SCRAM-SHA-512 over TLS (verify-full): %d written, %d delivered, %d repeats; %d confirmations checked", sc.total(), res.delivered, len(res.duplicates), checked)
	})

	t.Run("rejected credentials or certificate exit 2 at once", func(t *testing.T) {
		db := pgtest.New(t)
		migrate(t, db)
		wrongCA := kafkatest.NewCA(t, "another CA")
		for i, tc := range []struct {
			name  string
			extra []string
			want  []string
		}{
			{"wrong password", []string{"--kafka-sasl-password", "not-" + secRelayPassword},
				[]string{"SASL authentication failed", `user "` + secRelayUser + `"`, "SCRAM-SHA-512"}},
			{"wrong CA", []string{"--kafka-tls-ca", wrongCA.File},
				[]string{"certificate", "does not verify", wrongCA.File}},
			{"name not in the certificate", []string{"--kafka-tls-server-name", "kafka.example.com"},
				[]string{"certificate", "not for that name"}},
		} {
			slot := fmt.Sprintf("secbad%d", i)
			started := time.Now()
			p := startRelay(t, secureRelayArgs(k, db, slot, tc.extra...)...)
			code := p.waitExit(t, 60*time.Second)
			took := time.Since(started)
			out := strings.TrimSpace(p.out.String())
			last := out[strings.LastIndex(out, "\n")+1:]
			if code != 2 {
				t.Fatalf("%s: exit code %d, want 2:\n%s", tc.name, code, tail(out, 10))
			}
			if !strings.HasPrefix(last, "outbox-relay: ") {
				t.Fatalf("%s: the last line is not the relay's error:\n%s", tc.name, tail(out, 10))
			}
			for _, w := range tc.want {
				if !strings.Contains(last, w) {
					t.Errorf("%s: the message does not say %q: %s", tc.name, w, last)
				}
			}
			if strings.Contains(out, secRelayPassword) {
				t.Errorf("%s: the password is in the relay's output", tc.name)
			}
			// The relay's own retries would take tens of seconds (backoff up
			// to 30s, the producer's metadata retries): this is no retry.
			if took > 15*time.Second {
				t.Errorf("%s: exit after %s, want well under the retry budget", tc.name, took)
			}
			t.Logf("%s: exit %d after %s: %s", tc.name, code, took.Round(time.Millisecond), last)
		}
	})

	t.Run("missing WRITE ACL pauses, never dead-letters, then delivers", func(t *testing.T) {
		const denied = "outbox.customer"
		adm.resetTopics(t, nil, topics...)
		adm.acl(t, false, denied, kmsg.ACLOperationWrite)
		adm.acl(t, true, denied, kmsg.ACLOperationDescribe)
		db, sc, p, watch := startSecureCase(t, k, "secacl")
		writing := time.Now()
		if err := sc.writeConcurrently(t.Context(), 2, 400, 5, nil); err != nil {
			t.Fatal(err)
		}
		end, err := currentWAL(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		var namedAt time.Time
		waitFor(t, 90*time.Second, "the relay to name the missing ACL and retry", func() (bool, error) {
			out := p.out.String()
			if namedAt.IsZero() && strings.Contains(out, "grant WRITE on topic "+denied) {
				namedAt = time.Now()
			}
			return !namedAt.IsZero() && strings.Count(out, "session ended; reconnecting") >= 3, nil
		})
		if lsn, err := slotConfirmed(t.Context(), db, "secacl"); err != nil || lsn >= end {
			t.Fatalf("slot confirmed %s (%v), at or past the end of the written WAL %s, while %s was denied", lsn, err, end, denied)
		}
		adm.noDeadLetters(t)
		// Grant right after a session ended: the relay is in its backoff
		// then, not halfway through a session whose first records were
		// refused.
		n := strings.Count(p.out.String(), "session ended; reconnecting")
		waitFor(t, 90*time.Second, "the next session to end", func() (bool, error) {
			return strings.Count(p.out.String(), "session ended; reconnecting") > n, nil
		})
		adm.acl(t, true, denied, kmsg.ACLOperationWrite)
		granted := time.Now()
		resumed := adm.firstEventAt(t, denied)
		res, checked := settleSecureCase(t, k, adm, db, "secacl", sc, p, watch)
		t.Logf("missing WRITE ACL: %d written, %d delivered, %d repeats (%d sessions ended); %s paused %s (from the first write to its first event), the ACL named after %s, delivery %s after the grant; %d confirmations checked",
			sc.total(), res.delivered, len(res.duplicates), strings.Count(p.out.String(), "session ended; reconnecting"),
			denied, resumed.Sub(writing).Round(time.Millisecond), namedAt.Sub(writing).Round(time.Millisecond), resumed.Sub(granted).Round(time.Millisecond), checked)
	})

	t.Run("event over its topic's max.message.bytes is dead-lettered alone", func(t *testing.T) {
		const limit, bigBytes = 64 << 10, 100 << 10
		adm.resetTopics(t, map[string]string{"max.message.bytes": fmt.Sprint(limit)}, topics...)
		db, sc, p, watch := startSecureCase(t, k, "secbig")
		ctx := t.Context()
		if err := sc.writeConcurrently(ctx, 2, 300, 5, nil); err != nil {
			t.Fatal(err)
		}
		// The large event between two events of its key, in one
		// transaction: the three reach the producer together.
		big, err := writeAroundLarge(ctx, sc, db.Conn(t), 0, bigBytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := sc.writeConcurrently(ctx, 2, 300, 5, nil); err != nil {
			t.Fatal(err)
		}
		recs := settleApache(t, k, db, "secbig", sc)
		res := sc.check(t, recs)
		checked := watch.check(t, sc, recs)
		dead := adm.deadLetters(t)
		if len(dead) != 1 {
			for _, d := range dead {
				t.Logf("dead letter: %s", describeRecord(d))
			}
			t.Fatalf("%d dead letters, want 1 (event %s)", len(dead), big)
		}
		h := map[string]string{}
		for _, hd := range dead[0].Headers {
			h[hd.Key] = string(hd.Value)
		}
		if h["id"] != big || h["outbox-relay-original-topic"] != "outbox.order" || !strings.Contains(h["outbox-relay-error"], "max.message.bytes") ||
			h["outbox-relay-lsn"] == "" || len(dead[0].Value) < bigBytes {
			t.Fatalf("dead letter %s: want event %s whole, its original topic, the error naming max.message.bytes and its LSN", describeRecord(dead[0]), big)
		}
		if len(res.duplicates) != 0 || strings.Contains(p.out.String(), "session ended; reconnecting") {
			t.Fatalf("%d repeats, sessions restarted %d times: the large event ended a session",
				len(res.duplicates), strings.Count(p.out.String(), "session ended; reconnecting"))
		}
		t.Logf("event of %d KiB on a topic of max.message.bytes %d KiB: %d written, %d delivered, %d repeats, 1 dead-lettered (%s); %d confirmations checked",
			bigBytes>>10, limit>>10, sc.total(), res.delivered, len(res.duplicates), big, checked)
	})

	t.Run("missing topic pauses, never dead-letters, then delivers", func(t *testing.T) {
		const missing = "outbox.customer"
		adm.resetTopics(t, nil, "outbox.order")
		db, sc, p, watch := startSecureCase(t, k, "secmissing")
		writing := time.Now()
		if err := sc.writeConcurrently(t.Context(), 2, 400, 5, nil); err != nil {
			t.Fatal(err)
		}
		end, err := currentWAL(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		var namedAt time.Time
		waitFor(t, 90*time.Second, "the relay to name the missing topic", func() (bool, error) {
			for _, line := range strings.Split(p.out.String(), "\n") {
				if strings.Contains(line, missing) && strings.Contains(line, "create topic "+missing) && strings.Contains(line, "auto.create.topics.enable") {
					namedAt = time.Now()
					return true, nil
				}
			}
			return false, nil
		})
		if lsn, err := slotConfirmed(t.Context(), db, "secmissing"); err != nil || lsn >= end {
			t.Fatalf("slot confirmed %s (%v), at or past the end of the written WAL %s, while %s did not exist", lsn, err, end, missing)
		}
		adm.noDeadLetters(t)
		adm.createTopic(t, missing, nil)
		created := time.Now()
		resumed := adm.firstEventAt(t, missing)
		res, checked := settleSecureCase(t, k, adm, db, "secmissing", sc, p, watch)
		// Nothing failed: the relay waited for the topic where it was.
		if len(res.duplicates) != 0 || strings.Contains(p.out.String(), "session ended; reconnecting") {
			t.Fatalf("%d repeats, sessions restarted %d times while waiting for the topic",
				len(res.duplicates), strings.Count(p.out.String(), "session ended; reconnecting"))
		}
		t.Logf("missing topic: %d written, %d delivered, %d repeats (%d sessions ended); %s paused %s (from the first write to its first event), the topic named after %s, delivery %s after it was created; %d confirmations checked",
			sc.total(), res.delivered, len(res.duplicates), strings.Count(p.out.String(), "session ended; reconnecting"),
			missing, resumed.Sub(writing).Round(time.Millisecond), namedAt.Sub(writing).Round(time.Millisecond), resumed.Sub(created).Round(time.Millisecond), checked)
	})
}

// settleSecureCase reads back everything a case wrote once the relay
// confirmed it, runs the checker and the confirmation watcher's check, and
// fails if anything was dead-lettered or the relay exited.
func settleSecureCase(t *testing.T, k *kafkatest.Apache, adm *secureAdmin, db *pgtest.DB, slot string, sc *scenario, p *relayProc, watch *confirmWatcher) (checkResult, int) {
	t.Helper()
	recs := settleApache(t, k, db, slot, sc)
	res := sc.check(t, recs)
	checked := watch.check(t, sc, recs)
	adm.noDeadLetters(t)
	if p.exited() {
		t.Fatalf("the relay exited:\n%s", tail(p.out.String(), 20))
	}
	return res, checked
}

// secureRelayArgs are the flags of a relay on the node's SASL_SSL listener
// as the relay's SCRAM user, verifying the certificate against the node's
// CA and the broker's name (the default); extra flags come last and win.
func secureRelayArgs(k *kafkatest.Apache, db *pgtest.DB, slot string, extra ...string) []string {
	args := []string{"--pg-url", db.URL, "--kafka-brokers", strings.Join(k.SecureBrokers(), ","),
		"--slot", slot, "--publication", slot,
		"--kafka-tls-ca", k.CAFile(),
		"--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-user", secRelayUser, "--kafka-sasl-password", secRelayPassword}
	return append(args, extra...)
}

// startSecureCase starts one case: a database with the outbox and 20
// aggregates, and the relay on slot over SASL_SSL, streaming, with the
// confirmation watcher on.
func startSecureCase(t *testing.T, k *kafkatest.Apache, slot string, extra ...string) (*pgtest.DB, *scenario, *relayProc, *confirmWatcher) {
	t.Helper()
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 20)
	p := startRelay(t, secureRelayArgs(k, db, slot, extra...)...)
	waitSlotActive(t, db, slot)
	return db, sc, p, watchConfirmed(t, db, slot, k.Brokers())
}

// settleApache waits until the relay confirmed everything the scenario
// wrote (so the broker has all of it), then reads the topics back, repeats
// included, over the PLAINTEXT listener.
func settleApache(t *testing.T, k *kafkatest.Apache, db *pgtest.DB, slot string, sc *scenario) []kafkatest.Record {
	t.Helper()
	end, err := currentWAL(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "slot confirmed to the end of the written WAL", func() (bool, error) {
		lsn, err := slotConfirmed(t.Context(), db, slot)
		return lsn >= end, err
	})
	return sc.readBack(t, k.Brokers())
}

// secureAdmin is a client of the node's SASL_SSL listener as the admin
// super user: it makes topics and ACLs, and reads the dead-letter topic
// whatever the ACLs say.
type secureAdmin struct {
	cl   *kgo.Client
	opts []kgo.Opt
}

func newSecureAdmin(t *testing.T, k *kafkatest.Apache) *secureAdmin {
	t.Helper()
	pem, err := os.ReadFile(k.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	opts := []kgo.Opt{
		kgo.SeedBrokers(k.SecureBrokers()...),
		kgo.DialTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}),
		kgo.SASL(scram.Auth{User: secAdminUser, Pass: secAdminPassword}.AsSha512Mechanism()),
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &secureAdmin{cl: cl, opts: opts}
}

// resetTopics deletes the test's topics and the dead-letter topic, then
// creates the dead-letter topic and names again, empty, with configs (topic
// configs, nil for none) on each of names.
func (a *secureAdmin) resetTopics(t *testing.T, configs map[string]string, names ...string) {
	t.Helper()
	ctx := t.Context()
	all := append(append([]string(nil), topics...), deadLetterTopic)
	del := kmsg.NewPtrDeleteTopicsRequest()
	del.TimeoutMillis = 30000
	for _, name := range all {
		del.TopicNames = append(del.TopicNames, name)
		dt := kmsg.NewDeleteTopicsRequestTopic()
		dt.Topic = kmsg.StringPtr(name)
		del.Topics = append(del.Topics, dt)
	}
	dresp, err := del.RequestWith(ctx, a.cl)
	if err != nil {
		t.Fatalf("deleting topics: %v", err)
	}
	for _, dt := range dresp.Topics {
		if err := kerr.ErrorForCode(dt.ErrorCode); err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
			t.Fatalf("deleting topic %v: %v", dt.Topic, err)
		}
	}
	a.createTopic(t, deadLetterTopic, nil)
	for _, name := range names {
		a.createTopic(t, name, configs)
	}
}

// createTopic creates topic with 4 partitions and configs (nil for none),
// and waits until each partition has a leader.
func (a *secureAdmin) createTopic(t *testing.T, topic string, configs map[string]string) {
	t.Helper()
	ctx := t.Context()
	waitFor(t, time.Minute, "topic "+topic+" created with a leader per partition", func() (bool, error) {
		req := kmsg.NewPtrCreateTopicsRequest()
		req.TimeoutMillis = 30000
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, 4, 1
		for k, v := range configs {
			c := kmsg.NewCreateTopicsRequestTopicConfig()
			c.Name, c.Value = k, kmsg.StringPtr(v)
			rt.Configs = append(rt.Configs, c)
		}
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, a.cl)
		if err != nil {
			return false, err
		}
		for _, rt := range resp.Topics {
			// Already there: made by an earlier attempt (or still being
			// deleted, then the next attempt makes it).
			if err := kerr.ErrorForCode(rt.ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
				return false, fmt.Errorf("creating %s: %w", rt.Topic, err)
			}
		}
		meta := kmsg.NewPtrMetadataRequest()
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = kmsg.StringPtr(topic)
		meta.Topics = append(meta.Topics, mt)
		mresp, err := meta.RequestWith(ctx, a.cl)
		if err != nil {
			return false, err
		}
		for _, mt := range mresp.Topics {
			if mt.ErrorCode != 0 || len(mt.Partitions) != 4 {
				return false, fmt.Errorf("topic %v: error %d, %d partitions", mt.Topic, mt.ErrorCode, len(mt.Partitions))
			}
			for _, mp := range mt.Partitions {
				if mp.ErrorCode != 0 || mp.Leader < 0 {
					return false, nil
				}
			}
		}
		return true, nil
	})
}

// acl grants (allow) or takes back (!allow) operations on topic to the
// relay's user.
func (a *secureAdmin) acl(t *testing.T, allow bool, topic string, ops ...kmsg.ACLOperation) {
	t.Helper()
	ctx := t.Context()
	principal, host := "User:"+secRelayUser, "*"
	if allow {
		req := kmsg.NewPtrCreateACLsRequest()
		for _, op := range ops {
			c := kmsg.NewCreateACLsRequestCreation()
			c.ResourceType, c.ResourceName, c.ResourcePatternType = kmsg.ACLResourceTypeTopic, topic, kmsg.ACLResourcePatternTypeLiteral
			c.Principal, c.Host, c.Operation, c.PermissionType = principal, host, op, kmsg.ACLPermissionTypeAllow
			req.Creations = append(req.Creations, c)
		}
		resp, err := req.RequestWith(ctx, a.cl)
		if err != nil {
			t.Fatalf("creating ACLs: %v", err)
		}
		for _, r := range resp.Results {
			if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
				t.Fatalf("creating an ACL on %s: %v", topic, err)
			}
		}
		return
	}
	req := kmsg.NewPtrDeleteACLsRequest()
	for _, op := range ops {
		f := kmsg.NewDeleteACLsRequestFilter()
		f.ResourceType, f.ResourceName, f.ResourcePatternType = kmsg.ACLResourceTypeTopic, kmsg.StringPtr(topic), kmsg.ACLResourcePatternTypeLiteral
		f.Principal, f.Host, f.Operation, f.PermissionType = &principal, &host, op, kmsg.ACLPermissionTypeAllow
		req.Filters = append(req.Filters, f)
	}
	resp, err := req.RequestWith(ctx, a.cl)
	if err != nil {
		t.Fatalf("deleting ACLs: %v", err)
	}
	for _, r := range resp.Results {
		if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
			t.Fatalf("deleting an ACL on %s: %v", topic, err)
		}
	}
}

// endOffset returns the sum of the end offsets of topic's partitions.
// firstEventAt waits for the first record on topic and returns when it
// was seen.
func (a *secureAdmin) firstEventAt(t *testing.T, topic string) time.Time {
	t.Helper()
	var at time.Time
	waitFor(t, 90*time.Second, "the first event on "+topic, func() (bool, error) {
		n, err := a.endOffset(t.Context(), topic)
		if n > 0 {
			at = time.Now()
		}
		return n > 0, err
	})
	return at
}

func (a *secureAdmin) endOffset(ctx context.Context, topic string) (int64, error) {
	ends, err := endOffsets(ctx, a.cl, []string{topic})
	var n int64
	for _, end := range ends[topic] {
		n += end
	}
	return n, err
}

// deadLetters reads every record of the dead-letter topic, as the admin.
func (a *secureAdmin) deadLetters(t *testing.T) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(append(a.opts, kgo.ConsumeTopics(deadLetterTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	end, err := a.endOffset(t.Context(), deadLetterTopic)
	if err != nil {
		t.Fatalf("the dead-letter topic's end offsets: %v", err)
	}
	var recs []*kgo.Record
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for int64(len(recs)) < end {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of the %d dead letters: %v", len(recs), end, ctx.Err())
		}
		fs.EachError(func(_ string, _ int32, err error) { t.Logf("reading the dead-letter topic: %v", err) })
		recs = append(recs, fs.Records()...)
	}
	return recs
}

// noDeadLetters fails the test if anything was dead-lettered.
func (a *secureAdmin) noDeadLetters(t *testing.T) {
	t.Helper()
	if dead := a.deadLetters(t); len(dead) != 0 {
		t.Fatalf("%d events dead-lettered, want none; the first: %s", len(dead), describeRecord(dead[0]))
	}
}

func describeRecord(r *kgo.Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d@%d key %q, %d bytes;", r.Topic, r.Partition, r.Offset, r.Key, len(r.Value))
	for _, h := range r.Headers {
		v := string(h.Value)
		if len(v) > 200 {
			v = v[:200] + "..."
		}
		fmt.Fprintf(&b, " %s=%q", h.Key, v)
	}
	return b.String()
}

// writeAroundLarge commits one transaction on aggregate agg: a scenario
// event, an event of size bytes with the same key that the scenario does
// not count (its topic cannot take it), and another scenario event. It
// returns the large event's id.
func writeAroundLarge(ctx context.Context, sc *scenario, conn *pgx.Conn, agg, size int) (string, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(context.Background())
	name := fmt.Sprintf("agg-%d", agg)
	if _, err := tx.Exec(ctx, `select 1 from agg_seq where id = $1 for update`, name); err != nil {
		return "", err
	}
	var ids []string
	var big string
	for i := range 3 {
		var id string
		if i == 1 {
			err = tx.QueryRow(ctx, `insert into outbox (aggregate_type, aggregate_id, event_type, payload)
				values ($1, $2, 'large', jsonb_build_object('blob', repeat('x', $3::int))) returning id::text`, aggType(agg), name, size).Scan(&big)
		} else {
			err = tx.QueryRow(ctx, `with s as (update agg_seq set n = n + 1 where id = $1 returning n)
				insert into outbox (aggregate_type, aggregate_id, event_type, payload, headers)
				select $2, $1, 'updated', jsonb_build_object('seq', s.n, 'note', 'x'), '{"source":"test","n":1}' from s
				returning id::text`, name, aggType(agg)).Scan(&id)
			ids = append(ids, id)
		}
		if err != nil {
			return "", err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return "", err
	}
	return big, sc.recordTx(ctx, conn, ids)
}
