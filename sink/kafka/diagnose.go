package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
)

// diagnoseTimeout bounds each broker's answer when a stall is diagnosed: a
// broker slower than this to answer a version request is as good as frozen
// for the producer.
const diagnoseTimeout = 3 * time.Second

// frozenCheckAfter is how long the oldest record in flight waits before
// the brokers are checked for a frozen one; frozenQuarantine is how long a
// frozen broker is then left alone. A broker that accepts connections and
// answers nothing (a stopped process, a hung machine) holds every request
// sent to it for the full read timeout, and sarama asks it for metadata
// again as soon as that request fails: one frozen node of a cluster that
// has long moved its partitions elsewhere would pause the producer for a
// minute or more.
const (
	frozenCheckAfter = 5 * time.Second
	frozenQuarantine = 10 * time.Second
)

// stallDiagnosis is what a quick look at the cluster says about a stall.
type stallDiagnosis struct {
	// silent lists the brokers that did not answer, with why.
	silent []string
	// frozen lists the addresses of the brokers that accepted a
	// connection and answered nothing in diagnoseTimeout.
	frozen []string
	// partition describes the partition of the oldest unacknowledged
	// record: its leader and in-sync replicas, as a broker that answered
	// sees them. Empty when no broker answered.
	partition string
}

func (d stallDiagnosis) String() string {
	var b strings.Builder
	if len(d.silent) == 0 {
		b.WriteString("every broker answers")
	} else {
		b.WriteString(strings.Join(d.silent, "; "))
	}
	if d.partition != "" {
		b.WriteString("; ")
		b.WriteString(d.partition)
	}
	return b.String()
}

// checkFrozen diagnoses the brokers and quarantines the frozen ones: their
// connections are closed, so that the requests waiting on them fail now and
// sarama retries elsewhere, and they are not dialled for frozenQuarantine,
// so that its metadata requests go to brokers that answer. The next check
// finds a broker that woke up.
func (k *Sink) checkFrozen() stallDiagnosis {
	d := k.diagnoseStall()
	for _, addr := range d.frozen {
		if k.dialer.quarantine(addr, frozenQuarantine) {
			k.log.Warn("Kafka broker accepts connections but answers nothing (frozen?): its connections are closed and it is not dialled for a while, so the producer turns to the other brokers",
				"broker", addr, "answer_within", diagnoseTimeout, "for", frozenQuarantine)
		}
	}
	return d
}

// diagnoseStall asks every broker the producer knows of, and every
// configured one, for its API versions on a connection of its own, and a
// broker that answers for the metadata of the oldest unacknowledged
// record's partition: the log then says which brokers are down or frozen
// and whether the partition lacks a leader or in-sync replicas (acks=all
// needs min.insync.replicas of them).
func (k *Sink) diagnoseStall() stallDiagnosis {
	topic, partition, ok := k.pending.oldest()
	type target struct {
		id   int32 // -1: a configured address the metadata does not list
		addr string
	}
	var targets []target
	for _, b := range k.client.Brokers() {
		targets = append(targets, target{b.ID(), b.Addr()})
	}
	slices.SortFunc(targets, func(a, b target) int { return int(a.id - b.id) })
	for _, addr := range strings.Split(k.brokers, ",") {
		if !slices.ContainsFunc(targets, func(t target) bool { return t.addr == addr }) {
			targets = append(targets, target{-1, addr})
		}
	}

	// Connections of their own, through a dialer of their own: the
	// producer's refuses quarantined brokers, which the check must reach.
	dialer := newKafkaDialer(net.Dialer{Timeout: diagnoseTimeout, KeepAlive: -1}, k.dialer.tls)
	defer dialer.abort()
	conf := *k.conf
	conf.Net.Proxy.Dialer = dialer
	conf.Net.DialTimeout = diagnoseTimeout
	conf.Net.ReadTimeout = diagnoseTimeout
	conf.Net.WriteTimeout = diagnoseTimeout
	conf.ApiVersionsRequest = false // the probe's own request is the one

	var d stallDiagnosis
	answered := make([]bool, len(targets))
	silent := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() {
			probe := sarama.NewBroker(t.addr)
			defer probe.Close()
			err := probe.Open(&conf)
			if err == nil {
				_, err = probe.ApiVersions(&sarama.ApiVersionsRequest{})
			}
			answered[i], silent[i] = err == nil, err
		})
	}
	wg.Wait()
	first := ""
	for i, t := range targets {
		name := "broker " + t.addr
		if t.id >= 0 {
			name = fmt.Sprintf("broker %d at %s", t.id, t.addr)
		}
		switch {
		case answered[i]:
			if first == "" {
				first = t.addr
			}
		case frozen(silent[i]):
			d.frozen = append(d.frozen, t.addr)
			d.silent = append(d.silent, fmt.Sprintf("%s accepts connections but does not answer within %s", name, diagnoseTimeout))
		default:
			d.silent = append(d.silent, fmt.Sprintf("%s does not answer (%v)", name, silent[i]))
		}
	}
	if !ok || first == "" {
		return d
	}
	probe := sarama.NewBroker(first)
	defer probe.Close()
	if err := probe.Open(&conf); err != nil {
		return d
	}
	resp, err := probe.GetMetadata(sarama.NewMetadataRequest(conf.Version, []string{topic}))
	if err != nil {
		return d
	}
	d.partition = describePartition(resp, topic, partition)
	return d
}

