package decoder

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
)

// FuzzDecodeMatchesPglogrepl builds one valid pgoutput transaction from
// fuzzed fields (Begin, Origin, Type, two Relations, Inserts, Update,
// Delete, Truncate, a logical decoding message, Commit), decodes each
// message with the Decoder and with pglogrepl.Parse, and fails wherever
// the two read a field differently. Compared, where the Decoder exposes
// the field (in its Op, its Event or its relation cache and tuple
// scratch): Begin's final LSN, commit time and xid; Commit's commit LSN,
// end LSN and commit time; a Relation's OID, namespace, name, column
// count, column names and the payload column's type OID; an outbox
// Insert's column kinds and bytes and the event fields taken from them; a
// message's transactional flag, prefix and content. The Decoder reads
// nothing of Origin, Type, Update, Delete and Truncate: for those it must
// skip the message without error and without disturbing the open
// transaction, which the later outbox insert and message check.
//
// FuzzDecode feeds the Decoder arbitrary bytes; this target feeds it only
// what PostgreSQL could send, where any disagreement is a decoding bug.
func FuzzDecodeMatchesPglogrepl(f *testing.F) {
	f.Add(uint64(0x16B3800), uint64(0x16B3830), int64(817_000_000_000_000), uint32(740), uint32(16400), uint8(1),
		"public", "outbox", "outbox", []byte{})
	f.Add(uint64(0), uint64(math.MaxUint64), int64(-1), uint32(math.MaxUint32), uint32(math.MaxUint32), uint8(0),
		"app", "events", "other", []byte{1, 2, 3, 0, 4, 't', 'e', 'n', 'a', 'n', 't', 9, 1, 0xff, 7, 0, 3, 'a', 'b', 'c'})
	f.Add(uint64(1)<<63, uint64(1), int64(math.MaxInt64), uint32(0), uint32(0), uint8(1),
		"sch\u00e9ma", "t\x00bl.x", "", bytes.Repeat([]byte{0x80, 0x05, 'x', 0, 0xfe, 'y', '\\'}, 12))
	f.Add(uint64(0x1_0000_0000), uint64(0x1_0000_0100), int64(math.MinInt64), uint32(1), uint32(17), uint8(0xff),
		"s", "outbox", "outbox", []byte{4, 0, 0, 2, 1, 5, 'a', 0, 0, 1, 1, 1, 200, 't', 0, 0, 7})
	// A longer shape, so the seeds alone carry columns and values.
	shape := make([]byte, 2000)
	for i := range shape {
		shape[i] = byte(i*37 + i/7)
	}
	f.Add(uint64(0x2A_0000_0000), uint64(0x2A_0000_0040), int64(-946_684_800_000_000), uint32(123456), uint32(1<<31), uint8(1),
		"tenant_a", "outbox", "", shape)
	f.Add(uint64(0x2A_0000_0000), uint64(0x2A_0000_0040), int64(1_000_000_000_123_456), uint32(7), uint32(99), uint8(1),
		"public", "Outbox Events", "outbox", shape[500:])
	// Names at PostgreSQL's length limit, NAMEDATALEN-1 bytes.
	f.Add(uint64(0x16B3800), uint64(0x16B3830), int64(0), uint32(740), uint32(16400), uint8(1),
		strings.Repeat("n", 63), strings.Repeat("\u00e9", 27)+"t", strings.Repeat("p", 63), shape[1000:])
	f.Fuzz(func(t *testing.T, finalLSN, endLSN uint64, ts int64, xid, oid uint32, msgFlags uint8, namespace, relName, prefix string, shape []byte) {
		e := &entropy{b: shape}
		ts = pglogreplTime(ts)
		namespace, relName, prefix = cstr(namespace), cstr(relName), cstr(prefix)
		// Config.Table is "schema.name": neither may be empty or hold a dot.
		namespace = strings.ReplaceAll(namespace, ".", "")
		relName = strings.ReplaceAll(relName, ".", "")
		if namespace == "" {
			namespace = "public"
		}
		if relName == "" {
			relName = "outbox"
		}
		// Room for the other table's "_history" within NAMEDATALEN.
		relName = relName[:min(len(relName), 55)]
		d, err := New(Config{Table: namespace + "." + relName, MessagePrefix: "outbox",
			Columns: Columns{ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type", Payload: "payload"}})
		if err != nil {
			t.Fatal(err)
		}
		walStart := pglogrepl.LSN(finalLSN - 0x100)
		decode := func(data []byte) (Op, pglogrepl.Message) {
			t.Helper()
			pm, perr := pglogrepl.Parse(data)
			if perr != nil {
				t.Fatalf("pglogrepl.Parse of a generated %q message: %v (generator bug)\n%x", data[0], perr, data)
			}
			op, err := d.Decode(data, walStart)
			if err != nil {
				t.Fatalf("Decode of a valid %q message pglogrepl parses: %v\n%x", data[0], err, data)
			}
			return op, pm
		}
		skip := func(data []byte) {
			t.Helper()
			if op, _ := decode(data); op.Kind != KindSkip {
				t.Fatalf("%q message decoded as %+v, want a skip", data[0], op)
			}
		}

		// Begin.
		op, pm := decode(beginBytes(finalLSN, ts, xid))
		pb := pm.(*pglogrepl.BeginMessage)
		if op.Kind != KindBegin || op.CommitLSN != pb.FinalLSN || op.XID != pb.Xid || !op.CommitTime.Equal(pb.CommitTime) {
			t.Fatalf("begin: decoder %+v, pglogrepl %+v", op, pb)
		}
		commitTime := pb.CommitTime

		// Origin and Type: nothing for the relay.
		skip(originBytes(endLSN, cstr(string(e.bytes(16)))))
		skip(typeBytes(e.u32(), namespace, cstr(string(e.bytes(16)))))

		// A Relation that is not the outbox, then the outbox's.
		otherOID, outboxOID := oid, oid+1
		others := genColumns(e, nil)
		relationCheck(t, d, decode, otherOID, namespace, relName+"_history", e.byte(), others, false)
		payloadType := [...]uint32{oidJSONB, oidJSON, oidText, oidVarchar, oidBytea}[e.byte()%5]
		cols := genColumns(e, []relCol{
			{name: "id", typ: 2950}, {name: "aggregate_type", typ: oidText}, {name: "aggregate_id", typ: oidText},
			{name: "event_type", typ: oidText}, {name: "payload", typ: payloadType},
		})
		relationCheck(t, d, decode, outboxOID, namespace, relName, e.byte(), cols, true)

		// Rows of the other table, updates, deletes and truncates: skipped.
		skip(insertBytes(otherOID, genTuple(e, others, payloadType, false)))
		skip(updateBytes(outboxOID, e.byte(), genTuple(e, cols, payloadType, true), genTuple(e, cols, payloadType, true)))
		skip(deleteBytes(outboxOID, e.byte(), genTuple(e, cols, payloadType, false)))
		skip(truncateBytes(e.byte()&3, []uint32{otherOID, outboxOID}[:1+e.byte()%2]))

		// An outbox row.
		data := insertBytes(outboxOID, genTuple(e, cols, payloadType, false))
		op, pm = decode(data)
		pi := pm.(*pglogrepl.InsertMessage)
		if pi.RelationID != outboxOID {
			t.Fatalf("insert: pglogrepl relation %d, generated %d", pi.RelationID, outboxOID)
		}
		if len(d.tuple) != int(pi.Tuple.ColumnNum) || len(d.tuple) != len(pi.Tuple.Columns) {
			t.Fatalf("insert: decoder read %d columns, pglogrepl %d (%d)", len(d.tuple), pi.Tuple.ColumnNum, len(pi.Tuple.Columns))
		}
		for i, f := range d.tuple {
			pc := pi.Tuple.Columns[i]
			got := data[f.start:f.end]
			if f.kind != pc.DataType || f.kind == 't' && (!bytes.Equal(got, pc.Data) || len(got) != int(pc.Length)) {
				t.Fatalf("insert column %d: decoder %q %q, pglogrepl %q %q (length %d)", i, f.kind, got, pc.DataType, pc.Data, pc.Length)
			}
		}
		text := func(name string) []byte {
			c := pi.Tuple.Columns[slices.IndexFunc(cols, func(c relCol) bool { return c.name == name })]
			if c.DataType != 't' {
				return nil
			}
			return c.Data
		}
		ev := op.Event
		if op.Kind != KindEvent || ev.ID != string(text("id")) || ev.AggregateType != string(text("aggregate_type")) ||
			ev.AggregateID != string(text("aggregate_id")) || ev.EventType != string(text("event_type")) ||
			ev.Topic != "outbox."+string(text("aggregate_type")) || ev.LSN != walStart ||
			!ev.CommitTime.Equal(commitTime) || !ev.CreatedAt.Equal(commitTime) {
			t.Fatalf("insert: decoder %+v, pglogrepl %+v", op, pi.Tuple.Columns)
		}
		wantPayload := text("payload")
		if wantPayload != nil && payloadType == oidBytea {
			wantPayload, err = hex.DecodeString(strings.TrimPrefix(string(wantPayload), `\x`))
			if err != nil {
				t.Fatalf("generated bytea %q: %v", text("payload"), err)
			}
		}
		if !bytes.Equal(ev.Payload, wantPayload) || (ev.Payload == nil) != (wantPayload == nil) {
			t.Fatalf("insert: decoder payload %q, pglogrepl %q", ev.Payload, wantPayload)
		}

		// A logical decoding message: an event when it is transactional
		// and carries the configured prefix.
		env := map[string]any{"v": 1, "id": nonEmpty(e.bytes(40)), "aggregate_type": nonEmpty(e.bytes(20)),
			"aggregate_id": nonEmpty(e.bytes(20)), "event_type": nonEmpty(e.bytes(20)), "payload": string(e.bytes(60))}
		content, err := json.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		if prefix == "" {
			prefix = "outbox"
		}
		// Bit 0, transactional, is the only flag PostgreSQL sets.
		data = messageBytes(msgFlags&1, endLSN, prefix, content)
		op, pm = decode(data)
		pl := pm.(*pglogrepl.LogicalDecodingMessage)
		if (op.Kind == KindEvent) != (pl.Transactional && pl.Prefix == "outbox") {
			t.Fatalf("message: decoder %+v, pglogrepl transactional %v prefix %q", op, pl.Transactional, pl.Prefix)
		}
		if op.Kind == KindEvent {
			var got struct {
				ID            string          `json:"id"`
				AggregateType string          `json:"aggregate_type"`
				AggregateID   string          `json:"aggregate_id"`
				EventType     string          `json:"event_type"`
				Payload       json.RawMessage `json:"payload"`
			}
			if err := json.Unmarshal(pl.Content, &got); err != nil {
				t.Fatalf("pglogrepl content %q: %v", pl.Content, err)
			}
			ev := op.Event
			if ev.ID != got.ID || ev.AggregateType != got.AggregateType || ev.AggregateID != got.AggregateID ||
				ev.EventType != got.EventType || !bytes.Equal(ev.Payload, got.Payload) || ev.LSN != walStart ||
				!ev.CommitTime.Equal(commitTime) {
				t.Fatalf("message: decoder %+v, pglogrepl content %s", ev, pl.Content)
			}
		}

		// Commit.
		op, pm = decode(commitBytes(finalLSN, endLSN, ts))
		pc := pm.(*pglogrepl.CommitMessage)
		if op.Kind != KindCommit || op.CommitLSN != pc.CommitLSN || op.EndLSN != pc.TransactionEndLSN || !op.CommitTime.Equal(pc.CommitTime) {
			t.Fatalf("commit: decoder %+v, pglogrepl %+v", op, pc)
		}
	})
}

// relationCheck decodes a Relation message and compares the Decoder's
// cache entry for it with what pglogrepl read.
func relationCheck(t *testing.T, d *Decoder, decode func([]byte) (Op, pglogrepl.Message),
	oid uint32, ns, name string, ident byte, cols []relCol, outbox bool) {
	t.Helper()
	op, pm := decode(relationBytes(oid, ns, name, "dfni"[ident%4], cols))
	pr := pm.(*pglogrepl.RelationMessage)
	rel := d.rels[pr.RelationID]
	if op.Kind != KindSkip || rel == nil || rel.namespace != pr.Namespace || rel.name != pr.RelationName ||
		rel.ncols != int(pr.ColumnNum) || rel.ncols != len(pr.Columns) {
		t.Fatalf("relation: decoder %+v %+v, pglogrepl %+v", op, rel, pr)
	}
	if (rel.outbox != nil) != outbox {
		t.Fatalf("relation %s.%s: decoder takes it for the outbox: %v, want %v", rel.namespace, rel.name, rel.outbox != nil, outbox)
	}
	if !outbox {
		return
	}
	lay := rel.outbox
	if lay.badColumn != "" {
		t.Fatalf("relation %s.%s: %s %s", rel.namespace, rel.name, lay.badColumn, lay.badReason)
	}
	if len(lay.names) != len(pr.Columns) {
		t.Fatalf("relation: decoder columns %q, pglogrepl %d", lay.names, len(pr.Columns))
	}
	for i, c := range pr.Columns {
		if lay.names[i] != c.Name {
			t.Fatalf("relation column %d: decoder %q, pglogrepl %q", i, lay.names[i], c.Name)
		}
	}
	index := func(name string) int {
		return slices.IndexFunc(pr.Columns, func(c *pglogrepl.RelationMessageColumn) bool { return c.Name == name })
	}
	for _, c := range [...]struct {
		got  int
		name string
	}{{lay.id, "id"}, {lay.aggType, "aggregate_type"}, {lay.aggID, "aggregate_id"}, {lay.eventType, "event_type"}, {lay.payload, "payload"}} {
		if c.got != index(c.name) {
			t.Fatalf("relation: decoder finds %s at %d, pglogrepl at %d", c.name, c.got, index(c.name))
		}
	}
	if lay.payloadOID != pr.Columns[lay.payload].DataType {
		t.Fatalf("relation: decoder payload type %d, pglogrepl %d", lay.payloadOID, pr.Columns[lay.payload].DataType)
	}
}

// pglogreplTime folds a fuzzed timestamp (PostgreSQL microseconds since
// 2000) into the range pglogrepl can represent: it converts through
// time.Unix(0, ns), so years 1678 to 2261. PostgreSQL's range is wider.
func pglogreplTime(ts int64) int64 {
	hi := int64(math.MaxInt64/1000 - pgEpochMicros)
	if ts > hi || ts < -hi {
		return ts % hi
	}
	return ts
}

// cstr makes s a valid pgoutput string: no NUL, at most NAMEDATALEN-1
// bytes as PostgreSQL's names are.
func cstr(s string) string {
	s = strings.ReplaceAll(s, "\x00", "")
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

// nonEmpty is b as a string, or "x" when empty: envelope members the
// Decoder requires.
func nonEmpty(b []byte) string {
	if len(b) == 0 {
		return "x"
	}
	return string(b)
}

// entropy hands out the fuzzed shape of the transaction; an exhausted one
// yields zeros.
type entropy struct{ b []byte }

func (e *entropy) byte() byte {
	if len(e.b) == 0 {
		return 0
	}
	c := e.b[0]
	e.b = e.b[1:]
	return c
}

func (e *entropy) u32() uint32 {
	return uint32(e.byte())<<24 | uint32(e.byte())<<16 | uint32(e.byte())<<8 | uint32(e.byte())
}

// bytes returns up to max bytes.
func (e *entropy) bytes(max int) []byte {
	n := min(int(e.byte())%(max+1), len(e.b))
	s := e.b[:n]
	e.b = e.b[n:]
	return s
}

// relCol is one column of a generated Relation message.
type relCol struct {
	name   string
	typ    uint32
	flags  byte
	typmod int32
}

// genColumns returns one to 8 columns with fuzzed unique names, types and
// type modifiers, with the required columns inserted at fuzzed positions.
func genColumns(e *entropy, required []relCol) []relCol {
	var cols []relCol
	taken := func(name string) bool {
		return slices.ContainsFunc(cols, func(c relCol) bool { return c.name == name }) ||
			slices.ContainsFunc(required, func(c relCol) bool { return c.name == name })
	}
	for n := e.byte() % 9; n > 0; n-- {
		name := cstr(string(e.bytes(20)))
		if name == "" || taken(name) {
			continue
		}
		cols = append(cols, relCol{name: name, typ: e.u32(), flags: e.byte() & 1, typmod: -1})
		if e.byte()%4 == 0 {
			cols[len(cols)-1].typmod = int32(e.u32())
		}
	}
	if len(cols) == 0 && len(required) == 0 {
		// PostgreSQL allows a table without columns, but pglogrepl
		// rejects an Insert of an empty tuple as too short.
		cols = append(cols, relCol{name: "c", typ: oidText, typmod: -1})
	}
	for _, c := range required {
		c.flags = e.byte() & 1
		c.typmod = -1
		cols = slices.Insert(cols, int(e.byte())%(len(cols)+1), c)
	}
	return cols
}

// tupleCol is one column of a generated TupleData: kind 'n', 'u' or 't'.
type tupleCol struct {
	kind byte
	data []byte
}

// genTuple returns a TupleData for cols: the outbox's required columns
// hold text, payload text valid for its type or NULL, the others text or
// NULL, and with toast set also unchanged TOAST values (an update's new
// tuple).
func genTuple(e *entropy, cols []relCol, payloadType uint32, toast bool) []tupleCol {
	tuple := make([]tupleCol, len(cols))
	for i, c := range cols {
		k := e.byte()
		switch {
		case c.name == "id" || c.name == "aggregate_type" || c.name == "aggregate_id" || c.name == "event_type":
			tuple[i] = tupleCol{kind: 't', data: e.bytes(40)}
		case toast && k%4 == 0:
			tuple[i] = tupleCol{kind: 'u'}
		case k%4 == 1:
			tuple[i] = tupleCol{kind: 'n'}
		case c.name == "payload" && payloadType == oidBytea:
			tuple[i] = tupleCol{kind: 't', data: []byte(`\x` + hex.EncodeToString(e.bytes(40)))}
		default:
			tuple[i] = tupleCol{kind: 't', data: e.bytes(80)}
		}
	}
	return tuple
}

// The encoders below write pgoutput protocol version 1 as PostgreSQL's
// logicalrep_write_* functions do.

func beginBytes(final uint64, ts int64, xid uint32) []byte {
	b := binary.BigEndian.AppendUint64([]byte{'B'}, final)
	b = binary.BigEndian.AppendUint64(b, uint64(ts))
	return binary.BigEndian.AppendUint32(b, xid)
}

func commitBytes(commit, end uint64, ts int64) []byte {
	b := binary.BigEndian.AppendUint64([]byte{'C', 0}, commit)
	b = binary.BigEndian.AppendUint64(b, end)
	return binary.BigEndian.AppendUint64(b, uint64(ts))
}

func originBytes(lsn uint64, name string) []byte {
	b := binary.BigEndian.AppendUint64([]byte{'O'}, lsn)
	return append(append(b, name...), 0)
}

func typeBytes(oid uint32, ns, name string) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'Y'}, oid)
	b = append(append(b, ns...), 0)
	return append(append(b, name...), 0)
}

func relationBytes(oid uint32, ns, name string, ident byte, cols []relCol) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'R'}, oid)
	b = append(append(b, ns...), 0)
	b = append(append(b, name...), 0)
	b = append(b, ident)
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.flags)
		b = append(append(b, c.name...), 0)
		b = binary.BigEndian.AppendUint32(b, c.typ)
		b = binary.BigEndian.AppendUint32(b, uint32(c.typmod))
	}
	return b
}

