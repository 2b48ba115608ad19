package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ConnectError describes a failed connection to PostgreSQL in one line:
// where it tried to connect, as whom, why it failed (once, though pgx
// tries each address, with and without TLS) and what to check. It wraps
// err, so errors.As still finds the *pgconn.PgError or *net.OpError.
func ConnectError(err error) error {
	if err == nil {
		return nil
	}
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) || ce.Config == nil {
		return &connectError{msg: "connecting to PostgreSQL: " + oneLine(err.Error()), err: err}
	}
	target := net.JoinHostPort(ce.Config.Host, fmt.Sprint(ce.Config.Port))
	if strings.HasPrefix(ce.Config.Host, "/") {
		target = fmt.Sprintf("%s/.s.PGSQL.%d", ce.Config.Host, ce.Config.Port)
	}
	as := fmt.Sprintf("user=%s database=%s", ce.Config.User, ce.Config.Database)
	var (
		dnsErr *net.DNSError
		opErr  *net.OpError
		pgErr  *pgconn.PgError
		msg    string
	)
	switch {
	case errors.As(err, &dnsErr):
		msg = fmt.Sprintf("cannot resolve the PostgreSQL host %q (%s); check the host in --pg-url", dnsErr.Name, dnsErr.Err)
	case errors.As(err, &pgErr):
		msg = fmt.Sprintf("connecting to PostgreSQL at %s as %s: %s (SQLSTATE %s)", target, as, pgErr.Message, pgErr.Code)
	case errors.As(err, &opErr) && opErr.Op == "dial":
		msg = fmt.Sprintf("cannot connect to PostgreSQL at %s as %s: %s; is PostgreSQL running at %s and accepting connections there? check --pg-url",
			target, as, dialCause(opErr), target)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		msg = fmt.Sprintf("no answer from PostgreSQL at %s as %s within the connect timeout; is it reachable (firewall, host, port)? check --pg-url",
			target, as)
	default:
		msg = fmt.Sprintf("connecting to PostgreSQL at %s as %s: %s", target, as, oneLine(errors.Unwrap(ce).Error()))
	}
	return &connectError{msg: msg, err: err}
}

type connectError struct {
	msg string
	err error
}

func (e *connectError) Error() string { return e.msg }
func (e *connectError) Unwrap() error { return e.err }

// dialCause is the system's reason for a failed dial ("connection
// refused"), without the addresses the message already names.
func dialCause(op *net.OpError) string {
	var sys *os.SyscallError
	if errors.As(op.Err, &sys) {
		return sys.Err.Error()
	}
	return op.Err.Error()
}

// oneLine joins the lines of a multi-line message, dropping repeats (pgx
// reports the same failure once per attempt).
func oneLine(s string) string {
	var parts []string
	seen := map[string]bool{}
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || seen[l] {
			continue
		}
		seen[l] = true
		parts = append(parts, l)
	}
	return strings.Join(parts, "; ")
}
