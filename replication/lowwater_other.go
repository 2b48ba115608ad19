//go:build !linux

package replication

import "net"

// lowWater sets the receive low-water mark (SO_RCVLOWAT) of a socket.
type lowWater interface{ set(bytes int) error }

// newLowWater returns nil: coalescing is only implemented on Linux.
func newLowWater(net.Conn) lowWater { return nil }
