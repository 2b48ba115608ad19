package pgname_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox/pgname"
)

func TestParseTable(t *testing.T) {
	for _, tc := range []struct {
		in, schema, name string
		ok               bool
	}{
		{"outbox", "public", "outbox", true},
		{"events.outbox", "events", "outbox", true},
		{"Events.Outbox", "Events", "Outbox", true},
		{"app.Outbox Events", "app", "Outbox Events", true},
		{strings.Repeat("x", 63), "public", strings.Repeat("x", 63), true},
		{"", "", "", false},
		{".outbox", "", "", false},
		{"events.", "", "", false},
		{"a.b.c", "", "", false},
		{strings.Repeat("x", 64), "", "", false},
		{strings.Repeat("x", 64) + ".t", "", "", false},
		{"out\x00box", "", "", false},
	} {
		got, err := pgname.ParseTable(tc.in)
		if (err == nil) != tc.ok || got.Schema != tc.schema || got.Name != tc.name {
			t.Errorf("ParseTable(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

// The error texts callers and their tests rely on.
func TestParseTableErrors(t *testing.T) {
	for in, want := range map[string]string{
		"":      "table name is empty",
		"a.b.c": `table name "a.b.c": want schema.name or name`,
		".b":    `table name ".b": want schema.name or name`,
	} {
		if _, err := pgname.ParseTable(in); err == nil || err.Error() != want {
			t.Errorf("ParseTable(%q): %v, want %q", in, err, want)
		}
	}
}

func TestQuoting(t *testing.T) {
	tbl := pgname.Table{Schema: "app", Name: `Outbox "Events"`}
	if got, want := tbl.Quoted(), `"app"."Outbox ""Events"""`; got != want {
		t.Errorf("Quoted() = %s, want %s", got, want)
	}
	if got, want := tbl.String(), `app.Outbox "Events"`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
	if got, want := pgname.Quote("out\x00box"), `"outbox"`; got != want {
		t.Errorf("Quote drops NUL bytes: got %s, want %s", got, want)
	}
}

func ExampleParseTable() {
	t, err := pgname.ParseTable("outbox")
	if err != nil {
		panic(err)
	}
	fmt.Println(t, t.Quoted())
	// Output: public.outbox "public"."outbox"
}

// Whatever the input, a parsed name is the input back (with public added
// when it had no schema), so no two inputs name the same table.
func FuzzParseTable(f *testing.F) {
	for _, s := range []string{"outbox", "events.outbox", "", ".", "a.b.c", `Odd Schema.Out"box`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tbl, err := pgname.ParseTable(s)
		if err != nil {
			return
		}
		if tbl.String() != s && tbl.String() != "public."+s {
			t.Fatalf("ParseTable(%q) = %+v", s, tbl)
		}
		if tbl.Schema == "" || tbl.Name == "" || strings.Contains(tbl.Name, ".") || len(tbl.Schema) > pgname.MaxLen || len(tbl.Name) > pgname.MaxLen || strings.ContainsRune(s, 0) {
			t.Fatalf("ParseTable(%q) accepted %+v", s, tbl)
		}
	})
}
