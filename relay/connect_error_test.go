package relay

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// A refused connection reads as one line naming the address, the user and
// database, the cause once, and what to check; the pgx error stays
// reachable.
func TestConnectErrorIsOneLineThatSaysWhatToCheck(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	// sslmode=prefer: pgx tries twice, and reported both failures.
	_, err = pgconn.Connect(t.Context(), "postgres://relay:pw@"+addr+"/app?sslmode=prefer&connect_timeout=5")
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	got := ConnectError(err)
	msg := got.Error()
	for _, want := range []string{"cannot connect to PostgreSQL at " + addr, "user=relay database=app", "connection refused", "check --pg-url"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") || strings.Count(msg, "connection refused") != 1 || strings.Contains(msg, "pw") {
		t.Errorf("not one line with the cause once and no password: %q", msg)
	}
	var ce *pgconn.ConnectError
	if !errors.As(got, &ce) {
		t.Error("the pgconn error is not reachable through errors.As")
	}
}
