package placeholder

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	const field = Literal + 1
	resolve := func(name string) (int, error) {
		if name == "" {
			return 0, errors.New("empty placeholder {}")
		}
		return field, nil
	}
	for _, c := range []struct {
		src     string
		segs    []Segment
		wantErr string
	}{
		{src: ""},
		{src: "plain", segs: []Segment{{Literal, "plain"}}},
		{src: "a.{x}.b", segs: []Segment{{Literal, "a."}, {field, "x"}, {Literal, ".b"}}},
		{src: "{x}{y}", segs: []Segment{{field, "x"}, {field, "y"}}},
		{src: "a}", wantErr: "'}' without '{'"},
		{src: "{x}}", wantErr: "'}' without '{'"},
		{src: "a.{x", wantErr: "unclosed '{'"},
		{src: "{a{b}}", wantErr: "unclosed '{'"},
		{src: "a.{}", wantErr: "empty placeholder {}"},
	} {
		tm, err := Parse(c.src, resolve)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Parse(%q) = %v, want error %q", c.src, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.src, err)
		}
		if got := tm.Segments(); len(got) != len(c.segs) {
			t.Errorf("Parse(%q) = %v, want %v", c.src, got, c.segs)
		} else {
			for i := range got {
				if got[i] != c.segs[i] {
					t.Errorf("Parse(%q) = %v, want %v", c.src, got, c.segs)
				}
			}
		}
		if tm.String() != c.src {
			t.Errorf("String() = %q, want %q", tm.String(), c.src)
		}
	}
}

func TestPrefixAndConstant(t *testing.T) {
	resolve := func(string) (int, error) { return Literal + 1, nil }
	tm, _ := Parse("outbox.{x}.y", resolve)
	if tm.Prefix() != "outbox." || tm.Constant() {
		t.Errorf("Prefix() = %q, Constant() = %v", tm.Prefix(), tm.Constant())
	}
	tm, _ = Parse("outbox", resolve)
	if tm.Prefix() != "outbox" || !tm.Constant() {
		t.Errorf("Prefix() = %q, Constant() = %v", tm.Prefix(), tm.Constant())
	}
	tm, _ = Parse("{x}.y", resolve)
	if tm.Prefix() != "" {
		t.Errorf("Prefix() = %q, want empty", tm.Prefix())
	}
}
