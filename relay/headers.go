package relay

import (
	"log/slog"
	"sync"
)

// droppedHeaders hears about the header keys the decoder leaves out of
// events (decoder.Config.DroppedHeader): it counts each one and warns once
// per relation and key in a session, since a writer that sets such a key
// usually sets it on every event.
type droppedHeaders struct {
	log  *slog.Logger
	obs  Observer
	slot string

	// mu guards seen; Decode runs on the pipeline goroutine, so it is never
	// contended. seen stays small: the decoder drops only the relay's own
	// header names and the empty one, for the table and message mode.
	mu   sync.Mutex
	seen map[droppedKey]bool
}

type droppedKey struct{ relation, key string }

func newDroppedHeaders(log *slog.Logger, obs Observer, slot string) *droppedHeaders {
	return &droppedHeaders{log: log, obs: obs, slot: slot, seen: make(map[droppedKey]bool)}
}

// report is the decoder's DroppedHeader callback.
func (d *droppedHeaders) report(relation, key, reason string) {
	d.obs.HeaderDropped(relation, key)
	k := droppedKey{relation, key}
	d.mu.Lock()
	first := !d.seen[k]
	d.seen[k] = true
	d.mu.Unlock()
	if first {
		d.log.Warn("header left out of events; later ones are only counted", "slot", d.slot, "relation", relation, "header", key, "reason", reason)
	}
}
