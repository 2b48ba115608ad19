package decoder

import (
	"bufio"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
)

// message is one captured XLogData: where it starts and its pgoutput bytes.
type message struct {
	walStart pglogrepl.LSN
	data     []byte
}

// readCapture reads testdata/<name>.hex, written by testdata/capture.
func readCapture(tb testing.TB, name string) []message {
	tb.Helper()
	f, err := os.Open(filepath.Join("testdata", name+".hex"))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var msgs []message
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lsnText, hexText, ok := strings.Cut(line, " ")
		if !ok {
			tb.Fatalf("%s: bad line %q", name, line)
		}
		lsn, err := pglogrepl.ParseLSN(lsnText)
		if err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
		data, err := hex.DecodeString(hexText)
		if err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
		msgs = append(msgs, message{lsn, data})
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return msgs
}

// captures lists every fixture file.
var captures = []string{"outbox", "bytea_escape", "iso_kolkata", "iso_sao_paulo", "sql_dmy_kolkata"}
