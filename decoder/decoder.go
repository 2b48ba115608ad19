package decoder

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/internal/placeholder"
)

// Type OIDs of the payload types the relay accepts (pg_type.oid).
const (
	oidBytea   = 17
	oidText    = 25
	oidJSON    = 114
	oidVarchar = 1043
	oidJSONB   = 3802
)

// supportedPayloadTypes is quoted in the error for any other payload type.
const supportedPayloadTypes = "jsonb, json, text, varchar or bytea"

// maxTopicCache bounds the rendered-topic cache; templates over
// high-cardinality columns would otherwise grow it without limit.
const maxTopicCache = 4096

// pgEpochMicros is 2000-01-01 UTC, PostgreSQL's epoch, in Unix microseconds.
const pgEpochMicros = 946684800 * 1000000

// Decoder turns pgoutput (protocol version 1, text tuples) into Ops. It
// keeps the relation cache and the open transaction between calls, so it
// must see every message of a session in order; it is not safe for
// concurrent use.
type Decoder struct {
	schema, table string
	cols          Columns
	topic         []placeholder.Segment
	heartbeat     string
	msgPrefix     string
	headerCols    []string
	traceCol      string
	droppedHeader func(relation, key, reason string)
	// msgRelation names message mode to DroppedHeader.
	msgRelation string

	rels       map[uint32]*relation
	inTxn      bool
	commitTime time.Time

	// Scratch reused by every Decode: the hot path should not allocate
	// more than the event it returns.
	tuple  []tupleField
	strBuf []byte
	topBuf []byte
	keyBuf []byte
	valBuf []byte
	hdrBuf []headerEntry
	topics map[string]string
}

// relation is one entry of the relation cache.
type relation struct {
	namespace, name string
	ncols           int
	// outbox is set when the relation is the configured outbox table.
	outbox *layout
}

// layout locates the logical columns in an outbox relation's tuples,
// computed once per Relation message instead of once per row. -1 means
// the relation has no such column.
type layout struct {
	id, aggType, aggID, eventType, payload, headers, createdAt int
	payloadOID                                                 uint32
	// topicCols holds, per template segment, the column index of a raw
	// placeholder (-1 when absent or not a raw placeholder).
	topicCols []int
	// headerCols holds, per Config.HeaderColumns entry, its column index
	// (-1 when absent); trace is the trace column's index or -1.
	headerCols []int
	trace      int
	// relation is "schema.table", for errors and Config.DroppedHeader.
	relation string
	// names are the column names in table order, for RowError.Raw.
	names []string
	// badColumn and badReason, when set, are the SchemaError every row of
	// the relation gets: found once here, not per row.
	badColumn, badReason string
}

// tupleField is one column of a tuple, as offsets into the message.
type tupleField struct {
	kind       byte // 'n' NULL or 't' text
	start, end int
}

// New returns a Decoder for cfg; empty fields take their defaults.
func New(cfg Config) (*Decoder, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	table, _ := parseTable(cfg.Table)
	topic, _ := compileTopic(cfg.Topic)
	return &Decoder{
		schema:        table.Schema,
		table:         table.Name,
		cols:          cfg.Columns,
		topic:         topic,
		heartbeat:     cfg.HeartbeatPrefix,
		msgPrefix:     cfg.MessagePrefix,
		headerCols:    slices.Clone(cfg.HeaderColumns),
		traceCol:      cfg.TraceColumn,
		droppedHeader: cfg.DroppedHeader,
		msgRelation:   "message prefix " + cfg.MessagePrefix,
		rels:          make(map[uint32]*relation),
		topics:        make(map[string]string),
	}, nil
}

