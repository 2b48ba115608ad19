package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/outbox-relay/outbox-relay/sink/kafka"
)

// parseKafka runs a `run` command that has the Kafka flags through a cli
// app and returns what kafkaConfig built from them.
func parseKafka(t *testing.T, args ...string) (kafka.Config, error) {
	t.Helper()
	var cfg kafka.Config
	app := &cli.App{
		Name: "outbox-relay", Writer: io.Discard, ErrWriter: io.Discard,
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{{
			Name: "run", Flags: kafkaFlags(),
			Action: func(c *cli.Context) error {
				var err error
				cfg, err = kafkaConfig(c, slog.New(slog.DiscardHandler))
				return err
			},
		}},
	}
	err := app.Run(append([]string{"outbox-relay", "run"}, args...))
	cfg.Logger = nil
	return cfg, err
}

// writeKafkaFile writes a file in a temp dir and returns its path.
func writeKafkaFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// clearKafkaEnv makes sure no OUTBOX_RELAY_KAFKA_* variable of the caller's
// environment leaks into a test.
func clearKafkaEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, envPrefix+"KAFKA_") || name == envPrefix+"MAX_IN_FLIGHT" {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func TestKafkaFlagsDefaults(t *testing.T) {
	clearKafkaEnv(t)
	got, err := parseKafka(t)
	if err != nil {
		t.Fatal(err)
	}
	want := kafka.Config{
		Brokers: []string{"localhost:9092"}, ClientID: "outbox-relay", Version: "2.1.0", MaxInFlight: 10000,
		Compression: "none", FlushBytes: 1 << 20, FlushFrequency: 250 * time.Microsecond, MaxMessageBytes: 1 << 20,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestKafkaFlagsBuildTheConfig(t *testing.T) {
	clearKafkaEnv(t)
	got, err := parseKafka(t,
		"--kafka-brokers", "k1:9093,k2:9093", "--kafka-brokers", "k3:9093",
		"--max-in-flight", "500", "--kafka-client-id", "billing-relay", "--kafka-version", "3.6.0",
		"--kafka-compression", "zstd", "--kafka-batch-messages", "1000", "--kafka-batch-bytes", "65536", "--kafka-linger", "5ms",
		"--kafka-max-message-bytes", "2097152",
		"--kafka-tls", "--kafka-tls-server-name", "kafka.internal",
		"--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-user", "relay", "--kafka-sasl-password", "s3cret",
	)
	if err != nil {
		t.Fatal(err)
	}
	want := kafka.Config{
		Brokers: []string{"k1:9093", "k2:9093", "k3:9093"}, MaxInFlight: 500, ClientID: "billing-relay", Version: "3.6.0",
		Compression: "zstd", FlushMessages: 1000, FlushBytes: 65536, FlushFrequency: 5 * time.Millisecond, MaxMessageBytes: 2097152,
		TLS:  kafka.TLS{Enable: true, ServerName: "kafka.internal"},
		SASL: kafka.SASL{Mechanism: "SCRAM-SHA-512", User: "relay", Password: "s3cret"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("flags:\n got %+v\nwant %+v", got, want)
	}
	if got.SASL.Password != "s3cret" { // %+v above redacts it
		t.Fatal("password not taken from the flag")
	}
}

func TestKafkaFlagsFromTheEnvironment(t *testing.T) {
	clearKafkaEnv(t)
	missing := filepath.Join(t.TempDir(), "no-such-ca.pem")
	for name, value := range map[string]string{
		"KAFKA_BROKERS": "e1:9093,e2:9093", "KAFKA_COMPRESSION": "lz4", "KAFKA_BATCH_MESSAGES": "7",
		"KAFKA_BATCH_BYTES": "4096", "KAFKA_LINGER": "20ms", "KAFKA_CLIENT_ID": "env-relay", "KAFKA_MAX_MESSAGE_BYTES": "524288",
		"KAFKA_TLS_INSECURE_SKIP_VERIFY": "true",
		"KAFKA_SASL_MECHANISM":           "plain", "KAFKA_SASL_USER": "envuser", "KAFKA_SASL_PASSWORD": "env-pw-123",
	} {
		t.Setenv(envPrefix+name, value)
	}
	got, err := parseKafka(t)
	if err != nil {
		t.Fatal(err)
	}
	want := kafka.Config{
		Brokers: []string{"e1:9093", "e2:9093"}, MaxInFlight: 10000, ClientID: "env-relay", Version: "2.1.0",
		Compression: "lz4", FlushMessages: 7, FlushBytes: 4096, FlushFrequency: 20 * time.Millisecond, MaxMessageBytes: 524288,
		TLS:  kafka.TLS{InsecureSkipVerify: true},
		SASL: kafka.SASL{Mechanism: "plain", User: "envuser", Password: "env-pw-123"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("environment:\n got %+v\nwant %+v", got, want)
	}

	// A flag wins over the environment; a bad file is a usage error that
	// names it.
	t.Setenv(envPrefix+"KAFKA_TLS_CA", missing)
	_, err = parseKafka(t, "--kafka-compression", "gzip")
	if !isUsage(err) || !strings.Contains(fmt.Sprint(err), missing) {
		t.Fatalf("missing CA file from the environment: %v; want a usage error naming %s", err, missing)
	}
	t.Setenv(envPrefix+"KAFKA_TLS_CA", "")
	got, err = parseKafka(t, "--kafka-compression", "gzip")
	if err != nil || got.Compression != "gzip" {
		t.Fatalf("--kafka-compression gzip over KAFKA_COMPRESSION=lz4: %q, %v", got.Compression, err)
	}
}

func TestKafkaFlagsBadInputIsAUsageError(t *testing.T) {
	clearKafkaEnv(t)
	notPEM := writeKafkaFile(t, "ca.pem", "not a certificate")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--kafka-sasl-mechanism", "GSSAPI", "--kafka-sasl-user", "u", "--kafka-sasl-password", "pw-x1"}, "GSSAPI"},
		{[]string{"--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-user", "u"}, "no password"},
		{[]string{"--kafka-sasl-user", "u", "--kafka-sasl-password", "pw-x1"}, "without a mechanism"},
		{[]string{"--kafka-tls-cert", notPEM}, "without its key"},
		{[]string{"--kafka-tls-ca", notPEM}, notPEM},
		{[]string{"--kafka-compression", "brotli"}, "brotli"},
		{[]string{"--kafka-linger", "-1s"}, "negative"},
		{[]string{"--kafka-max-message-bytes", "-1"}, "max message bytes -1"},
		{[]string{"--kafka-max-message-bytes", "104857600"}, "max message bytes 104857600"},
		{[]string{"--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-user", "u", "--kafka-sasl-password", "pw-x1"}, "clear text"},
	} {
		_, err := parseKafka(t, tt.args...)
		if !isUsage(err) || !strings.Contains(fmt.Sprint(err), tt.want) {
			t.Errorf("%v: %v; want a usage error mentioning %q", tt.args, err, tt.want)
		}
		if strings.Contains(fmt.Sprint(err), "pw-x1") {
			t.Errorf("%v: error %q contains the password", tt.args, err)
		}
	}
}

// TestKafkaSASLPlainWithoutTLSNeedsTheFlag: the password would cross the
// network in clear text; only an explicit flag (or its variable) allows it.
func TestKafkaSASLPlainWithoutTLSNeedsTheFlag(t *testing.T) {
	clearKafkaEnv(t)
	plain := []string{"--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-user", "u", "--kafka-sasl-password", "pw-x1"}
	got, err := parseKafka(t, append(plain, "--kafka-sasl-allow-plaintext")...)
	if err != nil || !got.SASL.AllowPlaintext {
		t.Fatalf("with --kafka-sasl-allow-plaintext: AllowPlaintext %v, %v", got.SASL.AllowPlaintext, err)
	}
	t.Setenv(envPrefix+"KAFKA_SASL_ALLOW_PLAINTEXT", "true")
	if got, err = parseKafka(t, plain...); err != nil || !got.SASL.AllowPlaintext {
		t.Fatalf("with KAFKA_SASL_ALLOW_PLAINTEXT=true: AllowPlaintext %v, %v", got.SASL.AllowPlaintext, err)
	}
	if got, err = parseKafka(t, append(plain, "--kafka-tls", "--kafka-sasl-allow-plaintext=false")...); err != nil || got.SASL.AllowPlaintext {
		t.Fatalf("PLAIN over TLS: AllowPlaintext %v, %v", got.SASL.AllowPlaintext, err)
	}
}

func TestKafkaRejectionIsAConfigProblem(t *testing.T) {
	err := fmt.Errorf("connecting the publisher: %w", &kafka.RejectedError{Kind: kafka.ErrAuth, Err: errors.New("EOF")})
	if !isUsage(err) {
		t.Fatal("a rejected SASL login would not exit with code 2")
	}
}

func TestRunHelpShowsNoKafkaSecret(t *testing.T) {
	clearKafkaEnv(t)
	const secret = "env-secret-4c1e"
	t.Setenv(envPrefix+"KAFKA_SASL_PASSWORD", secret)
	for _, args := range [][]string{
		{"run", "--help"},
		{"run", "--kafka-sasl-password", "cmdline-secret-77", "--help"},
	} {
		out, err := runOutput(t, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, flag := range []string{"--kafka-tls-ca", "--kafka-sasl-mechanism", "--kafka-sasl-password", "--kafka-sasl-allow-plaintext", "--kafka-batch-messages", "--kafka-linger",
			"--kafka-max-message-bytes", "OUTBOX_RELAY_KAFKA_SASL_PASSWORD", "OUTBOX_RELAY_KAFKA_MAX_MESSAGE_BYTES"} {
			if !strings.Contains(out, flag) {
				t.Errorf("%v: help does not document %s", args, flag)
			}
		}
		if strings.Contains(out, secret) || strings.Contains(out, "cmdline-secret-77") {
			t.Fatalf("%v: help shows the password:\n%s", args, out)
		}
	}
}
