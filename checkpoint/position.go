package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
)

// Position is what an exactly-once publisher commits to the broker in the
// same transaction as the events: how far the slot's stream is published.
// Every transaction whose end LSN is at or below EndLSN is published in
// full; of the transaction whose commit LSN is PartialCommitLSN (one too
// large for a single broker transaction), the first PartialRows rows are.
//
// A relay that starts again skips what the newest committed Position says
// is published, whatever the slot's confirmed position: that is how a
// crash between the broker's commit and the confirmation to PostgreSQL
// repeats nothing.
type Position struct {
	// Slot is the replication slot the stream comes from.
	Slot string
	// SystemID and Timeline identify the database the LSNs belong to
	// (IDENTIFY_SYSTEM): LSNs of another database mean nothing here.
	SystemID string
	Timeline int32
	// EndLSN is the end LSN of the newest transaction published in full.
	EndLSN pglogrepl.LSN
	// PartialCommitLSN and PartialRows, when PartialRows > 0: the commit
	// LSN of the transaction published in part, and how many of its rows
	// (events, rows that could not be decoded) are.
	PartialCommitLSN pglogrepl.LSN
	PartialRows      int64
}

// positionJSON is Position as stored: LSNs in PostgreSQL's text form, so
// that the record is readable with any Kafka tool.
type positionJSON struct {
	Version          int    `json:"version"`
	Slot             string `json:"slot"`
	SystemID         string `json:"system_id"`
	Timeline         int32  `json:"timeline"`
	EndLSN           string `json:"end_lsn"`
	PartialCommitLSN string `json:"partial_commit_lsn,omitempty"`
	PartialRows      int64  `json:"partial_rows,omitempty"`
}

// Marshal encodes p as a small JSON document.
func (p Position) Marshal() []byte {
	v := positionJSON{Version: 1, Slot: p.Slot, SystemID: p.SystemID, Timeline: p.Timeline, EndLSN: p.EndLSN.String()}
	if p.PartialRows > 0 {
		v.PartialCommitLSN, v.PartialRows = p.PartialCommitLSN.String(), p.PartialRows
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic("checkpoint: marshalling a position: " + err.Error()) // plain strings and numbers
	}
	return b
}

// ParsePosition decodes what Marshal encoded.
func ParsePosition(b []byte) (Position, error) {
	var v positionJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return Position{}, fmt.Errorf("not a checkpoint record: %w", err)
	}
	if v.Version != 1 {
		return Position{}, fmt.Errorf("checkpoint record version %d is not one this relay knows (1)", v.Version)
	}
	p := Position{Slot: v.Slot, SystemID: v.SystemID, Timeline: v.Timeline, PartialRows: v.PartialRows}
	var err error
	if p.EndLSN, err = pglogrepl.ParseLSN(v.EndLSN); err != nil {
		return Position{}, fmt.Errorf("checkpoint record: end_lsn %q: %w", v.EndLSN, err)
	}
	if v.PartialRows < 0 {
		return Position{}, errors.New("checkpoint record: partial_rows is negative")
	}
	if v.PartialRows > 0 {
		if p.PartialCommitLSN, err = pglogrepl.ParseLSN(v.PartialCommitLSN); err != nil {
			return Position{}, fmt.Errorf("checkpoint record: partial_commit_lsn %q: %w", v.PartialCommitLSN, err)
		}
	}
	return p, nil
}

// Published reports whether row number row (from 0, in stream order) of
// the transaction whose commit LSN is commitLSN is already published.
//
// A transaction's commit record starts at or after the end of every
// transaction streamed before it, so commitLSN < EndLSN holds exactly for
// the transactions at or below EndLSN.
func (p Position) Published(commitLSN pglogrepl.LSN, row int64) bool {
	if commitLSN < p.EndLSN {
		return true
	}
	return p.PartialRows > 0 && commitLSN == p.PartialCommitLSN && row < p.PartialRows
}
