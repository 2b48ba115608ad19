package kafka

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
)

// SASL mechanisms SASL accepts.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// redacted stands in for a secret wherever a value is printed.
const redacted = "[REDACTED]"

// SASL authenticates the producer to the brokers. The zero value is no
// authentication.
//
// The password never appears in logs or errors: String, Format, LogValue
// and MarshalJSON all redact it, so printing or logging a SASL (or a
// Config holding one) is safe.
type SASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (any case).
	// PLAIN sends the password as is: without TLS, Validate refuses it
	// unless AllowPlaintext is set.
	Mechanism string
	// User is the SASL user name.
	User string
	// Password is the user's password.
	Password string
	// AllowPlaintext accepts PLAIN without TLS, for a network trusted not
	// to be read (the password crosses it in clear text).
	AllowPlaintext bool
}

// Enabled reports whether any SASL setting is given.
func (s SASL) Enabled() bool {
	return s.Mechanism != "" || s.User != "" || s.Password != ""
}

// mechanism returns the canonical mechanism name, or an error naming the
// ones accepted.
func (s SASL) mechanism() (string, error) {
	switch m := strings.ToUpper(strings.TrimSpace(s.Mechanism)); m {
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		return m, nil
	case "":
		return "", errors.New("kafka SASL user or password set without a mechanism: set the mechanism to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	default:
		return "", fmt.Errorf("kafka SASL mechanism %q is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512", s.Mechanism)
	}
}

// validate reports the first problem with s, which is enabled. Its errors
// never contain the password.
func (s SASL) validate() error {
	if _, err := s.mechanism(); err != nil {
		return err
	}
	switch {
	case s.User == "":
		return errors.New("kafka SASL mechanism set without a user")
	case s.Password == "":
		return fmt.Errorf("kafka SASL user %q has no password", s.User)
	}
	return nil
}

// apply sets the SASL part of a sarama configuration.
func (s SASL) apply(sc *sarama.Config) {
	m, _ := s.mechanism()
	sc.Net.SASL.Enable = true
	sc.Net.SASL.Handshake = true
	sc.Net.SASL.Version = sarama.SASLHandshakeV1
	sc.Net.SASL.Mechanism = sarama.SASLMechanism(m)
	sc.Net.SASL.User = s.User
	sc.Net.SASL.Password = s.Password
	switch m {
	case SASLScramSHA256:
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.SHA256} }
	case SASLScramSHA512:
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.SHA512} }
	}
}

// String describes s without its password.
func (s SASL) String() string {
	if !s.Enabled() {
		return "none"
	}
	pw := ""
	if s.Password != "" {
		pw = redacted
	}
	return fmt.Sprintf("{Mechanism:%s User:%s Password:%s}", s.Mechanism, s.User, pw)
}

// Format prints String for every verb, so no fmt verb (%v, %+v, %#v, %x,
// %d...) can print the password.
func (s SASL) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// LogValue logs s without its password.
func (s SASL) LogValue() slog.Value {
	if !s.Enabled() {
		return slog.StringValue("none")
	}
	attrs := []slog.Attr{slog.String("mechanism", s.Mechanism), slog.String("user", s.User), slog.Bool("password_set", s.Password != "")}
	if s.AllowPlaintext {
		attrs = append(attrs, slog.Bool("allow_plaintext", true))
	}
	return slog.GroupValue(attrs...)
}

// MarshalJSON encodes s with its password redacted.
func (s SASL) MarshalJSON() ([]byte, error) {
	pw := ""
	if s.Password != "" {
		pw = redacted
	}
	return json.Marshal(struct{ Mechanism, User, Password string }{s.Mechanism, s.User, pw})
}

// scramError is a SCRAM exchange the server ended or answered wrongly;
// rejected (kafka.go) counts it as refused credentials.
type scramError struct{ msg string }

func (e *scramError) Error() string { return "SCRAM: " + e.msg }

// scramClient adapts github.com/xdg-go/scram to sarama.SCRAMClient, so the
// exchange (RFC 5802; SHA-256 per RFC 7677, SHA-512 the same way) is the
// library's. Like Kafka's own ScramFormatter it uses the UTF-8 bytes of
// user and password without SASLprep (NewClientUnprepped), so a password
// the broker accepted for Kafka's Java clients works here too.
//
// sarama calls Begin, then Step("") for the client-first message, then Step
// with each server message until Done.
type scramClient struct {
	hash scram.HashGeneratorFcn
	// nonce, if set, replaces the library's random nonce (for the RFC's
	// test vectors).
	nonce scram.NonceGeneratorFcn

	conv *scram.ClientConversation
}

// Begin implements sarama.SCRAMClient.
func (c *scramClient) Begin(user, password, authzID string) error {
	if authzID != "" && authzID != user {
		return &scramError{"an authorization id other than the user is not supported"}
	}
	// Kafka takes no authorization id in the GS2 header.
	cl, err := c.hash.NewClientUnprepped(user, password, "")
	if err != nil {
		return &scramError{err.Error()}
	}
	if c.nonce != nil {
		cl = cl.WithNonceGenerator(c.nonce)
	}
	c.conv = cl.NewConversation()
	return nil
}

// Step implements sarama.SCRAMClient.
func (c *scramClient) Step(challenge string) (string, error) {
	if c.conv == nil {
		return "", &scramError{"exchange not begun"}
	}
	resp, err := c.conv.Step(challenge)
	if err != nil {
		return "", &scramError{err.Error()}
	}
	return resp, nil
}

// Done implements sarama.SCRAMClient: only once the server's signature
// verified, so a server that does not know the password is never taken
// as authenticated.
func (c *scramClient) Done() bool { return c.conv != nil && c.conv.Valid() }
