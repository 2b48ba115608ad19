package test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/kafkatest"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// A broker killed with SIGKILL mid-stream and restarted on its data loses
// nothing: every event arrives, in commit order per aggregate, and nothing
// the slot had confirmed before the kill is sent again.
func TestApacheBrokerKilledMidStreamLosesNothing(t *testing.T) {
	ctx := t.Context()
	k := kafkatest.StartApache(t, 1)
	db := pgtest.New(t)
	migrate(t, db)
	sc := newScenario(t, db, 50)
	startRelay(t, "--pg-url", db.URL, "--kafka-brokers", strings.Join(k.Brokers(), ","), "--slot", "bkill", "--publication", "bkill")
	waitSlotActive(t, db, "bkill")
	watch := watchConfirmed(t, db, "bkill", k.Brokers())

	start, err := slotConfirmed(ctx, db, "bkill")
	if err != nil {
		t.Fatal(err)
	}
	writeErr := make(chan error, 1)
	var written atomic.Int64
	go func() {
		// Paced so that the kill lands in the middle of the stream.
		writeErr <- sc.writeConcurrently(ctx, 4, 8000, 20, func() {
			written.Add(1)
			<-time.After(5 * time.Millisecond)
		})
	}()
	waitFor(t, 60*time.Second, "the slot to confirm some transactions", func() (bool, error) {
		lsn, err := slotConfirmed(ctx, db, "bkill")
		return lsn > start && written.Load() >= 200, err
	})
	k.Kill(0)
	confirmed, err := slotConfirmed(ctx, db, "bkill")
	if err != nil {
		t.Fatal(err)
	}
	safeIDs := sc.confirmedBefore(confirmed)
	// Down long enough for the producer's requests to fail and be retried.
	<-time.After(3 * time.Second)
	k.Restart(0)

	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	recs := sc.readBack(t, k.Brokers())
	res := sc.check(t, recs)
	for _, id := range res.duplicates {
		if safeIDs[id] {
			t.Fatalf("event %s was confirmed (slot at %s at the kill) yet sent again", id, confirmed)
		}
	}
	total := sc.total()
	if len(safeIDs) == 0 || len(safeIDs) == total {
		t.Fatalf("%d of %d events confirmed before the kill: the kill was not mid-stream", len(safeIDs), total)
	}
	t.Logf("broker kill: %d events written, %d records delivered, %d repeats; %d events confirmed before the kill",
		total, res.delivered, len(res.duplicates), len(safeIDs))
	t.Logf("confirmed position never ahead of the broker: %d event checks", watch.check(t, sc, recs))
}