// Decode parses one pgoutput message, the WALData of one XLogData received
// at walStart. Nothing returned aliases data: the caller may reuse it.
// Errors wrap ErrMalformed for bytes that are not pgoutput, or are a
// *SchemaError when the outbox table lacks what the Config needs, or a
// *RowError for an outbox row (or table-free message) that cannot become
// an event.
func (d *Decoder) Decode(data []byte, walStart pglogrepl.LSN) (Op, error) {
	if len(data) == 0 {
		return Op{}, malformed(walStart, "empty message")
	}
	r := reader{b: data, off: 1}
	switch data[0] {
	case 'B':
		final, ts, xid := r.u64(), r.u64(), r.u32()
		if err := r.done(walStart, "begin"); err != nil {
			return Op{}, err
		}
		d.inTxn, d.commitTime = true, pgTime(ts)
		return Op{Kind: KindBegin, XID: xid, CommitLSN: pglogrepl.LSN(final), CommitTime: d.commitTime}, nil
	case 'C':
		_ = r.u8() // flags, unused
		commit, end, ts := r.u64(), r.u64(), r.u64()
		if err := r.done(walStart, "commit"); err != nil {
			return Op{}, err
		}
		d.inTxn = false
		return Op{Kind: KindCommit, CommitLSN: pglogrepl.LSN(commit), EndLSN: pglogrepl.LSN(end), CommitTime: pgTime(ts)}, nil
	case 'R':
		return Op{}, d.relation(&r, walStart)
	case 'I':
		return d.insert(&r, walStart)
	case 'M':
		return d.message(&r, walStart)
	case 'Y', 'O', 'T', 'U', 'D':
		// Types, origins, truncates, updates and deletes never make events:
		// deleting or pruning outbox rows must not publish anything.
		return Op{Kind: KindSkip}, nil
	}
	return Op{}, malformed(walStart, fmt.Sprintf("unknown message type %q", data[0]))
}

// relation replaces the cache entry for a Relation message's OID: the
// server sends one again after reconnects and schema changes.
func (d *Decoder) relation(r *reader, walStart pglogrepl.LSN) error {
	oid := r.u32()
	ns, name := r.cstring(), r.cstring()
	_ = r.u8() // replica identity
	n := int(r.u16())
	rel := &relation{namespace: string(ns), name: string(name), ncols: n}
	isOutbox := rel.namespace == d.schema && rel.name == d.table
	var lay *layout
	if isOutbox {
		lay = &layout{id: -1, aggType: -1, aggID: -1, eventType: -1, payload: -1, headers: -1, createdAt: -1, trace: -1,
			relation: rel.namespace + "." + rel.name, names: make([]string, 0, min(n, 64))}
		lay.topicCols = make([]int, len(d.topic))
		for i := range lay.topicCols {
			lay.topicCols[i] = -1
		}
		lay.headerCols = make([]int, len(d.headerCols))
		for i := range lay.headerCols {
			lay.headerCols[i] = -1
		}
	}
	for i := 0; i < n && !r.bad; i++ {
		_ = r.u8() // flags (part of the key)
		col := r.cstring()
		typ := r.u32()
		_ = r.u32() // type modifier
		if lay == nil {
			continue
		}
		lay.names = append(lay.names, string(col))
		// string(col) in comparisons does not allocate.
		if string(col) == d.cols.ID {
			lay.id = i
		}
		if string(col) == d.cols.AggregateType {
			lay.aggType = i
		}
		if string(col) == d.cols.AggregateID {
			lay.aggID = i
		}
		if string(col) == d.cols.EventType {
			lay.eventType = i
		}
		if string(col) == d.cols.Payload {
			lay.payload, lay.payloadOID = i, typ
		}
		if d.cols.Headers != "" && string(col) == d.cols.Headers {
			lay.headers = i
		}
		if d.cols.CreatedAt != "" && string(col) == d.cols.CreatedAt {
			lay.createdAt = i
		}
		for j, seg := range d.topic {
			if seg.Field == fieldRaw && string(col) == seg.Text {
				lay.topicCols[j] = i
			}
		}
		for j, name := range d.headerCols {
			if string(col) == name {
				lay.headerCols[j] = i
			}
		}
		if d.traceCol != "" && string(col) == d.traceCol {
			lay.trace = i
		}
	}
	if err := r.done(walStart, "relation"); err != nil {
		return err
	}
	if lay != nil {
		lay.badColumn, lay.badReason = d.checkLayout(lay)
	}
	rel.outbox = lay
	d.rels[oid] = rel
	return nil
}

