package main

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// runCaptured runs the app as main does and returns its exit code, stdout
// and stderr.
func runCaptured(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := runTo(append([]string{"outbox-relay"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// Bad usage exits 2 with one line on stderr saying what is wrong, and a
// suggestion when a flag or command is close to a real one; no help text.
func TestBadUsageIsOneLineAndExitsTwo(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--sinkk", "kafka"}, "unknown flag --sinkk for outbox-relay run; did you mean --sink?"},
		{[]string{"run", "--no-such-thing"}, "unknown flag --no-such-thing for outbox-relay run; `outbox-relay run --help` lists the flags"},
		{[]string{"run", "--status-interval", "10"}, `--status-interval "10": not a valid value; want a duration with its unit, such as 10s`},
		{[]string{"run", "--max-in-flight", "many"}, `--max-in-flight "many": not a valid value; want a whole number`},
		{[]string{"status", "--slot"}, "--slot needs a value"},
		{[]string{"run", "--create-slot=maybe"}, `--create-slot "maybe": not a valid value; want true or false`},
		{[]string{"slot", "drop", "--pg-ulr", "x"}, "unknown flag --pg-ulr for outbox-relay slot drop; did you mean --pg-url?"},
		{[]string{"migrate", "--pg-url", ""}, "--pg-url (or OUTBOX_RELAY_PG_URL, or PGHOST and friends) is required"},
		{[]string{"stauts"}, `unknown command "stauts"; did you mean status?`},
		{[]string{"--verison"}, "unknown flag --verison for outbox-relay; did you mean --version?"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"slot", "skip"}, "slot skip needs --event ID"},
		{[]string{"version", "extra"}, "version takes no arguments"},
		{[]string{"config", "exmaple"}, "unknown command outbox-relay config exmaple; did you mean outbox-relay config example?"},
		{[]string{"config"}, "outbox-relay config needs a command: example"},
		{[]string{"migrate", "public.outbox", "--pg-url", "postgres://h/db"}, `outbox-relay migrate takes no arguments, got "public.outbox"`},
		{[]string{"slot", "skip", "0000-1111"}, `outbox-relay slot skip takes no arguments, got "0000-1111"; values go with their flags (outbox-relay slot skip --help lists them)`},
	} {
		noPGEnv(t)
		code, stdout, stderr := runCaptured(tc.args...)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", tc.args, code, exitUsage, stderr)
		}
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: stderr %q, want it to say %q", tc.args, stderr, tc.want)
		}
		if strings.Count(stderr, "\n") != 1 || stdout != "" {
			t.Errorf("%v: want one line on stderr and nothing on stdout, got stderr %q stdout %q", tc.args, stderr, stdout)
		}
	}
}

// --version and `version` print the version, the commit and the Go version,
// and exit 0.
func TestVersionPrintsVersionCommitAndGo(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, stdout, stderr := runCaptured(args...)
		if code != exitOK || stderr != "" {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
		for _, want := range []string{"outbox-relay version " + version, "commit ", runtime.Version()} {
			if !strings.Contains(stdout, want) {
				t.Errorf("%v: %q does not say %q", args, stdout, want)
			}
		}
	}
}

