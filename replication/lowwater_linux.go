package replication

import (
	"net"
	"syscall"
)

// lowWater sets the receive low-water mark (SO_RCVLOWAT) of a socket.
type lowWater interface{ set(bytes int) error }

type tcpLowWater struct{ raw syscall.RawConn }

// newLowWater returns the low-water mark of c, or nil when c is not TCP
// (directly or under TLS). A Unix socket's readiness ignores the mark.
func newLowWater(c net.Conn) lowWater {
	if t, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = t.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return tcpLowWater{raw}
}

func (l tcpLowWater) set(bytes int) error {
	var serr error
	if err := l.raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, bytes)
	}); err != nil {
		return err
	}
	return serr
}