// checkLayout returns the first column the configuration needs that the
// relation lacks (or cannot use) and why, or "" when rows can be decoded.
func (d *Decoder) checkLayout(lay *layout) (column, reason string) {
	missing := func(name, logical string) string {
		if name == logical {
			return "is missing"
		}
		return "is missing (it is mapped as the " + logical + " column)"
	}
	for _, c := range [...]struct {
		idx           int
		name, logical string
	}{
		{lay.id, d.cols.ID, "id"}, {lay.aggType, d.cols.AggregateType, "aggregate_type"},
		{lay.aggID, d.cols.AggregateID, "aggregate_id"}, {lay.eventType, d.cols.EventType, "event_type"},
		{lay.payload, d.cols.Payload, "payload"},
	} {
		if c.idx < 0 {
			return c.name, missing(c.name, c.logical)
		}
	}
	switch lay.payloadOID {
	case oidJSONB, oidJSON, oidText, oidVarchar, oidBytea:
	default:
		return d.cols.Payload, fmt.Sprintf("has type OID %d; the payload must be %s", lay.payloadOID, supportedPayloadTypes)
	}
	// An optional column that was mapped and then dropped would otherwise
	// turn into events without headers or timestamps, silently.
	for _, c := range [...]struct {
		idx           int
		name, logical string
	}{{lay.headers, d.cols.Headers, "headers"}, {lay.createdAt, d.cols.CreatedAt, "created_at"}} {
		if c.name != "" && c.idx < 0 {
			return c.name, "is missing (it is mapped as the " + c.logical + " column; map none to do without it)"
		}
	}
	for j, c := range lay.headerCols {
		if c < 0 {
			return d.headerCols[j], "is a header column but missing"
		}
	}
	for j, seg := range d.topic {
		if seg.Field == fieldRaw && lay.topicCols[j] < 0 {
			return seg.Text, "is used in the topic template but missing"
		}
	}
	return "", ""
}

// insert decodes an Insert: an event when it is into the outbox table.
func (d *Decoder) insert(r *reader, walStart pglogrepl.LSN) (Op, error) {
	oid := r.u32()
	if r.u8() != 'N' || r.bad {
		return Op{}, malformed(walStart, "insert message without a new tuple")
	}
	rel := d.rels[oid]
	if rel == nil {
		return Op{}, malformed(walStart, fmt.Sprintf("insert into relation OID %d before its relation message (protocol violation)", oid))
	}
	if rel.outbox == nil {
		return Op{Kind: KindSkip}, nil
	}
	if !d.inTxn {
		return Op{}, malformed(walStart, "insert outside a transaction")
	}
	if err := d.readTuple(r, rel, walStart); err != nil {
		return Op{}, err
	}
	ev, err := d.event(r.b, rel, walStart)
	if err != nil {
		return Op{}, err
	}
	return Op{Kind: KindEvent, Event: ev}, nil
}

// readTuple fills d.tuple with the columns of an insert's TupleData.
func (d *Decoder) readTuple(r *reader, rel *relation, walStart pglogrepl.LSN) error {
	n := int(r.u16())
	if r.bad {
		return malformed(walStart, "truncated insert message")
	}
	if n != rel.ncols {
		return malformed(walStart, fmt.Sprintf("insert into %s.%s with %d columns, relation message had %d", rel.namespace, rel.name, n, rel.ncols))
	}
	t := d.tuple[:0]
	for i := 0; i < n; i++ {
		switch kind := r.u8(); kind {
		case 'n':
			t = append(t, tupleField{kind: 'n'})
		case 't':
			l := int(r.u32())
			start := r.off
			r.bytes(l)
			t = append(t, tupleField{kind: 't', start: start, end: r.off})
		case 'u':
			return malformed(walStart, fmt.Sprintf("unchanged TOAST value in an insert into %s.%s", rel.namespace, rel.name))
		case 'b':
			return malformed(walStart, fmt.Sprintf("binary value in an insert into %s.%s (the relay requests text format)", rel.namespace, rel.name))
		default:
			if r.bad {
				return malformed(walStart, "truncated insert message")
			}
			return malformed(walStart, fmt.Sprintf("unknown tuple value kind %q", kind))
		}
		if r.bad {
			return malformed(walStart, "truncated insert message")
		}
	}
	d.tuple = t
	return r.done(walStart, "insert")
}

