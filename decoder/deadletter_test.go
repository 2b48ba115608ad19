package decoder

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
)

// dropLog records what Config.DroppedHeader was told.
type dropLog []string

func (l *dropLog) add(relation, key, reason string) {
	*l = append(*l, relation+" "+key+": "+reason)
}

// A headers JSON key named like a header every record already carries
// must not become a second one: consumers dedupe on id. Empty keys go too,
// and null values add no header.
func TestHeadersJSONCannotForgeTheRelaysOwnHeaders(t *testing.T) {
	const forged = `{"id": "forged", "event_type": "x", "aggregate_type": "y", "": "e", "none": null, "ok": "v"}`
	want := []Header{h("ok", "v")}
	wantDrops := func(relation string) dropLog {
		return dropLog{
			relation + " id: " + DroppedReserved, relation + " event_type: " + DroppedReserved,
			relation + " aggregate_type: " + DroppedReserved, relation + " : " + DroppedEmptyKey,
		}
	}
	same := func(a, b Header) bool { return a.Key == b.Key && string(a.Value) == string(b.Value) }

	t.Run("row", func(t *testing.T) {
		var drops dropLog
		row := goodRow()
		row[5] = forged
		op, err := decodeInTxn(t, Config{DroppedHeader: drops.add}, relationMsg(16400, "public", "outbox", defaultCols), insertMsg(16400, row...))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(op.Event.Headers, want, same) {
			t.Errorf("headers %q, want %q", op.Event.Headers, want)
		}
		if !slices.Equal(drops, wantDrops("public.outbox")) {
			t.Errorf("dropped %q, want %q", drops, wantDrops("public.outbox"))
		}
	})
	t.Run("envelope", func(t *testing.T) {
		var drops dropLog
		env := `{"v":1,"id":"` + goodID + `","aggregate_type":"order","aggregate_id":"1","event_type":"e","payload":{},"headers":` + forged + `}`
		op, err := decodeInTxn(t, Config{MessagePrefix: "outbox", DroppedHeader: drops.add}, messageMsg(true, "outbox", []byte(env)))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(op.Event.Headers, want, same) || op.Event.ID != goodID {
			t.Errorf("headers %q (id %s), want %q", op.Event.Headers, op.Event.ID, want)
		}
		if !slices.Equal(drops, wantDrops("message prefix outbox")) {
			t.Errorf("dropped %q, want %q", drops, wantDrops("message prefix outbox"))
		}
	})
	t.Run("no callback", func(t *testing.T) {
		row := goodRow()
		row[5] = forged
		op, err := decodeInTxn(t, Config{}, relationMsg(16400, "public", "outbox", defaultCols), insertMsg(16400, row...))
		if err != nil || !slices.EqualFunc(op.Event.Headers, want, same) {
			t.Errorf("headers %q, %v; want %q", op.Event.Headers, err, want)
		}
	})
}

// A row that cannot become an event still yields what a dead letter needs:
// its id, key, the topic it was for, and every column as received.
func TestRowErrorCarriesWhatADeadLetterNeeds(t *testing.T) {
	cols := append(slices.Clone(defaultCols), col{"note", oidText})
	row := append(goodRow(), "tab\t \"quoted\" \x01 é")
	row[5] = `["not", "an", "object"]`
	row[6] = null
	_, err := decodeInTxn(t, Config{}, relationMsg(16400, "public", "outbox", cols), insertMsg(16400, row...))
	var re *RowError
	if !errors.As(err, &re) {
		t.Fatalf("error %v, want a *RowError", err)
	}
	if re.EventID != goodID || re.AggregateID != "order-1" || re.Topic != "outbox.order" || re.Column != "headers" {
		t.Errorf("row error %+v", re)
	}
	wantRaw := `{"id":"` + goodID + `","aggregate_type":"order","aggregate_id":"order-1","event_type":"OrderCreated",` +
		`"payload":"{\"a\": 1}","headers":"[\"not\", \"an\", \"object\"]","created_at":null,"note":"tab\t \"quoted\" \u0001 é"}`
	if string(re.Raw) != wantRaw {
		t.Errorf("Raw\n%s\nwant\n%s", re.Raw, wantRaw)
	}
	// The columns in table order, as text, NULL as null.
	var back map[string]*string
	if err := json.Unmarshal(re.Raw, &back); err != nil || back["created_at"] != nil || *back["note"] != row[7] {
		t.Errorf("Raw does not decode to the row: %v %v", back, err)
	}

	// Before the topic can be rendered, there is none to report.
	row = goodRow()
	row[1] = null
	_, err = decodeInTxn(t, Config{}, relationMsg(16400, "public", "outbox", defaultCols), insertMsg(16400, row...))
	if !errors.As(err, &re) || re.Topic != "" || re.AggregateID != "order-1" || re.Column != "aggregate_type" || !json.Valid(re.Raw) {
		t.Errorf("NULL aggregate_type: %+v", re)
	}

	// Invalid UTF-8 in a text value still makes valid JSON.
	cols = append(slices.Clone(defaultCols), col{"note", oidText})
	row = append(goodRow(), "a\xffb")
	row[6] = "not a time"
	_, err = decodeInTxn(t, Config{}, relationMsg(16400, "public", "outbox", cols), insertMsg(16400, row...))
	if !errors.As(err, &re) || re.Column != "created_at" || !json.Valid(re.Raw) {
		t.Errorf("bad created_at: %v, Raw %q", err, re.Raw)
	}
}

