package checkpoint

import (
	"testing"

	"github.com/jackc/pglogrepl"
)

// BenchmarkTrackerCycle is one single-event transaction per iteration, all
// on one goroutine: Begin, Add, Ack, Commit.
func BenchmarkTrackerCycle(b *testing.B) {
	tr := New(0)
	b.ReportAllocs()
	var lsn pglogrepl.LSN
	for b.Loop() {
		lsn++
		tr.Begin()
		tok := tr.Add()
		tr.Ack(tok)
		tr.Commit(lsn)
	}
}

// BenchmarkTrackerBatch is one 100-event transaction per 100 iterations;
// per-event cost.
func BenchmarkTrackerBatch(b *testing.B) {
	tr := New(0)
	toks := make([]Token, 0, 100)
	b.ReportAllocs()
	var lsn pglogrepl.LSN
	n := 0
	tr.Begin()
	for b.Loop() {
		toks = append(toks, tr.Add())
		if n++; n == 100 {
			lsn++
			tr.Commit(lsn)
			for _, tok := range toks {
				tr.Ack(tok)
			}
			toks = toks[:0]
			n = 0
			tr.Begin()
		}
	}
}

// BenchmarkTrackerConcurrentAck acknowledges from another goroutine, as the
// sink's ack goroutine does, through a channel like the sink's.
func BenchmarkTrackerConcurrentAck(b *testing.B) {
	for _, perTxn := range []int{1, 100} {
		b.Run(map[int]string{1: "events=1", 100: "events=100"}[perTxn], func(b *testing.B) {
			tr := New(0)
			acks := make(chan Token, 4096)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for tok := range acks {
					tr.Ack(tok)
				}
			}()
			b.ReportAllocs()
			var lsn pglogrepl.LSN
			n := 0
			tr.Begin()
			for b.Loop() {
				acks <- tr.Add()
				if n++; n == perTxn {
					lsn++
					tr.Commit(lsn)
					tr.Begin()
					n = 0
				}
			}
			tr.Commit(lsn + 1)
			close(acks)
			<-done
			if tr.InFlight() != 0 || tr.Safe() != lsn+1 {
				b.Fatalf("InFlight() = %d, Safe() = %s after draining", tr.InFlight(), tr.Safe())
			}
		})
	}
}
