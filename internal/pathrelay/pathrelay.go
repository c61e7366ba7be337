// Package pathrelay stands in the tunnel's network path in end-to-end
// tests (e2e and interop): a TCP relay that can cut or blackhole it.
package pathrelay

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Relay stands in the tunnel's network path: it relays TCP from its
// listener to a target, and can cut every connection (a reset from a
// middlebox, a NAT that forgot the flow) or blackhole the path for a while:
// nothing crosses either way, not even a FIN or a reset, and nothing is
// closed. Bytes caught by a blackhole are held, not dropped, and cross
// when it ends, as TCP would retransmit them.
type Relay struct {
	ln     net.Listener
	target string
	done   chan struct{} // closed on cleanup: every wait ends

	mu    sync.Mutex
	open  chan struct{}             // closed while the path passes bytes
	conns map[*net.TCPConn]struct{} // both ends of every relayed connection
	wg    sync.WaitGroup
}

// Start relays from a new loopback listener to target until t's cleanup.
func Start(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{ln: ln, target: target, done: make(chan struct{}), open: make(chan struct{}), conns: map[*net.TCPConn]struct{}{}}
	close(r.open)
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Go(func() { r.serve(c.(*net.TCPConn)) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		close(r.done)
		r.Cut()
		r.wg.Wait()
	})
	return r
}

func (r *Relay) Addr() string { return r.ln.Addr().String() }

// serve relays one accepted connection. During a blackhole even the dial
// to the target waits: the client's handshake goes unanswered.
func (r *Relay) serve(down *net.TCPConn) {
	if !r.pass() {
		down.Close()
		return
	}
	c, err := net.Dial("tcp", r.target)
	if err != nil {
		abort(down)
		return
	}
	up := c.(*net.TCPConn)
	if !r.track(down, up) {
		abort(down)
		abort(up)
		return
	}
	var pair sync.WaitGroup
	pair.Go(func() { r.pump(up, down) })
	pair.Go(func() { r.pump(down, up) })
	pair.Wait()
	r.mu.Lock()
	delete(r.conns, down)
	delete(r.conns, up)
	r.mu.Unlock()
	down.Close()
	up.Close()
}

// track registers both ends for cut; false once the relay is closing.
func (r *Relay) track(a, b *net.TCPConn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.done:
		return false
	default:
	}
	r.conns[a] = struct{}{}
	r.conns[b] = struct{}{}
	return true
}

// pump copies src to dst, passing a FIN on as a FIN and anything else as
// a reset of both ends. Whatever it read during a blackhole (bytes, the
// end) waits for the blackhole's end.
func (r *Relay) pump(dst, src *net.TCPConn) {
	buf := make([]byte, 32<<10)
	for {
		if !r.pass() {
			return
		}
		n, err := src.Read(buf)
		if !r.pass() {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				abort(src)
				abort(dst)
				return
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			_ = dst.CloseWrite()
			return
		default:
			abort(src)
			abort(dst)
			return
		}
	}
}

// pass waits while the path is blackholed; false once the relay is closing.
func (r *Relay) pass() bool {
	r.mu.Lock()
	open := r.open
	r.mu.Unlock()
	select {
	case <-open:
		return true
	case <-r.done:
		return false
	}
}

// abort closes c with a reset (RST), not a FIN.
func abort(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// Cut resets every connection relayed now, at both ends, and returns how
// many connections that was.
func (r *Relay) Cut() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		abort(c)
	}
	n := len(r.conns) / 2
	clear(r.conns)
	return n
}

// Hold starts a blackhole that lasts until Release.
func (r *Relay) Hold() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.open:
		r.open = make(chan struct{})
	default: // already held
	}
}

// Release ends a blackhole: held bytes and ends cross, in order.
func (r *Relay) Release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.open:
	default:
		close(r.open)
	}
}

// Blackhole holds the path for d, then releases it.
func (r *Relay) Blackhole(d time.Duration) {
	r.Hold()
	defer r.Release()
	select {
	case <-time.After(d):
	case <-r.done:
	}
}
