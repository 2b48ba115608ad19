package main

import (
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The example runs as documented against a fresh database, and a second
// run, a restarted consumer, finds every event already handled.
func TestRunTwice(t *testing.T) {
	ctx := t.Context()
	db := pgtest.New(t)
	for i, want := range []string{`event 0001: invoiced order 42
event 0001: repeat, skipped
event 0002: failed (transient failure), left for redelivery
event 0002: invoiced order 43
event 0001 through database/sql: processed false
invoices for orders: 42, 43
pruned 0 ids older than a week
`, `event 0001: repeat, skipped
event 0001: repeat, skipped
event 0002: repeat, skipped
event 0002: repeat, skipped
event 0001 through database/sql: processed false
invoices for orders: 42, 43
pruned 0 ids older than a week
`} {
		var out strings.Builder
		if err := run(ctx, db.URL, &out); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if out.String() != want {
			t.Errorf("run %d output:\n%s\nwant:\n%s", i+1, out.String(), want)
		}
	}
}
