package checkpoint

import (
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
)

func TestPositionRoundTripsAsReadableJSON(t *testing.T) {
	for _, p := range []Position{
		{Slot: "s", SystemID: "7312345678901234567", Timeline: 2, EndLSN: 0x3C7CDAB0},
		{Slot: "s", SystemID: "1", Timeline: 1, EndLSN: 0x100, PartialCommitLSN: 0x2000, PartialRows: 5000},
	} {
		b := p.Marshal()
		if !strings.Contains(string(b), `"end_lsn":"`+p.EndLSN.String()+`"`) {
			t.Errorf("%s: the end LSN is not in PostgreSQL's text form", b)
		}
		got, err := ParsePosition(b)
		if err != nil || got != p {
			t.Errorf("ParsePosition(%s) = %+v, %v; want %+v", b, got, err, p)
		}
	}
	for _, bad := range []string{`not json`, `{"version":2,"end_lsn":"0/1"}`, `{"version":1,"end_lsn":"x"}`,
		`{"version":1,"end_lsn":"0/1","partial_rows":-1}`, `{"version":1,"end_lsn":"0/1","partial_rows":3}`} {
		if _, err := ParsePosition([]byte(bad)); err == nil {
			t.Errorf("ParsePosition(%s) accepted it", bad)
		}
	}
}

// A transaction is published when it ended at or before EndLSN (its commit
// record starts before EndLSN); of the partial one, only its first rows.
func TestPositionPublished(t *testing.T) {
	p := Position{EndLSN: 0x1000, PartialCommitLSN: 0x2000, PartialRows: 3}
	for _, c := range []struct {
		commit pglogrepl.LSN
		row    int64
		want   bool
	}{
		{0x0F00, 99, true}, // ended before EndLSN
		{0x1000, 0, false}, // commit record right at EndLSN: after it
		{0x1800, 0, false}, // after, not the partial one
		{0x2000, 0, true},  // the partial one: rows 0..2
		{0x2000, 2, true},  //
		{0x2000, 3, false}, // row 3 onwards is not published
		{0x3000, 0, false}, // after everything
	} {
		if got := p.Published(c.commit, c.row); got != c.want {
			t.Errorf("Published(%s, %d) = %v, want %v", c.commit, c.row, got, c.want)
		}
	}
	if (Position{}).Published(0x10, 0) {
		t.Error("the zero Position says something is published")
	}
}
