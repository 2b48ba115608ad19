package pgserver

import (
	"os"
	"path/filepath"
	"sync"

	"github.com/outbox-relay/outbox-relay/internal/orphan"
)

// A server normally dies with its owner (Close, or the demo's cleanup). A
// process killed outright (go test -timeout, SIGKILL) cannot clean up, and
// its servers would run forever, holding ports and memory. So every
// server's directory is claimed by its owner process (see internal/orphan),
// and Start first stops the servers whose owner is gone.

var sweepOnce sync.Once

// sweepOrphans stops and removes the servers, in this machine's temporary
// directory, whose owner process is gone. Errors are reported through logf
// and otherwise ignored: a sweep must never keep a new server from starting.
func sweepOrphans(binDir, asUser string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "outbox-relay-pg-*"))
	for _, dir := range dirs {
		if !orphan.Abandoned(dir) {
			continue
		}
		s := &Server{binDir: binDir, dir: dir, dataDir: filepath.Join(dir, "data"), asUser: asUser}
		pid, running := s.postmasterPID()
		logf("pgserver: removing %s, left by a process that is gone (postmaster pid %d running: %v)", dir, pid, running && orphan.ProcessAlive(pid))
		if err := s.teardown(); err != nil {
			logf("pgserver: removing %s: %v", dir, err)
		}
	}
}
