package test

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// tcpProxy forwards loopback TCP connections to a target and can simulate a
// network blackhole: blackhole stops forwarding in both directions on every
// open connection WITHOUT closing it (what arrives is read and dropped, as
// a partitioned network would), and connections accepted while the
// blackhole lasts are held open and never reach the target. resume lets new
// connections through again; the ones frozen by the blackhole stay dead
// (never forwarded, never closed) until the test ends, like flows whose
// NAT/conntrack state was lost.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu         sync.Mutex
	blackholed bool
	conns      []*proxyConn
	accepted   int
	frozen     int

	closed chan struct{}
	wg     sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn
	frozen         chan struct{}
	once           sync.Once
}

func (pc *proxyConn) freeze() { pc.once.Do(func() { close(pc.frozen) }) }

func (pc *proxyConn) isFrozen() bool {
	select {
	case <-pc.frozen:
		return true
	default:
		return false
	}
}

func startTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tcp proxy: %v", err)
	}
	p := &tcpProxy{ln: ln, target: target, closed: make(chan struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's listening address (127.0.0.1:port).
func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		pc := &proxyConn{client: c, frozen: make(chan struct{})}
		p.mu.Lock()
		p.accepted++
		p.conns = append(p.conns, pc)
		bh := p.blackholed
		if bh {
			p.frozen++
			pc.freeze()
		}
		p.mu.Unlock()
		if bh {
			// Held open, never dialled: the client waits for an answer that
			// never comes. Drain what it sends.
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				_, _ = io.Copy(io.Discard, c)
			}()
			continue
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		pc.server = s
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(pc, c, s)
		go p.pump(pc, s, c)
	}
}

// pump copies src to dst until either side fails; once the connection is
// frozen it keeps reading src and drops the bytes.
func (p *tcpProxy) pump(pc *proxyConn, src, dst net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 && !pc.isFrozen() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				if !pc.isFrozen() {
					src.Close()
				}
				return
			}
		}
		if err != nil {
			// A frozen connection is never closed by the proxy: the peer
			// must find out by itself. An unfrozen one is passed on.
			if !pc.isFrozen() && !errors.Is(err, net.ErrClosed) {
				dst.Close()
			}
			return
		}
	}
}

// blackhole freezes every open connection and holds new ones.
func (p *tcpProxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackholed = true
	for _, pc := range p.conns {
		if !pc.isFrozen() {
			p.frozen++
		}
		pc.freeze()
	}
}

// resume forwards new connections again.
func (p *tcpProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackholed = false
}

func (p *tcpProxy) stats() (accepted, frozen int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted, p.frozen
}

func (p *tcpProxy) close() {
	select {
	case <-p.closed:
		return
	default:
	}
	close(p.closed)
	p.ln.Close()
	p.mu.Lock()
	for _, pc := range p.conns {
		pc.client.Close()
		if pc.server != nil {
			pc.server.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}
