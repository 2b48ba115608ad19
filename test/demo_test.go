package test

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// `outbox-relay demo` shows events flowing end to end with nothing but the
// PostgreSQL server binaries installed, and leaves nothing behind.
func TestDemoDeliversEventsAndCleansUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := relayCmd(ctx, "demo", "--duration", "5s", "--rate", "200").CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	text := string(out)

	m := regexp.MustCompile(`stopped: (\d+) events written, (\d+) delivered`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("demo did not print its summary:\n%s", text)
	}
	written, _ := strconv.Atoi(m[1])
	delivered, _ := strconv.Atoi(m[2])
	if written == 0 || delivered != written {
		t.Fatalf("demo wrote %d events and delivered %d; want all delivered:\n%s", written, delivered, text)
	}
	if !regexp.MustCompile(`Kafka broker 127\.0\.0\.1:\d+`).MatchString(text) {
		t.Fatalf("demo did not print the broker address for kcat:\n%s", text)
	}
	// A few records as a consumer sees them, and how to read more.
	for _, want := range []string{"the first 3 records delivered, as a Kafka consumer reads them:",
		"headers id=", "event_type=Order", "aggregate_type=order", "source=demo", `value   {"amount"`,
		"kcat -b 127.0.0.1:", "(apt-get install kcat)", "--sink stdout"} {
		if !strings.Contains(text, want) {
			t.Fatalf("demo output does not show %q:\n%s", want, text)
		}
	}
	if !regexp.MustCompile(`topic outbox\.order  partition \d+  offset \d+  key order-\d+`).MatchString(text) {
		t.Fatalf("demo printed no sample record:\n%s", text)
	}
	if !strings.Contains(text, "latency p50") {
		t.Fatalf("demo printed no live status line:\n%s", text)
	}

	dir := regexp.MustCompile(`data dir (\S+),`).FindStringSubmatch(text)
	if dir == nil {
		t.Fatalf("demo did not print its data dir:\n%s", text)
	}
	if _, err := os.Stat(dir[1]); !os.IsNotExist(err) {
		t.Fatalf("demo left its data dir %s behind (stat: %v)", dir[1], err)
	}
	// No postgres process of the demo's data dir is left running.
	ps, _ := exec.Command("pgrep", "-f", dir[1]).Output()
	if pids := strings.TrimSpace(string(ps)); pids != "" {
		t.Fatalf("demo left processes running for %s: %s", dir[1], pids)
	}
}
