package kafkatest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/kafkaserver"
	"github.com/outbox-relay/outbox-relay/internal/orphan"
)

// The jars kafka/fetch.sh fetches are the ones StartApache looks for.
func TestApacheVersionIsThePomsVersion(t *testing.T) {
	pom, err := os.ReadFile(filepath.Join("..", "..", "kafka", "pom.xml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`<kafka.version>([^<]+)</kafka.version>`).FindSubmatch(pom)
	if m == nil {
		t.Fatal("kafka/pom.xml has no <kafka.version>")
	}
	if string(m[1]) != KafkaVersion {
		t.Fatalf("kafka/pom.xml pins Kafka %s, KafkaVersion is %s: change both", m[1], KafkaVersion)
	}
}

// One node: topics are created on first use with 4 partitions, the readers
// see what was produced byte for byte, and the data survives a SIGKILL and
// a restart on the same directory; a paused node answers nothing until
// resumed.
func TestApacheOneNodeSurvivesKillAndRestart(t *testing.T) {
	a := StartApache(t, 1)
	want := awkward("apache.one")
	produce(t, a.Brokers(), want)
	if n := partitions(t, a.Brokers(), "apache.one"); n != 4 {
		t.Fatalf("auto-created topic has %d partitions, want 4", n)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	got, err := ReadN(ctx, a.Brokers(), []string{"apache.one"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got[0], want)
	if KcatAvailable() {
		kc, err := KcatRead(ctx, a.Addr(0), "apache.one", 1)
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, kc[0], want)
	}

	a.Kill(0)
	a.Restart(0)
	produce(t, a.Brokers(), awkward("apache.one"))
	got, err = ReadN(ctx, a.Brokers(), []string{"apache.one"}, 2)
	if err != nil {
		t.Fatalf("after kill and restart: %v", err)
	}
	if got[0].Offset != 0 || got[1].Offset != 1 {
		t.Fatalf("offsets after the restart: %d, %d; want 0, 1 (the data survived)", got[0].Offset, got[1].Offset)
	}

	a.Pause(0)
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	got, err = ReadN(pctx, a.Brokers(), []string{"apache.one"}, 1)
	pcancel()
	if err == nil || len(got) != 0 {
		t.Fatalf("a paused node served %d records (err %v)", len(got), err)
	}
	a.Resume(0)
	if _, err := ReadN(ctx, a.Brokers(), []string{"apache.one"}, 2); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	a.Stop(0)
	a.Restart(0)
	t.Logf("startup after SIGTERM: %s", a.StartupTime(0))
}

// Three nodes: topics are replicated three ways, and acks=all records still
// go through with one node dead (min.insync.replicas 2).
func TestApacheThreeNodesTolerateOneDead(t *testing.T) {
	a := StartApache(t, 3, NumPartitions(2))
	produce(t, a.Brokers(), &kgo.Record{Topic: "apache.three", Value: []byte("before")})
	a.Kill(1)
	produce(t, a.Brokers(), &kgo.Record{Topic: "apache.three", Value: []byte("one node dead")})
	a.Restart(1)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Read from the restarted node alone: it has caught up.
	got, err := ReadN(ctx, []string{a.Addr(1)}, []string{"apache.three"}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("read %d records, want 2", len(got))
	}
}

// TestApacheOrphanHelper is the owner that gets killed in
// TestApacheSweepsNodesOfAKilledProcess: it starts a node that does not die
// with it, prints the cluster's directory and waits. Run alone it does
// nothing.
func TestApacheOrphanHelper(t *testing.T) {
	if os.Getenv("KAFKATEST_ORPHAN_HELPER") != "1" {
		return
	}
	a := StartApache(t, 1, orphaned())
	fmt.Println("cluster:", a.Dir())
	select {} // killed by the parent
}

// A test process killed outright leaves its nodes running; the next
// StartApache's sweep kills them and removes their directory, and leaves
// the clusters of live processes alone.
func TestApacheSweepsNodesOfAKilledProcess(t *testing.T) {
	live := StartApache(t, 1)

	cmd := exec.Command(os.Args[0], "-test.run", "^TestApacheOrphanHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "KAFKATEST_ORPHAN_HELPER=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var dir string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "cluster: "); ok {
			dir = d
			break
		}
		t.Log("helper: " + sc.Text())
	}
	if dir == "" {
		t.Fatal("the helper printed no cluster directory")
	}
	b, err := os.ReadFile(filepath.Join(dir, "node-1", "pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	var start uint64
	if _, err := fmt.Sscan(string(b), &pid, &start); err != nil || !orphan.Is(pid, start) {
		t.Fatalf("the helper's node (pid file %q) is not running: %v", b, err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !orphan.Is(pid, start) {
		t.Fatalf("node %d died with its owner: nothing to sweep, the test proves nothing", pid)
	}

	kafkaserver.Sweep(t.Logf)

	if orphan.Is(pid, start) {
		t.Fatalf("orphaned node %d still running after the sweep", pid)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan directory %s still there: %v", dir, err)
	}
	// The live process's cluster is untouched.
	produce(t, live.Brokers(), &kgo.Record{Topic: "apache.live", Value: []byte("x")})
}
