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
