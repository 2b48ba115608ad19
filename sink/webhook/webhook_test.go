package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/sinktest"
	"github.com/outbox-relay/outbox-relay/sink"
)

// hookServer fails, delays and accepts on a schedule keyed by attempt.
type hookServer struct {
	t      *testing.T
	secret string
	// plan returns the status for the n-th attempt (1-based) of an event
	// and a delay before answering.
	plan func(id string, n int) (int, time.Duration)

	mu       sync.Mutex
	attempts map[string]int
	accepted [][2]string // aggregate id, seq of each 2xx, in arrival order
	paths    map[string]string
	badSig   int
}

func (h *hookServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	mac := hmac.New(sha256.New, []byte(h.secret))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	var doc sink.EventJSON
	if err := json.Unmarshal(body, &doc); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	if r.Header.Get(SignatureHeader) != want {
		h.badSig++
	}
	if r.Header.Get(IdempotencyKeyHeader) != doc.ID {
		h.badSig++
	}
	h.attempts[doc.ID]++
	n := h.attempts[doc.ID]
	h.paths[doc.ID] = r.URL.Path
	h.mu.Unlock()
	code, delay := h.plan(doc.ID, n)
	time.Sleep(delay)
	if code/100 == 2 {
		h.mu.Lock()
		h.accepted = append(h.accepted, [2]string{doc.AggregateID, strconv.Itoa(sinktest.SeqOf(h.t, doc.Payload))})
		h.mu.Unlock()
	}
	w.WriteHeader(code)
}

// Failures (500, 503, 429, 408, a timeout) are retried with backoff; each
// aggregate is delivered in order, signed, with the Idempotency-Key.
func TestWebhookRetriesInOrderWithSignature(t *testing.T) {
	h := &hookServer{t: t, secret: "s3cret", attempts: map[string]int{}, paths: map[string]string{}}
	h.plan = func(id string, n int) (int, time.Duration) {
		last := id[len(id)-1]
		switch {
		case last == '3' && n == 1:
			return http.StatusInternalServerError, 0
		case last == '5' && n <= 2:
			return []int{http.StatusTooManyRequests, http.StatusServiceUnavailable}[n-1], 0
		case last == '7' && n == 1:
			return http.StatusRequestTimeout, 0
		case last == '9' && n == 1:
			return http.StatusOK, 400 * time.Millisecond // beyond the client timeout
		}
		return http.StatusOK, time.Millisecond
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	w, err := New(Config{
		URL:         srv.URL + "/hooks/{aggregate_type}/{aggregate_id}",
		Secret:      h.secret,
		Timeout:     200 * time.Millisecond,
		Concurrency: 4,
		MaxInFlight: 30,
		Retry:       sink.Retry{Timeout: 10 * time.Second, Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	const aggs, per = 6, 30
	a := sinktest.NewAckLog(aggs * per)
	for i := 1; i <= per; i++ {
		for agg := range aggs {
			ev := sinktest.Event(agg, i)
			if err := w.Publish(t.Context(), ev, a.Ack(ev.ID)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for id, err := range a.Wait(t, 60*time.Second) {
		if err != nil {
			t.Fatalf("ack %s: %v", id, err)
		}
	}
	w.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.badSig != 0 {
		t.Fatalf("%d requests had a wrong signature or Idempotency-Key", h.badSig)
	}
	// Dedupe on the event the way a receiver would (a timed-out request
	// may have been accepted too), then check order.
	var got [][2]string
	seen := map[[2]string]bool{}
	for _, g := range h.accepted {
		if !seen[g] {
			seen[g] = true
			got = append(got, g)
		}
	}
	sinktest.CheckOrder(t, got, aggs, per)
	retried := 0
	for id, n := range h.attempts {
		if n > 1 {
			retried++
		}
		if want := "/hooks/order/agg-" + strings.TrimLeft(id[19:23], "0"); !strings.HasPrefix(h.paths[id], "/hooks/order/agg-") || (id[19:23] != "0000" && h.paths[id] != want) {
			t.Fatalf("event %s posted to %s", id, h.paths[id])
		}
	}
	if retried < aggs*per/3 {
		t.Fatalf("only %d events were retried; the schedule fails more", retried)
	}
}

// A 4xx other than 408/429 is permanent: no retry, the ack gets the
// error, and later events fail without being sent.
func TestWebhookPermanent4xxFailsAck(t *testing.T) {
	h := &hookServer{t: t, attempts: map[string]int{}, paths: map[string]string{}}
	h.plan = func(id string, n int) (int, time.Duration) {
		if strings.HasSuffix(id, "2") {
			return http.StatusUnprocessableEntity, 0
		}
		return http.StatusOK, 0
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	w, err := New(Config{URL: srv.URL + "/e", Concurrency: 1, Retry: sink.Retry{Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	a := sinktest.NewAckLog(4)
	for i := 1; i <= 4; i++ {
		ev := sinktest.Event(0, i)
		if err := w.Publish(t.Context(), ev, a.Ack(ev.ID)); err != nil {
			t.Fatal(err)
		}
	}
	res := a.Wait(t, 10*time.Second)
	if err := res[sinktest.Event(0, 1).ID]; err != nil {
		t.Fatalf("event 1: %v", err)
	}
	if err := res[sinktest.Event(0, 2).ID]; !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "422") {
		t.Fatalf("event 2: %v, want a 422 rejection", err)
	}
	if res[sinktest.Event(0, 3).ID] == nil || res[sinktest.Event(0, 4).ID] == nil {
		t.Fatalf("events after a rejected one were acknowledged")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.attempts[sinktest.Event(0, 2).ID] != 1 || h.attempts[sinktest.Event(0, 3).ID] != 0 {
		t.Fatalf("attempts %v: want one for the rejected event and none after it", h.attempts)
	}
}

// The secret never appears in errors or in the URL shown in logs.
func TestWebhookSecretsStayOutOfErrors(t *testing.T) {
	_, err := New(Config{URL: "ftp://user:pw@host/x?token=abc", Secret: "topsecret"})
	if err == nil || strings.Contains(err.Error(), "pw") || strings.Contains(err.Error(), "abc") {
		t.Fatalf("error %v: want a rejection without credentials", err)
	}
}

func BenchmarkWebhook(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }))
	defer srv.Close()
	w, err := New(Config{URL: srv.URL + "/{aggregate_type}", Secret: "s"})
	if err != nil {
		b.Fatal(err)
	}
	sinktest.Bench(b, w)
}
