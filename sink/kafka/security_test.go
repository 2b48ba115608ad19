package kafka

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	xdgscram "github.com/xdg-go/scram"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// failFast bounds how long New may take to give up on a rejected
// configuration; sarama's metadata retries take about a second.
const failFast = 5 * time.Second

// pki is a throwaway CA with a server certificate for 127.0.0.1 and a
// client certificate, written as PEM files.
type pki struct {
	pool               *x509.CertPool
	server             tls.Certificate
	caFile             string
	certFile, keyFile  string // client
	otherCAFile        string // a CA that signed nothing here
	mismatchedKeyFile  string // a key that is not the client certificate's
	garbageFile        string
	unreadableFileName string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	serial := int64(0)
	sign := func(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, []byte) {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, der
	}
	newCA := func(name string) (*x509.Certificate, []byte, *ecdsa.PrivateKey) {
		k := newKey()
		c, der := sign(&x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign}, nil, &k.PublicKey, k)
		return c, der, k
	}

	ca, caDER, caKey := newCA("outbox-relay test CA")
	_, otherDER, _ := newCA("some other CA")
	p := &pki{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = write("ca.pem", "CERTIFICATE", caDER)
	p.otherCAFile = write("other-ca.pem", "CERTIFICATE", otherDER)

	sk := newKey()
	_, serverDER := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "kfake"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, &sk.PublicKey, caKey)
	p.server = tls.Certificate{Certificate: [][]byte{serverDER}, PrivateKey: sk}

	ck := newKey()
	_, clientDER := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "outbox-relay"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, &ck.PublicKey, caKey)
	p.certFile = write("client.pem", "CERTIFICATE", clientDER)
	p.keyFile = write("client-key.pem", "PRIVATE KEY", keyDER(ck))
	p.mismatchedKeyFile = write("other-key.pem", "PRIVATE KEY", keyDER(newKey()))
	p.garbageFile = filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(p.garbageFile, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.unreadableFileName = filepath.Join(dir, "missing.pem")
	return p
}

// serverTLS is the brokers' side; requireClientCert asks for mutual TLS.
func (p *pki) serverTLS(requireClientCert bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{p.server}, MinVersion: tls.VersionTLS12}
	if requireClientCert {
		c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, p.pool
	}
	return c
}

