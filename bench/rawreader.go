package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// rawReaderMain is the latency floor of logical replication at a given
// write rate: a minimal pglogrepl consumer that does what pg_recvlogical
// does (read, confirm what was received) and, for every pgoutput Commit
// message, records the time it was read minus the commit timestamp it
// carries. No decoding, no pipeline, no broker. It runs until SIGTERM and
// writes its stats.
func rawReaderMain(args []string) error {
	fs := flag.NewFlagSet("rawreader", flag.ExitOnError)
	pgURL := fs.String("pg-url", "", "PostgreSQL URL")
	slotName := fs.String("slot", "", "replication slot")
	publication := fs.String("publication", "", "publication")
	statsFile := fs.String("stats", "", "write stats JSON here on exit")
	statusInterval := fs.Duration("status-interval", 100*time.Millisecond, "status update interval")
	fs.Parse(args)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg, err := pgconn.ParseConfig(*pgURL)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var confirmed string
	res, err := conn.Exec(ctx, fmt.Sprintf("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '%s'", *slotName)).ReadAll()
	if err != nil {
		return err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return fmt.Errorf("slot %s not found", *slotName)
	}
	confirmed = string(res[0].Rows[0][0])
	start, err := pglogrepl.ParseLSN(confirmed)
	if err != nil {
		return err
	}
	err = pglogrepl.StartReplication(ctx, conn, *slotName, start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + *publication + "'"},
	})
	if err != nil {
		return err
	}

	var st relayStats
	received := start
	next := time.Now().Add(*statusInterval)
	var runErr error
	// The read deadline is set on the connection only when it changes: a
	// context per read (pgconn then watches it with a goroutine) would cost
	// more than everything else this reader does, and it would not be the
	// floor it stands for.
	nc := conn.Conn()
	var deadline time.Time
	stopWatch := context.AfterFunc(ctx, func() { nc.SetReadDeadline(time.Unix(1, 0)) })
	defer stopWatch()
	for ctx.Err() == nil {
		if time.Now().After(next) {
			if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
				WALWritePosition: received, WALFlushPosition: received, WALApplyPosition: received,
			}); err != nil {
				runErr = err
				break
			}
			next = time.Now().Add(*statusInterval)
		}
		if !next.Equal(deadline) {
			deadline = next
			nc.SetReadDeadline(next)
			if ctx.Err() != nil {
				break // the AfterFunc's interruption may have been overwritten
			}
		}
		raw, err := conn.ReceiveMessage(context.Background())
		now := time.Now()
		if err != nil {
			if pgconn.Timeout(err) || ctx.Err() != nil {
				continue
			}
			runErr = err
			break
		}
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					runErr = err
					break
				}
				if ka.ReplyRequested {
					next = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					runErr = err
					break
				}
				// Commit: 'C', flags (1), commit LSN (8), end LSN (8),
				// commit timestamp (8, microseconds since 2000-01-01).
				if d := xld.WALData; len(d) == 26 && d[0] == 'C' {
					end := pglogrepl.LSN(binary.BigEndian.Uint64(d[10:18]))
					us := int64(binary.BigEndian.Uint64(d[18:26])) + 946684800*1000000
					st.CommitToReceive = append(st.CommitToReceive, now.Sub(time.UnixMicro(us)).Microseconds())
					st.Acked++
					if st.Acked == 1 {
						st.FirstAck = now.UnixNano()
					}
					st.LastAck = now.UnixNano()
					received = max(received, end)
				}
			}
		case *pgproto3.ErrorResponse:
			runErr = pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.CopyDone:
			runErr = errors.New("server ended replication")
		}
		if runErr != nil {
			break
		}
	}
	nc.SetReadDeadline(time.Time{})
	if runErr == nil {
		_ = pglogrepl.SendStandbyStatusUpdate(context.Background(), conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: received, WALFlushPosition: received, WALApplyPosition: received,
		})
	}
	return st.finish(*statsFile, runErr)
}
