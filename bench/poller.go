package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
)

// claimBatch is the polling alternative's one query: claim up to 1,000
// unprocessed rows, oldest first, skipping rows another poller holds, and
// mark them processed. The transaction commits only after the broker
// acknowledged the batch.
const claimBatch = `
WITH b AS (
  SELECT id FROM outbox
  WHERE processed_at IS NULL
  ORDER BY created_at
  LIMIT 1000
  FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET processed_at = now()
FROM b WHERE o.id = b.id
RETURNING o.id::text, o.aggregate_type, o.aggregate_id, o.event_type, o.payload::text, o.created_at`

// pollInterval is how long the poller sleeps after a batch that was not full.
const pollInterval = 100 * time.Millisecond

// pollerMain runs a SKIP LOCKED poller publishing through a sarama
// SyncProducer (idempotent, acks=all, like the relay's sink) until
// SIGTERM, then writes its stats.
func pollerMain(args []string) error {
	fs := flag.NewFlagSet("poller", flag.ExitOnError)
	pgURL := fs.String("pg-url", "", "PostgreSQL URL")
	brokers := fs.String("brokers", "", "Kafka brokers")
	statsFile := fs.String("stats", "", "write stats JSON here on exit")
	latency := fs.Bool("latency", false, "record per-event latencies")
	fs.Parse(args)

	sc := sarama.NewConfig()
	sc.ClientID = "outbox-poller-bench"
	sc.Version = sarama.V2_1_0_0
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Idempotent = true
	sc.Net.MaxOpenRequests = 1
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Producer.Flush.Bytes = 1 << 20
	sc.Producer.Flush.Frequency = time.Millisecond
	sc.Producer.Partitioner = sarama.NewHashPartitioner
	prod, err := sarama.NewSyncProducer(strings.Split(*brokers, ","), sc)
	if err != nil {
		return fmt.Errorf("starting the producer: %w", err)
	}
	defer prod.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	conn, err := pgx.Connect(ctx, *pgURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	var st relayStats
	var msgs []*sarama.ProducerMessage
	var created []time.Time
	var runErr error
	for ctx.Err() == nil {
		n, err := pollOnce(ctx, conn, prod, &msgs, &created)
		if err != nil {
			if ctx.Err() == nil {
				runErr = err
			}
			break
		}
		if n > 0 {
			now := time.Now()
			if st.Acked == 0 {
				st.FirstAck = now.UnixNano()
			}
			st.Acked += int64(n)
			st.LastAck = now.UnixNano()
			if *latency {
				for _, c := range created {
					st.CreateToAck = append(st.CreateToAck, now.Sub(c).Microseconds())
				}
			}
		}
		if n < 1000 {
			select {
			case <-ctx.Done():
			case <-time.After(pollInterval):
			}
		}
	}
	return st.finish(*statsFile, runErr)
}

// pollOnce claims one batch, publishes it, waits for every ack and
// commits. It returns how many events it published.
func pollOnce(ctx context.Context, conn *pgx.Conn, prod sarama.SyncProducer, msgs *[]*sarama.ProducerMessage, created *[]time.Time) (int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.Background())
	rows, err := tx.Query(ctx, claimBatch)
	if err != nil {
		return 0, err
	}
	*msgs, *created = (*msgs)[:0], (*created)[:0]
	for rows.Next() {
		var id, aggType, aggID, evType, body string
		var at time.Time
		if err := rows.Scan(&id, &aggType, &aggID, &evType, &body, &at); err != nil {
			rows.Close()
			return 0, err
		}
		*msgs = append(*msgs, &sarama.ProducerMessage{
			Topic: "outbox." + aggType,
			Key:   sarama.StringEncoder(aggID),
			Value: sarama.StringEncoder(body),
			Headers: []sarama.RecordHeader{
				{Key: []byte("id"), Value: []byte(id)},
				{Key: []byte("event_type"), Value: []byte(evType)},
				{Key: []byte("aggregate_type"), Value: []byte(aggType)},
			},
			Timestamp: at,
		})
		*created = append(*created, at)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(*msgs) == 0 {
		return 0, tx.Commit(ctx)
	}
	if err := prod.SendMessages(*msgs); err != nil {
		var pe sarama.ProducerErrors
		if errors.As(err, &pe) && len(pe) > 0 {
			return 0, fmt.Errorf("publishing a batch of %d: %d failed, first: %w", len(*msgs), len(pe), pe[0].Err)
		}
		return 0, err
	}
	return len(*msgs), tx.Commit(ctx)
}