// consumerTLS is the test consumer's side.
func (p *pki) consumerTLS() kgo.Opt {
	cert, err := tls.LoadX509KeyPair(p.certFile, p.keyFile)
	if err != nil {
		panic(err)
	}
	return kgo.DialTLSConfig(&tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
}

// newSecureCluster starts kfake with extra options (TLS, SASL).
func newSecureCluster(t *testing.T, topic string, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(4, topic)}, opts...)...)
	if err != nil {
		t.Fatalf("starting kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// roundTrip publishes n records through a sink built from cfg and reads
// them back with a franz-go consumer using opts.
func roundTrip(t *testing.T, c *kfake.Cluster, cfg Config, topic string, n int, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	k := newKafka(t, c, cfg)
	a := newAcks(n)
	for i := range n {
		ev := decoder.Event{ID: fmt.Sprint(i), AggregateID: fmt.Sprint(i % 3), Topic: topic,
			Payload: []byte(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, strings.Repeat("outbox ", 20))), CreatedAt: time.Now()}
		if err := k.Publish(t.Context(), &ev, a.fn(i)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	a.wait(t, true)
	recs := consume(t, c, topic, n, opts...)
	seen := map[string]bool{}
	for _, r := range recs {
		seen[string(r.Headers[0].Value)] = true
	}
	if len(seen) != n {
		t.Fatalf("read back %d distinct records, want %d", len(seen), n)
	}
	return recs
}

// connectFails runs New, expects it to fail within failFast with an
// error wrapping kind that is a configuration problem, and returns it.
func connectFails(t *testing.T, cfg Config, kind error) error {
	t.Helper()
	start := time.Now()
	k, err := New(cfg)
	if err == nil {
		k.Close()
		t.Fatal("New succeeded")
	}
	if d := time.Since(start); d > failFast {
		t.Errorf("New took %s to fail, want under %s", d, failFast)
	}
	if !errors.Is(err, kind) {
		t.Errorf("New error %q does not wrap %v", err, kind)
	}
	if errors.Is(err, ErrUnreachable) {
		t.Errorf("New error %q wraps ErrUnreachable: it would be retried", err)
	}
	var p interface{ ConfigProblem() bool }
	if !errors.As(err, &p) || !p.ConfigProblem() {
		t.Errorf("New error %q is not a ConfigProblem (CLI exit code 2)", err)
	}
	for _, b := range cfg.Brokers {
		if !strings.Contains(err.Error(), b) {
			t.Errorf("New error %q does not name the broker %s", err, b)
		}
	}
	return err
}

func TestKafkaTLSPublishesAndReadsBack(t *testing.T) {
	const topic = "outbox.order"
	p := newPKI(t)
	c := newSecureCluster(t, topic, kfake.TLS(p.serverTLS(false)))
	roundTrip(t, c, Config{TLS: TLS{Enable: true, CAFile: p.caFile}}, topic, 20, p.consumerTLS())
}

func TestKafkaMutualTLS(t *testing.T) {
	const topic = "outbox.order"
	p := newPKI(t)
	c := newSecureCluster(t, topic, kfake.TLS(p.serverTLS(true)))

	t.Run("with the client certificate", func(t *testing.T) {
		roundTrip(t, c, Config{TLS: TLS{CAFile: p.caFile, CertFile: p.certFile, KeyFile: p.keyFile}}, topic, 20, p.consumerTLS())
	})
	t.Run("without it the broker refuses, and we say so", func(t *testing.T) {
		err := connectFails(t, Config{Brokers: c.ListenAddrs(), TLS: TLS{CAFile: p.caFile}}, ErrTLS)
		if !strings.Contains(err.Error(), "client certificate") {
			t.Errorf("error %q does not point at the client certificate", err)
		}
	})
}

func TestKafkaTLSWrongCAFailsFast(t *testing.T) {
	const topic = "outbox.order"
	p := newPKI(t)
	c := newSecureCluster(t, topic, kfake.TLS(p.serverTLS(false)))
	err := connectFails(t, Config{Brokers: c.ListenAddrs(), TLS: TLS{CAFile: p.otherCAFile}}, ErrTLS)
	if !strings.Contains(err.Error(), p.otherCAFile) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error %q does not name the CA file and the certificate problem", err)
	}
	t.Log(err)

	// A name the certificate is not for.
	err = connectFails(t, Config{Brokers: c.ListenAddrs(), TLS: TLS{CAFile: p.caFile, ServerName: "kafka.example.com"}}, ErrTLS)
	if !strings.Contains(err.Error(), "server name") {
		t.Errorf("error %q does not point at the server name", err)
	}
}

func TestKafkaTLSInsecureSkipVerifyWarnsEveryStart(t *testing.T) {
	const topic = "outbox.order"
	p := newPKI(t)
	c := newSecureCluster(t, topic, kfake.TLS(p.serverTLS(false)))
	var logs bytes.Buffer
	cfg := Config{TLS: TLS{InsecureSkipVerify: true}, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	roundTrip(t, c, cfg, topic, 5, p.consumerTLS())
	k := newKafka(t, c, cfg) // a second start (reconnect) warns again
	_ = k.Close()
	if n := strings.Count(logs.String(), "level=WARN msg=\"Kafka TLS certificate verification is DISABLED"); n != 2 {
		t.Fatalf("%d warnings in two starts, want 2:\n%s", n, logs.String())
	}
}

// saslCases are the mechanisms, each with the franz-go mechanism the test
// consumer uses.
var saslCases = []struct {
	mechanism string
	consumer  func(user, pass string) kgo.Opt
}{
	{SASLPlain, func(u, p string) kgo.Opt { return kgo.SASL(plain.Auth{User: u, Pass: p}.AsMechanism()) }},
	{SASLScramSHA256, func(u, p string) kgo.Opt { return kgo.SASL(scram.Auth{User: u, Pass: p}.AsSha256Mechanism()) }},
	{SASLScramSHA512, func(u, p string) kgo.Opt { return kgo.SASL(scram.Auth{User: u, Pass: p}.AsSha512Mechanism()) }},
}

func TestKafkaSASLPublishesAndReadsBack(t *testing.T) {
	const topic, user, pass = "outbox.order", "relay,=user", "correct-horse-battery-staple"
	for _, tc := range saslCases {
		t.Run(tc.mechanism, func(t *testing.T) {
			c := newSecureCluster(t, topic, kfake.EnableSASL(), kfake.Superuser(tc.mechanism, user, pass))
			// kfake listens in plaintext: PLAIN needs the explicit allowance.
			sasl := SASL{Mechanism: tc.mechanism, User: user, Password: pass, AllowPlaintext: tc.mechanism == SASLPlain}
			roundTrip(t, c, Config{SASL: sasl}, topic, 20, tc.consumer(user, pass))
		})
	}
	t.Run("SCRAM-SHA-512 over mutual TLS", func(t *testing.T) {
		p := newPKI(t)
		c := newSecureCluster(t, topic, kfake.TLS(p.serverTLS(true)), kfake.EnableSASL(), kfake.Superuser(SASLScramSHA512, user, pass))
		cfg := Config{
			TLS:  TLS{CAFile: p.caFile, CertFile: p.certFile, KeyFile: p.keyFile},
			SASL: SASL{Mechanism: "scram-sha-512", User: user, Password: pass},
		}
		roundTrip(t, c, cfg, topic, 20, p.consumerTLS(), saslCases[2].consumer(user, pass))
	})
}

func TestKafkaSASLWrongPasswordFailsFastWithoutTheSecret(t *testing.T) {
	const topic, user, right, wrong = "outbox.order", "relay", "right-pw-6f1d2e", "wrong-pw-9a8b7c"
	for _, tc := range saslCases {
		t.Run(tc.mechanism, func(t *testing.T) {
			c := newSecureCluster(t, topic, kfake.EnableSASL(), kfake.Superuser(tc.mechanism, user, right))
			var logs bytes.Buffer
			cfg := Config{
				Brokers: c.ListenAddrs(),
				SASL:    SASL{Mechanism: tc.mechanism, User: user, Password: wrong, AllowPlaintext: true},
				Logger:  slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			}
			err := connectFails(t, cfg, ErrAuth)
			want := fmt.Sprintf("Kafka SASL authentication failed for user %q with mechanism %s", user, tc.mechanism)
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "check the credentials") {
				t.Errorf("error %q, want it to contain %q and say to check the credentials", err, want)
			}
			for _, secret := range []string{right, wrong} {
				if strings.Contains(err.Error(), secret) || strings.Contains(fmt.Sprintf("%+v", err), secret) {
					t.Errorf("error %q contains a password", err)
				}
				if strings.Contains(logs.String(), secret) {
					t.Errorf("logs contain a password:\n%s", logs.String())
				}
			}
			t.Log(err)
		})
	}
	t.Run("unknown user", func(t *testing.T) {
		c := newSecureCluster(t, topic, kfake.EnableSASL(), kfake.Superuser(SASLScramSHA256, user, right))
		connectFails(t, Config{Brokers: c.ListenAddrs(), SASL: SASL{Mechanism: SASLScramSHA256, User: "nobody", Password: wrong}}, ErrAuth)
	})
	t.Run("mechanism the broker does not enable", func(t *testing.T) {
		c := newSecureCluster(t, topic, kfake.EnableSASL(), kfake.Superuser(SASLScramSHA256, user, right))
		err := connectFails(t, Config{Brokers: c.ListenAddrs(), SASL: SASL{Mechanism: SASLPlain, User: user, Password: right, AllowPlaintext: true}}, ErrAuth)
		if strings.Contains(err.Error(), right) {
			t.Errorf("error %q contains the password", err)
		}
	})
}

func TestKafkaCompressionRoundTrip(t *testing.T) {
	const topic = "outbox.order"
	// kgo's RecordAttrs.CompressionType codes.
	for codec, code := range map[string]uint8{"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4} {
		t.Run(codec, func(t *testing.T) {
			c := newCluster(t, topic)
			for _, r := range roundTrip(t, c, Config{Compression: codec}, topic, 50) {
				if got := r.Attrs.CompressionType(); got != code {
					t.Fatalf("record batch compressed with codec %d, want %d (%s)", got, code, codec)
				}
			}
		})
	}
}

func TestKafkaSecurityConfigValidate(t *testing.T) {
	const secret = "hunter2-do-not-print"
	p := newPKI(t)
	for _, tt := range []struct {
		name    string
		cfg     Config
		wantErr string // empty: valid
	}{
		{"TLS with CA", Config{TLS: TLS{CAFile: p.caFile}}, ""},
		{"mutual TLS", Config{TLS: TLS{CertFile: p.certFile, KeyFile: p.keyFile}}, ""},
		{"CA file missing", Config{TLS: TLS{CAFile: p.unreadableFileName}}, p.unreadableFileName},
		{"CA file not PEM", Config{TLS: TLS{CAFile: p.garbageFile}}, p.garbageFile + " holds no PEM certificate"},
		{"cert without key", Config{TLS: TLS{CertFile: p.certFile}}, p.certFile + " given without its key"},
		{"key without cert", Config{TLS: TLS{KeyFile: p.keyFile}}, p.keyFile + " given without its certificate"},
		{"cert file missing", Config{TLS: TLS{CertFile: p.unreadableFileName, KeyFile: p.keyFile}}, p.unreadableFileName},
		{"key file missing", Config{TLS: TLS{CertFile: p.certFile, KeyFile: p.unreadableFileName}}, p.unreadableFileName},
		{"key not the cert's", Config{TLS: TLS{CertFile: p.certFile, KeyFile: p.mismatchedKeyFile}}, "does not match"},
		{"SASL", Config{SASL: SASL{Mechanism: "scram-sha-256", User: "u", Password: secret}}, ""},
		{"unknown mechanism", Config{SASL: SASL{Mechanism: "GSSAPI", User: "u", Password: secret}}, `mechanism "GSSAPI" is not one of`},
		{"user without password", Config{SASL: SASL{Mechanism: SASLPlain, User: "u"}}, `user "u" has no password`},
		{"mechanism without user", Config{SASL: SASL{Mechanism: SASLPlain, Password: secret}}, "without a user"},
		{"password without mechanism", Config{SASL: SASL{User: "u", Password: secret}}, "without a mechanism"},
		{"SASL on a version without SaslAuthenticate", Config{Version: "0.11.0.0", SASL: SASL{Mechanism: SASLPlain, User: "u", Password: secret}}, "1.0.0"},
		{"PLAIN without TLS", Config{SASL: SASL{Mechanism: "plain", User: "u", Password: secret}}, "clear text"},
		{"PLAIN without TLS, allowed", Config{SASL: SASL{Mechanism: "plain", User: "u", Password: secret, AllowPlaintext: true}}, ""},
		{"PLAIN over TLS", Config{TLS: TLS{CAFile: p.caFile}, SASL: SASL{Mechanism: SASLPlain, User: "u", Password: secret}}, ""},
		{"SCRAM without TLS", Config{SASL: SASL{Mechanism: SASLScramSHA512, User: "u", Password: secret}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Brokers = []string{"localhost:9092"}
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate = %v, want an error mentioning %q", err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), secret):
				t.Fatalf("Validate error %q contains the password", err)
			}
		})
	}
}

func TestKafkaConfigNeverPrintsThePassword(t *testing.T) {
	const secret = "hunter2-do-not-print"
	cfg := Config{Brokers: []string{"k1:9093"}, SASL: SASL{Mechanism: SASLScramSHA256, User: "relay", Password: secret}}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		fmt.Fprintf(&out, verb+"\n", cfg)
		fmt.Fprintf(&out, verb+"\n", cfg.SASL)
		fmt.Fprintf(&out, verb+"\n", &cfg)
	}
	for _, h := range []slog.Handler{slog.NewTextHandler(&out, nil), slog.NewJSONHandler(&out, nil)} {
		slog.New(h).Info("config", "cfg", cfg, "sasl", cfg.SASL, "ptr", &cfg)
	}
	j, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out.Write(j)
	if strings.Contains(out.String(), secret) {
		t.Fatalf("the password was printed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "relay") || !strings.Contains(out.String(), redacted) {
		t.Fatalf("want the user and %s in the output:\n%s", redacted, out.String())
	}
}

// TestSCRAMClientRFC7677 runs the SCRAM-SHA-256 example of RFC 7677 §3.
func TestSCRAMClientRFC7677(t *testing.T) {
	c := &scramClient{hash: xdgscram.SHA256, nonce: func() string { return "rOprNGfwEbeRWgbNEkqO" }}
	if err := c.Begin("user", "pencil", ""); err != nil {
		t.Fatal(err)
	}
	step := func(in, want string) {
		t.Helper()
		got, err := c.Step(in)
		if err != nil || got != want {
			t.Fatalf("Step(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	step("", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
	step("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
		"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
	if c.Done() {
		t.Fatal("Done before the server's signature")
	}
	step("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", "")
	if !c.Done() {
		t.Fatal("not Done after the server's signature verified")
	}
}

func TestSCRAMClientRejectsBadServers(t *testing.T) {
	for name, tt := range map[string]struct{ first, final string }{
		"nonce not extended":     {"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", ""},
		"no salt":                {"r=rOprNGfwEbeRWgbNEkqOx,i=4096", ""},
		"bad iterations":         {"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", ""},
		"too few iterations":     {"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1024", ""},
		"mandatory extension":    {"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", ""},
		"wrong server signature": {"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "v=AAAA"},
		"server error":           {"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "e=invalid-proof"},
	} {
		t.Run(name, func(t *testing.T) {
			c := &scramClient{hash: xdgscram.SHA256, nonce: func() string { return "rOprNGfwEbeRWgbNEkqO" }}
			if err := c.Begin("user", "pencil", ""); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Step(""); err != nil {
				t.Fatal(err)
			}
			_, err := c.Step(tt.first)
			if err == nil && tt.final != "" {
				_, err = c.Step(tt.final)
			}
			var se *scramError
			if !errors.As(err, &se) || c.Done() {
				t.Fatalf("err %v, Done %v; want a scramError and not Done", err, c.Done())
			}
			if strings.Contains(err.Error(), "pencil") {
				t.Fatalf("error %q contains the password", err)
			}
		})
	}
}

func TestKafkaSASLPlainWithoutTLSNeedsExplicitAllowance(t *testing.T) {
	const topic, user, pass = "outbox.order", "relay", "plain-pw-3e7a"
	c := newSecureCluster(t, topic, kfake.EnableSASL(), kfake.Superuser(SASLPlain, user, pass))
	var logs bytes.Buffer
	cfg := Config{
		Brokers: c.ListenAddrs(),
		SASL:    SASL{Mechanism: SASLPlain, User: user, Password: pass},
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
	}

	k, err := New(cfg)
	if err == nil {
		k.Close()
		t.Fatal("New accepted SASL PLAIN without TLS")
	}
	var p interface{ ConfigProblem() bool }
	if !errors.As(err, &p) || !p.ConfigProblem() || errors.Is(err, ErrUnreachable) {
		t.Errorf("New error %q is not a ConfigProblem (CLI exit code 2)", err)
	}
	if !strings.Contains(err.Error(), "clear text") || !strings.Contains(err.Error(), "enable TLS") || strings.Contains(err.Error(), pass) {
		t.Errorf("error %q should say the password would cross in clear text and how to fix it, without the password", err)
	}

	cfg.SASL.AllowPlaintext = true
	roundTrip(t, c, cfg, topic, 5, kgo.SASL(plain.Auth{User: user, Pass: pass}.AsMechanism()))
	if !strings.Contains(logs.String(), "level=WARN msg=\"Kafka SASL PLAIN without TLS sends the password in clear text") {
		t.Errorf("no warning for allowed plaintext SASL:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), pass) {
		t.Errorf("logs contain the password:\n%s", logs.String())
	}
}
