// Package stdout is the sink that writes each event as one JSON line, for
// trying the relay out and for piping events to other tools.
package stdout

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/sink"
)

// Config configures a Stdout sink.
type Config struct {
	// Writer receives the JSON lines; cmd passes os.Stdout.
	Writer io.Writer
	// MaxInFlight caps the lines written and not yet flushed; Publish
	// blocks at the cap. Default 10000.
	MaxInFlight int
}

// Sink writes each event as one JSON line (the sink.EventJSON shape) for
// debugging and piping. Lines are written by one goroutine in publish
// order, so every aggregate's order is kept. An event is acknowledged once
// its line was written and the buffer flushed to the Writer; a write error
// fails that event and every later one.
type Sink struct {
	w     *bufio.Writer
	lines chan stdoutLine
	slots *sink.Slots

	mu     sync.RWMutex // guards closed against the send to lines
	closed bool
	done   chan struct{}
	once   sync.Once
}

var _ sink.Publisher = (*Sink)(nil)

type stdoutLine struct {
	b   []byte
	ack func(error)
}

// New starts the writer goroutine.
func New(cfg Config) (*Sink, error) {
	if cfg.Writer == nil {
		return nil, fmt.Errorf("stdout sink: no writer")
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = sink.DefaultMaxInFlight
	}
	if cfg.MaxInFlight < 1 {
		return nil, fmt.Errorf("stdout sink: max in-flight %d is below 1", cfg.MaxInFlight)
	}
	s := &Sink{
		w:     bufio.NewWriterSize(cfg.Writer, 64<<10),
		lines: make(chan stdoutLine, cfg.MaxInFlight),
		slots: sink.NewSlots(cfg.MaxInFlight),
		done:  make(chan struct{}),
	}
	go s.run()
	return s, nil
}

// Publish encodes ev as a JSON line and queues it for the writer. It blocks
// at the in-flight cap; ack is called from the writer goroutine after the
// line was flushed, or with the write error.
func (s *Sink) Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := sink.AppendEventJSON(make([]byte, 0, 256+len(ev.Payload)), ev)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := s.slots.Acquire(ctx); err != nil {
		return sink.PrefixClosed("stdout", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.slots.Release()
		return fmt.Errorf("stdout: %w", sink.ErrSinkClosed)
	}
	// Never blocks: lines has room for every slot.
	s.lines <- stdoutLine{b: b, ack: ack}
	return nil
}

// Close stops accepting events, writes and flushes every queued line, and
// returns once each ack was called.
func (s *Sink) Close() error {
	s.once.Do(func() {
		s.slots.Close()
		s.mu.Lock()
		s.closed = true
		close(s.lines)
		s.mu.Unlock()
		<-s.done
	})
	return nil
}

// run writes lines in order; it flushes when no more lines are queued (or
// the batch is large) and then acknowledges the batch.
func (s *Sink) run() {
	defer close(s.done)
	var batch []func(error)
	var failed error
	finish := func() {
		err := failed
		if err == nil {
			if err = s.w.Flush(); err != nil {
				err = fmt.Errorf("writing to stdout: %w", err)
				failed = err
			}
		}
		for _, ack := range batch {
			ack(err)
			s.slots.Release()
		}
		batch = batch[:0]
	}
	for l := range s.lines {
		if failed == nil {
			if _, err := s.w.Write(l.b); err != nil {
				failed = fmt.Errorf("writing to stdout: %w", err)
			}
		}
		batch = append(batch, l.ack)
		if len(s.lines) == 0 || len(batch) >= 1024 {
			finish()
		}
	}
	finish()
}