// The commands that take run's settings read the same config file and
// OUTBOX_RELAY_* variables: one file with the relay's settings (Kafka ones
// included) serves migrate, slot create, status and slot drop.
func TestEveryCommandTakesTheSharedSettings(t *testing.T) {
	// Unset, not empty: an empty variable counts as set and wins over the file.
	for _, v := range append([]string{"OUTBOX_RELAY_PG_URL", "OUTBOX_RELAY_SLOT", "OUTBOX_RELAY_PUBLICATION", "OUTBOX_RELAY_TABLE", "OUTBOX_RELAY_CONFIG"}, pgEnv...) {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	db := pgtest.New(t)
	file := writeFile(t, "pg-url: "+db.URL+"\nslot: from_file\npublication: from_file_pub\n"+
		"table: public.outbox\nkafka-brokers: [k1:9092]\nlog-level: info\n")
	for _, args := range [][]string{
		{"migrate", "--config", file},
		{"slot", "create", "--config", file},
		{"status", "--config", file},
		{"slot", "list", "--config", file},
	} {
		code, stdout, stderr := runCaptured(args...)
		if code != exitOK {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		if args[0] != "migrate" && !strings.Contains(stdout, "from_file") {
			t.Errorf("%v: output does not name the slot from the file:\n%s", args, stdout)
		}
	}
	// The environment, as for run.
	t.Setenv("OUTBOX_RELAY_PG_URL", db.URL)
	t.Setenv("OUTBOX_RELAY_SLOT", "from_file")
	if code, stdout, stderr := runCaptured("status"); code != exitOK || !strings.Contains(stdout, "from_file") {
		t.Errorf("status from OUTBOX_RELAY_*: exit %d\n%s%s", code, stdout, stderr)
	}
	// A key no command has is still an error.
	bad := writeFile(t, "pg-url: "+db.URL+"\nkafka-brokerz: [k1:9092]\n")
	if code, _, stderr := runCaptured("migrate", "--config", bad); code != exitUsage || !strings.Contains(stderr, `unknown key "kafka-brokerz"`) {
		t.Errorf("unknown key: exit %d, %s", code, stderr)
	}
	if code, stdout, stderr := runCaptured("slot", "drop", "--config", file); code != exitOK || !strings.Contains(stdout, "dropped replication slot from_file") {
		t.Errorf("slot drop --config: exit %d\n%s%s", code, stdout, stderr)
	}
}

// run --help groups its flags under headings; every flag has one, and the
// settings of general use (the in-flight caps, the sink) sit under General.
func TestRunHelpGroupsFlagsByCategory(t *testing.T) {
	code, stdout, _ := runCaptured("run", "--help")
	if code != exitOK {
		t.Fatalf("run --help: exit %d", code)
	}
	for _, heading := range []string{catGeneral, catPostgres, catOutbox, catKafka, catNATS, catRabbitMQ, catRedis, catWebhook, catMonitoring} {
		if !strings.Contains(stdout, "\n   "+heading+"\n") {
			t.Errorf("run --help has no heading %q", heading)
		}
	}
	for _, f := range runCommand().Flags {
		if f.(cli.CategorizableFlag).GetCategory() == "" {
			t.Errorf("--%s has no category", f.Names()[0])
		}
	}
	for name, want := range map[string]string{
		"max-in-flight": catGeneral, "max-in-flight-bytes": catGeneral, "sink": catGeneral,
		"pg-url": catPostgres, "status-interval": catPostgres, "create-slot": catPostgres,
		"kafka-brokers": catKafka, "nats-url": catNATS, "log-level": catMonitoring, "table": catOutbox,
	} {
		if got := categoryOf(name); got != want {
			t.Errorf("--%s under %q, want %q", name, got, want)
		}
	}
}

// A WAL position reads 0/3C7CDAB0 in JSON logs as in text logs, and an
// error spanning lines is logged on one.
func TestLogsWriteLSNsAsPostgreSQLDoes(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var out bytes.Buffer
		app := &cli.App{Flags: logFlags(), Action: func(c *cli.Context) error {
			log, err := newLogger(c, &out)
			if err != nil {
				return err
			}
			log.Info("streaming", "lsn", pglogrepl.LSN(0x3C7CDAB0),
				"err", errors.Join(errors.New("first cause"), errors.New("second cause"), errors.New("second cause")))
			return nil
		}}
		if err := app.Run([]string{"x", "--log-format", format}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "0/3C7CDAB0") {
			t.Errorf("%s log %q does not show the LSN as 0/3C7CDAB0", format, out.String())
		}
		if !strings.Contains(out.String(), "first cause; second cause") || strings.Count(out.String(), "second cause") != 1 ||
			strings.Contains(out.String(), `\n`) {
			t.Errorf("%s log %q does not show the error on one line, each cause once", format, out.String())
		}
	}
}

// A bad value in the config file names the file, line and key, and says
// what the flag wants.
func TestBadConfigValueSaysWhatTheKeyWants(t *testing.T) {
	file := writeFile(t, "pg-url: postgres://h/db\nstatus-interval: 10\n")
	code, _, stderr := runCaptured("run", "--config", file)
	want := file + `:2:1: key "status-interval": "10" is not a valid value; want a duration with its unit`
	if code != exitUsage || !strings.Contains(stderr, want) {
		t.Fatalf("exit %d, %q; want %d and %q", code, stderr, exitUsage, want)
	}
}
