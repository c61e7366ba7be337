package interop

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// pathRelay stands in the tunnel's network path (a copy of e2e's: the two
// modules share no test code): it relays TCP from its listener to a
// target, and can cut every connection (a reset from a middlebox, a NAT
// that forgot the flow) or blackhole the path for a while: nothing crosses
// either way, not even a FIN or a reset, and nothing is closed. Bytes
// caught by a blackhole are held, not dropped, and cross when it ends, as
// TCP would retransmit them.
type pathRelay struct {
	ln     net.Listener
	target string
	done   chan struct{} // closed on cleanup: every wait ends

	mu    sync.Mutex
	open  chan struct{}             // closed while the path passes bytes
	conns map[*net.TCPConn]struct{} // both ends of every relayed connection
	wg    sync.WaitGroup
}

func startPathRelay(t testing.TB, target string) *pathRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &pathRelay{ln: ln, target: target, done: make(chan struct{}), open: make(chan struct{}), conns: map[*net.TCPConn]struct{}{}}
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
		r.cut()
		r.wg.Wait()
	})
	return r
}

func (r *pathRelay) addr() string { return r.ln.Addr().String() }

// serve relays one accepted connection. During a blackhole even the dial
// to the target waits: the client's handshake goes unanswered.
func (r *pathRelay) serve(down *net.TCPConn) {
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
func (r *pathRelay) track(a, b *net.TCPConn) bool {
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
func (r *pathRelay) pump(dst, src *net.TCPConn) {
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
func (r *pathRelay) pass() bool {
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

// cut resets every connection relayed now, at both ends, and returns how
// many connections that was.
func (r *pathRelay) cut() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		abort(c)
	}
	n := len(r.conns) / 2
	clear(r.conns)
	return n
}

// hold starts a blackhole that lasts until release.
func (r *pathRelay) hold() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.open:
		r.open = make(chan struct{})
	default: // already held
	}
}

// release ends a blackhole: held bytes and ends cross, in order.
func (r *pathRelay) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.open:
	default:
		close(r.open)
	}
}

// blackhole holds the path for d, then releases it.
func (r *pathRelay) blackhole(d time.Duration) {
	r.hold()
	defer r.release()
	select {
	case <-time.After(d):
	case <-r.done:
	}
}