// event builds the Event of an outbox row from d.tuple.
func (d *Decoder) event(data []byte, rel *relation, walStart pglogrepl.LSN) (Event, error) {
	lay := rel.outbox
	if lay.badColumn != "" {
		return Event{}, &SchemaError{Relation: lay.relation, Column: lay.badColumn, Reason: lay.badReason, LSN: walStart}
	}
	val := func(i int) []byte { f := d.tuple[i]; return data[f.start:f.end] }
	required := [4]struct {
		idx  int
		name string
	}{{lay.id, d.cols.ID}, {lay.aggType, d.cols.AggregateType}, {lay.aggID, d.cols.AggregateID}, {lay.eventType, d.cols.EventType}}
	for _, c := range required {
		if d.tuple[c.idx].kind != 't' {
			return Event{}, d.rowError(data, lay, walStart, "", c.name, "is NULL")
		}
	}

	// One string backs ID, AggregateType, AggregateID and EventType: one
	// allocation instead of four.
	b := append(d.strBuf[:0], val(lay.id)...)
	b = append(b, val(lay.aggType)...)
	b = append(b, val(lay.aggID)...)
	b = append(b, val(lay.eventType)...)
	d.strBuf = b
	all := string(b)
	e1 := len(val(lay.id))
	e2 := e1 + len(val(lay.aggType))
	e3 := e2 + len(val(lay.aggID))
	ev := Event{
		ID:            all[:e1],
		AggregateType: all[e1:e2],
		AggregateID:   all[e2:e3],
		EventType:     all[e3:],
		LSN:           walStart,
		CommitTime:    d.commitTime,
		CreatedAt:     d.commitTime,
	}

	// The topic before the other columns, so their errors can say where
	// the event was going (a dead letter keeps it).
	topic, seg, ok := d.renderTopic(&ev, func(seg int) ([]byte, bool) {
		if d.tuple[lay.topicCols[seg]].kind != 't' {
			return nil, false
		}
		return val(lay.topicCols[seg]), true
	})
	if !ok {
		if seg < 0 {
			return Event{}, d.rowError(data, lay, walStart, "", "", "the topic template renders an empty topic")
		}
		return Event{}, d.rowError(data, lay, walStart, "", d.topic[seg].Text, "is used in the topic template but NULL")
	}
	ev.Topic = topic

	if d.tuple[lay.payload].kind == 't' {
		if lay.payloadOID == oidBytea {
			p, err := decodeBytea(val(lay.payload))
			if err != nil {
				return Event{}, d.rowError(data, lay, walStart, topic, d.cols.Payload, err.Error())
			}
			ev.Payload = p
		} else {
			ev.Payload = append([]byte(nil), val(lay.payload)...)
			if ev.Payload == nil {
				ev.Payload = []byte{}
			}
		}
	}

	if lay.headers >= 0 && d.tuple[lay.headers].kind == 't' {
		hs, err := d.parseHeaders(val(lay.headers), lay.relation)
		if err != nil {
			return Event{}, d.rowError(data, lay, walStart, topic, d.cols.Headers, err.Error())
		}
		ev.Headers = hs
	}
	var extra []Header
	for j, c := range lay.headerCols {
		if d.tuple[c].kind == 't' {
			extra = append(extra, Header{Key: d.headerCols[j], Value: append([]byte(nil), val(c)...)})
		}
	}
	var trace []byte
	if lay.trace >= 0 && d.tuple[lay.trace].kind == 't' {
		trace = val(lay.trace)
	}
	ev.Headers = mergeHeaders(ev.Headers, extra, trace)

	if lay.createdAt >= 0 && d.tuple[lay.createdAt].kind == 't' {
		v := val(lay.createdAt)
		t, ok := parseTimestamp(v)
		if !ok {
			return Event{}, d.rowError(data, lay, walStart, topic, d.cols.CreatedAt,
				fmt.Sprintf("holds %q, not an ISO timestamp (set DateStyle=ISO on the replication connection)", truncate(v, 64)))
		}
		ev.CreatedAt = t
	}
	return ev, nil
}