// A table-free message's row error keeps the envelope as it came.
func TestMessageRowErrorCarriesTheEnvelope(t *testing.T) {
	env := []byte(`{"v":1,"id":"` + goodID + `","aggregate_type":"order","aggregate_id":"order-1","event_type":"e","payload":1,"created_at":"yesterday"}`)
	msg := messageMsg(true, "outbox", env)
	_, err := decodeInTxn(t, Config{MessagePrefix: "outbox"}, msg)
	var re *RowError
	if !errors.As(err, &re) {
		t.Fatalf("error %v, want a *RowError", err)
	}
	if re.EventID != goodID || re.AggregateID != "order-1" || re.Topic != "outbox.order" || string(re.Raw) != string(env) {
		t.Errorf("row error %+v", re)
	}
	for i := range msg {
		msg[i] = 'X' // the caller reuses its buffer
	}
	if string(re.Raw) != string(env) {
		t.Errorf("Raw aliases the message: %q", re.Raw)
	}

	_, err = decodeInTxn(t, Config{MessagePrefix: "outbox"}, messageMsg(true, "outbox", []byte(`{"v":1,"id":5}`)))
	if !errors.As(err, &re) || re.EventID != "" || re.AggregateID != "" || re.Topic != "" || string(re.Raw) != `{"v":1,"id":5}` {
		t.Errorf("envelope of the wrong layout: %+v", re)
	}
}

func TestNeededColumns(t *testing.T) {
	got := Config{Table: "outbox"}.NeededColumns()
	want := []NeededColumn{
		{Name: "id", Logical: "id", Default: true},
		{Name: "aggregate_type", Logical: "aggregate_type", Default: true},
		{Name: "aggregate_id", Logical: "aggregate_id", Default: true},
		{Name: "event_type", Logical: "event_type", Default: true},
		{Name: "payload", Logical: "payload", Default: true},
		{Name: "headers", Logical: "headers", Optional: true, Default: true},
		{Name: "created_at", Logical: "created_at", Optional: true, Default: true},
	}
	if !slices.Equal(got, want) {
		t.Errorf("defaults: %+v\nwant %+v", got, want)
	}

	cols, err := ParseColumnsOver(DebeziumColumns(), "created_at=ts")
	if err != nil {
		t.Fatal(err)
	}
	got = Config{Table: "outbox", Columns: cols, Topic: "{tenant}.{aggregatetype}.{aggregate_type}", HeaderColumns: []string{"corr", "tenant"}, TraceColumn: "tp"}.NeededColumns()
	want = []NeededColumn{
		{Name: "id", Logical: "id", Default: true},
		{Name: "aggregatetype", Logical: "aggregate_type"},
		{Name: "aggregateid", Logical: "aggregate_id"},
		{Name: "type", Logical: "event_type"},
		{Name: "payload", Logical: "payload", Default: true},
		{Name: "ts", Logical: "created_at", Optional: true},
		{Name: "tenant", Role: RoleTopic},
		{Name: "corr", Role: RoleHeader},
	}
	if !slices.Equal(got, want) {
		t.Errorf("debezium, placeholders and header columns: %+v\nwant %+v", got, want)
	}
}
