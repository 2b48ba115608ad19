package sink

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"strconv"
	"strings"

	"github.com/IBM/sarama"
)

// SASL mechanisms KafkaSASL accepts.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// redacted stands in for a secret wherever a value is printed.
const redacted = "[REDACTED]"

// KafkaSASL authenticates the producer to the brokers. The zero value is no
// authentication.
//
// The password never appears in logs or errors: String, Format, LogValue
// and MarshalJSON all redact it, so printing or logging a KafkaSASL (or a
// KafkaConfig holding one) is safe.
type KafkaSASL struct {
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
func (s KafkaSASL) Enabled() bool {
	return s.Mechanism != "" || s.User != "" || s.Password != ""
}

// mechanism returns the canonical mechanism name, or an error naming the
// ones accepted.
func (s KafkaSASL) mechanism() (string, error) {
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
func (s KafkaSASL) validate() error {
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
func (s KafkaSASL) apply(sc *sarama.Config) {
	m, _ := s.mechanism()
	sc.Net.SASL.Enable = true
	sc.Net.SASL.Handshake = true
	sc.Net.SASL.Version = sarama.SASLHandshakeV1
	sc.Net.SASL.Mechanism = sarama.SASLMechanism(m)
	sc.Net.SASL.User = s.User
	sc.Net.SASL.Password = s.Password
	switch m {
	case SASLScramSHA256:
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha256.New} }
	case SASLScramSHA512:
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha512.New} }
	}
}

// String describes s without its password.
func (s KafkaSASL) String() string {
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
func (s KafkaSASL) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// LogValue logs s without its password.
func (s KafkaSASL) LogValue() slog.Value {
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
func (s KafkaSASL) MarshalJSON() ([]byte, error) {
	pw := ""
	if s.Password != "" {
		pw = redacted
	}
	return json.Marshal(struct{ Mechanism, User, Password string }{s.Mechanism, s.User, pw})
}

// scramError is a SCRAM exchange the server ended or answered wrongly.
type scramError struct{ msg string }

func (e *scramError) Error() string { return "SCRAM: " + e.msg }

// scramClient is the client side of SCRAM (RFC 5802; SHA-256 per RFC 7677,
// SHA-512 the same way), as Kafka speaks it: no channel binding, no
// authorization id. Like Kafka's own ScramFormatter it uses the UTF-8 bytes
// of user and password without SASLprep.
//
// sarama calls Begin, then Step("") for the client-first message, then Step
// with each server message until Done.
type scramClient struct {
	hash func() hash.Hash

	user, password string
	nonce          string // the client's part of the nonce
	clientFirst    string // client-first-message-bare
	serverSig      []byte // expected in server-final
	step           int
	done           bool
}

// Begin implements sarama.SCRAMClient.
func (c *scramClient) Begin(user, password, authzID string) error {
	if authzID != "" && authzID != user {
		return &scramError{"an authorization id other than the user is not supported"}
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	c.user, c.password, c.nonce = user, password, base64.RawStdEncoding.EncodeToString(b[:])
	c.step, c.done, c.serverSig = 0, false, nil
	return nil
}

// gs2Header: no channel binding, no authorization id.
const gs2Header = "n,,"

// scramName escapes a user name for a SCRAM message (RFC 5802 §5.1).
var scramName = strings.NewReplacer("=", "=3D", ",", "=2C")

// Step implements sarama.SCRAMClient.
func (c *scramClient) Step(challenge string) (string, error) {
	c.step++
	switch c.step {
	case 1:
		c.clientFirst = "n=" + scramName.Replace(c.user) + ",r=" + c.nonce
		return gs2Header + c.clientFirst, nil
	case 2:
		return c.clientFinal(challenge)
	case 3:
		attrs := scramAttrs(challenge)
		if e, ok := attrs["e"]; ok {
			return "", &scramError{"server rejected the authentication: " + e}
		}
		v, err := base64.StdEncoding.DecodeString(attrs["v"])
		if err != nil || subtle.ConstantTimeCompare(v, c.serverSig) != 1 {
			return "", &scramError{"server signature does not verify: the server does not know the password"}
		}
		c.done = true
		return "", nil
	default:
		return "", &scramError{"exchange already finished"}
	}
}

// clientFinal answers server-first-message with the proof.
func (c *scramClient) clientFinal(serverFirst string) (string, error) {
	attrs := scramAttrs(serverFirst)
	if _, ok := attrs["m"]; ok {
		return "", &scramError{"server requires an unsupported extension"}
	}
	if e, ok := attrs["e"]; ok {
		return "", &scramError{"server rejected the authentication: " + e}
	}
	nonce := attrs["r"]
	if !strings.HasPrefix(nonce, c.nonce) || len(nonce) == len(c.nonce) {
		return "", &scramError{"server nonce does not extend the client nonce"}
	}
	salt, err := base64.StdEncoding.DecodeString(attrs["s"])
	if err != nil || len(salt) == 0 {
		return "", &scramError{"server sent no valid salt"}
	}
	iter, err := strconv.Atoi(attrs["i"])
	if err != nil || iter < 1 {
		return "", &scramError{"server sent no valid iteration count"}
	}
	salted, err := pbkdf2.Key(c.hash, c.password, salt, iter, c.hash().Size())
	if err != nil {
		return "", &scramError{"deriving the salted password: " + err.Error()}
	}
	clientKey := c.hmac(salted, "Client Key")
	h := c.hash()
	h.Write(clientKey)
	storedKey := h.Sum(nil)
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte(gs2Header)) + ",r=" + nonce
	authMessage := c.clientFirst + "," + serverFirst + "," + withoutProof
	proof := c.hmac(storedKey, authMessage)
	for i := range proof {
		proof[i] ^= clientKey[i]
	}
	c.serverSig = c.hmac(c.hmac(salted, "Server Key"), authMessage)
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}

func (c *scramClient) hmac(key []byte, msg string) []byte {
	m := hmac.New(c.hash, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// Done implements sarama.SCRAMClient.
func (c *scramClient) Done() bool { return c.done }

// scramAttrs splits "k=v,k=v" (values may contain '=').
func scramAttrs(msg string) map[string]string {
	attrs := map[string]string{}
	for _, kv := range strings.Split(msg, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && len(k) == 1 {
			attrs[k] = v
		}
	}
	return attrs
}