func appendTuple(b []byte, tuple []tupleCol) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(tuple)))
	for _, c := range tuple {
		b = append(b, c.kind)
		if c.kind == 't' {
			b = binary.BigEndian.AppendUint32(b, uint32(len(c.data)))
			b = append(b, c.data...)
		}
	}
	return b
}

func insertBytes(oid uint32, tuple []tupleCol) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'I'}, oid)
	return appendTuple(append(b, 'N'), tuple)
}

// updateBytes writes an Update with, by the fuzzed old byte, no old tuple,
// the old key ('K') or the whole old row ('O').
func updateBytes(oid uint32, old byte, oldTuple, newTuple []tupleCol) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'U'}, oid)
	switch old % 3 {
	case 1:
		b = appendTuple(append(b, 'K'), withoutToast(oldTuple))
	case 2:
		b = appendTuple(append(b, 'O'), withoutToast(oldTuple))
	}
	return appendTuple(append(b, 'N'), newTuple)
}

func deleteBytes(oid uint32, old byte, oldTuple []tupleCol) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'D'}, oid)
	return appendTuple(append(b, "KO"[old%2]), oldTuple)
}

func truncateBytes(options byte, oids []uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'T'}, uint32(len(oids)))
	b = append(b, options)
	for _, oid := range oids {
		b = binary.BigEndian.AppendUint32(b, oid)
	}
	return b
}

func messageBytes(flags byte, lsn uint64, prefix string, content []byte) []byte {
	b := binary.BigEndian.AppendUint64([]byte{'M', flags}, lsn)
	b = append(append(b, prefix...), 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(content)))
	return append(b, content...)
}

// withoutToast replaces unchanged TOAST values, which only a new tuple
// has, with NULLs.
func withoutToast(tuple []tupleCol) []tupleCol {
	out := slices.Clone(tuple)
	for i := range out {
		if out[i].kind == 'u' {
			out[i] = tupleCol{kind: 'n'}
		}
	}
	return out
}
