package main

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runFlags parses args with the real run command's flags and config file
// handling, and returns the parsed context's values instead of running.
func runFlags(t *testing.T, args ...string) (map[string]any, error) {
	t.Helper()
	cmd := runCommand()
	got := map[string]any{}
	cmd.Action = func(c *cli.Context) error {
		got["slot"] = c.String("slot")
		got["topic"] = c.String("topic")
		got["max-in-flight"] = c.Int("max-in-flight")
		got["kafka-brokers"] = splitList(c.StringSlice("kafka-brokers"))
		got["status-interval"] = c.Duration("status-interval").String()
		return nil
	}
	app := &cli.App{Name: "outbox-relay", Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {}}
	err := app.Run(append([]string{"outbox-relay", "run"}, args...))
	return got, err
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "relay.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigPrecedenceFlagOverEnvOverFileOverDefault(t *testing.T) {
	file := writeFile(t, "slot: from_file\ntopic: file.{aggregate_type}\nmax-in-flight: 77\nkafka-brokers: [f1:9092, f2:9092]\n")
	t.Setenv("OUTBOX_RELAY_TOPIC", "env.{aggregate_type}")
	t.Setenv("OUTBOX_RELAY_MAX_IN_FLIGHT", "88")

	got, err := runFlags(t, "--config", file, "--max-in-flight", "99")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"slot":            "from_file",            // file over default
		"topic":           "env.{aggregate_type}", // env over file
		"max-in-flight":   99,                     // flag over env and file
		"status-interval": "10s",                  // default
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if b := got["kafka-brokers"].([]string); strings.Join(b, ",") != "f1:9092,f2:9092" {
		t.Errorf("kafka-brokers from a YAML list = %v", b)
	}
}

func TestConfigFileFromEnvironment(t *testing.T) {
	t.Setenv("OUTBOX_RELAY_CONFIG", writeFile(t, "slot: via_env_file\n"))
	got, err := runFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	if got["slot"] != "via_env_file" {
		t.Fatalf("slot = %v, want the value of the file named by OUTBOX_RELAY_CONFIG", got["slot"])
	}
}

func TestConfigFileErrorsNameLineAndColumn(t *testing.T) {
	for name, tc := range map[string]struct{ content, want string }{
		"unknown key":     {"slot: a\n  \nkafka-brokerz: x\n", `:3:1: unknown key "kafka-brokerz"`},
		"does not parse":  {"slot: a\ntopic: b\nbad x\nmore: 1\n", "line 3"},
		"not a mapping":   {"- a\n- b\n", ":1:1: config file must be a mapping"},
		"duplicate key":   {"slot: a\nslot: b\n", `:2:1: key "slot" given twice`},
		"nested mapping":  {"slot:\n  name: a\n", `key "slot": want a value or a list`},
		"bad value":       {"max-in-flight: lots\n", `:1:1: key "max-in-flight"`},
		"secret-free err": {"config: other.yaml\n", `unknown key "config"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := runFlags(t, "--config", writeFile(t, tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if !isUsage(err) {
				t.Fatalf("error %v is not a usage error (exit code 2)", err)
			}
		})
	}
}

func TestMissingConfigFileIsAUsageError(t *testing.T) {
	_, err := runFlags(t, "--config", filepath.Join(t.TempDir(), "nope.yaml"))
	var u usageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("error %v: want a usage error naming the file", err)
	}
}

var settingLine = regexp.MustCompile(`^# [a-z0-9-]+: `)

// relay.example.yaml lists every run flag; regenerate it with
// `go run ./cmd/outbox-relay config example > relay.example.yaml`.
func TestExampleConfigListsEveryFlag(t *testing.T) {
	want := exampleConfig(runCommand())
	got, err := os.ReadFile("../../relay.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("relay.example.yaml is out of date: run `go run ./cmd/outbox-relay config example > relay.example.yaml`")
	}
	// And the example, uncommented, is a valid config file.
	var lines []string
	for _, l := range strings.Split(want, "\n") {
		if settingLine.MatchString(l) {
			lines = append(lines, strings.TrimPrefix(l, "# "))
		}
	}
	if _, err := runFlags(t, "--config", writeFile(t, strings.Join(lines, "\n")+"\n")); err != nil {
		t.Fatalf("the example with every key set does not load: %v", err)
	}
}
