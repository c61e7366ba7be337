package yamux

// Tests for the tunnelworks patch "shutdown returns" (see PATCHED.md).

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// patchBound is how long a blocked call may take to return after its
// session closes. Generous: the machine may be loaded and -race is slow;
// what is checked is that calls return at all, not how fast.
const patchBound = 20 * time.Second

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	client, err := net.DialTimeout("tcp", l.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	r := <-ch
	if r.err != nil {
		client.Close()
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

// patchConf is a quiet config without keepalive, with write timeouts long
// enough that a loaded machine cannot trip them.
func patchConf() *Config {
	conf := DefaultConfig()
	conf.EnableKeepAlive = false
	conf.ConnectionWriteTimeout = 60 * time.Second
	conf.StreamOpenTimeout = 0
	conf.LogOutput = io.Discard
	return conf
}

// waitGoroutines waits until the goroutine count is back to baseline.
func waitGoroutines(t *testing.T, baseline int) {
	t.Helper()
	deadline := time.Now().Add(patchBound)
	for {
		n := runtime.NumGoroutine()
		if n <= baseline {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, baseline %d; some:\n%s", n, baseline, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openMany opens n streams from client and accepts them on server.
func openMany(t *testing.T, client, server *Session, n int) (cs, ss []*Stream) {
	t.Helper()
	accepted := make(chan []*Stream, 1)
	go func() {
		var out []*Stream
		for len(out) < n {
			s, err := server.AcceptStream()
			if err != nil {
				break
			}
			out = append(out, s)
		}
		accepted <- out
	}()
	for i := 0; i < n; i++ {
		s, err := client.OpenStream()
		if err != nil {
			t.Fatalf("open stream %d: %v", i, err)
		}
		cs = append(cs, s)
	}
	select {
	case ss = <-accepted:
	case <-time.After(patchBound):
		t.Fatalf("accepting %d streams took longer than %v", n, patchBound)
	}
	if len(ss) != n {
		t.Fatalf("accepted %d streams, want %d", len(ss), n)
	}
	return cs, ss
}

// TestSession_CloseManyBlockedStreams closes a session holding 10,000
// streams, each with a goroutine blocked in Read on both sides and some
// blocked in Write on an exhausted send window. Upstream's Read and Write
// loop back on shutdown and spin until Session.Close reaches their stream;
// patched, every call returns an error and no goroutine is left.
func TestSession_CloseManyBlockedStreams(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(client *Session, clientConn, serverConn net.Conn)
	}{
		{"we close", func(client *Session, _, _ net.Conn) { client.Close() }},
		{"peer conn closed", func(_ *Session, _, serverConn net.Conn) { serverConn.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testCloseManyBlocked(t, tc.close)
		})
	}
}

func testCloseManyBlocked(t *testing.T, closeFn func(*Session, net.Conn, net.Conn)) {
	const streams, writers = 10000, 20
	baseline := runtime.NumGoroutine()

	clientConn, serverConn := tcpPair(t)
	client, err := Client(clientConn, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(serverConn, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	defer server.Close()

	setup := time.Now()
	cs, ss := openMany(t, client, server, streams)
	t.Logf("opened %d streams in %v", streams, time.Since(setup))

	var wg sync.WaitGroup
	var pending atomic.Int64
	errs := make(chan error, 2*streams+writers)
	blocked := func(name string, i int, f func() error) {
		pending.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pending.Add(-1)
			if err := f(); err != nil {
				errs <- nil
				return
			}
			errs <- errors.New(name + " returned without error")
		}()
	}
	// Every client stream blocks in Read; every server stream too, except
	// those whose window the writers fill.
	for i, s := range cs {
		s := s
		blocked("client read", i, func() error {
			_, err := s.Read(make([]byte, 1))
			if err == io.EOF {
				return nil // an EOF would say the stream ended cleanly
			}
			return err
		})
	}
	for i, s := range ss[writers:] {
		s := s
		blocked("server read", i, func() error {
			_, err := s.Read(make([]byte, 1))
			if err == io.EOF {
				return nil
			}
			return err
		})
	}
	big := make([]byte, 2*initialStreamWindow)
	for i, s := range cs[:writers] {
		s := s
		blocked("client write", i, func() error {
			_, err := s.Write(big)
			return err
		})
	}
	// The writers are blocked once their send windows are empty.
	deadline := time.Now().Add(patchBound)
	for _, s := range cs[:writers] {
		for atomic.LoadUint32(&s.sendWindow) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("send window of stream %d not exhausted", s.id)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Let the readers reach their wait.
	time.Sleep(200 * time.Millisecond)
	t.Logf("%d calls blocked %v after the start", 2*streams, time.Since(setup))
	if n := pending.Load(); n != 2*streams {
		t.Fatalf("%d calls blocked, want %d", n, 2*streams)
	}

	start := time.Now()
	// Upstream's Session.Close itself can take minutes here (its loop over
	// the streams waits for locks the spinning calls hold): bound it too.
	closed := make(chan struct{})
	go func() { closeFn(client, clientConn, serverConn); close(closed) }()
	done := make(chan struct{})
	go func() { <-closed; wg.Wait(); close(done) }()
	select {
	case <-done:
		t.Logf("close and %d blocked calls returned %v after close", 2*streams, time.Since(start))
	case <-time.After(patchBound):
		t.Errorf("%d of %d blocked calls still blocked %v after close", pending.Load(), 2*streams, patchBound)
		// Measure how long they take (bounded), for the record.
		select {
		case <-done:
			t.Logf("all returned after %v", time.Since(start))
		case <-time.After(5 * time.Minute):
			t.Fatalf("%d still blocked after %v", pending.Load(), time.Since(start))
		}
	}
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			if failed < 5 {
				t.Error(err)
			}
			failed++
		}
	}
	if failed > 0 {
		t.Fatalf("%d calls returned without error", failed)
	}
	client.Close()
	server.Close()
	clientConn.Close()
	serverConn.Close()
	waitGoroutines(t, baseline)
	t.Logf("goroutines back to baseline %v after close", time.Since(start))
}