// frozen reports whether a probe's error is a broker that took the
// connection and then said nothing: a timeout after the dial.
func frozen(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return false
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// describePartition says who leads a partition and which replicas are in
// sync, from a metadata response.
func describePartition(resp *sarama.MetadataResponse, topic string, partition int32) string {
	for _, t := range resp.Topics {
		if t.Name != topic {
			continue
		}
		if t.Err != sarama.ErrNoError {
			return fmt.Sprintf("topic %s: %v", printableTopic(topic), t.Err)
		}
		for _, p := range t.Partitions {
			if p.ID != partition {
				continue
			}
			leader := "no leader"
			if p.Leader >= 0 {
				leader = fmt.Sprintf("leader broker %d", p.Leader)
			}
			s := fmt.Sprintf("the oldest unacknowledged record's partition %s/%d: %s, in-sync replicas %v of %v",
				printableTopic(topic), partition, leader, p.Isr, p.Replicas)
			if len(p.OfflineReplicas) > 0 {
				s += fmt.Sprintf(", offline %v", p.OfflineReplicas)
			}
			if p.Err != sarama.ErrNoError {
				s += fmt.Sprintf(" (%v)", p.Err)
			}
			if len(p.Isr) < len(p.Replicas) {
				s += "; acks=all waits until min.insync.replicas of them are in sync"
			}
			return s
		}
	}
	return fmt.Sprintf("partition %s/%d not in the metadata", printableTopic(topic), partition)
}

// first returns the oldest record handed to the producer and not
// acknowledged yet, or nil.
func (l *pendingList) first() *record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head
}

// oldest returns the topic and partition of the oldest record handed to
// the producer and not acknowledged yet.
func (l *pendingList) oldest() (topic string, partition int32, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.head == nil {
		return "", 0, false
	}
	return l.head.msg.Topic, l.head.partition, true
}

// quarantine closes the connections to addr and refuses to dial it for d.
// It reports whether addr was not in quarantine already.
func (d *kafkaDialer) quarantine(addr string, span time.Duration) bool {
	d.mu.Lock()
	if d.frozen == nil {
		d.frozen = map[string]time.Time{}
	}
	fresh := time.Now().After(d.frozen[addr])
	d.frozen[addr] = time.Now().Add(span)
	var cut []*watchedConn
	for c := range d.conns {
		if c.addr == addr {
			cut = append(cut, c)
		}
	}
	d.mu.Unlock()
	for _, c := range cut {
		// The TCP connection: TLS's Close would wait on the frozen
		// broker to read its close_notify.
		_ = c.raw.Close()
	}
	return fresh
}

// quarantined returns the error of a dial to a quarantined addr, or nil.
func (d *kafkaDialer) quarantined(addr string) error {
	d.mu.Lock()
	until, ok := d.frozen[addr]
	d.mu.Unlock()
	if ok && time.Now().Before(until) {
		return fmt.Errorf("connecting to %s: %w (not dialled again before %s)", addr, errFrozenBroker, until.Format(time.TimeOnly))
	}
	return nil
}

// errFrozenBroker is the error of a dial to a broker found frozen.
var errFrozenBroker = errors.New("the broker accepted connections but answered nothing")
