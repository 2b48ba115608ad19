package orphan

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestADirectoryIsAbandonedOnlyOnceItsOwnerIsGone(t *testing.T) {
	dir := t.TempDir()
	if Abandoned(dir) {
		t.Fatal("a directory nobody claimed counts as abandoned: a sweep would remove what it does not know")
	}
	if err := Claim(dir); err != nil {
		t.Fatal(err)
	}
	if Abandoned(dir) {
		t.Fatal("a directory claimed by this live process counts as abandoned")
	}
	if err := MarkAbandoned(dir); err != nil {
		t.Fatal(err)
	}
	if !Abandoned(dir) {
		t.Fatal("pid 1 with another start time counts as the owner")
	}

	// A real owner that exits.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	start, err := ProcessStart(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !Is(pid, start) || Is(pid, start+1) {
		t.Fatalf("Is(%d, %d) does not tell the process from another with its pid", pid, start)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), fmt.Appendf(nil, "%d %d\n", pid, start), 0o644); err != nil {
		t.Fatal(err)
	}
	if Abandoned(dir) {
		t.Fatal("abandoned while its owner runs")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if ProcessAlive(pid) {
		t.Fatalf("pid %d alive after kill and wait", pid)
	}
	if !Abandoned(dir) {
		t.Fatal("not abandoned after its owner was killed")
	}
}
