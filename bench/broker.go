package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

// benchTopic is the one topic every event goes to: the relay's default
// template outbox.{aggregate_type} with aggregate_type 'order'.
const benchTopic = "outbox.order"

// brokerMain runs kfake until SIGTERM/SIGINT and prints "addr <host:port>"
// once it listens. The topic is created up front so no run pays for
// auto-creation and the metadata refresh after it.
func brokerMain(args []string) error {
	fs := flag.NewFlagSet("broker", flag.ExitOnError)
	partitions := fs.Int("partitions", benchPartitions, "partitions of the benchmark topic")
	fs.Parse(args)
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.SeedTopics(int32(*partitions), benchTopic),
		kfake.AllowAutoTopicCreation(),
		// Topics created on first use get as many partitions as the
		// Apache Kafka node's (the compat check compares partitions).
		kfake.DefaultNumPartitions(*partitions),
	)
	if err != nil {
		return err
	}
	defer c.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	fmt.Printf("addr %s\n", c.ListenAddrs()[0])
	<-sig
	return nil
}
