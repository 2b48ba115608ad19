package kafka

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// The stall diagnosis names a partition's missing leader and its
// in-sync replicas below the full set.
func TestDescribePartitionSaysWhatIsMissing(t *testing.T) {
	resp := &sarama.MetadataResponse{Topics: []*sarama.TopicMetadata{{
		Name: "outbox.order",
		Partitions: []*sarama.PartitionMetadata{
			{ID: 0, Leader: 2, Replicas: []int32{1, 2, 3}, Isr: []int32{1, 2, 3}},
			{ID: 1, Leader: 3, Replicas: []int32{1, 2, 3}, Isr: []int32{3}, OfflineReplicas: []int32{1, 2}},
			{ID: 2, Leader: -1, Replicas: []int32{1, 2, 3}, Isr: []int32{}, Err: sarama.ErrLeaderNotAvailable},
		},
	}, {Name: "outbox.gone", Err: sarama.ErrUnknownTopicOrPartition}}}
	for _, tc := range []struct {
		topic     string
		partition int32
		want, not []string
	}{
		{"outbox.order", 0, []string{"outbox.order/0", "leader broker 2", "in-sync replicas [1 2 3] of [1 2 3]"}, []string{"min.insync.replicas", "offline"}},
		{"outbox.order", 1, []string{"leader broker 3", "in-sync replicas [3] of [1 2 3]", "offline [1 2]", "min.insync.replicas"}, nil},
		{"outbox.order", 2, []string{"no leader", "leadership election"}, nil},
		{"outbox.order", 7, []string{"outbox.order/7 not in the metadata"}, nil},
		{"outbox.gone", 0, []string{"topic outbox.gone", "does not exist"}, nil},
	} {
		got := describePartition(resp, tc.topic, tc.partition)
		for _, w := range tc.want {
			if !strings.Contains(strings.ToLower(got), strings.ToLower(w)) {
				t.Errorf("%s/%d: %q lacks %q", tc.topic, tc.partition, got, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("%s/%d: %q says %q", tc.topic, tc.partition, got, n)
			}
		}
	}
}

// A broker that takes connections and answers nothing is found frozen by
// the check: the producer's connections to it are closed and it is not
// dialled for a while, while a broker that answers and one that refuses
// connections are left to the producer.
func TestCheckFrozenQuarantinesASilentBroker(t *testing.T) {
	c := newCluster(t, "frozen.t")
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	refusing, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedAddr := refusing.Addr().String()
	refusing.Close()

	k := newKafka(t, c, Config{DialTimeout: time.Second})
	// Configured beside the broker that answers (set after the start,
	// whose requests would wait on the silent one).
	k.brokers = strings.Join(append(c.ListenAddrs(), silent.Addr().String(), refusedAddr), ",")
	// A producer connection to the silent broker, as sarama's would be.
	conn, err := k.dialer.Dial("tcp", silent.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d := k.checkFrozen()
	if took := time.Since(start); took > diagnoseTimeout+2*time.Second {
		t.Fatalf("the check took %s", took)
	}
	if len(d.frozen) != 1 || d.frozen[0] != silent.Addr().String() {
		t.Fatalf("frozen %v, want just %s; diagnosis: %s", d.frozen, silent.Addr(), d)
	}
	for _, want := range []string{silent.Addr().String() + " accepts connections but does not answer", refusedAddr + " does not answer", "connection refused"} {
		if !strings.Contains(d.String(), want) {
			t.Errorf("diagnosis %q lacks %q", d, want)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("reading the producer's connection to the frozen broker: %v, want it closed", err)
	}
	if _, err := k.dialer.Dial("tcp", silent.Addr().String()); !errors.Is(err, errFrozenBroker) {
		t.Fatalf("dialling the frozen broker: %v, want %v", err, errFrozenBroker)
	}
	if conn, err := k.dialer.Dial("tcp", c.ListenAddrs()[0]); err != nil {
		t.Fatalf("dialling the broker that answers: %v", err)
	} else {
		conn.Close()
	}
}
