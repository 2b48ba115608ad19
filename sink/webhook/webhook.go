// Package webhook is the HTTP sink: each event is POSTed as JSON to a URL
// rendered from a template, signed when a secret is set.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/sink"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultConcurrency = 16
)

// Webhook headers.
const (
	// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the body
	// under the shared secret.
	SignatureHeader = "X-Outbox-Signature"
	// IdempotencyKeyHeader carries the event id; receivers dedupe on it.
	IdempotencyKeyHeader = "Idempotency-Key"
)

// ErrRejected is wrapped by the ack error of an event the receiver
// refused with a 4xx status other than 408 and 429: retrying cannot help.
var ErrRejected = errors.New("webhook rejected the event")

// Config configures a Webhook sink. Zero values take the defaults.
type Config struct {
	// URL is the URL template, e.g. "https://example.com/hooks/{aggregate_type}".
	// Field values are path-escaped.
	URL string
	// Secret, if set, signs each body: X-Outbox-Signature: sha256=<hex
	// HMAC-SHA256(secret, body)>. It is never logged.
	Secret string
	// Timeout bounds one POST, including reading the response. Default 10s.
	Timeout time.Duration
	// Concurrency is how many POSTs run at once (each on a different
	// aggregate). Default 16.
	Concurrency int
	// MaxInFlight caps the events published and not yet acknowledged;
	// Publish blocks at the cap. Default 10000.
	MaxInFlight int
	// Retry is how long and how often a failed POST is retried.
	Retry sink.Retry
	// Client sends the requests. Default: a client with Timeout.
	Client *http.Client
	// Logger receives the sink's few log lines. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = sink.DefaultMaxInFlight
	}
	c.Retry = c.Retry.WithDefaults()
	if c.Client == nil {
		c.Client = &http.Client{Timeout: c.Timeout}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first problem with c, after defaults.
func (c Config) Validate() error {
	_, err := c.withDefaults().parse()
	return err
}

func (c Config) parse() (sink.Template, error) {
	if strings.TrimSpace(c.URL) == "" {
		return sink.Template{}, errors.New("no webhook URL configured")
	}
	tmpl, err := sink.ParseTemplate(c.URL)
	if err != nil {
		return sink.Template{}, fmt.Errorf("webhook URL: %w", err)
	}
	u, err := url.Parse(tmpl.RenderEscaped(&decoder.Event{ID: "x", AggregateType: "x", AggregateID: "x", EventType: "x", Topic: "x"}, nil))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return sink.Template{}, fmt.Errorf("webhook URL %s is not an http:// or https:// URL", SafeURL(c.URL))
	}
	switch {
	case c.Concurrency < 1:
		return sink.Template{}, fmt.Errorf("webhook concurrency %d is below 1", c.Concurrency)
	case c.MaxInFlight < 1:
		return sink.Template{}, fmt.Errorf("webhook max in-flight %d is below 1", c.MaxInFlight)
	case c.Timeout < 0 || c.Retry.Timeout < 0:
		return sink.Template{}, errors.New("webhook timeouts must not be negative")
	}
	return tmpl, nil
}

// SafeURL shows a URL (or URL template) without user info and query, which
// may hold credentials.
func SafeURL(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		s = s[:i]
	}
	if i := strings.Index(s, "://"); i >= 0 {
		rest := s[i+3:]
		if at := strings.IndexByte(rest, '@'); at >= 0 && !strings.Contains(rest[:at], "/") {
			s = s[:i+3] + rest[at+1:]
		}
	}
	return s
}

// Sink POSTs each event as one JSON document (the sink.EventJSON shape) to a
// URL rendered from a template, with Idempotency-Key = event id and, given
// a secret, an HMAC-SHA256 signature of the body.
//
// A 2xx response acknowledges the event. 5xx, 408, 429 and network errors
// are retried with exponential backoff (429 and 503 honour Retry-After up
// to the maximum backoff) within Retry; another 4xx is permanent: the ack
// gets an error wrapping ErrRejected without retrying.
//
// Order: at most one POST per aggregate id is in flight; the next event of
// an aggregate is sent only after the previous one was acknowledged, so a
// receiver that processes requests as they arrive sees each aggregate in
// commit order. Up to Concurrency aggregates are posted at once. Once an
// event's error is final, it and every later event fail (nothing is sent
// past it); the relay resumes from the slot. A retry after a timeout may
// deliver an event twice: receivers dedupe on Idempotency-Key.
//
// Goroutines: the caller's (Publish) and Concurrency workers; each worker
// posts, calls the ack and then queues its aggregate's next event.
type Sink struct {
	cfg    Config
	url    sink.Template
	log    *slog.Logger
	gate   *sink.Gate[*webhookItem]
	work   chan *webhookItem
	failed sink.Sticky
	wg     sync.WaitGroup
	once   sync.Once
}

