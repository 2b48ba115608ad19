package relay

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// headerCounter counts HeaderDropped calls.
type headerCounter struct {
	nopObserver
	n int
}

func (c *headerCounter) HeaderDropped(string, string) { c.n++ }

// Every dropped header is counted; the warning comes once per relation and
// key, not once per event.
func TestDroppedHeadersAreCountedAndWarnedOncePerRelationAndKey(t *testing.T) {
	var buf bytes.Buffer
	obs := &headerCounter{}
	d := newDroppedHeaders(slog.New(slog.NewTextHandler(&buf, nil)), obs, "s1")
	for range 3 {
		d.report("public.outbox", "id", decoder.DroppedReserved)
	}
	d.report("public.outbox", "", decoder.DroppedEmptyKey)
	d.report("message prefix outbox", "id", decoder.DroppedReserved)
	if obs.n != 5 {
		t.Errorf("HeaderDropped called %d times, want 5", obs.n)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d warnings, want 3 (one per relation and key):\n%s", len(lines), buf.String())
	}
	for _, want := range []string{`relation=public.outbox header=id`, `relation=public.outbox header=""`, `relation="message prefix outbox" header=id`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("warnings do not say %s:\n%s", want, buf.String())
		}
	}
}
