package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// TLS encrypts the connections to the brokers. Any field set turns
// TLS on; the zero value is plaintext.
type TLS struct {
	// Enable turns TLS on, verifying brokers against the system CA pool
	// unless CAFile is set.
	Enable bool
	// CAFile is a PEM file of the CA certificates that sign the brokers'
	// certificates, instead of the system pool.
	CAFile string
	// CertFile and KeyFile are the client certificate and its key (PEM),
	// for brokers that require mutual TLS. Both or neither.
	CertFile string
	KeyFile  string
	// ServerName is the name to verify the brokers' certificates against.
	// Default: the host of each broker address.
	ServerName string
	// InsecureSkipVerify accepts any broker certificate. The connection is
	// then open to interception; New logs a warning every time.
	InsecureSkipVerify bool
}

// Enabled reports whether TLS is on.
func (t TLS) Enabled() bool {
	return t.Enable || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// config reads the files and builds the client configuration. Its errors
// name the file at fault.
func (t TLS) config() (*tls.Config, error) {
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // opt-in, warned about at every start
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka TLS CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka TLS CA file %s holds no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		return nil, fmt.Errorf("kafka TLS client certificate %s given without its key file", t.CertFile)
	case t.CertFile == "" && t.KeyFile != "":
		return nil, fmt.Errorf("kafka TLS client key %s given without its certificate file", t.KeyFile)
	case t.CertFile != "":
		for _, f := range []string{t.CertFile, t.KeyFile} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("kafka TLS client certificate: %w", err)
			}
		}
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka TLS client certificate %s and key %s: %w", t.CertFile, t.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// caDescription names what broker certificates are verified against.
func (t TLS) caDescription() string {
	if t.CAFile != "" {
		return "the CA file " + t.CAFile
	}
	return "the system CA pool"
}

// brokerRejection is what a broker's refusal of the connection setup looked
// like on the wire.
type brokerRejection struct {
	broker string
	kind   error // ErrAuth or ErrTLS
	err    error
}

// kafkaDialer connects sarama to a broker: TCP, then TLS when configured
// (done here rather than by sarama so a failed handshake is known as such,
// with its broker), and it watches the connection to notice a broker that
// hangs up in answer to SASL credentials, which is how kfake and brokers
// older than Kafka 1.0 say "wrong password". It also keeps every
// connection it made, so that abort can cut them all: sarama has no way to
// stop a producer that is waiting on a broker.
type kafkaDialer struct {
	net net.Dialer
	tls *tls.Config // nil: plaintext

	// ctx ends with abort, cancelling dials and handshakes under way.
	ctx    context.Context
	cancel context.CancelFunc

	aborted atomic.Bool
	refused atomic.Int64 // dials refused after abort

	mu       sync.Mutex
	rejected *brokerRejection // the first one
	conns    map[*watchedConn]struct{}
	frozen   map[string]time.Time // address -> end of its quarantine
}

func newKafkaDialer(nd net.Dialer, tc *tls.Config) *kafkaDialer {
	d := &kafkaDialer{net: nd, tls: tc, conns: make(map[*watchedConn]struct{})}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

// abort closes every connection and refuses new ones: from its return on,
// nothing more reaches a broker through this dialer.
func (d *kafkaDialer) abort() {
	d.aborted.Store(true)
	d.cancel()
	d.mu.Lock()
	conns := d.conns
	d.conns = nil
	d.mu.Unlock()
	for c := range conns {
		// The TCP connection, not TLS's Close: that writes a close_notify
		// alert, which waits on a broker that stopped reading.
		_ = c.raw.Close()
	}
}

// track adds c to the connections abort closes; it reports false (and c
// must be closed) once abort has run.
func (d *kafkaDialer) track(c *watchedConn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conns == nil {
		return false
	}
	d.conns[c] = struct{}{}
	return true
}

func (d *kafkaDialer) forget(c *watchedConn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
}

func (d *kafkaDialer) reject(r brokerRejection) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rejected == nil {
		d.rejected = &r
	}
}

// rejection returns the first rejection seen, if any.
func (d *kafkaDialer) rejection() *brokerRejection {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rejected
}

// Dial implements sarama's proxy.Dialer.
func (d *kafkaDialer) Dial(network, addr string) (net.Conn, error) {
	if d.aborted.Load() {
		d.refused.Add(1)
		return nil, fmt.Errorf("connecting to %s: %w", addr, ErrAborted)
	}
	if err := d.quarantined(addr); err != nil {
		return nil, err
	}
	conn, err := d.net.DialContext(d.ctx, network, addr)
	if err != nil {
		return nil, err
	}
	raw := conn
	if d.tls != nil {
		cfg := d.tls.Clone()
		if cfg.ServerName == "" {
			if host, _, err := net.SplitHostPort(addr); err == nil {
				cfg.ServerName = host
			}
		}
		tc := tls.Client(conn, cfg)
		ctx, cancel := context.WithTimeout(d.ctx, d.net.Timeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			_ = conn.Close()
			if tlsConfigProblem(err) {
				d.reject(brokerRejection{addr, ErrTLS, err})
			}
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	wc := &watchedConn{Conn: conn, raw: raw, addr: addr, d: d}
	if !d.track(wc) {
		_ = conn.Close()
		return nil, fmt.Errorf("connecting to %s: %w", addr, ErrAborted)
	}
	return wc, nil
}

// tlsConfigProblem tells a TLS failure retrying cannot fix (a certificate
// that does not verify, a peer that refuses ours or does not speak TLS)
// from a network one (timeout, reset).
func tlsConfigProblem(err error) bool {
	var (
		verify    *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		header    tls.RecordHeaderError
		op        *net.OpError
	)
	switch {
	case errors.As(err, &verify), errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &header):
		return true
	case errors.As(err, &op) && op.Op == "remote error": // a TLS alert from the broker
		return true
	}
	return false
}

// Kafka request API keys the watched connection recognizes.
const apiKeySASLAuthenticate = 36

// watchedConn notes a broker that closes the connection (or sends a TLS
// alert) while a SaslAuthenticate request is unanswered. sarama writes each
// request with a single Write, so the API key sits at bytes 4-6.
type watchedConn struct {
	net.Conn
	raw  net.Conn // the TCP connection under TLS, or Conn itself
	addr string
	d    *kafkaDialer
	// inAuth is set while the last request written is SaslAuthenticate.
	inAuth atomic.Bool
}

func (c *watchedConn) Write(b []byte) (int, error) {
	if c.d.aborted.Load() {
		return 0, net.ErrClosed
	}
	if len(b) >= 6 {
		c.inAuth.Store(binary.BigEndian.Uint16(b[4:6]) == apiKeySASLAuthenticate)
	}
	return c.Conn.Write(b)
}

// Close closes the connection and drops it from the dialer's list.
func (c *watchedConn) Close() error {
	c.d.forget(c)
	return c.Conn.Close()
}

func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.inAuth.Store(false) // the broker answered
	}
	if err != nil {
		var op *net.OpError
		var ne net.Error
		switch {
		case errors.As(err, &op) && op.Op == "remote error":
			// TLS 1.3: a broker refusing our certificate says so after the
			// client's side of the handshake has finished.
			c.d.reject(brokerRejection{c.addr, ErrTLS, err})
		case c.inAuth.Load() && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, net.ErrClosed):
			c.d.reject(brokerRejection{c.addr, ErrAuth, err})
		}
	}
	return n, err
}
