package pgserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/orphan"
)

// TestMain doubles as the orphan owner for
// TestServersOfAKilledProcessAreSwept: run with PGSERVER_ORPHAN_HELPER=1 it
// starts a server, prints its directory and waits to be killed.
func TestMain(m *testing.M) {
	if os.Getenv("PGSERVER_ORPHAN_HELPER") != "1" {
		os.Exit(m.Run())
	}
	s, err := Start(context.Background(), Options{})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println(s.dir)
	select {} // killed by the parent
}

// A process killed outright (go test -timeout, SIGKILL) leaves its server
// running; the next Start's sweep stops it and removes its directory, and
// leaves the servers of live processes alone.
func TestServersOfAKilledProcessAreSwept(t *testing.T) {
	live := startServer(t, Options{})

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "PGSERVER_ORPHAN_HELPER=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the helper's server directory: %v", err)
	}
	dir := line[:len(line)-1]
	if filepath.Dir(dir) != os.TempDir() {
		t.Fatalf("helper said %q", line)
	}
	left := &Server{dir: dir, dataDir: filepath.Join(dir, "data")}
	pid, ok := left.postmasterPID()
	if !ok || !orphan.ProcessAlive(pid) {
		t.Fatalf("the helper's postmaster is not running (pid %d)", pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !orphan.ProcessAlive(pid) {
		t.Fatalf("postmaster %d died with its owner: nothing to sweep, the test proves nothing", pid)
	}

	sweepOrphans(live.binDir, live.asUser, t.Logf)

	deadline := time.Now().Add(30 * time.Second)
	for orphan.ProcessAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // polling a pid: nothing to wait on
	}
	if orphan.ProcessAlive(pid) {
		t.Fatalf("orphaned postmaster %d still running after the sweep", pid)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan directory %s still there: %v", dir, err)
	}
	// The live process's server is untouched.
	if p, ok := live.postmasterPID(); !ok || !orphan.ProcessAlive(p) {
		t.Fatalf("the sweep stopped a server whose owner is alive")
	}
	connect(t, live.URL("postgres"))
}
