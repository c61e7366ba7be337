package yamux

// Tests for the tunnelworks patch "Stream.Reset" (see PATCHED.md).

import (
	"bytes"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// resetPair returns a client and a server session over loopback TCP; the
// server's log is captured. clientConn wraps the client's TCP connection so
// a test can stall its writes.
func resetPair(t *testing.T) (client, server *Session, clientConn *stallConn, serverLog *logCapture) {
	t.Helper()
	c, s := tcpPair(t)
	clientConn = &stallConn{Conn: c, closed: make(chan struct{})}
	serverConf := patchConf()
	serverLog = captureLogs(serverConf)
	var err error
	client, err = Client(clientConn, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err = Server(s, serverConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		clientConn.release()
		client.Close()
		server.Close()
	})
	return client, server, clientConn, serverLog
}

// openPair opens a stream on client and accepts it on server.
func openPair(t *testing.T, client, server *Session) (*Stream, *Stream) {
	t.Helper()
	cs, err := client.OpenStream()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ss, err := server.AcceptStream()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	return cs, ss
}

// stallConn is a net.Conn whose writes can be stalled, as if the peer
// took no more bytes.
type stallConn struct {
	net.Conn
	mu        sync.Mutex
	gate      chan struct{} // non-nil while stalled; closed to release
	closed    chan struct{}
	closeOnce sync.Once
	waiting   atomic.Int32 // writes held at the gate
}

func (c *stallConn) stall() {
	c.mu.Lock()
	c.gate = make(chan struct{})
	c.mu.Unlock()
}

func (c *stallConn) release() {
	c.mu.Lock()
	if c.gate != nil {
		close(c.gate)
		c.gate = nil
	}
	c.mu.Unlock()
}

func (c *stallConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	gate := c.gate
	c.mu.Unlock()
	if gate != nil {
		c.waiting.Add(1)
		defer c.waiting.Add(-1)
		select {
		case <-gate:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(b)
}

func (c *stallConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// pattern returns n bytes that differ from one offset to the next.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// waitFor polls cond until it holds, failing the test after patchBound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patchBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not after %v: %s", patchBound, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func stateOf(s *Stream) streamState {
	s.stateLock.Lock()
	defer s.stateLock.Unlock()
	return s.state
}

func buffered(s *Stream) int {
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	if s.recvBuf == nil {
		return 0
	}
	return s.recvBuf.Len()
}

// noStrayFrames fails if the server dropped a frame for a stream it no
// longer had: a data frame behind the reset (the reset overtook it) or a
// second reset.
func noStrayFrames(t *testing.T, client, server *Session, log *logCapture) {
	t.Helper()
	// The ping's reply comes after the server has handled every frame sent
	// before it.
	if _, err := client.Ping(); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if n := server.StrayFrames(); n != 0 {
		t.Errorf("server dropped %d frames for missing streams", n)
	}
	for _, l := range log.logs() {
		if strings.Contains(l, "Discarding data") || strings.Contains(l, "missing stream") {
			t.Errorf("server log: %s", l)
		}
	}
}

// A reset sent after Write returned arrives after all of that data: the
// far side holds every byte when it sees the reset, then reads
// ErrConnectionReset (never io.EOF), as do both sides' writes and our own
// reads; both sides free the stream.
func TestStream_ResetAfterWrite(t *testing.T) {
	client, server, _, serverLog := resetPair(t)
	cs, ss := openPair(t, client, server)

	data := pattern(100 << 10) // within the initial window
	if _, err := cs.Write(data); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := cs.Reset(); err != nil {
		t.Fatalf("reset: %v", err)
	}
	waitFor(t, "server stream reset", func() bool { return stateOf(ss) == streamReset })
	if n := buffered(ss); n != len(data) {
		t.Errorf("server held %d bytes at the reset, want %d: the reset overtook data", n, len(data))
	}
	if _, err := ss.Read(make([]byte, 10)); err != ErrConnectionReset {
		t.Errorf("server read: %v, want %v", err, ErrConnectionReset)
	}
	if _, err := ss.Write([]byte("x")); err != ErrConnectionReset {
		t.Errorf("server write: %v, want %v", err, ErrConnectionReset)
	}
	if _, err := cs.Read(make([]byte, 10)); err != ErrConnectionReset {
		t.Errorf("client read: %v, want %v", err, ErrConnectionReset)
	}
	if _, err := cs.Write([]byte("x")); err != ErrConnectionReset {
		t.Errorf("client write: %v, want %v", err, ErrConnectionReset)
	}
	if n := client.NumStreams(); n != 0 {
		t.Errorf("client holds %d streams after reset", n)
	}
	waitFor(t, "server frees the stream", func() bool { return server.NumStreams() == 0 })
	noStrayFrames(t, client, server, serverLog)
}

// A reader on the far side reads the data, then ErrConnectionReset.
func TestStream_ResetReaderSeesDataThenReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		// waitRead: reset only once the far side has read everything, so
		// the read result is fully determined. Otherwise reset right after
		// Write returns: the reader gets a prefix of the data (what it read
		// before the reset arrived; upstream drops unread data on reset).
		waitRead bool
	}{{"after far side read all", true}, {"right after write", false}} {
		t.Run(tc.name, func(t *testing.T) {
			client, server, _, serverLog := resetPair(t)
			cs, ss := openPair(t, client, server)

			data := pattern(1 << 20) // four windows: the reader must keep up
			readAll := make(chan struct{})
			type result struct {
				got []byte
				err error
			}
			resCh := make(chan result, 1)
			go func() {
				var got []byte
				buf := make([]byte, 32<<10)
				signalled := false
				for {
					n, err := ss.Read(buf)
					got = append(got, buf[:n]...)
					if len(got) == len(data) && !signalled {
						close(readAll)
						signalled = true
					}
					if err != nil {
						resCh <- result{got, err}
						return
					}
				}
			}()
			if _, err := cs.Write(data); err != nil {
				t.Fatalf("write: %v", err)
			}
			if tc.waitRead {
				select {
				case <-readAll:
				case <-time.After(patchBound):
					t.Fatal("far side did not read the data")
				}
			}
			if err := cs.Reset(); err != nil {
				t.Fatalf("reset: %v", err)
			}
			var r result
			select {
			case r = <-resCh:
			case <-time.After(patchBound):
				t.Fatal("far side read did not end")
			}
			if r.err != ErrConnectionReset {
				t.Errorf("far side read ended with %v after %d bytes, want %v", r.err, len(r.got), ErrConnectionReset)
			}
			if !bytes.Equal(r.got, data[:len(r.got)]) {
				t.Errorf("far side read %d bytes that are not a prefix of the data", len(r.got))
			}
			if tc.waitRead && len(r.got) != len(data) {
				t.Errorf("far side read %d bytes, want %d", len(r.got), len(data))
			}
			t.Logf("far side read %d of %d bytes, then %v", len(r.got), len(data), r.err)
			noStrayFrames(t, client, server, serverLog)
		})
	}
}

// Close then Reset: the FIN is already out, and the reset follows it. What
// is guaranteed is that a far side which has not read to the end when the
// reset arrives reads ErrConnectionReset, not the data and io.EOF. (One
// that already read io.EOF has seen a clean end: a reset cannot take that
// back.)
func TestStream_ResetAfterClose(t *testing.T) {
	client, server, _, serverLog := resetPair(t)
	cs, ss := openPair(t, client, server)

	if _, err := cs.Write(pattern(1000)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := cs.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitFor(t, "server sees the FIN", func() bool { return stateOf(ss) == streamRemoteClose })
	if err := cs.Reset(); err != nil {
		t.Fatalf("reset after close: %v", err)
	}
	if err := cs.Reset(); err != nil {
		t.Fatalf("second reset: %v", err)
	}
	waitFor(t, "server stream reset", func() bool { return stateOf(ss) == streamReset })
	if _, err := ss.Read(make([]byte, 2000)); err != ErrConnectionReset {
		t.Errorf("server read: %v, want %v", err, ErrConnectionReset)
	}
	if err := cs.Close(); err != nil {
		t.Errorf("close after reset: %v", err)
	}
	if n := client.NumStreams(); n != 0 {
		t.Errorf("client holds %d streams after reset", n)
	}
	waitFor(t, "server frees the stream", func() bool { return server.NumStreams() == 0 })
	noStrayFrames(t, client, server, serverLog) // the second Reset sent nothing
}

// Reset on a stream closed both ways, or already reset by the peer, sends
// nothing and returns nil.
func TestStream_ResetNoOp(t *testing.T) {
	client, server, _, serverLog := resetPair(t)

	cs, ss := openPair(t, client, server)
	ss.Close()
	waitFor(t, "client sees the FIN", func() bool { return stateOf(cs) == streamRemoteClose })
	cs.Close()
	if err := cs.Reset(); err != nil {
		t.Errorf("reset of a closed stream: %v", err)
	}

	cs2, ss2 := openPair(t, client, server)
	if err := ss2.Reset(); err != nil {
		t.Fatalf("server reset: %v", err)
	}
	waitFor(t, "client sees the reset", func() bool { return stateOf(cs2) == streamReset })
	if err := cs2.Reset(); err != nil {
		t.Errorf("reset of a stream the peer reset: %v", err)
	}
	waitFor(t, "server frees the streams", func() bool { return server.NumStreams() == 0 })
	noStrayFrames(t, client, server, serverLog)
}

// Our own calls blocked on the stream return ErrConnectionReset at once.
func TestStream_ResetWakesBlockedCalls(t *testing.T) {
	client, server, _, _ := resetPair(t)
	cs, _ := openPair(t, client, server)

	errs := make(chan error, 2)
	go func() {
		_, err := cs.Read(make([]byte, 10))
		errs <- err
	}()
	go func() {
		// Twice the window: blocks once the window is used up, as the far
		// side does not read.
		_, err := cs.Write(make([]byte, 2*initialStreamWindow))
		errs <- err
	}()
	waitFor(t, "send window exhausted", func() bool { return atomic.LoadUint32(&cs.sendWindow) == 0 })
	if err := cs.Reset(); err != nil {
		t.Fatalf("reset: %v", err)
	}
	for i := 0; i < 2; i++ {
		select {
		case err := <-errs:
			if err != ErrConnectionReset {
				t.Errorf("blocked call returned %v, want %v", err, ErrConnectionReset)
			}
		case <-time.After(patchBound):
			t.Fatal("blocked call still blocked after reset")
		}
	}
}

// Reset on a congested connection returns promptly; the far side sees the
// reset once the connection moves again, after the data that was ahead of
// it.
func TestStream_ResetCongested(t *testing.T) {
	t.Run("writer waits for window", func(t *testing.T) {
		client, server, conn, serverLog := resetPair(t)
		cs, ss := openPair(t, client, server)
		// The far side does not read: fill the window.
		if _, err := cs.Write(pattern(int(initialStreamWindow))); err != nil {
			t.Fatalf("write: %v", err)
		}
		werr := make(chan error, 1)
		go func() {
			_, err := cs.Write([]byte("more"))
			werr <- err
		}()
		// And the connection takes no bytes: another stream's writer is
		// stuck inside conn.Write.
		other, _ := openPair(t, client, server)
		conn.stall()
		go func() { _, _ = other.Write([]byte("stuck")) }()
		waitFor(t, "a write stuck on the connection", func() bool { return conn.waiting.Load() > 0 })

		start := time.Now()
		if err := cs.Reset(); err != nil {
			t.Fatalf("reset: %v", err)
		}
		t.Logf("reset returned after %v", time.Since(start))
		select {
		case err := <-werr:
			if err != ErrConnectionReset {
				t.Errorf("blocked write returned %v, want %v", err, ErrConnectionReset)
			}
		case <-time.After(patchBound):
			t.Fatal("blocked write still blocked after reset")
		}
		if stateOf(ss) == streamReset {
			t.Fatal("server saw the reset through a stalled connection")
		}
		conn.release()
		waitFor(t, "server stream reset", func() bool { return stateOf(ss) == streamReset })
		if n := buffered(ss); n != int(initialStreamWindow) {
			t.Errorf("server held %d bytes at the reset, want %d", n, initialStreamWindow)
		}
		noStrayFrames(t, client, server, serverLog)
	})
	t.Run("writer inside conn.Write", func(t *testing.T) {
		client, server, conn, serverLog := resetPair(t)
		cs, ss := openPair(t, client, server)
		data := pattern(1000)
		conn.stall()
		werr := make(chan error, 1)
		go func() {
			_, err := cs.Write(data)
			werr <- err
		}()
		waitFor(t, "the write stuck on the connection", func() bool { return conn.waiting.Load() > 0 })

		start := time.Now()
		if err := cs.Reset(); err != nil {
			t.Fatalf("reset: %v", err)
		}
		t.Logf("reset returned after %v", time.Since(start))
		conn.release()
		select {
		case err := <-werr:
			// Its one frame was already on its way: the write completes.
			if err != nil {
				t.Errorf("write: %v", err)
			}
		case <-time.After(patchBound):
			t.Fatal("write still blocked after release")
		}
		waitFor(t, "server stream reset", func() bool { return stateOf(ss) == streamReset })
		if n := buffered(ss); n != len(data) {
			t.Errorf("server held %d bytes at the reset, want %d: the reset overtook data", n, len(data))
		}
		noStrayFrames(t, client, server, serverLog)
	})
}

// Reset leaves no goroutine behind, also when it had to wait for a Write
// inside conn.Write.
func TestStream_ResetNoLeak(t *testing.T) {
	baseline := runtime.NumGoroutine()
	func() {
		c, s := tcpPair(t)
		conn := &stallConn{Conn: c, closed: make(chan struct{})}
		client, err := Client(conn, patchConf())
		if err != nil {
			t.Fatal(err)
		}
		server, err := Server(s, patchConf())
		if err != nil {
			t.Fatal(err)
		}
		cs, _ := openPair(t, client, server)
		conn.stall()
		done := make(chan struct{})
		go func() { defer close(done); _, _ = cs.Write([]byte("x")) }()
		waitFor(t, "the write stuck on the connection", func() bool { return conn.waiting.Load() > 0 })
		if err := cs.Reset(); err != nil {
			t.Fatalf("reset: %v", err)
		}
		// Closing the session ends the stuck write and the pending reset.
		client.Close()
		server.Close()
		<-done
		if err := cs.Reset(); err != nil {
			t.Errorf("reset after session close: %v", err)
		}
		if err := cs.Close(); err != nil {
			t.Errorf("close after reset: %v", err)
		}
		c.Close()
		s.Close()
	}()
	waitGoroutines(t, baseline)
}

// A stream reset before the peer acknowledged it gives back its open
// credit once and leaves no tracking entry behind.
func TestStream_ResetBeforeAck(t *testing.T) {
	client, server, _, serverLog := resetPair(t)
	const n = 10
	for i := 0; i < n; i++ {
		cs, err := client.OpenStream() // the server never accepts: no ACK
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if err := cs.Reset(); err != nil {
			t.Fatalf("reset: %v", err)
		}
		if err := cs.Reset(); err != nil {
			t.Fatalf("second reset: %v", err)
		}
	}
	client.streamLock.Lock()
	inflight, credits := len(client.inflight), len(client.synCh)
	client.streamLock.Unlock()
	if inflight != 0 || credits != 0 {
		t.Errorf("after %d resets before ACK: %d inflight entries, %d credits taken; want 0, 0", n, inflight, credits)
	}
	waitFor(t, "server frees the streams", func() bool { return server.NumStreams() == 0 })
	noStrayFrames(t, client, server, serverLog)
}

// Patch 20: a stream reset by its acceptor before the receive loop has
// handled the frame that opened it (a refusal at once): that frame is
// the stream's own, dropped, and not counted or logged as a frame for a
// missing stream. The hook holds the receive loop until the reset is
// done, the widest the race can be.
func TestStream_ResetAtAcceptNotStray(t *testing.T) {
	c, s := tcpPair(t)
	serverConf := patchConf()
	serverLog := captureLogs(serverConf)
	accepted := make(chan *Stream)
	reset := make(chan struct{})
	serverConf.afterIncoming = func(*Stream) { <-reset }
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(s, serverConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	go func() {
		for {
			ss, err := server.AcceptStream()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- ss
		}
	}()
	for i := 0; i < 3; i++ {
		cs, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		ss := <-accepted
		if err := ss.Reset(); err != nil {
			t.Fatal(err)
		}
		reset <- struct{}{} // the receive loop goes on with the opening frame
		waitFor(t, "client sees the reset", func() bool { return stateOf(cs) == streamReset })
	}
	waitFor(t, "server frees the streams", func() bool { return server.NumStreams() == 0 })
	noStrayFrames(t, client, server, serverLog)
}