var _ sink.Publisher = (*Sink)(nil)

type webhookItem struct {
	id  string
	key string
	url string
	doc []byte
	ack func(error)
}

// New checks cfg and starts the workers.
func New(cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	tmpl, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	w := &Sink{
		cfg:  cfg,
		url:  tmpl,
		log:  cfg.Logger,
		gate: sink.NewGate[*webhookItem](cfg.MaxInFlight),
		work: make(chan *webhookItem, cfg.MaxInFlight),
	}
	for range cfg.Concurrency {
		w.wg.Add(1)
		go w.worker()
	}
	w.log.Info("webhook sink ready", "url", SafeURL(cfg.URL), "concurrency", cfg.Concurrency, "signed", cfg.Secret != "")
	return w, nil
}

// Publish encodes ev and queues its POST, behind its aggregate's in-flight
// event if there is one. It blocks at MaxInFlight and returns ctx.Err() or a
// closed error without calling ack; otherwise ack is called exactly once
// from a worker.
func (w *Sink) Publish(ctx context.Context, ev *decoder.Event, ack func(error)) error {
	doc, err := sink.AppendEventJSON(nil, ev)
	if err != nil {
		return err
	}
	if err := w.gate.Acquire(ctx); err != nil {
		return sink.PrefixClosed("webhook", err)
	}
	it := &webhookItem{id: ev.ID, key: ev.AggregateID, url: w.url.RenderEscaped(ev, url.PathEscape), doc: doc, ack: ack}
	send, err := w.gate.Admit(it.key, it)
	if err != nil {
		return sink.PrefixClosed("webhook", err)
	}
	if send {
		w.work <- it // never blocks: work has room for every in-flight event
	}
	return nil
}

// InFlight returns how many published events have not had their ack
// called yet.
func (w *Sink) InFlight() int { return w.gate.InFlight() }

// Close stops accepting events and returns once every published event's
// ack was called (POSTs in progress finish or exhaust their retries).
func (w *Sink) Close() error {
	w.once.Do(func() {
		w.gate.Close()
		w.gate.Wait()
		close(w.work)
		w.wg.Wait()
	})
	return nil
}

func (w *Sink) worker() {
	defer w.wg.Done()
	for it := range w.work {
		err := w.failed.Get()
		if err == nil {
			if err = w.deliver(it); err != nil {
				w.failed.Set(err)
			}
		}
		it.ack(err)
		if next, ok := w.gate.Done(it.key); ok {
			w.work <- next
		}
	}
}

// deliver POSTs one event until it is acknowledged, permanently rejected,
// or the retry budget is spent.
func (w *Sink) deliver(it *webhookItem) error {
	first := time.Now()
	for attempt := 1; ; attempt++ {
		wait, err := w.post(it)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrRejected) || time.Since(first) >= w.cfg.Retry.Timeout {
			return fmt.Errorf("webhook for event %s after %d attempts: %w", it.id, attempt, err)
		}
		if wait == 0 {
			wait = w.cfg.Retry.Backoff(attempt)
		}
		w.log.Warn("webhook POST failed; retrying", "event_id", it.id, "attempt", attempt, "in", wait, "error", err)
		sink.Sleep(nil, wait)
	}
}

// post makes one attempt. It returns a server-requested wait (Retry-After)
// with a retryable error.
func (w *Sink) post(it *webhookItem) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, it.url, bytes.NewReader(it.doc))
	if err != nil {
		return 0, fmt.Errorf("%w: building the request for %s: %v", ErrRejected, SafeURL(it.url), err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "outbox-relay")
	req.Header.Set(IdempotencyKeyHeader, it.id)
	if w.cfg.Secret != "" {
		mac := hmac.New(sha256.New, []byte(w.cfg.Secret))
		mac.Write(it.doc)
		req.Header.Set(SignatureHeader, "sha256="+hex.EncodeToString(mac.Sum(nil)))
	}
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		// url.Error repeats the URL, which may hold credentials.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("POST %s: %w", SafeURL(it.url), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return 0, nil
	case code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
		return 0, fmt.Errorf("%w: POST %s answered %s: %s", ErrRejected, SafeURL(it.url), resp.Status, strings.TrimSpace(string(body)))
	}
	var wait time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		wait = min(time.Duration(s)*time.Second, w.cfg.Retry.Max)
	}
	return wait, fmt.Errorf("POST %s answered %s", SafeURL(it.url), resp.Status)
}
