package relay

import (
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

func TestReplicationLagIsZeroWhenCaughtUpAndCountsFromOldestUnconfirmed(t *testing.T) {
	var c commitLog
	now := time.Now()
	if got := c.lag(100, now); got != 0 {
		t.Fatalf("lag with nothing received = %s, want 0", got)
	}
	c.add(200, now.Add(-3*time.Second)) // commit record at 200, ends later
	c.add(300, now.Add(-1*time.Second))
	if got := c.lag(150, now); got != 3*time.Second {
		t.Fatalf("lag with both pending = %s, want 3s (the oldest unconfirmed)", got)
	}
	// Safe is the first transaction's end LSN: past its commit record.
	if got := c.lag(250, now); got != time.Second {
		t.Fatalf("lag after the first confirmed = %s, want 1s", got)
	}
	if got := c.lag(350, now); got != 0 {
		t.Fatalf("lag when caught up = %s, want 0", got)
	}
	// An hour idle, then one transaction: the lag is its own age, not the hour.
	c.add(400, now.Add(-10*time.Millisecond))
	if got := c.lag(350, now); got != 10*time.Millisecond {
		t.Fatalf("lag of the first transaction after idling = %s, want 10ms", got)
	}
}

func TestCommitLogStaysBoundedAndOverstatesRatherThanUnderstates(t *testing.T) {
	var c commitLog
	start := time.Now().Add(-time.Hour)
	for i := range 3 * maxCommits {
		c.add(pglsn(i+1), start.Add(time.Duration(i)*time.Millisecond))
	}
	if n := len(c.pending) - c.head; n > maxCommits {
		t.Fatalf("commit log holds %d entries, want at most %d", n, maxCommits)
	}
	now := start.Add(time.Hour)
	// Everything but the newest transaction confirmed: the merged tail
	// entry keeps an older commit time, so the lag is at least the truth.
	truth := now.Sub(start.Add(time.Duration(3*maxCommits-1) * time.Millisecond))
	if got := c.lag(pglsn(3*maxCommits), now); got < truth {
		t.Fatalf("lag = %s, below the true %s", got, truth)
	}
	if got := c.lag(pglsn(3*maxCommits+1), now); got != 0 {
		t.Fatalf("lag when all confirmed = %s, want 0", got)
	}
}

func pglsn(i int) pglogrepl.LSN { return pglogrepl.LSN(i * 100) }
