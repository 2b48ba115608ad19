package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// runOutput runs the app like run does and returns what it printed on stdout
// and the error run would turn into an exit code.
func runOutput(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	app := newApp()
	app.Writer = &out
	app.ErrWriter = io.Discard
	err := app.RunContext(t.Context(), append([]string{"outbox-relay"}, args...))
	return out.String(), err
}

// exitCode runs the app through run, as main does.
func exitCode(args ...string) int {
	return run(append([]string{"outbox-relay"}, args...))
}

// noPGEnv makes sure neither the flag's variable nor libpq's name a server.
func noPGEnv(t *testing.T) {
	t.Helper()
	for _, v := range append([]string{"OUTBOX_RELAY_PG_URL"}, pgEnv...) {
		t.Setenv(v, "")
	}
}

func TestMigrateCreatesTheTableOnceAndSaysSo(t *testing.T) {
	db := pgtest.New(t)
	out, err := runOutput(t, "migrate", "--pg-url", db.URL)
	if err != nil || !strings.Contains(out, "created table public.outbox") {
		t.Fatalf("first migrate: %q, %v", out, err)
	}
	out, err = runOutput(t, "migrate", "--pg-url", db.URL)
	if err != nil || !strings.Contains(out, "table public.outbox already exists") {
		t.Errorf("second migrate: %q, %v", out, err)
	}
	if code := exitCode("migrate", "--pg-url", db.URL, "--table", "events.outbox"); code != exitOK {
		t.Errorf("migrate --table events.outbox: exit %d", code)
	}
	var n int
	if err := db.Conn(t).QueryRow(t.Context(), "select count(*) from pg_tables where tablename = 'outbox'").Scan(&n); err != nil || n != 2 {
		t.Errorf("outbox tables: %d (%v), want public and events", n, err)
	}
}

func TestMigrateTakesTheURLFromTheEnvironment(t *testing.T) {
	db := pgtest.New(t)
	noPGEnv(t)
	t.Setenv("OUTBOX_RELAY_PG_URL", db.URL)
	if code := exitCode("migrate"); code != exitOK {
		t.Errorf("migrate with OUTBOX_RELAY_PG_URL: exit %d", code)
	}
}

func TestMissingPGURLIsAUsageError(t *testing.T) {
	noPGEnv(t)
	for _, args := range [][]string{{"migrate"}, {"slot", "create"}, {"slot", "drop"}, {"slot", "list"}} {
		_, err := runOutput(t, args...)
		if err == nil || !strings.Contains(err.Error(), "--pg-url (or OUTBOX_RELAY_PG_URL") {
			t.Errorf("%v: error %v", args, err)
		}
		if code := exitCode(args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

func TestBadTableIsAUsageError(t *testing.T) {
	if code := exitCode("migrate", "--pg-url", "postgres://127.0.0.1:1/x", "--table", "a.b.c"); code != exitUsage {
		t.Errorf("migrate --table a.b.c: exit %d, want %d", code, exitUsage)
	}
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func TestConnectionErrorsDoNotShowThePassword(t *testing.T) {
	const password = "s3cret-Pw"
	for name, tc := range map[string]struct {
		url  string
		code int
	}{
		"refused":     {fmt.Sprintf("postgres://app:%s@127.0.0.1:%d/db?sslmode=disable", password, closedPort(t)), exitFailure},
		"key=value":   {fmt.Sprintf("host=127.0.0.1 port=%d user=app password=%s sslmode=disable", closedPort(t), password), exitFailure},
		"invalid URL": {"postgres://app:" + password + "@127.0.0.1:notaport/db", exitUsage},
		"bad option":  {"postgres://app:" + password + "@127.0.0.1/db?sslmode=sometimes", exitUsage},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := runOutput(t, "slot", "list", "--pg-url", tc.url)
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("error shows the password: %v", err)
			}
			if code := exitCode("slot", "list", "--pg-url", tc.url); code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
		})
	}
}

func TestRedactHidesThePasswordAndKeepsTheCause(t *testing.T) {
	cause := errors.New("server said: password s3cret is wrong")
	err := redact(fmt.Errorf("connecting: %w", cause), "s3cret")
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "password xxxxx is wrong") {
		t.Errorf("redacted error: %v", err)
	}
	if !errors.Is(err, cause) {
		t.Errorf("redact lost the cause")
	}
	if plain := errors.New("no secret here"); redact(plain, "s3cret") != plain {
		t.Errorf("redact wrapped an error that needed nothing")
	}
}
