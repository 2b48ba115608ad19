package brokerserver

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// orphanHelperEnv makes the test binary a process that starts servers,
// prints where they listen and waits to be killed.
const orphanHelperEnv = "BROKERSERVER_ORPHAN_HELPER"

func TestOrphanHelper(t *testing.T) {
	if os.Getenv(orphanHelperEnv) != "1" {
		t.Skip("run by TestServersDieWithTheirOwner")
	}
	for _, start := range []func(context.Context, Options) (*Server, error){StartRedis, StartRabbitMQ} {
		s, err := start(context.Background(), Options{})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("server", s.Port(), s.Dir())
	}
	fmt.Println("ready")
	select {} // until killed
}

// A test process killed outright (go test -timeout, SIGKILL) cannot close
// its servers: they die with it anyway, RabbitMQ's Erlang VM and epmd
// included, and free their ports.
func TestServersDieWithTheirOwner(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run", "^TestOrphanHelper$")
	cmd.Env = append(os.Environ(), orphanHelperEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var ports []int
	var dirs []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if line == "ready" {
			break
		}
		var port int
		var dir string
		if n, _ := fmt.Sscanf(line, "server %d %s", &port, &dir); n == 2 {
			ports, dirs = append(ports, port), append(dirs, dir)
			t.Cleanup(func() { os.RemoveAll(dir) })
		} else if strings.HasPrefix(line, "error") {
			t.Fatal(line)
		}
	}
	if len(ports) != 2 {
		t.Fatalf("helper started %d servers, want 2", len(ports))
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, "the servers of a killed owner to stop", func() error {
		for _, p := range ports {
			if c, err := net.Dial("tcp", addr(p)); err == nil {
				c.Close()
				return fmt.Errorf("port %d still open", p)
			}
		}
		for _, d := range dirs {
			if pids := processesMentioning(d); len(pids) > 0 {
				return fmt.Errorf("processes %v of %s still running", pids, d)
			}
		}
		return nil
	})
}
