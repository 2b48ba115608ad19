package decoder

import "testing"

// BenchmarkDecodeInsert measures the hot path: one captured outbox insert
// with a jsonb payload, six headers and a created_at.
func BenchmarkDecodeInsert(b *testing.B) {
	benchInsert(b, 0)
}

// BenchmarkDecodeInsertNoHeaders is the common case of an empty headers
// object.
func BenchmarkDecodeInsertNoHeaders(b *testing.B) {
	benchInsert(b, 1)
}

func benchInsert(b *testing.B, nth int) {
	d, err := New(Config{Table: "outbox"})
	if err != nil {
		b.Fatal(err)
	}
	var insert message
	seen := 0
	for _, m := range readCapture(b, "outbox") {
		op, err := d.Decode(m.data, m.walStart)
		if err != nil {
			b.Fatal(err)
		}
		if op.Kind == KindEvent {
			if seen == nth {
				insert = m
				break // keep the relation cache as it was for this row
			}
			seen++
		}
	}
	// Decode refuses inserts outside a transaction.
	if _, err := d.Decode(beginMsg(), 1); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(insert.data)))
	b.ReportAllocs()
	for b.Loop() {
		op, err := d.Decode(insert.data, insert.walStart)
		if err != nil || op.Kind != KindEvent {
			b.Fatal(op.Kind, err)
		}
	}
}

// BenchmarkDecodeMessage is message mode's hot path: one transactional
// logical decoding message with the envelope outbox.Emit writes (a
// ~200-byte JSON payload, no headers).
func BenchmarkDecodeMessage(b *testing.B) {
	d, err := New(Config{Table: "outbox", MessagePrefix: DefaultMessagePrefix})
	if err != nil {
		b.Fatal(err)
	}
	env := `{"v":1,"id":"0195f3b2-7c1e-7000-8000-000000000001","aggregate_type":"order","aggregate_id":"order-42","event_type":"order.created",` +
		`"payload":{"order_id": 42, "customer_id": "cust-42", "amount": 42.42, "currency": "EUR", "status": "created", "items": [{"sku": "SKU-42", "qty": 3}], "note": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},` +
		`"created_at":"2026-11-23T12:00:00.123456Z"}`
	msg := messageMsg(true, DefaultMessagePrefix, []byte(env))
	if _, err := d.Decode(beginMsg(), 1); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		op, err := d.Decode(msg, 2)
		if err != nil || op.Kind != KindEvent {
			b.Fatal(op.Kind, err)
		}
	}
}