// rowError builds the *RowError of the outbox row in d.tuple. Only a row
// that fails pays for the copies of its id, key and columns.
func (d *Decoder) rowError(data []byte, lay *layout, walStart pglogrepl.LSN, topic, column, reason string) *RowError {
	e := &RowError{LSN: walStart, Topic: topic, Column: column, Reason: reason}
	if f := d.tuple[lay.id]; f.kind == 't' {
		e.EventID = string(data[f.start:f.end])
	}
	if f := d.tuple[lay.aggID]; f.kind == 't' {
		e.AggregateID = string(data[f.start:f.end])
	}
	size := 2
	for i, f := range d.tuple {
		size += len(lay.names[i]) + f.end - f.start + 8
	}
	raw := make([]byte, 0, size)
	raw = append(raw, '{')
	for i, f := range d.tuple {
		if i > 0 {
			raw = append(raw, ',')
		}
		raw = appendQuotedJSON(raw, lay.names[i])
		raw = append(raw, ':')
		if f.kind == 't' {
			raw = appendQuotedJSON(raw, data[f.start:f.end])
		} else {
			raw = append(raw, "null"...)
		}
	}
	e.Raw = append(raw, '}')
	return e
}

// renderTopic renders the template for ev; rendered topics are cached, so
// the usual few aggregate types cost no allocation after the first event.
// raw returns the text of the raw placeholder of template segment seg, or
// false when it has none. When the topic cannot be rendered, renderTopic
// returns false and the segment at fault, or -1 for an empty topic.
func (d *Decoder) renderTopic(ev *Event, raw func(seg int) ([]byte, bool)) (string, int, bool) {
	b := d.topBuf[:0]
	for i, seg := range d.topic {
		switch seg.Field {
		case placeholder.Literal:
			b = append(b, seg.Text...)
		case fieldID:
			b = append(b, ev.ID...)
		case fieldAggregateType:
			b = append(b, ev.AggregateType...)
		case fieldAggregateID:
			b = append(b, ev.AggregateID...)
		case fieldEventType:
			b = append(b, ev.EventType...)
		case fieldRaw:
			v, ok := raw(i)
			if !ok {
				return "", i, false
			}
			b = append(b, v...)
		}
	}
	d.topBuf = b
	if len(b) == 0 {
		return "", -1, false
	}
	if t, ok := d.topics[string(b)]; ok {
		return t, 0, true
	}
	t := string(b)
	if len(d.topics) >= maxTopicCache {
		clear(d.topics)
	}
	d.topics[t] = t
	return t, 0, true
}

// truncate shortens a value quoted in an error message.
func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// pgTime converts PostgreSQL's microseconds since 2000-01-01 UTC.
func pgTime(us uint64) time.Time {
	return time.UnixMicro(int64(us) + pgEpochMicros).UTC()
}

// malformed wraps ErrMalformed with the message's position and what is wrong.
func malformed(walStart pglogrepl.LSN, what string) error {
	return fmt.Errorf("pgoutput message at LSN %s: %s: %w", walStart, what, ErrMalformed)
}

// reader is a bounds-checked cursor over one message. Reading past the end
// sets bad and yields zeros, so parsers check once instead of per field.
type reader struct {
	b   []byte
	off int
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n < 0 || n > len(r.b)-r.off {
		r.bad = true
		return nil
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s
}

func (r *reader) u8() byte {
	if s := r.take(1); s != nil {
		return s[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if s := r.take(2); s != nil {
		return binary.BigEndian.Uint16(s)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if s := r.take(4); s != nil {
		return binary.BigEndian.Uint32(s)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if s := r.take(8); s != nil {
		return binary.BigEndian.Uint64(s)
	}
	return 0
}

// bytes skips n bytes; n comes from the wire, so it may be anything.
func (r *reader) bytes(n int) { r.take(n) }

// cstring reads a NUL-terminated string, without the NUL.
func (r *reader) cstring() []byte {
	if r.bad {
		return nil
	}
	for i := r.off; i < len(r.b); i++ {
		if r.b[i] == 0 {
			s := r.b[r.off:i]
			r.off = i + 1
			return s
		}
	}
	r.bad = true
	return nil
}

// done reports a truncated message or trailing bytes.
func (r *reader) done(walStart pglogrepl.LSN, what string) error {
	if r.bad {
		return malformed(walStart, "truncated "+what+" message")
	}
	if r.off != len(r.b) {
		return malformed(walStart, fmt.Sprintf("%d trailing bytes after %s message", len(r.b)-r.off, what))
	}
	return nil
}
